"""`lightseg predict` then `lightseg score`: predict's <stem>_label.png files are scored against the labels,
its pictures are not, and every name clash, missing or extra file, size mismatch or id convention mix-up
is refused or reported by name."""
import json
import shutil

import cv2
import numpy as np
import pytest
import torch

import lightseg
from lightseg.checkpoint import save_checkpoint
from lightseg.cli import main
from lightseg.data.classes import (CAMVID_CLASSES, CAMVID_PALETTE, CITYSCAPES_CLASSES, CITYSCAPES_LABELS,
                                   CITYSCAPES_PALETTE)

MODEL = "mininet_95k"


def checkpoint(path, classes, palette):
    """A checkpoint as `lightseg train` writes it, with random weights."""
    torch.manual_seed(0)
    model = lightseg.create_model(MODEL, num_classes=len(classes))
    save_checkpoint({"model": model.state_dict(), "model_name": MODEL, "num_classes": len(classes),
                     "classes": list(classes), "palette": [list(c) for c in palette],
                     "config": {"data": {"normalize": "imagenet"}}}, path)
    return path


@pytest.fixture(scope="module")
def camvid_ckpt(tmp_path_factory):
    return checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt", CAMVID_CLASSES, CAMVID_PALETTE)


def cli(argv, capsys):
    """Exit status, stdout and stderr of `lightseg ARGV`; never a traceback."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return code, out, err


def write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.asarray(array, dtype=np.uint8))


def read_png(path):
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def predict(ckpt, images, out, capsys):
    code, _, err = cli(["predict", "--checkpoint", ckpt, "--input", images, "--output", out, "--size", 64, 64], capsys)
    assert code == 0, err


def hand_miou(gts, preds, num_classes):
    """mIoU from pixel counts: a ground truth outside 0..num_classes-1 (void) is not counted, a class absent
    from both ground truth and prediction is left out of the mean."""
    g = np.concatenate([np.asarray(x, np.int64).ravel() for x in gts])
    p = np.concatenate([np.asarray(x, np.int64).ravel() for x in preds])
    counted = g < num_classes
    ious = []
    for c in range(num_classes):
        tp = np.sum((g == c) & (p == c))
        fn = np.sum((g == c) & (p != c))
        fp = np.sum((p == c) & (g != c) & counted)
        if tp + fn + fp:
            ious.append(tp / (tp + fn + fp))
    return float(np.mean(ious))


def noisy_labels(pred, rng, num_values):
    """Ground truth that agrees with ``pred`` on about half the pixels."""
    return np.where(rng.random(pred.shape) < 0.5, pred, rng.integers(0, num_values, pred.shape)).astype(np.uint8)


@pytest.fixture(scope="module")
def camvid_predicted(camvid_ckpt, tmp_path_factory):
    """DATA/val (three 8x8 images) and preds/ from `lightseg predict --input DATA/val --output preds`, made
    once (predict is the slow part) and copied by each test."""
    rng = np.random.default_rng(0)
    base = tmp_path_factory.mktemp("predicted")
    for i in range(3):
        write_png(base / "DATA" / "val" / f"0001TP_00{i}.png", rng.integers(0, 256, (8, 8, 3)))
    code = main(["predict", "--checkpoint", str(camvid_ckpt), "--input", str(base / "DATA" / "val"), "--output",
                 str(base / "preds"), "--size", "64", "64"])
    assert code == 0
    return base


@pytest.fixture
def camvid_round(camvid_predicted, tmp_path):
    """(DATA, preds, labels): a copy of the predicted folders and DATA/valannot, labels made from the
    predictions with noise and void (11) pixels."""
    shutil.copytree(camvid_predicted, tmp_path, dirs_exist_ok=True)
    rng = np.random.default_rng(1)
    data, preds = tmp_path / "DATA", tmp_path / "preds"
    gts = {}
    for i in range(3):
        stem = f"0001TP_00{i}"
        gts[stem] = noisy_labels(read_png(preds / f"{stem}_label.png"), rng, 12)  # 0..10 and 11 = void
        write_png(data / "valannot" / f"{stem}.png", gts[stem])
    return data, preds, gts


def test_predict_then_score_gives_the_hand_computed_miou(camvid_round, capsys):
    data, preds, gts = camvid_round
    assert sorted(p.name for p in preds.iterdir()) == sorted(
        f"0001TP_00{i}_{k}.png" for i in range(3) for k in ("label", "color", "overlay"))
    code, out, err = cli(["score", "--pred-dir", preds, "--gt-dir", data / "valannot", "--dataset", "camvid", "--json"],
                         capsys)
    assert code == 0, err
    report = json.loads(out)  # stdout holds the JSON alone
    labels = [read_png(preds / f"{stem}_label.png") for stem in gts]
    assert report["miou"] == pytest.approx(hand_miou(list(gts.values()), labels, 11))
    assert report["num_images"] == 3 and report["num_labels"] == 3 and report["predictions_without_label"] == []
    assert "scored 3 of 3 label files" in err
    code, out, _ = cli(["score", "--pred-dir", preds, "--gt-dir", data / "valannot", "--dataset", "camvid"], capsys)
    assert code == 0 and "scored 3 of 3 label files" in out and "mIoU" in out


def test_pictures_are_not_scored(camvid_round, capsys):
    data, preds, _ = camvid_round
    argv = ["score", "--pred-dir", preds, "--gt-dir", data / "valannot", "--dataset", "camvid", "--json"]
    code, out, err = cli(argv, capsys)
    assert code == 0, err
    with_pictures = json.loads(out)
    # a single-channel "picture" of other values beside the label: scored, it would change the matrix
    write_png(preds / "0001TP_000_color.png", np.full((8, 8), 5))
    write_png(preds / "sub" / "0001TP_001_overlay.png", np.full((8, 8), 7))
    (preds / "0001TP_000_overlay.mp4").write_bytes(b"not a label")
    code, out, err = cli(argv, capsys)
    assert code == 0, err
    assert json.loads(out) == with_pictures
    for picture in [*preds.glob("*_color.png"), *preds.rglob("*_overlay.png"), preds / "0001TP_000_overlay.mp4"]:
        picture.unlink()
    code, out, err = cli(argv, capsys)
    assert code == 0 and json.loads(out)["confusion_matrix"] == with_pictures["confusion_matrix"], err


def test_a_label_named_prediction_and_a_gt_named_one_for_one_label_are_refused(camvid_round, capsys):
    data, preds, _ = camvid_round
    shutil.copy(preds / "0001TP_001_label.png", preds / "0001TP_001.png")
    code, _, err = cli(["score", "--pred-dir", preds, "--gt-dir", data / "valannot", "--dataset", "camvid"], capsys)
    assert code == 2
    assert str(preds / "0001TP_001.png") in err and str(preds / "0001TP_001_label.png") in err
    assert str(data / "valannot" / "0001TP_001.png") in err  # the label both would be scored against
    # predictions named exactly like the labels, alone, are scored as before
    (preds / "0001TP_001_label.png").unlink()
    code, out, err = cli(["score", "--pred-dir", preds, "--gt-dir", data / "valannot", "--dataset", "camvid", "--json"],
                         capsys)
    assert code == 0 and json.loads(out)["num_images"] == 3, err


def test_two_labels_of_one_stem_in_two_folders_are_refused(camvid_round, capsys):
    data, preds, gts = camvid_round
    write_png(data / "valannot" / "sub" / "0001TP_002.png", gts["0001TP_002"])
    code, _, err = cli(["score", "--pred-dir", preds, "--gt-dir", data / "valannot", "--dataset", "camvid"], capsys)
    assert code == 2
    assert str(data / "valannot" / "0001TP_002.png") in err and str(data / "valannot" / "sub" / "0001TP_002.png") in err


def test_missing_predictions_are_refused_unless_subset(camvid_round, capsys):
    data, preds, gts = camvid_round
    for p in preds.glob("0001TP_002_*.png"):
        p.unlink()
    argv = ["score", "--pred-dir", preds, "--gt-dir", data / "valannot", "--dataset", "camvid"]
    code, out, err = cli(argv, capsys)
    assert code == 2 and out == ""
    assert "no prediction for 0001TP_002.png" in err and "1 of 3 label files" in err and "--subset" in err, err

    code, out, err = cli([*argv, "--subset", "--json"], capsys)
    assert code == 0, err
    assert "scored 2 of 3 label files" in err
    report = json.loads(out)
    labels = [read_png(preds / f"0001TP_00{i}_label.png") for i in range(2)]
    assert report["miou"] == pytest.approx(hand_miou([gts["0001TP_000"], gts["0001TP_001"]], labels, 11))
    assert report["num_images"] == 2 and report["num_labels"] == 3
    code, out, _ = cli([*argv, "--subset"], capsys)
    assert code == 0 and "scored 2 of 3 label files" in out

    # --subset with no prediction at all is still refused
    empty = preds.parent / "empty"
    empty.mkdir()
    code, _, err = cli(["score", "--pred-dir", empty, "--gt-dir", data / "valannot", "--dataset", "camvid", "--subset"],
                       capsys)
    assert code == 2 and "3 of 3 label files have none" in err, err


def test_a_prediction_without_label_is_reported_not_scored(camvid_round, capsys):
    data, preds, _ = camvid_round
    argv = ["score", "--pred-dir", preds, "--gt-dir", data / "valannot", "--dataset", "camvid", "--json"]
    code, out, _ = cli(argv, capsys)
    before = json.loads(out)
    write_png(preds / "0016E5_07959_label.png", np.zeros((8, 8)))
    write_png(preds / "extra" / "street.png", np.zeros((8, 8)))
    code, out, err = cli(argv, capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["predictions_without_label"] == ["0016E5_07959_label.png", "extra/street.png"]
    assert report["confusion_matrix"] == before["confusion_matrix"] and report["num_images"] == 3
    assert "2 prediction(s)" in err and "0016E5_07959_label.png" in err and "extra/street.png" in err, err


def test_a_size_mismatch_names_both_files_and_sizes(camvid_round, capsys):
    data, preds, _ = camvid_round
    write_png(data / "valannot" / "0001TP_001.png", np.zeros((8, 10)))
    code, _, err = cli(["score", "--pred-dir", preds, "--gt-dir", data / "valannot", "--dataset", "camvid"], capsys)
    assert code == 2
    assert str(preds / "0001TP_001_label.png") in err and str(data / "valannot" / "0001TP_001.png") in err
    assert "8x8" in err and "8x10" in err, err


# ---------------------------------------------------------------- Cityscapes: trainIds and labelIds
LABEL_TO_TRAIN = {label_id: train_id for _, label_id, train_id, *_ in CITYSCAPES_LABELS
                  if label_id >= 0 and 0 <= train_id < 255}


def test_cityscapes_predict_trainids_are_scored_against_labelids(tmp_path, capsys):
    """predict writes trainIds (0..18) in <image stem>_label.png; the labels hold labelIds. score reads the
    *_label.png files as trainIds and maps the labels to trainIds, so the mIoU is the trainId one."""
    ckpt = checkpoint(tmp_path / "best.pt", CITYSCAPES_CLASSES, CITYSCAPES_PALETTE)
    rng = np.random.default_rng(1)
    root, preds = tmp_path / "cityscapes", tmp_path / "preds"
    stems = [f"ulm_00000{i}_000019" for i in range(2)]
    for stem in stems:
        write_png(root / "leftImg8bit" / "val" / "ulm" / f"{stem}_leftImg8bit.png", rng.integers(0, 256, (8, 8, 3)))
    predict(ckpt, root / "leftImg8bit" / "val" / "ulm", preds, capsys)
    train_to_label = {t: lab for lab, t in LABEL_TO_TRAIN.items()}
    train_gts, preds_read = [], []
    for stem in stems:
        pred = read_png(preds / f"{stem}_leftImg8bit_label.png")
        train_gt = noisy_labels(pred, rng, 19)
        train_gt[0, :3] = 255  # void pixels
        label_ids = np.vectorize(lambda t: train_to_label.get(int(t), 0))(train_gt)  # 255 -> labelId 0 (unlabeled)
        write_png(root / "gtFine" / "val" / "ulm" / f"{stem}_gtFine_labelIds.png", label_ids)
        train_gts.append(train_gt)
        preds_read.append(pred)
    code, out, err = cli(["score", "--pred-dir", preds, "--gt-dir", root, "--dataset", "cityscapes", "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["miou"] == pytest.approx(hand_miou(train_gts, preds_read, 19))
    assert report["prediction_ids"] == "trainIds" and report["num_images"] == 2

    # the same trainIds renamed like a labelId export (the image's name) would be read as labelIds: refused
    named = preds / f"{stems[0]}_leftImg8bit_label.png"
    trainids = np.tile(np.arange(19, dtype=np.uint8), 4)[:64].reshape(8, 8)  # road 0, building 2, sky 10, ...
    write_png(named, trainids)
    named.rename(preds / f"{stems[0]}_leftImg8bit.png")
    code, _, err = cli(["score", "--pred-dir", preds, "--gt-dir", root, "--dataset", "cityscapes"], capsys)
    assert code == 2 and f"{stems[0]}_leftImg8bit.png" in err and "trainIds" in err and "_label.png" in err, err

    # a *_label.png holding labelIds (values over 18) is refused too, naming the file and the value
    (preds / f"{stems[0]}_leftImg8bit.png").unlink()
    write_png(named, np.full((8, 8), 26))  # labelId 26: car
    code, _, err = cli(["score", "--pred-dir", preds, "--gt-dir", root, "--dataset", "cityscapes"], capsys)
    assert code == 2 and str(named) in err and "26" in err and "eval --save-predictions" in err, err


def test_cityscapes_labelid_export_beside_predict_output_is_refused_naming_both(tmp_path, capsys):
    root = tmp_path / "cityscapes"
    write_png(root / "gtFine" / "val" / "ulm" / "ulm_000000_000019_gtFine_labelIds.png", np.full((4, 4), 7))
    preds = tmp_path / "preds"
    write_png(preds / "ulm_000000_000019_leftImg8bit.png", np.full((4, 4), 7))  # labelIds (eval --save-predictions)
    write_png(preds / "ulm_000000_000019_leftImg8bit_label.png", np.zeros((4, 4)))  # trainIds (predict)
    write_png(preds / "ulm_000000_000019_leftImg8bit_color.png", np.zeros((4, 4)))  # a picture: never a clash
    code, _, err = cli(["score", "--pred-dir", preds, "--gt-dir", root, "--dataset", "cityscapes"], capsys)
    assert code == 2
    assert str(preds / "ulm_000000_000019_leftImg8bit.png") in err
    assert str(preds / "ulm_000000_000019_leftImg8bit_label.png") in err and "_color" not in err, err
    # either one alone scores the same: road everywhere
    for keep in ("ulm_000000_000019_leftImg8bit.png", "ulm_000000_000019_leftImg8bit_label.png"):
        shutil.copy(preds / keep, tmp_path / keep)
    (preds / "ulm_000000_000019_leftImg8bit_label.png").unlink()
    code, out, err = cli(["score", "--pred-dir", preds, "--gt-dir", root, "--dataset", "cityscapes", "--json"], capsys)
    assert code == 0 and json.loads(out)["iou"]["road"] == 1.0 and json.loads(out)["prediction_ids"] == "labelIds", err
    (preds / "ulm_000000_000019_leftImg8bit.png").unlink()
    shutil.copy(tmp_path / "ulm_000000_000019_leftImg8bit_label.png", preds)
    code, out, err = cli(["score", "--pred-dir", preds, "--gt-dir", root, "--dataset", "cityscapes", "--json"], capsys)
    assert code == 0 and json.loads(out)["iou"]["road"] == 1.0 and json.loads(out)["prediction_ids"] == "trainIds", err

import json
import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lightseg.cli import main
from lightseg.data.classes import CITYSCAPES_CATEGORIES, CITYSCAPES_CLASSES, CITYSCAPES_TRAINID_TO_CATEGORY, cityscapes_label_lut
from lightseg.deploy.quantize import choose_int8_mode
from lightseg.engine.evaluate import evaluate, predict_probabilities, score_predictions
from lightseg.errors import LightsegError
from lightseg.models import SegmentationModel, register_model
from lightseg.models.registry import _REGISTRY


class ChannelModel(SegmentationModel):
    """logits = scale * x (+ a fixed per-column bias for class 0): the prediction is the argmax input channel."""

    def __init__(self, column_bias=False):
        super().__init__()
        self.num_classes = 3
        self.column_bias = column_bias
        self.sizes = []

    def forward_features(self, x):
        self.sizes.append(tuple(x.shape[-2:]))
        logits = 4.0 * x
        if self.column_bias:
            bias = torch.zeros_like(logits)
            bias[:, 0] = torch.linspace(-2.0, 2.0, x.shape[-1])
            logits = logits + bias
        return logits, []


class ToyDataset:
    """In-memory samples (image (3, H, W) float, label (H, W) long) with the dataset attributes evaluate needs."""

    def __init__(self, samples, classes=("a", "b", "c"), name="toy"):
        self.samples = samples
        self.classes = classes
        self.num_classes = len(classes)
        self.ignore_index = 255
        self.name = name
        self.files = [(f"/data/img/frame{i:03d}_leftImg8bit.png", f"/data/lbl/frame{i:03d}.png") for i in range(len(samples))]

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        return self.samples[i]


def half_and_half(h=64, w=64):
    """Image predicting class 0 on the left half and class 1 on the right; label all class 0."""
    image = torch.zeros(3, h, w)
    image[0, :, : w // 2] = 1.0
    image[1, :, w // 2:] = 1.0
    return image, torch.zeros(h, w, dtype=torch.long)


def test_evaluate_hand_computed():
    ds = ToyDataset([half_and_half(), half_and_half()])
    report = evaluate(ChannelModel(), ds, progress=False)
    # class a: TP = half of the pixels, FN = the other half, FP 0 -> 0.5; class b: TP 0, FP > 0 -> 0; class c: NaN
    assert report["iou"] == {"a": 0.5, "b": 0.0, "c": None}
    assert report["miou"] == pytest.approx(0.25) and report["pixel_acc"] == pytest.approx(0.5)
    assert report["num_images"] == 2 and "category_iou" not in report
    # ignored label pixels are not counted: ignore the right half -> perfect
    image, label = half_and_half()
    label[:, 32:] = 255
    assert evaluate(ChannelModel(), ToyDataset([(image, label)]), progress=False)["iou"] == {"a": 1.0, "b": None, "c": None}


def test_evaluate_batches_of_mixed_sizes_match_single():
    torch.manual_seed(0)
    samples = []
    for h, w in [(64, 64), (64, 64), (64, 80), (64, 64)]:
        samples.append((torch.rand(3, h, w), torch.randint(0, 3, (h, w))))
    single = evaluate(ChannelModel(), ToyDataset(samples), progress=False, batch_size=1)
    model = ChannelModel()
    batched = evaluate(model, ToyDataset(samples), progress=False, batch_size=3)
    assert batched["confusion_matrix"] == single["confusion_matrix"]
    assert model.sizes == [(64, 64), (64, 80), (64, 64)]  # 2 same-size samples batched, then split at the size change


def test_predict_probabilities_flip_scales_and_eval_size():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 80)
    model = ChannelModel(column_bias=True).eval()
    with torch.no_grad():
        plain = predict_probabilities(model, x, (64, 80))
        flipped = predict_probabilities(model, x, (64, 80), flip=True)
    bias = torch.zeros(1, 3, 64, 80)
    bias[:, 0] = torch.linspace(-2.0, 2.0, 80)
    assert torch.allclose(plain, F.softmax(4 * x + bias, 1), atol=1e-6)
    # flip: the model sees the mirrored image, its output is mirrored back -> the bias appears mirrored
    assert torch.allclose(flipped, (F.softmax(4 * x + bias, 1) + F.softmax(4 * x + bias.flip(-1), 1)) / 2, atol=1e-6)

    model.sizes.clear()
    with torch.no_grad():
        probs = predict_probabilities(model, x, (64, 80), scales=(1.0, 1.5))
    assert model.sizes == [(64, 80), (96, 120)]
    assert probs.shape == (1, 3, 64, 80) and torch.allclose(probs.sum(1), torch.ones(1, 64, 80), atol=1e-5)

    # eval_size: the input is resized to it, the probabilities come back at the label size
    model.sizes.clear()
    with torch.no_grad():
        probs = predict_probabilities(model, x, (32, 40), eval_size=(128, 160))
    assert model.sizes == [(128, 160)] and probs.shape == (1, 3, 32, 40)


def test_evaluate_eval_size_end_to_end():
    model = ChannelModel()
    report = evaluate(model, ToyDataset([half_and_half(64, 64)]), progress=False, eval_size=(96, 96))
    assert model.sizes == [(96, 96)]
    assert report["iou"]["a"] == pytest.approx(0.5)
    assert report["eval_size"] == [96, 96]


def test_evaluate_saves_cityscapes_label_ids(tmp_path):
    image = torch.zeros(3, 64, 64)
    image[1, :, 32:] = 1.0  # left: class 0 (road, labelId 7), right: class 1 (sidewalk, labelId 8)

    class Model19(ChannelModel):
        def forward_features(self, x):
            logits, _ = super().forward_features(x)
            return torch.cat([logits, torch.full((x.shape[0], 16, *x.shape[-2:]), -9.0)], 1), []

    ds = ToyDataset([(image, torch.zeros(64, 64, dtype=torch.long))], classes=CITYSCAPES_CLASSES, name="cityscapes")
    report = evaluate(Model19(), ds, progress=False, save_predictions=tmp_path / "pred")
    assert set(report["category_iou"]) == set(CITYSCAPES_CATEGORIES)
    saved = cv2.imread(str(tmp_path / "pred" / "frame000_leftImg8bit.png"), cv2.IMREAD_UNCHANGED)
    assert saved.dtype == np.uint8 and saved[0, 0] == 7 and saved[0, 40] == 8


# ---------------------------------------------------------------- lightseg score
def write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.asarray(array, dtype=np.uint8))


def make_cityscapes(tmp_path, gts, preds, split="val"):
    root, pred_dir = tmp_path / "cityscapes", tmp_path / "pred"
    for i, (gt, pred) in enumerate(zip(gts, preds)):
        stem = f"ulm_{i:06d}_000019"
        write_png(root / "gtFine" / split / "ulm" / f"{stem}_gtFine_labelIds.png", gt)
        write_png(pred_dir / f"{stem}_leftImg8bit.png", pred)
    return root, pred_dir


def test_score_cityscapes_tiny_hand_case(tmp_path):
    # labelIds: 7 road, 8 sidewalk, 26 car, 0 unlabeled (ignored)
    gt = [[7, 7], [26, 0]]
    pred = [[7, 8], [26, 26]]
    root, pred_dir = make_cityscapes(tmp_path, [gt], [pred])
    report = score_predictions(pred_dir, root, "cityscapes")
    # road: TP 1, FN 1 -> 1/2; sidewalk: FP 1 -> 0; car: TP 1 (its FP on the unlabeled pixel does not count) -> 1
    assert report["iou"]["road"] == 0.5 and report["iou"]["sidewalk"] == 0.0 and report["iou"]["car"] == 1.0
    assert report["iou"]["sky"] is None and report["miou"] == pytest.approx(0.5)
    # categories: flat (road + sidewalk) TP 2 -> 1; vehicle 1; the others absent
    assert report["category_iou"]["flat"] == 1.0 and report["category_iou"]["vehicle"] == 1.0
    assert report["category_iou"]["sky"] is None and report["category_miou"] == 1.0
    # predicting a void labelId (0) on a road pixel is a miss for road, like the official script
    root2, pred_dir2 = make_cityscapes(tmp_path / "b", [gt], [[[7, 0], [26, 26]]])
    assert score_predictions(pred_dir2, root2, "cityscapes")["iou"]["road"] == 0.5
    # gt_dir may also be the gtFine/<split> folder
    assert score_predictions(pred_dir, root / "gtFine" / "val", "cityscapes")["miou"] == report["miou"]


def random_cityscapes(tmp_path, n=3, shape=(24, 40), seed=0):
    rng = np.random.default_rng(seed)
    gts, preds = [], []
    for _ in range(n):
        gt = rng.integers(0, 34, size=shape)
        pred = np.where(rng.random(shape) < 0.6, gt, rng.integers(0, 34, size=shape))
        gts.append(gt)
        preds.append(pred)
    return gts, preds


def set_iou(gts, preds, groups):
    """IoU of each group of trainIds from pixel sets: TP = |G & P|, FN = |G - P|, FP = |P - G| on non-ignored pixels."""
    lut = cityscapes_label_lut()
    g = np.concatenate([lut[np.asarray(x, np.uint8)].ravel() for x in gts])
    p = np.concatenate([lut[np.asarray(x, np.uint8)].ravel() for x in preds])
    valid = g != 255
    out = {}
    for name, ids in groups.items():
        gin, pin = np.isin(g, ids), np.isin(p, ids)
        tp, fn, fp = (gin & pin).sum(), (gin & ~pin).sum(), (pin & ~gin & valid).sum()
        out[name] = tp / (tp + fn + fp) if tp + fn + fp else None
    return out


def test_score_cityscapes_random_matches_set_definition(tmp_path):
    gts, preds = random_cityscapes(tmp_path)
    root, pred_dir = make_cityscapes(tmp_path, gts, preds)
    report = score_predictions(pred_dir, root, "cityscapes")
    want = set_iou(gts, preds, {name: [k] for k, name in enumerate(CITYSCAPES_CLASSES)})
    assert report["iou"] == pytest.approx(want)
    cats = {name: [t for t, c in enumerate(CITYSCAPES_TRAINID_TO_CATEGORY) if c == k] for k, name in enumerate(CITYSCAPES_CATEGORIES)}
    assert report["category_iou"] == pytest.approx(set_iou(gts, preds, cats))
    assert report["num_images"] == 3


def test_score_cityscapes_equals_cityscapesscripts(tmp_path, monkeypatch):
    cs = pytest.importorskip("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling",
                             reason="cityscapesscripts not installed (pip install cityscapesscripts)")
    gts, preds = random_cityscapes(tmp_path, seed=1)
    root, pred_dir = make_cityscapes(tmp_path, gts, preds)
    for key, value in dict(evalInstLevelScore=False, JSONOutput=False, quiet=True, colorized=False).items():
        monkeypatch.setattr(cs.args, key, value)
    gt_files = sorted(str(p) for p in root.rglob("*_gtFine_labelIds.png"))
    pred_files = [str(pred_dir / (p.split("/")[-1].replace("_gtFine_labelIds", "_leftImg8bit"))) for p in gt_files]
    official = cs.evaluateImgLists(pred_files, gt_files, cs.args)
    ours = score_predictions(pred_dir, root, "cityscapes")
    for name in CITYSCAPES_CLASSES:
        want = official["classScores"][name]
        assert (ours["iou"][name] is None and math.isnan(want)) or ours["iou"][name] == pytest.approx(want, abs=1e-12)
    for name in CITYSCAPES_CATEGORIES:
        assert ours["category_iou"][name] == pytest.approx(official["categoryScores"][name], abs=1e-12)
    assert ours["miou"] == pytest.approx(official["averageScoreClasses"], abs=1e-12)
    assert ours["category_miou"] == pytest.approx(official["averageScoreCategories"], abs=1e-12)


def test_score_camvid_and_cli_errors(tmp_path, capsys):
    # train ids 0..10, 11 = void: void ground truth is not counted, a void prediction is a miss
    write_png(tmp_path / "gt" / "0001TP_006690.png", [[0, 0, 11], [3, 3, 3]])
    write_png(tmp_path / "pred" / "0001TP_006690.png", [[0, 3, 3], [3, 3, 11]])
    report = score_predictions(tmp_path / "pred", tmp_path / "gt", "camvid")
    # Sky (0): TP 1, FN 1 -> 1/2; Road (3): TP 2, FN 1 (void prediction), FP 1 -> 2/4
    assert report["iou"]["Sky"] == 0.5 and report["iou"]["Road"] == 0.5 and report["iou"]["Car"] is None

    assert main(["score", "--pred-dir", str(tmp_path / "pred"), "--gt-dir", str(tmp_path / "gt"), "--dataset", "camvid", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["miou"] == pytest.approx(0.5)

    write_png(tmp_path / "gt" / "0001TP_006720.png", [[0]])
    assert main(["score", "--pred-dir", str(tmp_path / "pred"), "--gt-dir", str(tmp_path / "gt"), "--dataset", "camvid"]) == 2
    err = capsys.readouterr().err
    assert "no prediction for 0001TP_006720.png" in err and "Traceback" not in err

    root, pred_dir = make_cityscapes(tmp_path / "cs", [[[7]], [[7]]], [[[7]], [[7]]])
    (pred_dir / "ulm_000001_000019_leftImg8bit.png").unlink()
    with pytest.raises(LightsegError, match=r"no prediction for ulm_000001_000019\*\.png"):
        score_predictions(pred_dir, root, "cityscapes")


# ---------------------------------------------------------------- lightseg eval (CLI, end to end)
class PixelLinear(SegmentationModel):
    """A 1x1 convolution from RGB to class logits: a tiny real model with weights to checkpoint."""

    def __init__(self, num_classes=19):
        super().__init__()
        self.num_classes = num_classes
        self.conv = nn.Conv2d(3, num_classes, 1)

    def forward_features(self, x):
        return self.conv(x), []


if "test_eval_pixel_linear" not in _REGISTRY:
    register_model("test_eval_pixel_linear", paper="(test model)")(lambda num_classes=19: PixelLinear(num_classes))


def test_eval_command_round_trip_with_score(tmp_path, capsys):
    from lightseg.checkpoint import save_checkpoint

    rng = np.random.default_rng(0)
    root = tmp_path / "cityscapes"
    for i in range(2):
        stem = f"ulm_{i:06d}_000019"
        image = rng.integers(0, 256, size=(64, 96, 3))
        write_png(root / "leftImg8bit" / "val" / "ulm" / f"{stem}_leftImg8bit.png", image)
        write_png(root / "gtFine" / "val" / "ulm" / f"{stem}_gtFine_labelIds.png", rng.integers(0, 34, size=(64, 96)))
    torch.manual_seed(0)
    model = PixelLinear()
    save_checkpoint({"model": model.state_dict(), "model_name": "test_eval_pixel_linear"}, tmp_path / "run" / "best.pt")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model: {name: test_eval_pixel_linear, num_classes: 19}\n"
                      "data: {name: cityscapes, root: /nonexistent, num_workers: 0}\n"
                      "train: {device: cpu}\n")

    argv = ["eval", str(recipe), "--checkpoint", str(tmp_path / "run" / "best.pt"), "--data-root", str(root),
            "--json", "--save-predictions", str(tmp_path / "pred")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    report = json.loads(out)  # stdout holds the JSON and nothing else
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == report
    assert report["model"] == "test_eval_pixel_linear" and report["split"] == "val" and report["num_images"] == 2
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == ["ulm_000000_000019_leftImg8bit.png", "ulm_000001_000019_leftImg8bit.png"]
    # scoring the exported labelId PNGs reproduces the evaluation exactly
    scored = score_predictions(tmp_path / "pred", root, "cityscapes")
    assert scored["confusion_matrix"] == report["confusion_matrix"]
    assert scored["category_iou"] == report["category_iou"]

    # sliding windows as large as the image are the whole image; smaller ones run too
    assert main([*argv[:-2], "--mode", "slide", "--crop", "64", "96"]) == 0
    slide_report = json.loads(capsys.readouterr().out)
    assert slide_report["mode"] == "slide" and slide_report["crop"] == [64, 96] and slide_report["stride"] == [43, 64]
    assert slide_report["confusion_matrix"] == report["confusion_matrix"]
    assert json.loads((tmp_path / "run" / "metrics_slide-64x96.json").read_text()) == slide_report
    assert main([*argv[:-2], "--mode", "slide", "--crop", "64", "64", "--stride", "32", "32"]) == 0
    assert sum(map(sum, json.loads(capsys.readouterr().out)["confusion_matrix"])) == sum(map(sum, report["confusion_matrix"]))
    assert (tmp_path / "run" / "metrics_slide-64x64_stride-32x32.json").is_file()

    # each setting writes its own file and says which: the plain metrics.json is never overwritten
    assert main([*argv[:-2], "--flip"]) == 0
    captured = capsys.readouterr()
    flip_report = json.loads(captured.out)
    assert flip_report["flip"] is True and f"wrote {tmp_path / 'run' / 'metrics_flip.json'}" in captured.err
    assert json.loads((tmp_path / "run" / "metrics_flip.json").read_text()) == flip_report
    assert main([*argv[:-2], "--scales", "1", "1.5", "--flip"]) == 0
    assert json.loads(capsys.readouterr().out)["scales"] == [1.0, 1.5]
    assert (tmp_path / "run" / "metrics_flip_ms-1.0-1.5.json").is_file()
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == report  # the plain one, untouched
    assert main([*argv[:-2], "--mode", "slide"]) == 2 and "eval.crop" in capsys.readouterr().err

    # the deployment paths evaluate through the same command: fp32 ONNX gives the eager confusion matrix,
    # int8 (calibrated on the images) runs and says what it is; each writes its own metrics file
    assert main([*argv[:-2], "--backend", "onnxruntime"]) == 0
    onnx_report = json.loads(capsys.readouterr().out)
    assert onnx_report["backend"] == "onnxruntime" and onnx_report["confusion_matrix"] == report["confusion_matrix"]
    assert (tmp_path / "run" / "metrics_onnxruntime.json").is_file()
    assert main([*argv[:-2], "--backend", "onnxruntime_int8", "--calib", str(root / "leftImg8bit"), "--calib-count", "2"]) == 0
    int8_report = json.loads(capsys.readouterr().out)
    assert int8_report["backend"] == "onnxruntime_int8" and int8_report["calibration"] == str(root / "leftImg8bit")
    assert int8_report["int8_mode"] == choose_int8_mode()[0] and int8_report["machine"]["cpu"]  # what ran, on what
    assert sum(map(sum, int8_report["confusion_matrix"])) == sum(map(sum, report["confusion_matrix"]))
    assert json.loads((tmp_path / "run" / "metrics_onnxruntime_int8.json").read_text()) == int8_report
    assert main([*argv[:-2], "--calib", str(root)]) == 2  # calibration belongs to the int8 backend
    assert "--backend onnxruntime_int8" in capsys.readouterr().err
    assert main([*argv[:-2], "--int8-mode", "u8u8"]) == 2  # so does the int8 weight format
    assert "--backend onnxruntime_int8" in capsys.readouterr().err

    # a checkpoint of another model is refused with both names, exit code 2
    save_checkpoint({"model": model.state_dict(), "model_name": "mininet_211k"}, tmp_path / "other.pt")
    argv[3] = str(tmp_path / "other.pt")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "'mininet_211k'" in err and "test_eval_pixel_linear" in err


def test_metrics_file_is_named_by_every_setting():
    from lightseg.engine.evaluate import metrics_filename

    assert metrics_filename() == "metrics.json"
    assert metrics_filename(scales=[1]) == "metrics.json"  # scale 1 alone is the plain evaluation
    assert metrics_filename(flip=True) == "metrics_flip.json"
    assert metrics_filename(scales=(0.5, 1.0, 1.5)) == "metrics_ms-0.5-1.0-1.5.json"
    assert metrics_filename(mode="slide", crop=(360, 360)) == "metrics_slide-360x360.json"
    assert metrics_filename(mode="slide", crop=(360, 360), stride=(240, 240)) == "metrics_slide-360x360.json"  # default
    assert metrics_filename(mode="slide", crop=(360, 360), stride=(180, 180)) == "metrics_slide-360x360_stride-180x180.json"
    assert metrics_filename("test", "onnxruntime_int8", True, (0.75, 1.25), "slide", (64, 64)) == \
        "metrics_test_onnxruntime_int8_flip_ms-0.75-1.25_slide-64x64.json"
    assert metrics_filename(mode="whole", crop=(64, 64)) == "metrics.json"  # whole-image inference uses no window
    names = {metrics_filename(flip=f, scales=s, mode=m, crop=(64, 64)) for f in (False, True)
             for s in ((1.0,), (0.5, 1.0)) for m in ("whole", "slide")}
    assert len(names) == 8  # no two settings share a file

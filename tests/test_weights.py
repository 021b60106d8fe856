"""Weights shipped in the package (one-command use) and the wheel (packaging).

The tests write a tiny weight file of their own and point the registry at it; the real files and
manifest records are added by the training runs."""
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import lightseg
import lightseg.weights as registry
from lightseg.checkpoint import save_checkpoint
from lightseg.cli import main
from lightseg.data.classes import CAMVID_CLASSES, CAMVID_PALETTE
from lightseg.errors import LightsegError

ROOT = Path(__file__).resolve().parents[1]
MODEL = "mininet_95k"


def write_weights(folder: Path, model=MODEL, weights="camvid", seed=0, val_miou=0.5643) -> dict:
    """A weight file as the training runs ship it, and its manifest record; returns the network."""
    torch.manual_seed(seed)
    net = lightseg.create_model(model, num_classes=11).eval()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{model}_{weights}.pt"
    save_checkpoint({"model": net.state_dict(), "model_name": model, "num_classes": 11}, path)
    record = registry.manifest_record(path, model, weights, dataset="camvid", num_classes=11,
                                      classes=list(CAMVID_CLASSES), palette=[list(c) for c in CAMVID_PALETTE],
                                      normalize="imagenet", model_kwargs={}, train_splits=["train", "val"],
                                      command=f"lightseg train {model}_camvid", iterations=10, commit="0" * 40,
                                      val_miou=val_miou)
    manifest = folder / "manifest.json"
    records = json.loads(manifest.read_text())["weights"] if manifest.is_file() else []
    records = [r for r in records if (r["model"], r["weights"]) != (model, weights)]  # the file is replaced
    manifest.write_text(json.dumps({"format": 1, "weights": records + [record]}, indent=2))
    return net


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    folder = tmp_path / "weights"
    net = write_weights(folder)
    monkeypatch.setattr(registry, "WEIGHTS_DIR", folder)
    return folder, net


def test_the_package_manifest_matches_its_files():
    records = registry.list_weights()  # the real manifest (empty until the trained files are added)
    for r in records:
        data = (registry.WEIGHTS_DIR / r["file"]).read_bytes()
        assert registry.sha256_of(data) == r["sha256"], r["file"]
        lightseg.create_model(r["model"], weights=r["weights"])  # loads, hash-checked, weights-only
    total = sum((registry.WEIGHTS_DIR / r["file"]).stat().st_size for r in records)
    assert total < 10e6  # the weight files together stay under 10 MB


def test_create_model_with_weights_returns_the_trained_network(shipped):
    _, net = shipped
    model = lightseg.create_model(MODEL, weights="camvid")
    assert not model.training and model.classes == list(CAMVID_CLASSES) and model.normalize == "imagenet"
    assert model.palette[3] == tuple(CAMVID_PALETTE[3]) and model.weights_record["val_miou"] == 0.5643
    for (k, a), b in zip(net.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(LightsegError, match="11 classes"):
        lightseg.create_model(MODEL, weights="camvid", num_classes=19)


def test_a_modified_or_truncated_file_is_refused(shipped):
    folder, _ = shipped
    path = folder / f"{MODEL}_camvid.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one byte
    path.write_bytes(bytes(data))
    with pytest.raises(LightsegError, match="sha256") as e:
        lightseg.create_model(MODEL, weights="camvid")
    assert "modified or truncated" in str(e.value) and str(path) in str(e.value)
    path.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(LightsegError, match="sha256"):
        lightseg.create_model(MODEL, weights="camvid")


def test_weights_for_a_model_without_them_lists_those_that_have_them(shipped):
    folder, _ = shipped
    write_weights(folder, model="rdsnet", weights="camvid")
    with pytest.raises(LightsegError) as e:
        lightseg.create_model("mininet_211k", weights="camvid")
    msg = str(e.value)
    assert "mininet_211k has no trained weights" in msg and "mininet_95k (weights='camvid')" in msg and "rdsnet" in msg
    with pytest.raises(LightsegError, match="it has: 'camvid'"):
        lightseg.create_model(MODEL, weights="cityscapes")


def test_weights_only_unpickling_is_enforced(shipped, tmp_path):
    folder, _ = shipped
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = folder / f"{MODEL}_camvid.pt"
    path.write_bytes(pickle.dumps({"model": Evil()}))
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["weights"][0]["sha256"] = registry.sha256_of(path.read_bytes())  # even with a matching hash
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(LightsegError, match="weights-only"):
        lightseg.create_model(MODEL, weights="camvid")


def test_predict_with_shipped_weights_needs_no_checkpoint(shipped, tmp_path, capsys):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (72, 96, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "street.jpg"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert main(["predict", "--model", MODEL, "--weights", "camvid", "--input", str(tmp_path / "street.jpg"),
                 "--output", str(tmp_path / "out")]) == 0
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["street_color.png", "street_label.png", "street_overlay.png"]
    seg = lightseg.Segmenter.from_pretrained(MODEL, weights="camvid")
    assert seg.classes == list(CAMVID_CLASSES)  # the legend's names come from the manifest
    label = cv2.imread(str(tmp_path / "out" / "street_label.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(label, seg(cv2.cvtColor(cv2.imread(str(tmp_path / "street.jpg")), cv2.COLOR_BGR2RGB)))
    capsys.readouterr()
    assert main(["predict", "--weights", "camvid", "--input", str(tmp_path / "street.jpg")]) == 2
    assert "--weights camvid needs --model" in capsys.readouterr().err
    assert main(["predict", "--model", MODEL, "--input", str(tmp_path / "street.jpg")]) == 2
    assert f"--model {MODEL} --weights camvid" in capsys.readouterr().err  # what exists is suggested


def test_models_table_shows_weights_and_their_miou(shipped, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert main(["models", "--size", "128", "128"]) == 0
    line = next(row for row in capsys.readouterr().out.splitlines() if row.startswith(MODEL + " "))
    assert line.endswith("camvid 56.4")
    assert main(["models", "--size", "128", "128", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows[MODEL]["weights"] == [{"weights": "camvid", "dataset": "camvid", "val_miou": 0.5643}]
    assert rows["rdsnet"]["weights"] == []


@pytest.mark.slow
def test_wheel_carries_recipes_and_weights_and_works_without_the_checkout(tmp_path):
    """`pip wheel .`, unpacked into a folder with no checkout on the path: recipes found by name,
    shipped weights predict (the fresh-venv `pip install` itself is measured in the report)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("lightseg", "configs"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, src / name)
    write_weights(src / "lightseg" / "weights")  # as a trained file dropped into the package
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", ".", "-w", str(tmp_path / "dist")],
                   cwd=src, check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("lightseg-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert f"lightseg/recipes/{MODEL}_camvid.yaml" in names and "lightseg/weights/manifest.json" in names
    assert f"lightseg/weights/{MODEL}_camvid.pt" in names
    assert "lightseg/py.typed" in names  # PEP 561: type checkers use the package's annotations
    assert len([n for n in names if n.startswith("lightseg/recipes/")]) == len(list((ROOT / "configs").glob("*.yaml")))
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    work = tmp_path / "elsewhere"
    work.mkdir()
    cv2.imwrite(str(work / "street.png"), np.full((64, 80, 3), 90, np.uint8))
    env = {**os.environ, "PYTHONPATH": str(site), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    code = ("import lightseg, lightseg.config as c; assert lightseg.__file__.startswith(%r); "
            "print(c.resolve_recipe('mininet_95k_camvid'))" % str(site))
    out = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(site / "lightseg" / "recipes" / "mininet_95k_camvid.yaml")
    run = subprocess.run([sys.executable, "-m", "lightseg", "predict", "--model", MODEL, "--weights", "camvid",
                          "--input", "street.png", "--output", "out"], cwd=work, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert (work / "out" / "street_overlay.png").is_file()


def test_eval_with_shipped_weights(shipped, tmp_path, capsys):
    """`lightseg eval RECIPE --weights camvid`: how a manifest's val mIoU is reproduced."""
    from test_train import make_camvid_like

    data = make_camvid_like(tmp_path / "data", n_train=1, n_val=2)
    argv = ["eval", "mininet_95k_camvid", "--weights", "camvid", "--data-root", str(data), "--device", "cpu", "--json",
            "--set", f"output_dir={tmp_path / 'run'}", "data.num_workers=0"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["checkpoint"] == f"{MODEL} weights 'camvid'" and report["num_images"] == 2
    assert json.loads((tmp_path / "run" / "weights_camvid" / "metrics.json").read_text()) == report
    assert main(argv[:4] + ["--checkpoint", "x.pt"] + argv[4:]) == 2  # one or the other
    assert "--checkpoint CKPT" in capsys.readouterr().err


def test_shipping_records_epochs_done_of_planned_and_whether_val_was_held_out():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("ship_weights", Path(__file__).parents[1] / "tools" / "ship_weights.py")
    ship = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ship)
    cfg = {"data": {"train_split": ["train", "val"], "val_split": "val"},
           "train": {"iters": None, "epochs": 300, "batch_size": 8}}
    # 468 CamVid train + val images at batch 8: 58 iterations an epoch (the trainer's len // batch)
    rec = ship.progress({"iteration": 1624, "train_samples": 468}, cfg)
    assert rec == {"val_held_out": False, "train_samples": 468, "iterations_planned": 17400,
                   "epochs_done": 28.0, "epochs_planned": 300.0}
    cfg["data"]["train_split"] = "train"
    assert ship.progress({"iteration": 1350, "train_samples": 367}, cfg)["val_held_out"] is True
    ended = ship.progress({"iteration": 8700, "train_samples": 468,
                           "scheduler": {"plateau_reductions": 4, "converged": True}}, cfg)
    assert ended["epochs_done"] == 150.0 and ended["plateau_reductions"] == 4 and ended["schedule_converged"] is True

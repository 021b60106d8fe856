"""Fine-tuning (--init-from), recipe inheritance (base:), `lightseg config`, the train+val recipe variants and
the run-folder conveniences of `lightseg train` (next free NAME2, no empty folder after a failed start,
workers capped at the CPUs, --device), all driven through the CLI as the README shows them."""
import os
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

import lightseg
import lightseg.data
from lightseg.checkpoint import load_checkpoint
from lightseg.cli import main
from lightseg.config import load_config
from lightseg.engine.train import Trainer
from lightseg.weights import WEIGHTS_DIR, find_weights, load_weights
from test_train import make_camvid_like, one_thread, tiny_recipe  # noqa: F401 - fixture

ROOT = Path(__file__).resolve().parents[1]


def _cli(argv, capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def make_two_class_folder(root: Path, n=4, size=64) -> Path:
    """A `data.name: folder` dataset: images/train + labels/train, class 1 = a bright square on a dark ground."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(n):
            label = np.zeros((size, size), np.uint8)
            y, x = rng.integers(4, size // 2, 2)
            label[y:y + size // 3, x:x + size // 3] = 1
            image = (label[..., None] * 180 + rng.integers(0, 60, (size, size, 3))).astype(np.uint8)
            cv2.imwrite(str(root / "images" / split / f"f{i}.png"), image)
            cv2.imwrite(str(root / "labels" / split / f"f{i}.png"), label)
    return root


def finetune_recipe(tmp_path, data_root, iters=2) -> Path:
    p = tmp_path / "mine.yaml"
    p.write_text(f"""
model: {{name: mininet_211k, num_classes: 2}}
data:
  name: folder
  root: {data_root}
  image_dir: images/{{split}}
  label_dir: labels/{{split}}
  classes: [background, square]
  num_workers: 0
train:
  iters: {iters}
  batch_size: 2
  ckpt_interval: 1
  val_interval: 0
  log_interval: 1
  loss: {{aux_weights: [0.4, 0.4, 0.4], aux_mode: upsample}}
output_dir: {tmp_path / 'ft'}
""")
    return p


@pytest.fixture
def capture_init(monkeypatch):
    """The model's weights right after it is built (and initialised from --init-from), before any step."""
    seen = {}
    fit = Trainer._fit

    def spy(self):
        seen["state"] = {k: v.clone() for k, v in self.model.state_dict().items()}
        return fit(self)

    monkeypatch.setattr(Trainer, "_fit", spy)
    return seen


# ---------------------------------------------------------------- fine-tuning
def test_finetune_from_shipped_weights_onto_two_classes(tmp_path, capsys, capture_init):
    recipe = finetune_recipe(tmp_path, make_two_class_folder(tmp_path / "data"))
    code, _, err = _cli(["train", str(recipe), "--init-from", "camvid"], capsys)
    assert code == 0, err
    source = load_weights(find_weights("mininet_211k", "camvid"))["model"]
    heads = ["classifier.weight", "classifier.bias"] + [f"aux_heads.{i}.{p}" for i in range(3) for p in ("weight", "bias")]
    # the report: what was loaded, the 11-class heads re-initialised (grouped by module) and left unused
    n_model = len(capture_init["state"])
    assert f"loaded {n_model - len(heads)} of the model's {n_model} tensors" in err, err
    reinit = next(line for line in err.splitlines() if "re-initialised" in line)
    assert "re-initialised 8" in reinit and "classifier (weight, bias)" in reinit
    assert all(f"aux_heads.{i} (weight, bias)" in reinit for i in range(3))
    assert "unused from the source 8" in err
    # every loaded tensor is the source's, bit for bit; the heads are the fresh 2-class ones
    state = capture_init["state"]
    for name, tensor in state.items():
        if name in heads:
            assert tensor.shape[0] == 2 and source[name].shape[0] == 11
        else:
            assert torch.equal(tensor, source[name]), name
    # a fresh start: iteration 0, fresh optimiser, and the starting point recorded
    ckpt = load_checkpoint(tmp_path / "ft" / "last.pt")
    assert ckpt["iteration"] == 2 and ckpt["optimizer"]["state"][0]["step"].item() == 2
    record = ckpt["init_from"]
    assert record["source"] == "camvid" and record["sha256"] == find_weights("mininet_211k", "camvid")["sha256"]
    assert record["loaded"] == n_model - 8 and sorted(record["reinitialized"]) == sorted(heads)
    assert ckpt["config"]["model"]["init_from"] == "camvid"
    assert yaml.safe_load((tmp_path / "ft" / "config.yaml").read_text())["model"]["init_from"] == "camvid"


def test_init_from_in_the_recipe_takes_a_plain_state_dict(tmp_path, capsys, capture_init):
    """model.init_from (mmseg's load_from) in the recipe, naming a file saved with torch.save(model.state_dict())."""
    import hashlib

    plain = tmp_path / "plain_state.pt"
    source = lightseg.create_model("mininet_211k", num_classes=2).state_dict()
    source = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in source.items()}
    source["extra.weight"] = torch.zeros(3)  # a tensor the model has not: listed as unused
    torch.save(source, plain)
    recipe = finetune_recipe(tmp_path, make_two_class_folder(tmp_path / "data"), iters=1)
    recipe.write_text(recipe.read_text().replace("num_classes: 2}", f"num_classes: 2, init_from: {plain}}}"))
    code, _, err = _cli(["train", str(recipe)], capsys)
    assert code == 0, err
    n = len(capture_init["state"])
    assert f"loaded {n} of the model's {n} tensors" in err and "re-initialised" not in err
    assert "unused from the source 1: extra (weight)" in err
    assert all(torch.equal(capture_init["state"][k], source[k]) for k in capture_init["state"])
    record = load_checkpoint(tmp_path / "ft" / "last.pt")["init_from"]
    assert record["file"] == str(plain) and record["sha256"] == hashlib.sha256(plain.read_bytes()).hexdigest()


def test_finetune_resume_is_bitwise_exact(tmp_path, capsys, monkeypatch):
    data = make_two_class_folder(tmp_path / "data")
    recipe = finetune_recipe(tmp_path, data, iters=3)
    assert main(["train", str(recipe), "--init-from", "camvid", "--output-dir", str(tmp_path / "straight")]) == 0
    stop = {"after": 1}
    save = Trainer.save

    def stop_after_first(self, name, val_pending=False):
        save(self, name, val_pending)
        if self.iteration == stop["after"]:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "save", stop_after_first)
    assert main(["train", str(recipe), "--init-from", "camvid", "--output-dir", str(tmp_path / "cut")]) == 130
    monkeypatch.setattr(Trainer, "save", save)
    monkeypatch.setattr("lightseg.weights.resolve_init_source", lambda *a, **k: pytest.fail("reloaded on resume"))
    assert main(["train", "--resume", str(tmp_path / "cut")]) == 0
    a, b = load_checkpoint(tmp_path / "straight" / "last.pt"), load_checkpoint(tmp_path / "cut" / "last.pt")
    assert b["iteration"] == 3 and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    capsys.readouterr()


def test_init_from_refuses_another_model_and_unloadable_files(tmp_path, capsys):
    recipe = finetune_recipe(tmp_path, make_two_class_folder(tmp_path / "data"))
    other = Path(WEIGHTS_DIR) / find_weights("rdsnet", "camvid")["file"]
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    evil = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "extra": Path("x")}, evil)  # needs arbitrary unpickling
    cases = [(str(other), ["none of its", "mininet_211k"]), (str(junk), ["junk.pt", "not a PyTorch checkpoint"]),
             (str(evil), ["evil.pt", "weights-only"]), ("imagenet", ["'imagenet'", "camvid"]),
             (str(tmp_path / "missing.pt"), ["missing.pt"])]
    for spec, words in cases:
        code, _, err = _cli(["train", str(recipe), "--init-from", spec], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and all(w in err for w in words), (spec, err)
    assert not (tmp_path / "ft").exists()  # nothing was trained, and the failed starts left no folder


# ---------------------------------------------------------------- recipe inheritance and `lightseg config`
def test_base_recipe_is_deep_merged_and_config_prints_it(tmp_path, capsys):
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "common.yaml").write_text(
        "base: mininet_95k_camvid\ntrain: {batch_size: 4, optimizer: {lr: 1.0e-3}}\noutput_dir: runs/common\n")
    child = tmp_path / "child.yaml"
    child.write_text("_base_: shared/common.yaml\ntrain: {iters: 50, optimizer: {weight_decay: 0.0}}\n")
    code, out, err = _cli(["config", str(child), "--set", "train.seed=3", "--data-root", "/data/cv"], capsys)
    assert code == 0, err
    printed = yaml.safe_load(out)
    ref = load_config("mininet_95k_camvid")
    expected = {**ref, "output_dir": str(Path("runs") / "child")}  # a base's output_dir is its own
    expected["data"] = {**ref["data"], "root": "/data/cv"}
    expected["train"] = {**ref["train"], "batch_size": 4, "iters": 50, "epochs": None, "seed": 3,
                         "optimizer": {**ref["train"]["optimizer"], "lr": 1.0e-3, "weight_decay": 0.0}}
    assert printed == expected
    assert load_config(child, ["train.seed=3", "data.root=/data/cv"]) == printed  # what train would run


def test_base_cycle_missing_and_too_deep_are_refused(tmp_path, capsys):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\ntrain: {iters: 3}\n")
    code, _, err = _cli(["config", str(tmp_path / "a.yaml")], capsys)
    assert code == 2 and "loops" in err and str(tmp_path / "a.yaml") in err and str(tmp_path / "b.yaml") in err
    (tmp_path / "c.yaml").write_text("base: nowhere.yaml\n")
    code, _, err = _cli(["train", str(tmp_path / "c.yaml")], capsys)
    assert code == 2 and str(tmp_path / "c.yaml") in err and "nowhere.yaml" in err and "not found" in err
    for i in range(10):
        (tmp_path / f"d{i}.yaml").write_text(f"base: d{i + 1}.yaml\n" if i < 9 else "train: {iters: 3}\n")
    code, _, err = _cli(["config", str(tmp_path / "d0.yaml")], capsys)
    assert code == 2 and "more than 8" in err
    assert main(["config", str(tmp_path / "d2.yaml")]) == 0  # a chain of 8 is fine
    capsys.readouterr()


@pytest.mark.parametrize("model", ["mininet_211k", "mininet_95k"])
def test_trainval_recipes_are_the_base_plus_the_split_list(model):
    variant = load_config(f"{model}_camvid_trainval")
    base = load_config(f"{model}_camvid")
    assert variant["data"]["train_split"] == ["train", "val"]
    assert variant["output_dir"] == f"runs/{model}_camvid_trainval"
    base["data"]["train_split"] = ["train", "val"]
    base["output_dir"] = variant["output_dir"]
    assert variant == base
    text = (ROOT / "configs" / f"{model}_camvid_trainval.yaml").read_text()
    assert "Table 4" in text and "not held out" in text


# ---------------------------------------------------------------- lightseg train's run folder
def test_rerun_takes_the_next_free_folder_unless_named(tmp_path, capsys):
    data = make_camvid_like(tmp_path / "data", n_train=2, n_val=1)
    recipe = tiny_recipe(tmp_path, data, iters=1)
    assert main(["train", str(recipe), "--no-val"]) == 0
    before = (tmp_path / "run" / "last.pt").read_bytes()
    capsys.readouterr()
    code, _, err = _cli(["train", str(recipe), "--no-val"], capsys)
    assert code == 0 and f"this run writes to {tmp_path / 'run2'}" in err, err
    code, _, err = _cli(["train", str(recipe), "--no-val"], capsys)
    assert code == 0 and str(tmp_path / "run3") in err
    assert load_checkpoint(tmp_path / "run3" / "last.pt")["config"]["output_dir"] == str(tmp_path / "run3")
    assert (tmp_path / "run" / "last.pt").read_bytes() == before
    for named in (["--output-dir", str(tmp_path / "run")], ["--set", f"output_dir={tmp_path / 'run'}"]):
        code, _, err = _cli(["train", str(recipe), "--no-val", *named], capsys)
        assert code == 2 and f"lightseg train --resume {tmp_path / 'run'}" in err, err
    assert not (tmp_path / "run4").exists() and (tmp_path / "run" / "last.pt").read_bytes() == before


def test_failed_start_leaves_no_empty_run_folder(tmp_path, capsys):
    recipe = tiny_recipe(tmp_path, tmp_path / "no_data_here", iters=1)
    code, _, err = _cli(["train", str(recipe), "--output-dir", str(tmp_path / "runs" / "x")], capsys)
    assert code == 2 and "--data-root DIR" in err and "--set data.root=DIR" in err
    assert not (tmp_path / "runs").exists()  # created by this run, so removed with its parent
    kept = tmp_path / "mine"
    kept.mkdir()
    (kept / "notes.txt").write_text("keep")
    assert _cli(["train", str(recipe), "--output-dir", str(kept)], capsys)[0] == 2
    assert sorted(p.name for p in kept.iterdir()) == ["notes.txt"]  # not this run's folder: only its lock went
    # a failure after config.yaml was written (an unreadable image at the first step): config.yaml goes too
    data = make_camvid_like(tmp_path / "data", n_train=2, n_val=1)
    for image in (data / "train").iterdir():
        image.write_bytes(b"not an image")
    code, _, err = _cli(["train", str(tiny_recipe(tmp_path, data, iters=1)), "--no-val",
                         "--output-dir", str(tmp_path / "late")], capsys)
    assert code == 2 and "--skip-bad" in err and not (tmp_path / "late").exists()
    (kept / "config.yaml").unlink(missing_ok=True)
    code, _, err = _cli(["train", str(tiny_recipe(tmp_path, data, iters=1)), "--no-val", "--output-dir", str(kept)], capsys)
    assert code == 2 and sorted(p.name for p in kept.iterdir()) == ["notes.txt"]  # its config.yaml was taken back


def test_missing_data_root_names_the_options(tmp_path, capsys):
    code, _, err = _cli(["train", "mininet_95k_camvid", "--set", f"data.root={tmp_path / 'camvid'}",
                         f"output_dir={tmp_path / 'r'}"], capsys)
    assert code == 2 and str(tmp_path / "camvid") in err and "does not exist" in err
    assert "--data-root DIR" in err and "--set data.root=DIR" in err
    assert not (tmp_path / "r").exists()


def test_num_workers_above_the_cpus_is_capped_without_torch_warning(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    data = make_camvid_like(tmp_path / "data", n_train=2, n_val=1)
    recipe = tiny_recipe(tmp_path, data, iters=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["train", str(recipe), "--no-val", "--set", "data.num_workers=3"]) == 0
    assert not [w for w in caught if "worker" in str(w.message)], [str(w.message) for w in caught]
    err = capsys.readouterr().err
    assert "data.num_workers 3 is more than the 1 CPU(s)" in err and err.count("data.num_workers 3") == 1
    assert lightseg.data.loader_workers(1) == 1 and lightseg.data.loader_workers(0) == 0


def test_train_device_lands_in_the_saved_config(tmp_path, capsys):
    data = make_camvid_like(tmp_path / "data", n_train=2, n_val=1)
    assert main(["train", str(tiny_recipe(tmp_path, data, iters=1)), "--no-val", "--device", "cpu"]) == 0
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["device"] == "cpu"
    assert load_checkpoint(tmp_path / "run" / "last.pt")["config"]["train"]["device"] == "cpu"
    code, _, err = _cli(["train", str(tiny_recipe(tmp_path, data, iters=1)), "--device", "tpu"], capsys)
    assert code == 2 and "tpu" in err

"""User mistakes end with exit code 2, a message naming the file/key, and nothing already
written (checkpoints, run directory) lost or half-written."""
import hashlib
import json
from pathlib import Path

import pytest
import torch

import lightseg
from lightseg.checkpoint import load_checkpoint, save_checkpoint
from lightseg.cli import main
from test_train import make_camvid_like, one_thread, tiny_recipe  # noqa: F401 - fixture


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _snapshot(run_dir: Path) -> dict:
    return {p.name: _digest(p) for p in sorted(run_dir.iterdir()) if p.is_file()}


@pytest.fixture
def trained(tmp_path):
    """A recipe and a run directory holding a 4-iteration run (last.pt at iteration 4)."""
    data = make_camvid_like(tmp_path / "data", n_train=4, n_val=1)
    recipe = tiny_recipe(tmp_path, data, iters=4)
    assert main(["train", str(recipe)]) == 0
    return recipe, tmp_path / "run"


def test_unknown_config_key_suggests_nearest(tmp_path, capsys):
    recipe = tiny_recipe(tmp_path, tmp_path / "data")
    assert main(["train", str(recipe), "--set", "train.optimizer.learning_rate=0.1"]) == 2
    err = capsys.readouterr().err
    assert "train.optimizer.learning_rate" in err and "Traceback" not in err
    recipe.write_text(recipe.read_text().replace("batch_size", "batchsize"))
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "'train.batchsize'" in err and "'train.batch_size'" in err and str(recipe) in err
    assert not (tmp_path / "run").exists()  # nothing created before the config is valid


def test_checkpoint_of_other_classes_or_architecture_names_keys(trained, tmp_path, capsys):
    recipe, run_dir = trained
    before = _snapshot(run_dir)
    # same model name, 5 classes: the classifier shapes differ
    other = tmp_path / "other"
    five = lightseg.create_model("mininet_95k", num_classes=5)
    good = load_checkpoint(run_dir / "last.pt")
    save_checkpoint({**good, "model": five.state_dict(), "num_classes": 5, "classes": good["classes"][:5],
                     "palette": good["palette"][:5]}, other / "last.pt")
    assert main(["train", str(recipe), "--resume", str(other)]) == 2
    err = capsys.readouterr().err
    assert str(other / "last.pt") in err and "shape mismatch" in err and "(5," in err and "(11," in err
    # weights of another architecture: missing/unexpected keys are named
    save_checkpoint({**good, "model": lightseg.create_model("rdsnet", num_classes=11).state_dict()}, other / "last.pt")
    assert main(["train", str(recipe), "--resume", str(other)]) == 2
    err = capsys.readouterr().err
    assert "missing keys:" in err and "unexpected keys:" in err
    # a run of another model
    assert main(["train", str(recipe), "--resume", str(run_dir), "--set", "model.name=mininet_211k"]) == 2
    err = capsys.readouterr().err
    assert "'mininet_95k'" in err and "'mininet_211k'" in err
    assert _snapshot(run_dir) == before


def test_non_finite_loss_stops_without_overwriting(trained, capsys):
    recipe, run_dir = trained
    before = _snapshot(run_dir)
    rc = main(["train", str(recipe), "--resume", str(run_dir), "--set", "train.iters=8",
               "--set", "train.optimizer.lr=1e30", "--force-override"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "iteration" in err and f"{run_dir / 'last.pt'} holds the last good state (iteration 4)" in err
    assert "Traceback" not in err
    after = _snapshot(run_dir)
    assert after["last.pt"] == before["last.pt"] and after["best.pt"] == before["best.pt"]
    assert load_checkpoint(run_dir / "last.pt")["iteration"] == 4
    # and a resume with another optimiser is refused by name, not with a KeyError deep inside torch
    assert main(["train", str(recipe), "--resume", str(run_dir), "--set", "train.iters=8", "--set", "train.optimizer.name=sgd",
                 "--force-override"]) == 2
    err = capsys.readouterr().err
    assert "train.optimizer.name='adam'" in err and "Traceback" not in err


def test_malicious_pickle_is_refused_without_running(trained, tmp_path, capsys):
    recipe, _ = trained
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    evil = tmp_path / "evil" / "last.pt"
    evil.parent.mkdir()
    torch.save({"model": {}, "iteration": 1, "x": Payload()}, evil)
    assert main(["train", str(recipe), "--resume", str(evil)]) == 2
    err = capsys.readouterr().err
    assert str(evil) in err and "refused" in err
    assert not marker.exists()


def test_existing_run_is_not_overwritten(trained, capsys):
    recipe, run_dir = trained
    before = _snapshot(run_dir)
    assert main(["train", str(recipe), "--output-dir", str(run_dir)]) == 2  # a folder the user named: refused
    err = capsys.readouterr().err
    assert "--resume" in err and str(run_dir) in err
    assert _snapshot(run_dir) == before
    assert main(["train", str(recipe), "--set", "train.iters=1"]) == 0  # the recipe's own: the next free folder
    assert f"this run writes to {run_dir.with_name('run2')}" in capsys.readouterr().err
    assert _snapshot(run_dir) == before


def test_bad_sample_stops_or_is_skipped(tmp_path, capsys):
    data = make_camvid_like(tmp_path / "data", n_train=4, n_val=1)
    broken = data / "train" / "s002.png"
    broken.write_bytes(b"not a png")
    recipe = tiny_recipe(tmp_path, data, iters=4)
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert str(broken) in err and "--skip-bad" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "last.pt").exists()
    # with --skip-bad the sample is logged (file and reason) and training completes
    assert main(["train", str(recipe), "--set", f"output_dir={tmp_path / 'run2'}", "--skip-bad", "--max-bad", "0.25"]) == 0
    records = [json.loads(line) for line in (tmp_path / "run2" / "bad_samples.jsonl").read_text().splitlines()]
    assert records and all(str(broken) in r["files"][0] and "decode" in r["reason"] for r in records)
    # 4 iterations x 2 samples over 4 images: the broken one comes up twice (once per epoch)
    assert len(records) == 2
    assert load_checkpoint(tmp_path / "run2" / "last.pt")["iteration"] == 4


def test_resume_without_checkpoint_names_path(tmp_path, capsys):
    recipe = tiny_recipe(tmp_path, tmp_path / "data")
    assert main(["train", str(recipe), "--resume"]) == 2  # no value: the recipe's output_dir
    err = capsys.readouterr().err
    assert str(tmp_path / "run" / "last.pt") in err and "Traceback" not in err


def _corrupt_missing_dir(data):
    import shutil

    shutil.rmtree(data)
    return data, ["trainannot"]  # the message shows the expected layout


def _corrupt_missing_pair(data):
    victim = data / "trainannot" / "s001.png"
    victim.unlink()
    return victim, []


def _corrupt_size_mismatch(data):
    import cv2
    import numpy as np

    victim = data / "trainannot" / "s002.png"
    cv2.imwrite(str(victim), np.zeros((40, 50), np.uint8))
    return victim, ["40", "50"]


def _corrupt_truncated_image(data):
    victim = data / "train" / "s003.png"
    victim.write_bytes(victim.read_bytes()[:100])
    return victim, []


def _corrupt_label_values(data):
    import cv2
    import numpy as np

    victim = data / "trainannot" / "s000.png"
    label = cv2.imread(str(victim), cv2.IMREAD_UNCHANGED)
    label[10:12, 10:12] = 77
    cv2.imwrite(str(victim), label.astype(np.uint8))
    return victim, ["77"]


@pytest.mark.parametrize("corrupt", [_corrupt_missing_dir, _corrupt_missing_pair, _corrupt_size_mismatch,
                                     _corrupt_truncated_image, _corrupt_label_values],
                         ids=["missing-dir", "missing-pair", "size-mismatch", "truncated-image", "label-values"])
def test_bad_data_on_resume_exits_2_names_file_keeps_run(trained, tmp_path, capsys, corrupt):
    """Through the CLI: each data fault stops `lightseg train --resume` with exit 2 and a message naming
    the file, and the run directory that already exists is left byte-for-byte as it was."""
    recipe, run_dir = trained
    before = _snapshot(run_dir)
    old_log = (run_dir / "log.jsonl").read_text()
    capsys.readouterr()
    named, words = corrupt(tmp_path / "data")
    code = main(["train", str(recipe), "--resume", "--set", "train.iters=8", "--force-override"])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    assert str(named) in err, err
    for w in words:
        assert w in err, (w, err)
    after = _snapshot(run_dir)
    # checkpoints and config untouched; the log may have grown by the iterations run before the bad
    # sample came up, but what it held is still there
    assert {k: v for k, v in after.items() if k != "log.jsonl"} == {k: v for k, v in before.items() if k != "log.jsonl"}
    assert (run_dir / "log.jsonl").read_text().startswith(old_log)
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]  # no half-written files

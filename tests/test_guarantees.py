"""Nothing lost, nothing silently wrong. Each fault ends as "works" or as exit 2 with a
message naming the file/key, and the files already in the run folder stay byte-for-byte as they were."""
import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import lightseg
from lightseg.checkpoint import load_checkpoint, save_checkpoint
from lightseg.cli import main
from lightseg.config import load_config
from lightseg.engine.train import Trainer
from test_reliability import _snapshot
from test_train import make_camvid_like, one_thread, tiny_recipe  # noqa: F401 - fixture

ROOT = Path(__file__).resolve().parents[1]
RUN_FILES = ("best.pt", "last.pt", "config.yaml", "log.jsonl")


# ---------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Data and a finished 4-iteration run (last.pt and best.pt at iteration 4), trained once per module."""
    tmp = tmp_path_factory.mktemp("base")
    data = make_camvid_like(tmp / "data", n_train=4, n_val=1)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", str(tiny_recipe(tmp, data, iters=4))]) == 0
    finally:
        torch.set_num_threads(before)
    return tmp


@pytest.fixture
def run(base, tmp_path):
    """(recipe, run folder): a copy of the base run, and a recipe that writes into it."""
    run_dir = tmp_path / "run"
    shutil.copytree(base / "run", run_dir)
    return tiny_recipe(tmp_path, base / "data", iters=4), run_dir


def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def _cli_exit(argv, capsys) -> tuple[int, str]:
    """Exit status and stderr of `lightseg ARGV`, argparse's own exits included."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    return code, _err(capsys)


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("WORLD_SIZE", None)
    return env


@contextlib.contextmanager
def _read_only(folder: Path):
    """``folder`` made read-only: chmod for a normal user; root ignores modes, so a read-only bind mount."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    ok = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True).returncode == 0
    if ok and subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], capture_output=True).returncode != 0:
        subprocess.run(["umount", str(folder)])
        ok = False
    if not ok:
        pytest.skip("running as root without mount rights: cannot make a read-only folder (root ignores chmod)")
    try:
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def _write_image(path, h=64, w=64, seed=0):
    rng = np.random.default_rng(seed)
    assert cv2.imwrite(str(path), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


# ---------------------------------------------------------------- 1, 2: the run folder
@pytest.mark.parametrize("present", [("best.pt", "config.yaml", "log.jsonl"), ("log.jsonl",)], ids=["best+config+log", "log"])
def test_fresh_run_refuses_a_folder_with_an_earlier_runs_files(run, capsys, present):
    recipe, run_dir = run
    for name in set(RUN_FILES) - set(present):
        (run_dir / name).unlink()
    before = _snapshot(run_dir)
    # a folder the user names is refused; the recipe's own output_dir moves on to the next free name instead
    code, err = _cli_exit(["train", str(recipe), "--set", f"output_dir={run_dir}"], capsys)
    assert code == 2 and str(run_dir) in err and all(name in err for name in present)
    assert "output_dir=" in err
    assert _snapshot(run_dir) == before
    assert not run_dir.with_name("run2").exists()


def test_output_dir_that_is_a_file(base, tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("not a folder")
    code, err = _cli_exit(["train", str(tiny_recipe(tmp_path, base / "data")), "--set", f"output_dir={target}"], capsys)
    assert code == 2 and str(target) in err and "is a file" in err
    assert target.read_text() == "not a folder"


def test_second_concurrent_run_exits_2_naming_the_first(base, tmp_path, capsys):
    recipe = tiny_recipe(tmp_path, base / "data", iters=100000)
    run_dir = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "lightseg", "train", str(recipe)], cwd=ROOT, env=_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.time()
        while not (run_dir / "last.pt").is_file():
            assert first.poll() is None, first.communicate()[1][-2000:]
            assert time.time() - t0 < 300, "the first run did not start"
            time.sleep(0.05)
        first.send_signal(signal.SIGSTOP)  # frozen: what the second run does is all that can change the folder
        before = _snapshot(run_dir)
        for extra in (["--output-dir", str(run_dir)], ["--resume"]):
            code, err = _cli_exit(["train", str(recipe), *extra], capsys)
            assert code == 2 and f"pid {first.pid}" in err and str(run_dir) in err, err
        assert _snapshot(run_dir) == before and not run_dir.with_name("run2").exists()
        # the recipe's own folder, in use, is passed over for the next free one
        assert main(["train", str(recipe), "--set", "train.iters=1", "--no-val"]) == 0
        assert load_checkpoint(run_dir.with_name("run2") / "last.pt")["iteration"] == 1
        assert _snapshot(run_dir) == before
        first.send_signal(signal.SIGCONT)
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=120)
        assert first.returncode == 2 and "SIGTERM" in err, err[-2000:]
    finally:
        first.kill()
        first.wait()
    assert load_checkpoint(run_dir / "last.pt")["iteration"] >= 1  # the first run saved its state on SIGTERM


# ---------------------------------------------------------------- 3: diverged weights
def test_weights_that_become_infinite_are_never_saved(run, capsys, monkeypatch):
    """An optimiser step that overflows the weights while the loss it followed was finite: with a checkpoint
    every iteration the old code wrote them over last.pt; now the run stops and last.pt stays."""
    recipe, run_dir = run
    before = _snapshot(run_dir)
    step = torch.optim.Adam.step

    def overflowing_step(self, *args, **kwargs):
        out = step(self, *args, **kwargs)
        with torch.no_grad():
            self.param_groups[0]["params"][0].mul_(float("inf"))
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", overflowing_step)
    code, err = _cli_exit(["train", "--resume", str(run_dir), "--set", "train.iters=8", "--set", "train.ckpt_interval=1",
                           "--force-override"], capsys)
    assert code == 2 and "NaN or infinite" in err and "iteration 5" in err
    assert f"{run_dir / 'last.pt'} holds the last good state (iteration 4)" in err
    assert _snapshot(run_dir) == before


def test_learning_rate_beyond_float32_stops_cleanly(run, capsys):
    recipe, run_dir = run
    before = _snapshot(run_dir)
    code, err = _cli_exit(["train", "--resume", str(run_dir), "--set", "train.optimizer.lr=1e39", "--set", "train.iters=8",
                           "--force-override"], capsys)
    assert code == 2 and "overflows float32" in err and "train.optimizer.lr" in err
    assert _snapshot(run_dir) == before


@pytest.mark.parametrize("value", [".inf", ".nan", "0", "-1e-3"])
def test_lr_must_be_finite_and_positive(tmp_path, capsys, value):
    recipe = tiny_recipe(tmp_path, tmp_path / "data")
    code, err = _cli_exit(["train", str(recipe), "--set", f"train.optimizer.lr={value}"], capsys)
    assert code == 2 and "train.optimizer.lr" in err and f"--set train.optimizer.lr={value}" in err
    assert str(recipe) not in err  # the --set is blamed, not the recipe
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- 4: faults of the validation split
def _truncate(path):
    path.write_bytes(path.read_bytes()[:100])


def _shrink(path):
    cv2.imwrite(str(path), np.zeros((40, 48, 3), np.uint8))
    label = path.parent.parent / "valannot" / path.name
    cv2.imwrite(str(label), np.zeros((40, 48), np.uint8))


@pytest.mark.parametrize("corrupt", [_truncate, _shrink], ids=["truncated", "under-64px"])
def test_bad_val_sample_found_before_training_or_skipped(tmp_path, capsys, corrupt):
    data = make_camvid_like(tmp_path / "data", n_train=4, n_val=2)
    victim = data / "val" / "s001.png"
    corrupt(victim)
    recipe = tiny_recipe(tmp_path, data, iters=2)
    code, err = _cli_exit(["train", str(recipe)], capsys)
    assert code == 2 and str(victim) in err and "--skip-bad" in err
    assert not (tmp_path / "run" / "log.jsonl").exists()  # stopped before training, not at the first validation
    # --skip-bad: the sample is left out of validation (and listed), the run completes
    code, err = _cli_exit(["train", str(recipe), "--skip-bad", "--max-bad", "0.5"], capsys)
    assert code == 0
    bad = (tmp_path / "run" / "bad_samples.jsonl").read_text()
    assert '"split": "val"' in bad and str(victim) in bad
    assert load_checkpoint(tmp_path / "run" / "best.pt")["iteration"] == 2


def test_bad_validation_label_is_refused_before_training_and_skip_bad_skips_it(tmp_path, capsys):
    """A val label with out-of-range values is found by the pre-scan, before any iteration: exit 2 naming the
    file, the value and --skip-bad, and no run state written. After the fix the run trains; --skip-bad skips
    the sample instead."""
    data = make_camvid_like(tmp_path / "data", n_train=4, n_val=2)
    label = data / "valannot" / "s001.png"
    good = label.read_bytes()
    bad = cv2.imread(str(label), cv2.IMREAD_UNCHANGED)
    bad[:8, :8] = 77
    cv2.imwrite(str(label), bad)
    recipe = tiny_recipe(tmp_path, data, iters=4, extra="  val_interval: 2\n  ckpt_interval: 100")
    run_dir = tmp_path / "run"
    code, err = _cli_exit(["train", str(recipe)], capsys)
    assert code == 2 and str(label) in err and "77" in err and "--skip-bad" in err
    assert not (run_dir / "last.pt").exists() and not (run_dir / "log.jsonl").exists()

    label.write_bytes(good)
    assert main(["train", str(recipe)]) == 0
    val = [json.loads(line)["iter"] for line in (run_dir / "log.jsonl").read_text().splitlines() if '"val"' in line]
    assert val == [2, 4]

    cv2.imwrite(str(label), bad)
    assert main(["train", str(recipe), "--set", f"output_dir={tmp_path / 'skip'}", "--skip-bad", "--max-bad", "0.5"]) == 0
    assert str(label) in (tmp_path / "skip" / "bad_samples.jsonl").read_text()


# ---------------------------------------------------------------- 5: a failed resume leaves the log whole
def test_failed_resume_from_an_earlier_checkpoint_keeps_the_log(base, tmp_path, capsys, monkeypatch):
    data = tmp_path / "data"
    shutil.copytree(base / "data", data)
    recipe = tiny_recipe(tmp_path, data, iters=4)
    run_dir = tmp_path / "run"
    early = run_dir / "early.pt"  # e.g. best.pt of an earlier validation: the state saved at iteration 2
    import lightseg.engine.train as engine

    real_save = engine.save_checkpoint

    def keep_iteration_2(state, path):
        out = real_save(state, path)
        if state["iteration"] == 2:
            shutil.copy(path, early)
        return out

    monkeypatch.setattr(engine, "save_checkpoint", keep_iteration_2)
    assert main(["train", str(recipe), "--set", "train.ckpt_interval=2"]) == 0
    monkeypatch.undo()
    assert load_checkpoint(early)["iteration"] == 2
    _truncate(data / "train" / "s000.png")
    capsys.readouterr()
    before = _snapshot(run_dir)
    code, err = _cli_exit(["train", "--resume", str(early)], capsys)
    assert code == 2 and "s000.png" in err
    assert _snapshot(run_dir) == before  # log.jsonl still holds iterations 3 and 4


# ---------------------------------------------------------------- 6: --skip-bad with too many bad samples
def test_skip_bad_refuses_all_bad_or_too_many_bad(tmp_path, capsys):
    data = make_camvid_like(tmp_path / "data", n_train=4, n_val=1)
    for p in (data / "train").iterdir():
        p.write_bytes(b"not an image")
    recipe = tiny_recipe(tmp_path, data, iters=4)
    code, err = _cli_exit(["train", str(recipe), "--skip-bad", "--max-bad", "1"], capsys)
    assert code == 2 and "no training step" in err and "bad_samples.jsonl" in err
    assert not (tmp_path / "run" / "last.pt").exists() and not (tmp_path / "run" / "best.pt").exists()
    # default share (10%): 1 bad sample of 4 already stops the run, naming the share
    shutil.rmtree(data)
    data = make_camvid_like(tmp_path / "data", n_train=4, n_val=1)
    (data / "train" / "s001.png").write_bytes(b"not an image")
    code, err = _cli_exit(["train", str(recipe), "--set", f"output_dir={tmp_path / 'run2'}", "--skip-bad"], capsys)
    assert code == 2 and "1 of 4 training samples are bad" in err and "--max-bad 0.1" in err
    assert not (tmp_path / "run2" / "last.pt").exists()


# ---------------------------------------------------------------- 7: resume with the run's own config
def test_interrupt_hint_continues_exactly_with_the_runs_own_config(base, tmp_path, capsys, monkeypatch):
    """A run started with --set overrides, stopped by SIGTERM after iteration 3 of 6: the command printed
    ("lightseg train --resume DIR") needs no recipe, keeps the overrides, and ends equal to a run that never stopped."""
    recipe = tiny_recipe(tmp_path, base / "data", iters=6)
    overrides = ["--set", "train.batch_size=1", "--set", "train.seed=7"]
    run_dir = tmp_path / "run"
    log = Trainer._log

    def stop_after_3(self, record):
        log(self, record)
        if record["kind"] == "train" and record["iter"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(Trainer, "_log", stop_after_3)
    code, err = _cli_exit(["train", str(recipe), *overrides], capsys)
    monkeypatch.undo()
    assert code == 2 and "SIGTERM" in err
    hint = err.split("Continue with: ")[1].strip()
    assert hint == f"lightseg train --resume {run_dir}"
    config_before = (run_dir / "config.yaml").read_bytes()
    assert main(shlex.split(hint)[1:]) == 0
    assert (run_dir / "config.yaml").read_bytes() == config_before
    final = load_checkpoint(run_dir / "last.pt")
    reference = Trainer(load_config(recipe, ["train.batch_size=1", "train.seed=7", f"output_dir={tmp_path / 'ref'}"])).fit()
    ref = load_checkpoint(reference / "last.pt")
    assert final["iteration"] == 6 and final["config"]["train"]["batch_size"] == 1
    assert all(torch.equal(final["model"][k], ref["model"][k]) for k in ref["model"])


def test_resume_refuses_settings_that_break_exact_resume(run, capsys):
    recipe, run_dir = run
    before = _snapshot(run_dir)
    code, err = _cli_exit(["train", str(recipe), "--resume", str(run_dir), "--set", "train.batch_size=1",
                           "--set", "train.seed=3", "--set", "train.iters=8"], capsys)
    assert code == 2 and "--force-override" in err
    for key in ("train.batch_size: 2 -> 1", "train.seed: 0 -> 3", "train.iters: 4 -> 8"):
        assert key in err, err
    assert _snapshot(run_dir) == before
    # settings that do not change the weights are accepted, and --force-override accepts the others
    assert main(["train", "--resume", str(run_dir), "--set", "train.log_interval=2"]) == 0  # already done: nothing to do
    assert main(["train", "--resume", str(run_dir), "--set", "train.iters=6", "--force-override"]) == 0
    assert load_checkpoint(run_dir / "last.pt")["iteration"] == 6


def test_resume_refuses_a_training_set_that_changed(tmp_path, capsys):
    data = make_camvid_like(tmp_path / "data", n_train=4, n_val=1)
    assert main(["train", str(tiny_recipe(tmp_path, data, iters=4))]) == 0
    make_camvid_like(tmp_path / "data", n_train=6, n_val=1)  # two more training images
    run_dir = tmp_path / "run"
    capsys.readouterr()
    before = _snapshot(run_dir)
    code, err = _cli_exit(["train", "--resume", str(run_dir)], capsys)
    assert code == 2 and "4 samples" in err and "now has 6" in err and "--force-override" in err
    assert _snapshot(run_dir) == before


# ---------------------------------------------------------------- 10: non-finite checkpoints
@pytest.fixture(scope="module")
def nan_checkpoint(tmp_path_factory):
    model = lightseg.create_model("mininet_95k", num_classes=11)
    state = model.state_dict()
    state["classifier.weight"][0, 0, 0, 0] = float("nan")
    path = tmp_path_factory.mktemp("nan") / "diverged.pt"
    torch.save({"model": state, "model_name": "mininet_95k", "num_classes": 11}, path)  # as the old trainer did
    return path


def test_non_finite_checkpoint_is_refused_by_eval_export_predict(base, nan_checkpoint, tmp_path, capsys):
    img = tmp_path / "a.png"
    _write_image(img)
    for argv in (["eval", str(tiny_recipe(tmp_path, base / "data")), "--checkpoint", str(nan_checkpoint)],
                 ["export", "--model", "mininet_95k", "--checkpoint", str(nan_checkpoint), "--size", "64", "64",
                  "-o", str(tmp_path / "m.onnx")],
                 ["predict", "--model", "mininet_95k", "--checkpoint", str(nan_checkpoint), "--input", str(img),
                  "--output", str(tmp_path / "out")]):
        code, err = _cli_exit(argv, capsys)
        assert code == 2 and str(nan_checkpoint) in err and "'classifier.weight'" in err and "NaN" in err, (argv, err)
        assert "report" not in err
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "out").exists()
    assert not (nan_checkpoint.parent / "metrics.json").exists()


# ---------------------------------------------------------------- output paths
def test_output_paths_checked_before_the_work(base, tmp_path, capsys):
    recipe = tiny_recipe(tmp_path, base / "data")
    ckpt = base / "run" / "last.pt"
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me")
    a_dir = tmp_path / "a_dir"
    a_dir.mkdir()
    cases = [
        (["export", "--model", "mininet_95k", "--checkpoint", str(ckpt), "--size", "64", "64", "-o", str(a_dir)], str(a_dir)),
        (["export", "--model", "mininet_95k", "--checkpoint", str(ckpt), "--size", "64", "64", "-o",
          str(a_file / "m.onnx")], str(a_file)),
        (["eval", str(recipe), "--checkpoint", str(ckpt), "--output", str(a_dir)], str(a_dir)),
        (["eval", str(recipe), "--checkpoint", str(ckpt), "--save-predictions", str(a_file)], str(a_file)),
    ]
    for argv, named in cases:
        code, err = _cli_exit(argv, capsys)
        assert code == 2 and named in err, (argv, err)
    assert a_file.read_text() == "keep me" and not list(a_dir.iterdir())
    assert not (base / "run" / "metrics.json").exists()


def test_read_only_folders(run, tmp_path, capsys):
    recipe, run_dir = run
    before = _snapshot(run_dir)
    image = tmp_path / "street.png"
    cv2.imwrite(str(image), np.full((64, 80, 3), 90, np.uint8))
    with _read_only(run_dir):
        for argv in (["train", "--resume", str(run_dir), "--set", "train.iters=6", "--force-override"],
                     ["predict", "--checkpoint", str(run_dir / "last.pt"), "--input", str(image),
                      "--output", str(run_dir / "pred")],
                     ["eval", str(recipe), "--checkpoint", str(run_dir / "last.pt")],  # metrics.json goes beside it
                     ["export", "--model", "mininet_95k", "--checkpoint", str(run_dir / "last.pt"), "--size", "64", "64",
                      "-o", str(run_dir / "m.onnx")]):
            code, err = _cli_exit(argv, capsys)
            assert code == 2 and str(run_dir) in err and ("read-only" in err or "permission" in err), (argv, err)
    assert _snapshot(run_dir) == before


def test_full_disk_says_so_and_keeps_last_pt(run, tmp_path, capsys):
    """A tmpfs with room for the run but not for one more checkpoint (atomic saves need both at once)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs as a full disk")
    _, src = run
    disk = tmp_path / "disk"
    disk.mkdir()
    size_kb = sum(p.stat().st_size for p in src.iterdir()) // 1024 + 512
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("mount -t tmpfs failed (no mount rights in this container)")
    try:
        run_dir = disk / "run"
        shutil.copytree(src, run_dir)
        before = _snapshot(run_dir)
        code, err = _cli_exit(["train", "--resume", str(run_dir), "--set", "train.iters=8", "--force-override"], capsys)
        assert code == 2 and f"no space left on {run_dir}" in err and "last.pt was not changed" in err, err
        assert f"lightseg train --resume {run_dir}" in err
        assert _snapshot(run_dir) == before
        assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]
    finally:
        subprocess.run(["umount", str(disk)], check=True)


# ---------------------------------------------------------------- sizes and counts
@pytest.mark.parametrize("argv, named", [
    (["models", "--size", "7", "7"], "--size"),
    (["bench", "--model", "mininet_95k", "--size", "0", "-5"], "--size"),
    (["bench", "--model", "mininet_95k", "--size", "64", "64", "--runs", "0"], "--runs"),
    (["eval", "r.yaml", "--checkpoint", "c.pt", "--scales", "-1"], "--scales"),
], ids=["models-size-7", "bench-size-0", "bench-runs-0", "eval-scales-neg"])
def test_sizes_and_counts_are_checked(argv, named, capsys):
    code, err = _cli_exit(argv, capsys)
    assert code == 2 and named in err


def test_eval_scale_that_shrinks_images_under_64px(base, tmp_path, capsys):
    code, err = _cli_exit(["eval", str(tiny_recipe(tmp_path, base / "data")), "--checkpoint", str(base / "run" / "last.pt"),
                           "--scales", "0.5", "--output", str(tmp_path / "m.json")], capsys)
    assert code == 2 and "s000.png" in err and "64" in err
    assert not (tmp_path / "m.json").exists()


# ---------------------------------------------------------------- text
def test_recipe_not_utf8(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_bytes("# café\nmodel: {name: mininet_95k}\n".encode("latin-1"))
    code, err = _cli_exit(["train", str(recipe)], capsys)
    assert code == 2 and str(recipe) in err and "UTF-8" in err


def test_list_file_in_latin1_and_paths_with_spaces(tmp_path, capsys):
    from lightseg.data import build_dataset

    data = make_camvid_like(tmp_path / "data", n_train=2, n_val=1)
    # file names with a space and an accent written in latin-1, listed in a latin-1 train.txt
    names = [f"caf\xe9 {i}.png".encode("latin-1") for i in range(2)]
    for folder in (b"train", b"trainannot"):
        for i, name in enumerate(names):
            os.rename(os.fsencode(data) + b"/" + folder + b"/s%03d.png" % i, os.fsencode(data) + b"/" + folder + b"/" + name)
    lines = [b'"train/' + n + b'" "trainannot/' + n + b'"' for n in names]
    (data / "train.txt").write_bytes(b"\n".join(lines) + b"\n")
    (data / "val.txt").write_text("val/s000.png valannot/s000.png\n")
    ds = build_dataset({"name": "camvid", "root": str(data)}, "train", train=False)
    assert len(ds) == 2 and ds[0][0].shape == (3, 64, 64)
    # unquoted spaces: the message says how to write them
    (data / "train.txt").write_text("train/a b.png trainannot/a b.png\n")
    with pytest.raises(lightseg.errors.DataError, match="double quotes") as e:
        build_dataset({"name": "camvid", "root": str(data)}, "train", train=False)
    assert "train.txt:1" in str(e.value)


def test_unknown_key_suggestion_and_set_blame(tmp_path, capsys):
    recipe = tiny_recipe(tmp_path, tmp_path / "data")
    code, err = _cli_exit(["train", str(recipe), "--set", "train.lrr=0.1"], capsys)
    assert code == 2 and "'train.optimizer.lr'" in err and "train.loss'" not in err
    code, err = _cli_exit(["train", str(recipe), "--set", "train.batch_size=-2"], capsys)
    assert code == 2 and "--set train.batch_size=-2" in err and str(recipe) not in err


# ---------------------------------------------------------------- checkpoints that are not what they say
@pytest.mark.parametrize("key, value", [("config", "a string"), ("model", 3), ("num_classes", "eleven")])
def test_malformed_checkpoint_metadata(base, tmp_path, capsys, key, value):
    bad = tmp_path / "bad.pt"
    torch.save({**load_checkpoint(base / "run" / "last.pt"), key: value}, bad)
    code, err = _cli_exit(["export", "--model", "mininet_95k", "--checkpoint", str(bad), "--size", "64", "64",
                           "-o", str(tmp_path / "m.onnx")], capsys)
    assert code == 2 and str(bad) in err and f"'{key}'" in err


def _plain_onnx(base, path):
    """An ONNX file as torch.onnx.export writes it, without lightseg's metadata."""
    import torch

    from lightseg.models import create_model

    ckpt = load_checkpoint(base / "run" / "last.pt")
    model = create_model("mininet_95k", num_classes=ckpt["num_classes"]).eval()
    model.load_state_dict(ckpt["model"])
    torch.onnx.export(model, torch.randn(1, 3, 64, 64), str(path), dynamo=False, opset_version=17)
    return path


def test_eval_runs_lightsegs_onnx_and_refuses_plain_onnx_and_truncated_files(base, tmp_path, capsys):
    onnx = tmp_path / "model.onnx"
    assert main(["export", "--model", "mininet_95k", "--checkpoint", str(base / "run" / "last.pt"), "--size", "64", "64",
                 "-o", str(onnx)]) == 0
    recipe = tiny_recipe(tmp_path, base / "data")
    code, err = _cli_exit(["eval", str(recipe), "--checkpoint", str(onnx)], capsys)
    assert code == 0, err  # lightseg's own export carries its metadata: it runs with no --model
    plain = _plain_onnx(base, tmp_path / "plain.onnx")
    cut = tmp_path / "cut.pt"
    cut.write_bytes((base / "run" / "last.pt").read_bytes()[:50000])
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    for path, words in ((plain, ("no lightseg metadata", "Re-export it")), (cut, ("truncated",)),
                        (text, ("not a PyTorch checkpoint",))):
        code, err = _cli_exit(["eval", str(recipe), "--checkpoint", str(path)], capsys)
        assert code == 2 and str(path) in err and all(w in err for w in words), err
        assert "unpickling" not in err and "Traceback" not in err


def test_jpeg_with_trailing_bytes_is_accepted_truncated_is_not(tmp_path):
    from lightseg.data.base import check_file_complete, read_image

    rgb = np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    jpg = cv2.imencode(".jpg", rgb)[1].tobytes()
    phone = tmp_path / "phone.jpg"
    phone.write_bytes(jpg + b"\x00MOTION_PHOTO_TRAILER" * 40)
    assert read_image(phone).shape == (64, 80, 3)
    check_file_complete(phone)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(jpg[: len(jpg) // 2])
    for fn in (read_image, check_file_complete):
        with pytest.raises(lightseg.errors.DataError, match="truncated"):
            fn(cut)


# ---------------------------------------------------------------- kill -9 during a save
KILL_DURING_SAVE = """
import os, sys, time
from pathlib import Path
import lightseg.checkpoint as ck
real = ck.atomic_write_bytes
def stuck(path, write_fn):
    if Path(path).name != "last.pt":
        return real(path, write_fn)
    def half(f):
        f.write(b"half a checkpoint")
        f.flush()
        Path(sys.argv[2]).touch()
        time.sleep(600)
    return real(path, half)
ck.atomic_write_bytes = stuck
from lightseg.cli import main
sys.exit(main(["train", "--resume", sys.argv[1], "--set", "train.iters=8", "--force-override"]))
"""


def test_kill_9_during_a_save_leaves_last_pt_and_the_next_start_cleans_up(run, tmp_path):
    _, run_dir = run
    before = _snapshot(run_dir)
    marker = tmp_path / "saving"
    proc = subprocess.Popen([sys.executable, "-c", KILL_DURING_SAVE, str(run_dir), str(marker)], cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() - t0 < 300
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    leftovers = [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]
    assert leftovers and all(p.name.startswith(".last.pt.") for p in leftovers)
    assert {k: v for k, v in _snapshot(run_dir).items() if not k.endswith((".tmp", ".lock"))} == before
    assert main(["train", "--resume", str(run_dir), "--set", "train.iters=8", "--force-override"]) == 0
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp") or p.name.endswith(".lock")]
    assert load_checkpoint(run_dir / "last.pt")["iteration"] == 8


# ---------------------------------------------------------------- predict: 8 names, 9 videos, 10 NaN, sizes, paths
def _predict(base, inp, out, *extra, checkpoint=None):
    return ["predict", "--checkpoint", str(checkpoint or base / "run" / "last.pt"), "--input", str(inp),
            "--output", str(out), *extra]


def _run_predict(argv, capsys) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of `lightseg ARGV` (stdout holds the count of files written)."""
    code = main(argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


def _earlier_output(out: Path) -> dict:
    """An output folder that already holds a file from an earlier run: it must stay as it was."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "earlier_label.png").write_bytes(b"an earlier run's result")
    return _snapshot(out)


def test_predict_output_names_are_unique_and_the_count_is_true(base, tmp_path, capsys):
    """a.png, a.PNG and a.jpg in one folder: the old code wrote a_png_* twice (9 files on disk, 12 reported)."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    names = ["a.png", "a.PNG", "a.jpg", "b.png"]
    for i, name in enumerate(names):
        _write_image(folder / name, seed=i)
    out = tmp_path / "out"
    before = _earlier_output(out)
    code, stdout, err = _run_predict(_predict(base, folder, out, "--batch", "2"), capsys)
    assert code == 0 and f"wrote {3 * len(names)} file(s) to {out}" in stdout
    written = sorted(p.name for p in out.iterdir())
    assert len(written) == 3 * len(names) + 1 and len({n.lower() for n in written}) == len(written)
    assert {k: v for k, v in _snapshot(out).items() if k in before} == before
    for name in ("a.PNG", "a.jpg", "a.png"):
        assert name in err  # the note says which outputs got longer names
    # each output belongs to its own image: the overlays differ, as the inputs do
    overlays = [p for p in out.iterdir() if p.name.endswith("_overlay.png") and p.name.startswith("a_")]
    assert len(overlays) == 3 and len({p.read_bytes() for p in overlays}) == 3


def test_predict_prints_the_true_count(base, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, name in enumerate(["a.png", "a.PNG", "A.png"]):
        _write_image(folder / name, seed=i)
    out = tmp_path / "out"
    code, stdout, _ = _run_predict(_predict(base, folder, out), capsys)
    assert code == 0 and f"wrote 9 file(s) to {out}" in stdout and len(list(out.iterdir())) == 9


def test_output_stems_unique_across_folders_and_case():
    from lightseg.deploy.predict import _output_stems

    files = [Path(p) for p in ("x/a.png", "y/a.png", "x/a.PNG", "x/a_png.jpg", "x/A.jpg", "x/b.png")]
    stems = _output_stems(files)
    assert len({s.lower() for s in stems}) == len(files)
    assert stems[-1] == "b"  # a name nobody shares is kept as it is


def _video(path, frames=20, size=64):
    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (size, size))
    for _ in range(frames):
        writer.write(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    writer.release()
    assert path.stat().st_size > 0


def _frames_in(path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def test_truncated_video_warns_with_frames_read_and_declared(base, tmp_path, capsys):
    whole, cut = tmp_path / "whole.avi", tmp_path / "cut.avi"
    _video(whole)
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])  # an interrupted copy: the index is lost
    read = _frames_in(cut)
    assert 0 < read < 20
    out = tmp_path / "out"
    code, err = _cli_exit(_predict(base, whole, out), capsys)
    assert code == 0 and "truncated" not in err
    code, err = _cli_exit(_predict(base, cut, out), capsys)
    assert code == 0 and f"{cut}: read {read} of the 20 frames" in err and "truncated" in err
    assert _frames_in(out / "cut_overlay.mp4") == read
    assert _frames_in(out / "whole_overlay.mp4") == 20  # the first run's video is still there
    # --max-frames below what the file holds is not a truncation
    code, err = _cli_exit(_predict(base, whole, tmp_path / "out2", "--max-frames", "5"), capsys)
    assert code == 0 and "truncated" not in err


class _NaNOnWhite(torch.nn.Module):
    """A model whose output is NaN where the input pixel is pure white (an overflow that only some inputs
    reach): finite on the random probe the Segmenter checks at construction, NaN on such an image."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 1)

    def forward(self, x):
        y = self.conv(x)
        white = (x.amin(1, keepdim=True) > 2.2).expand_as(y)  # imagenet-normalised 255 is 2.25 to 2.64
        return torch.where(white, torch.full_like(y, float("nan")), y)


def test_nan_output_is_an_error_not_class_0(base, tmp_path, capsys, monkeypatch):
    from lightseg.deploy.segmenter import NonFiniteOutput

    rgb = np.random.default_rng(0).integers(0, 200, (64, 64, 3), dtype=np.uint8)
    seg = lightseg.Segmenter(_NaNOnWhite(), device="cpu")
    assert seg(rgb).shape == (64, 64)
    rgb[5, 7] = 255
    with pytest.raises(NonFiniteOutput, match="NaN or infinite at 1 of 4096 pixels"):
        seg(rgb)  # the old code labelled that pixel class 0
    diverged = lightseg.create_model("mininet_95k", num_classes=11)  # not through a checkpoint: load refuses those
    with torch.no_grad():
        diverged.classifier.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(lightseg.errors.LightsegError, match="NaN or infinite on a random input") as e:
        lightseg.Segmenter(diverged, device="cpu")  # refused at once (it said "report this as a bug")
    assert "report" not in str(e.value)
    # lightseg predict: exit 2 naming the image, nothing written over
    import lightseg.deploy.predict as predict_module

    monkeypatch.setattr(predict_module, "build_segmenter", lambda *a, **k: seg)
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    out = tmp_path / "out"
    before = _earlier_output(out)
    code, err = _cli_exit(_predict(base, img, out), capsys)
    assert code == 2 and f"{img}: the model's output is NaN" in err
    assert _snapshot(out) == before


def test_predict_output_that_is_a_file(base, tmp_path, capsys):
    img = tmp_path / "a.png"
    _write_image(img)
    target = tmp_path / "taken"
    target.write_text("keep me")
    code, err = _cli_exit(_predict(base, img, target, checkpoint=tmp_path / "missing.pt"), capsys)
    assert code == 2 and str(target) in err and "is a file" in err  # before the checkpoint is even looked at
    assert target.read_text() == "keep me"


def test_predict_skips_an_image_under_64px_naming_it(base, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    _write_image(folder / "good.png")
    _write_image(folder / "tiny.png", h=40, w=48)
    out = tmp_path / "out"
    before = _earlier_output(out)
    code, stdout, err = _run_predict(_predict(base, folder, out), capsys)
    assert code == 0 and f"{folder / 'tiny.png'}: 40x48" in err and "skipped" in err and "--size" in err
    assert "segmented 1 image(s) (skipped 1 too small" in stdout and f"wrote 3 file(s) to {out}" in stdout
    assert sorted(p.name for p in out.iterdir() if p.name not in before) == [
        "good_color.png", "good_label.png", "good_overlay.png"]
    # the only image too small: exit 2 naming it, nothing created
    code, err = _cli_exit(_predict(base, folder / "tiny.png", tmp_path / "out2"), capsys)
    assert code == 2 and str(folder / "tiny.png") in err and "--size" in err
    assert not (tmp_path / "out2").exists()
    # --size resizes it to the model: then it is segmented
    code, err = _cli_exit(_predict(base, folder / "tiny.png", tmp_path / "out3", "--size", "64", "64"), capsys)
    assert code == 0 and (tmp_path / "out3" / "tiny_label.png").is_file()
    assert cv2.imread(str(tmp_path / "out3" / "tiny_label.png"), cv2.IMREAD_UNCHANGED).shape == (40, 48)


def test_predict_refuses_an_image_too_large_for_memory_before_any_work(base, tmp_path, capsys, monkeypatch):
    import lightseg.deploy.predict as predict_module

    folder = tmp_path / "imgs"
    folder.mkdir()
    _write_image(folder / "a.png")
    huge = folder / "z_huge.jpg"  # after a.png: refused before a.png is segmented, not after
    assert cv2.imwrite(str(huge), np.zeros((10000, 10000, 3), np.uint8))
    out = tmp_path / "out"
    # the machine's free memory varies: fix it, so the test means the same everywhere
    monkeypatch.setattr(predict_module, "available_memory", lambda: 16 * 1024 ** 3)
    code, err = _cli_exit(_predict(base, folder, out), capsys)
    assert code == 2 and f"{huge}: 10000x10000" in err and "16.0 GB is available" in err
    assert "--mode slide --crop 1024 1024" in err
    assert not out.exists()
    monkeypatch.setattr(predict_module, "available_memory", lambda: 4 * 1024 ** 3)
    code, err = _cli_exit(_predict(base, folder, out), capsys)
    assert code == 2 and str(huge) in err and "--mode slide would still need" in err and "--size H W" in err
    assert not out.exists()
    # the estimate grows with the image and shrinks with sliding windows
    est = predict_module.estimate_memory
    assert est(2000, 2000, 11) < est(4000, 4000, 11)
    assert est(10000, 10000, 11, "slide", (1024, 1024)) < est(10000, 10000, 11)


def test_predict_runs_lightsegs_onnx_and_names_a_plain_onnx_file(base, tmp_path, capsys):
    onnx = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(base / "run" / "last.pt"), "--size", "64", "64", "-o", str(onnx)]) == 0
    img = tmp_path / "a.png"
    _write_image(img)
    code, err = _cli_exit(_predict(base, img, tmp_path / "out", checkpoint=onnx), capsys)
    assert code == 0, err
    assert (tmp_path / "out" / "a_label.png").is_file()
    plain = _plain_onnx(base, tmp_path / "plain.onnx")
    code, err = _cli_exit(_predict(base, img, tmp_path / "out2", checkpoint=plain), capsys)
    assert code == 2 and str(plain) in err and "no lightseg metadata" in err, err
    assert "unpickling" not in err and "Traceback" not in err
    assert not (tmp_path / "out2").exists()


def test_predict_loads_a_ddp_checkpoint(base, tmp_path, capsys):
    ckpt = load_checkpoint(base / "run" / "last.pt")
    ddp = tmp_path / "ddp.pt"
    torch.save({**ckpt, "model": {f"module.{k}": v for k, v in ckpt["model"].items()}}, ddp)
    bare = tmp_path / "bare.pt"
    torch.save({f"module.{k}": v for k, v in ckpt["model"].items()}, bare)  # torch.save(ddp_model.state_dict())
    img = tmp_path / "a.png"
    _write_image(img)
    assert main(_predict(base, img, tmp_path / "ref")) == 0
    assert main(_predict(base, img, tmp_path / "ddp", checkpoint=ddp)) == 0
    assert main(_predict(base, img, tmp_path / "bare", "--model", "mininet_95k", checkpoint=bare)) == 0
    ref = (tmp_path / "ref" / "a_label.png").read_bytes()
    assert (tmp_path / "ddp" / "a_label.png").read_bytes() == ref == (tmp_path / "bare" / "a_label.png").read_bytes()

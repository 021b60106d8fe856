"""Exact resume: a training subprocess stopped by SIGTERM (mid-iteration) or SIGKILL (between
checkpoints) and resumed with --resume ends with bitwise the same weights as an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lightseg.checkpoint import load_checkpoint
from lightseg.config import load_config
from lightseg.engine.train import Trainer
from test_train import make_camvid_like, one_thread, tiny_recipe  # noqa: F401 - fixture

ROOT = Path(__file__).resolve().parents[1]
ITERS = 16


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("WORLD_SIZE", None)
    return env


def _start(recipe, *extra, new_session=False):
    return subprocess.Popen([sys.executable, "-m", "lightseg", "train", str(recipe), *extra], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=new_session)


def _wait_for_iter(run_dir, proc, at_least, timeout=180):
    log = run_dir / "log.jsonl"
    t0 = time.time()
    while time.time() - t0 < timeout:
        if log.is_file():
            iters = [json.loads(line)["iter"] for line in log.read_text().splitlines() if line.endswith("}")]
            if iters and iters[-1] >= at_least:
                return iters[-1]
        if proc.poll() is not None:
            pytest.fail(f"training ended early: {proc.communicate()[1][-2000:]}")
        time.sleep(0.01)
    proc.kill()
    pytest.fail("training did not reach the iteration in time")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run (in-process, one thread, like the subprocesses)."""
    tmp = tmp_path_factory.mktemp("ref")
    data = make_camvid_like(tmp / "data")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = Trainer(load_config(tiny_recipe(tmp, data, iters=ITERS))).fit()
    finally:
        torch.set_num_threads(before)
    return data, load_checkpoint(run / "last.pt")


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def _resume_and_compare(recipe, run_dir, reference_ckpt):
    proc = _start(recipe, "--resume", str(run_dir))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    final = load_checkpoint(run_dir / "last.pt")
    assert final["iteration"] == ITERS
    _assert_same_weights(final["model"], reference_ckpt["model"])
    for k, v in reference_ckpt["optimizer"]["state"].items():  # Adam moments too
        assert torch.equal(final["optimizer"]["state"][k]["exp_avg"], v["exp_avg"])
    # records written after the last checkpoint by the stopped run were dropped, then redone once
    iters = [json.loads(line)["iter"] for line in (run_dir / "log.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "train"]
    assert iters == list(range(1, ITERS + 1))


@pytest.mark.parametrize("to_group", [False, True], ids=["main-process", "process-group"])
def test_sigterm_mid_run_saves_and_resumes_exactly_with_workers(tmp_path, reference, to_group):
    """SIGTERM to the trainer alone, and to its whole process group (what Ctrl-C and batch schedulers do:
    the DataLoader workers get it too and must not bring the trainer down before it saves)."""
    data, ref = reference
    # two DataLoader workers here, none in the reference: the data order and augmentation do not depend on them
    recipe = tiny_recipe(tmp_path, data, iters=ITERS, extra="  seed: 0")
    cfg_text = recipe.read_text().replace("num_workers: 0", "num_workers: 2")
    recipe.write_text(cfg_text)
    run_dir = tmp_path / "run"
    proc = _start(recipe, new_session=to_group)
    seen = _wait_for_iter(run_dir, proc, 5)
    if to_group:
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err[-3000:]
    assert "SIGTERM" in err and f"--resume {run_dir}" in err and "Traceback" not in err
    saved = load_checkpoint(run_dir / "last.pt")
    # the current iteration was finished and saved, not the last periodic checkpoint
    assert saved["iteration"] >= seen and saved["iteration"] < ITERS
    _resume_and_compare(recipe, run_dir, ref)


def test_sigkill_between_checkpoints_then_resume_exactly(tmp_path, reference):
    data, ref = reference
    recipe = tiny_recipe(tmp_path, data, iters=ITERS)
    run_dir = tmp_path / "run"
    proc = _start(recipe)
    seen = _wait_for_iter(run_dir, proc, 5)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    saved = load_checkpoint(run_dir / "last.pt")  # whole, despite the kill: atomic writes
    assert saved["iteration"] % 4 == 0 and 4 <= saved["iteration"] <= seen
    _resume_and_compare(recipe, run_dir, ref)


def test_a_train_plus_val_run_stopped_by_sigterm_resumes_exactly(tmp_path):
    """The papers' CamVid protocol (data.train_split: [train, val] in the recipe) survives a stop and --resume."""
    data = make_camvid_like(tmp_path / "data", n_train=5, n_val=3)
    recipe = tiny_recipe(tmp_path, data, iters=ITERS, extra="  val_interval: 0")
    recipe.write_text(recipe.read_text().replace("num_workers: 0}", "num_workers: 0, train_split: [train, val]}"))
    torch.set_num_threads(1)
    whole = load_checkpoint(Trainer(load_config(recipe, [f"output_dir={tmp_path / 'whole'}"])).fit() / "last.pt")
    assert whole["train_samples"] == 8
    run_dir = tmp_path / "run"
    proc = _start(recipe)
    _wait_for_iter(run_dir, proc, 3)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert load_checkpoint(run_dir / "last.pt")["iteration"] < ITERS
    _resume_and_compare(recipe, run_dir, whole)


def _stopped_run_and_land_run(tmp_path, reference):
    """tools/land_run.py as a module, and a run stopped by SIGTERM part-way: (module, run folder, its last.pt,
    the uninterrupted run's)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("land_run", ROOT / "tools" / "land_run.py")
    land_run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(land_run)
    data, whole = reference
    recipe = tiny_recipe(tmp_path, data, iters=ITERS)
    run_dir = tmp_path / "run"
    proc = _start(recipe)
    _wait_for_iter(run_dir, proc, 3)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    full = load_checkpoint(run_dir / "last.pt")
    assert 0 < full["iteration"] < ITERS
    return land_run, run_dir, full, whole


def test_a_landed_run_without_adam_moments_resumes_from_the_cli_on_its_schedule(tmp_path, reference, capsys):
    """tools/land_run.py keeps weights, schedule, sampler and RNG but drops Adam's moments: `lightseg train
    --resume` of the landed copy continues at the saved iteration to the planned end with the uninterrupted
    run's rates, says it is not bitwise, and its weights differ from the uninterrupted run's (the moments
    restarted)."""
    from lightseg.cli import main

    land_run, run_dir, full, whole = _stopped_run_and_land_run(tmp_path, reference)
    landed = land_run.land(run_dir, tmp_path / "landed")
    small = load_checkpoint(landed / "last.pt")
    assert small["optimizer"]["state"] == {} and full["optimizer"]["state"]
    assert small["iteration"] == full["iteration"]
    assert all(torch.equal(small["model"][k], full["model"][k]) for k in full["model"])
    assert (landed / "last.pt").stat().st_size < (run_dir / "last.pt").stat().st_size
    with pytest.raises(SystemExit, match="run folder itself"):
        land_run.land(run_dir, tmp_path)
    assert main(["train", "--resume", str(landed)]) == 0
    assert "not bitwise" in capsys.readouterr().err
    end = load_checkpoint(landed / "last.pt")
    assert end["iteration"] == ITERS
    assert [g["lr"] for g in end["optimizer"]["param_groups"]] == [g["lr"] for g in whole["optimizer"]["param_groups"]]
    assert any(not torch.equal(whole["model"][k], end["model"][k]) for k in whole["model"]
               if whole["model"][k].is_floating_point())


def _same(a, b) -> bool:
    """Nested checkpoint contents equal, tensors bitwise."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _git(repo, *args):
    subprocess.run(["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args], cwd=repo, check=True,
                   capture_output=True)


def test_a_landing_that_names_the_shipped_weights_restores_to_the_same_state_and_resumes_from_the_cli(
        tmp_path, reference, monkeypatch, capsys):
    """tools/land_run.py --weights stores everything but the weights, which the shipped file already holds, and
    --restore joins them back: the restored last.pt is the landing that stores them, tensor for tensor, also
    after a later shipping replaced the file (read back from git's history), and `lightseg train --resume`
    continues it to the planned end. A shipped file with other weights is refused, and so is a restore over an
    existing run folder."""
    from lightseg.checkpoint import save_checkpoint
    from lightseg.cli import main

    land_run, run_dir, full, whole = _stopped_run_and_land_run(tmp_path, reference)

    repo = tmp_path / "checkout"  # stands in for the checkout: the shipped file and its history
    (repo / "weights").mkdir(parents=True)
    _git(repo, "init", "-q")
    monkeypatch.setattr(land_run, "ROOT", repo)
    shipped = repo / "weights" / "tiny_camvid.pt"
    save_checkpoint({"model": full["model"], "model_name": full["model_name"]}, shipped)
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "ship")

    inline = load_checkpoint(land_run.land(run_dir, tmp_path / "inline") / "last.pt")
    landed = land_run.land(run_dir, tmp_path / "training", weights=shipped)
    assert not (landed / "last.pt").exists()
    assert (landed / "state.pt").stat().st_size < (tmp_path / "inline" / "run" / "last.pt").stat().st_size / 2
    assert load_checkpoint(landed / "state.pt")["model"] == {}
    assert main(["train", "--resume", str(landed)]) == 2  # not a run folder until restored
    assert "land_run.py --restore" in capsys.readouterr().err

    # a later shipping replaces the file: the restore reads the named version from git's history
    other = {k: v + 1 if v.is_floating_point() else v for k, v in full["model"].items()}
    save_checkpoint({"model": other, "model_name": full["model_name"]}, shipped)
    _git(repo, "commit", "-qam", "ship again")
    with pytest.raises(SystemExit, match="does not hold this run's weights"):
        land_run.land(run_dir, tmp_path / "refused", weights=shipped)
    restored = land_run.restore(landed, tmp_path / "runs")
    state = load_checkpoint(restored / "last.pt")
    assert _same({k: v for k, v in state.items() if k != "format_version"},
                 {k: v for k, v in inline.items() if k != "format_version"})
    assert (restored / "config.yaml").read_bytes() == (run_dir / "config.yaml").read_bytes()
    with pytest.raises(SystemExit, match="already exists"):
        land_run.restore(landed, tmp_path / "runs")
    assert land_run.main(["--restore", str(tmp_path / "inline" / "run"), "--into", str(tmp_path / "runs2")]) == 0
    assert _same(load_checkpoint(tmp_path / "runs2" / "run" / "last.pt")["model"], inline["model"])

    assert main(["train", "--resume", str(restored)]) == 0
    assert "not bitwise" in capsys.readouterr().err
    end = load_checkpoint(restored / "last.pt")
    assert end["iteration"] == ITERS
    assert [g["lr"] for g in end["optimizer"]["param_groups"]] == [g["lr"] for g in whole["optimizer"]["param_groups"]]


def _sigterm_while_building(monkeypatch):
    """SIGTERM to this process as the trainer builds its data and model (what a scheduler's stop, or Ctrl-C's
    neighbour, does during a slow start), delivered at a known point instead of after a guessed delay."""
    real = Trainer._build

    def build(self):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(self)

    monkeypatch.setattr(Trainer, "_build", build)


def test_sigterm_while_a_fresh_run_starts_exits_2_and_keeps_no_folder(tmp_path, reference, monkeypatch, capsys):
    from lightseg.cli import main

    data, _ = reference
    recipe = tiny_recipe(tmp_path, data, iters=ITERS)
    _sigterm_while_building(monkeypatch)
    handler = signal.getsignal(signal.SIGTERM)
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "stopped by SIGTERM while starting" in err and "nothing was kept" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # taken back: the same command starts afresh
    assert signal.getsignal(signal.SIGTERM) == handler  # the process's own handling is given back


def test_sigterm_while_a_resume_starts_leaves_the_run_as_it_was(tmp_path, reference, monkeypatch, capsys):
    from lightseg.cli import main

    data, _ = reference
    recipe = tiny_recipe(tmp_path, data, iters=4)
    assert main(["train", str(recipe)]) == 0
    run_dir = tmp_path / "run"
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    _sigterm_while_building(monkeypatch)
    assert main(["train", "--resume", str(run_dir), "--set", "train.iters=8", "--force-override"]) == 2
    err = capsys.readouterr().err
    assert f"continue with lightseg train --resume {run_dir}" in err
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before

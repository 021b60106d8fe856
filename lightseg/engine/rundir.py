"""The run folder's guarantees: one training process at a time, no fresh run over an earlier run's
files, and a resume that continues with the run's own settings unless told otherwise."""
from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from pathlib import Path

from ..errors import ConfigError, LightsegError
from ..outputs import check_output_dir, open_output, refuse_links_in, write_error
from ..runlog import read_log

# What `lightseg train` writes in a run folder: a fresh run refuses a folder that holds any of them.
RUN_FILES = ("last.pt", "best.pt", "config.yaml", "log.jsonl", "bad_samples.jsonl")
LOCK_NAME = ".lightseg-train.lock"
# What a start that fails before training writes (the resolved config, the class-weight cache, TensorBoard's
# first events): a folder that holds nothing else of the run is removed again (see claim_run_dir).
START_FILES = ("config.yaml", "cache", "tensorboard")
# A new run whose folder comes from the recipe or the default takes NAME2, NAME3, ... up to this one.
MAX_RUN_NUMBER = 9999

# Keys whose change does not change the weights a run ends with: where files go, how often it logs,
# saves and validates, how fast data loads, how the model is scored. Any other difference between
# the run's saved config and the resuming one (batch size, seed, schedule, optimiser, loss, data,
# model) is refused unless forced. When a plateau schedule watches the validation mIoU, validation
# drives the learning rate, so its keys count too.
RESUME_SAFE_KEYS = ("output_dir", "data.num_workers", "train.log_interval", "train.ckpt_interval",
                    "train.val_interval", "train.val_every_epochs", "train.device", "train.tensorboard", "eval",
                    # when the plateau schedule ends, not the rates before it: a run may be given more or fewer
                    "train.scheduler.plateau_max_reductions")
PLATEAU_UNSAFE = ("train.val_interval", "train.val_every_epochs", "eval")


class RunLocked(LightsegError):
    """Another process is training into this run folder."""


class RunLock:
    """An exclusive ``fcntl.flock`` on ``RUN_DIR/.lightseg-train.lock`` for the life of a training process.

    The kernel drops the lock when the process ends, however it ends (kill -9 included), so a stale
    lock file never blocks a later run. The file holds the owner's pid for the message of the one
    refused, and is removed at the end of the run.
    """

    def __init__(self, run_dir):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.fd = None

    def _open(self) -> int:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise write_error(e, self.run_dir) from e
        try:  # never through a link planted in the run folder: its target would be truncated
            return open_output(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise write_error(e, self.path) from e

    def __enter__(self):
        check_output_dir(self.run_dir, "output_dir")
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise RunLocked(f"{self.run_dir} is in use by another lightseg train (pid {owner}); wait for it to end, "
                                f"stop it (kill {owner}: it saves last.pt first), or write elsewhere with "
                                f"--set output_dir=runs/NEW_NAME") from None
            try:  # the owner before us may have removed the file after we opened it: lock the one in place
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            try:
                os.unlink(self.path)  # while still locked: a run that opened it meanwhile retries (see __enter__)
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None
        return False


def _earlier_run_files(run_dir: Path) -> list[str]:
    return [name for name in RUN_FILES if (run_dir / name).exists()]


def check_fresh_run_dir(run_dir) -> None:
    """A fresh run must not write over an earlier run's files."""
    run_dir = Path(run_dir)
    found = _earlier_run_files(run_dir)
    if not found:
        return
    if "last.pt" in found:
        how = f"continue it with: lightseg train --resume {run_dir}"
    else:
        how = "it saved no checkpoint to continue from: delete the folder if it is not needed"
    raise ConfigError(f"output_dir {str(run_dir)!r} already holds {', '.join(found)} of an earlier run; {how}, "
                      f"or write elsewhere with --set output_dir=runs/NEW_NAME")


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` (itself included) that does not exist yet: what creating it makes."""
    missing = None
    for p in (path, *path.parents):
        if p.exists():
            break
        missing = p
    return missing


def _numbered(run_dir: Path, k: int) -> Path:
    return run_dir if k == 1 else run_dir.with_name(f"{run_dir.name}{k}")


@contextlib.contextmanager
def claim_run_dir(run_dir, fresh: bool = True, next_free: bool = False):
    """Hold the run folder's lock for the ``with`` block and yield the folder.

    ``fresh``: a new run, which must not write over an earlier run (:func:`check_fresh_run_dir`). With
    ``next_free`` (the folder came from the recipe or the default, not from the user), a folder that holds
    an earlier run or is in use is passed over for ``NAME2``, ``NAME3``, ... as Ultralytics does; each
    candidate is checked while its lock is held, so two runs started at once take different folders.

    When the block raises, what the failed start wrote is taken back: the ``START_FILES`` this run added,
    provided the run added nothing else (a log, a checkpoint, a list of bad samples stay, with what they
    sit beside), and then the folder and its parents if this run created them and they are empty.
    """
    run_dir = Path(run_dir)
    for k in range(1, MAX_RUN_NUMBER + 1):
        candidate = _numbered(run_dir, k)
        # A link at a name the run writes is refused, not taken for an earlier run's file and passed over:
        # whether its target exists or not, the answer is the same (lightseg never writes links).
        refuse_links_in(candidate, (*RUN_FILES, LOCK_NAME, *START_FILES))
        if next_free and (_earlier_run_files(candidate) or (k > 1 and candidate.exists() and not candidate.is_dir())):
            continue
        created = _first_missing(candidate)
        lock = RunLock(candidate)
        try:
            lock.__enter__()
        except RunLocked:
            if next_free:
                continue
            raise
        try:
            if fresh:
                check_fresh_run_dir(candidate)
        except ConfigError:
            lock.__exit__(None, None, None)
            if next_free:  # another run wrote there between the look and the lock
                continue
            raise
        break
    else:
        raise ConfigError(f"output_dir: {run_dir} and {run_dir.name}2 ... {run_dir.name}{MAX_RUN_NUMBER} all hold runs; "
                          f"write elsewhere with --set output_dir=runs/NEW_NAME")
    if candidate != run_dir and int(os.environ.get("RANK", "0")) == 0:
        print(f"lightseg train: {run_dir} holds an earlier run or one in progress (continue it with lightseg train "
              f"--resume {run_dir}); this run writes to {candidate}", file=sys.stderr)
    before = set(os.listdir(candidate))
    try:
        yield candidate
    except BaseException:
        _take_back_start(candidate, before)  # still locked: nobody else writes there meanwhile
        lock.__exit__(None, None, None)
        if created is not None:
            _remove_empty_folders(candidate, created)
        raise
    finally:
        lock.__exit__(None, None, None)  # a no-op when already released


def _take_back_start(run_dir: Path, before: set) -> None:
    """Remove the START_FILES entries added since ``before`` if the run added nothing else."""
    try:
        added = set(os.listdir(run_dir)) - before - {LOCK_NAME}
    except OSError:
        return
    if not added or not added <= set(START_FILES):
        return
    for name in added:
        path = run_dir / name
        with contextlib.suppress(OSError):
            if path.is_symlink() or not path.is_dir():
                path.unlink()
                continue
            entries = list(path.iterdir())
            if all(e.is_file() and not e.is_symlink() for e in entries):  # only files this run wrote there
                for e in entries:
                    e.unlink()
                path.rmdir()


def _remove_empty_folders(run_dir: Path, top: Path) -> None:
    """rmdir ``run_dir`` and its parents up to ``top`` while they are empty (rmdir refuses a folder that is not)."""
    for p in (run_dir, *run_dir.parents):
        try:
            p.rmdir()
        except OSError:
            return
        if p == top:
            return


def read_run_log(path) -> list[dict]:
    """The records of a run's ``log.jsonl``, checked before a resume writes anything (:func:`lightseg.runlog.read_log`,
    strict: a malformed line is refused naming its number, since the resume rewrites the log); none for a
    run folder without one."""
    path = Path(path)
    return read_log(path, strict=True) if path.is_file() else []


def _flatten(tree, prefix="") -> dict:
    out = {}
    for k, v in tree.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict) and v and path not in ("model.kwargs", "data.label_map"):
            out.update(_flatten(v, path + "."))
        else:
            out[path] = v
    return out


def resume_differences(saved: dict, cfg: dict) -> list[str]:
    """``key: saved -> now`` for each key that differs between a run's saved config and ``cfg`` and
    changes what the run trains (see ``RESUME_SAFE_KEYS``). Keys an older lightseg did not save are skipped."""
    old, new = _flatten(saved), _flatten(cfg)
    plateau = any(c.get("train.scheduler.name") == "plateau" and c.get("train.scheduler.plateau_monitor", "val_miou") == "val_miou"
                  for c in (old, new))
    safe = tuple(k for k in RESUME_SAFE_KEYS if not (plateau and k in PLATEAU_UNSAFE))

    def is_safe(key):
        return any(key == s or key.startswith(s + ".") for s in safe)

    return [f"{key}: {old[key]!r} -> {new.get(key)!r}" for key in sorted(old)
            if key in new and old[key] != new[key] and not is_safe(key)]

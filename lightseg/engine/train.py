"""The training engine: `lightseg train CONFIG [--set k=v] [--resume [RUN_DIR|CKPT]] [--skip-bad]`, or
`lightseg train --resume RUN_DIR` (the run's own saved config).

Python API::

    from lightseg.config import load_config
    from lightseg.engine.train import Trainer
    run_dir = Trainer(load_config("configs/mininet_95k_camvid.yaml", ["train.iters=100"])).fit()

Iteration-based: the data come from an infinite stream of per-epoch permutations. Everything random
in iteration ``it`` is derived from ``(seed, it)`` or ``(seed, epoch, position)``: the data order, each
sample's augmentation (the global ``random``/``numpy``/``torch`` generators are seeded per sample,
in the worker that loads it) and the dropout of the forward pass. So a run stopped at any iteration
and resumed from ``last.pt`` ends, on CPU with ``train.deterministic``, with bitwise the same weights
as a run that never stopped, whatever ``data.num_workers`` is.

Run directory (``output_dir``): ``config.yaml`` (resolved recipe), ``log.jsonl``, ``last.pt`` (every
``ckpt_interval`` iterations, before and after each validation, at the end and on SIGINT/SIGTERM),
``best.pt`` (best validation mIoU), ``bad_samples.jsonl`` (``--skip-bad``). Under torchrun only rank 0
writes. While a run trains, ``.lightseg-train.lock`` holds its pid (:mod:`.rundir`: one process per
folder, no fresh run over an earlier one (a re-run of a recipe takes ``NAME2``, ...), a resume keeps the
run's settings unless forced; a start that fails takes its folder back).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from ..checkpoint import (CHANNEL_ORDER, atomic_write_bytes, load_checkpoint, load_model_weights, non_finite_tensor,
                          remove_stale_temp_files, save_checkpoint)
from ..config import load_config, parse_override, safe_load_bounded, save_config
from ..errors import CheckpointError, ConfigError, DataError, LightsegError
from ..outputs import (OutputError, append_text, check_output_dir, check_outputs_apart, output_subdir, refuse_links_in,
                       write_error)
from . import distributed as du
from .optim import IterationScheduler, build_optimizer
from .rundir import LOCK_NAME, RUN_FILES, claim_run_dir, read_run_log, resume_differences

# --skip-bad: when more than this share of a split's samples is bad, the run stops (the data are broken,
# not a few files); `--max-bad` changes it.
MAX_BAD_SHARE = 0.1


def _say(message: str) -> None:
    """A line on stderr while the progress bar runs: tqdm.write clears the bar, prints the line, redraws the
    bar below it (a plain print would land on the bar's line, after its last carriage return)."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


class NonFiniteLossError(LightsegError):
    """The loss or the weights became NaN or infinite: the run stops without writing a checkpoint."""


class TrainingInterrupted(LightsegError):
    """SIGINT/SIGTERM: ``last.pt`` was saved after the current iteration."""


# ---------------------------------------------------------------- seeds
def derive_seed(*parts: int) -> int:
    """A well-mixed 32-bit seed from integers (seed, epoch, position, ...): no correlation between neighbours."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def _seeded_global_rngs(seed: int):
    """Seed python/numpy/torch global generators for one sample, and put the previous states back.

    Restoring keeps the main process's generators (dropout) independent of data loading when
    ``num_workers`` is 0; in a worker it costs nothing that matters.
    """
    py, npy, th = random.getstate(), np.random.get_state(), torch.get_rng_state()
    seed_everything(seed)
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(th)


def rng_state() -> dict:
    """Generator states as plain values/tensors (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [str(kind), [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
        "python": [int(py_version), [int(v) for v in py_internal], py_gauss],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------- data
class InfiniteBatchSampler:
    """Batches of ``(dataset_index, sample_seed)`` for iterations ``start_iter, start_iter+1, ...``.

    The sample stream is the concatenation of one permutation per epoch (``randperm`` seeded by
    ``(seed, epoch)``). Iteration ``it`` takes global positions ``it*B*W ... (it+1)*B*W - 1``; rank
    ``r`` of ``W`` gets every W-th of them starting at ``r`` (DistributedSampler's sharding).
    Nothing depends on earlier iterations, so the sampler position is just the iteration.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1, start_iter: int = 0):
        if num_samples < 1:
            raise DataError("the training set is empty: check data.root and data.train_split")
        self.n, self.batch_size, self.seed = num_samples, batch_size, seed
        self.rank, self.world_size, self.start_iter = rank, world_size, start_iter
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
            g = torch.Generator().manual_seed(derive_seed(self.seed, epoch, 0x5EED))
            self._perms[epoch] = torch.randperm(self.n, generator=g)
        return self._perms[epoch]

    def batch(self, iteration: int) -> list[tuple[int, int]]:
        out = []
        global_batch = self.batch_size * self.world_size
        for k in range(self.batch_size):
            position = iteration * global_batch + k * self.world_size + self.rank
            epoch, j = divmod(position, self.n)
            out.append((int(self._perm(epoch)[j]), derive_seed(self.seed, epoch, j)))
        return out

    def __iter__(self):
        it = self.start_iter
        while True:
            yield self.batch(it)
            it += 1


class BadSample:
    """Stands in for a sample whose loading raised ``DataError`` (picklable across workers)."""

    def __init__(self, index: int, files, reason: str):
        self.index, self.files, self.reason = index, files, reason

    def record(self) -> dict:
        return {"index": self.index, "files": [str(f) for f in self.files] if self.files else None, "reason": self.reason}


class SeededSamples(Dataset):
    """``dataset[(index, seed)]``: load sample ``index`` with the global generators seeded by ``seed``."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, item):
        index, seed = item
        with _seeded_global_rngs(seed):
            try:
                return self.dataset[index]
            except DataError as e:
                files = getattr(self.dataset, "files", None)
                return BadSample(index, files[index] if files is not None and index < len(files) else None, str(e))


def collate_with_bad(batch):
    good = [b for b in batch if not isinstance(b, BadSample)]
    bad = [b for b in batch if isinstance(b, BadSample)]
    if not good:
        return None, None, bad
    shapes = {tuple(img.shape) for img, _ in good}
    if len(shapes) > 1:
        raise ConfigError(f"training images in one batch have different sizes {sorted(shapes)}; set "
                          f"data.train_transforms.crop or data.train_transforms.resize so that they can be batched")
    images = torch.stack([img for img, _ in good])
    labels = torch.stack([torch.as_tensor(lab, dtype=torch.long) for _, lab in good])
    return images, labels, bad


def _worker_init(worker_id: int) -> None:
    # Ctrl-C (SIGINT to the terminal's process group) and schedulers' SIGTERM to the job's process group
    # reach the DataLoader workers too: a worker that died of it made the trainer crash without saving.
    # Workers ignore them; the main process finishes the iteration, saves last.pt and shuts them down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Every sample reseeds the generators (SeededSamples); this only keeps libraries that keep their
    # own state (the data package's hook) in a known state.
    try:
        from ..data import worker_init_fn
    except ImportError:
        return
    worker_init_fn(worker_id)


# ---------------------------------------------------------------- signals
class _StopRequest:
    """SIGINT/SIGTERM set a flag; the loop finishes the iteration, saves last.pt and stops.
    A second signal interrupts at once (last.pt is written atomically, so it stays whole)."""

    def __init__(self):
        self.signal_name = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal_name is not None:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


class _StopWhileStarting:
    """SIGTERM before the loop (decoding a training set onto the GPU, class weights, a first validation) ends the
    start like a refused one, with a message, instead of the default kill: the start is taken back (a fresh
    folder keeps nothing, a resumed run is untouched) and no lock file is left behind."""

    def __init__(self, how: str):
        self.how = how
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        raise TrainingInterrupted(f"stopped by SIGTERM while starting, before any iteration was trained; {self.how}")

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)
        return False


# ---------------------------------------------------------------- trainer
def _resolve_resume(resume, output_dir) -> tuple[Path, Path]:
    """-> (checkpoint path, run dir) for ``--resume`` given as 'auto', a run directory or a .pt file."""
    if resume in (True, "auto"):
        if output_dir is None:
            raise ConfigError("--resume without a value continues the recipe's output_dir, but no recipe was given; "
                              "pass the run folder: lightseg train --resume runs/NAME")
        run_dir = Path(output_dir)
        ckpt = run_dir / "last.pt"
    else:
        p = Path(resume)
        if p.suffix in (".yaml", ".yml"):
            raise ConfigError(f"--resume {p}: expected a run folder or a .pt file, not a recipe; continue a run with "
                              f"lightseg train --resume RUN_DIR (its own settings) or lightseg train RECIPE --resume RUN_DIR")
        if p.is_dir():
            run_dir, ckpt = p, p / "last.pt"
        else:
            run_dir, ckpt = p.parent, p
    if not ckpt.is_file() and (run_dir / "state.pt").is_file():
        raise CheckpointError(f"--resume {run_dir}: a landed copy whose state.pt names shipped weights instead of holding "
                              f"them; make a run folder of it first (from the repository's checkout): python "
                              f"tools/land_run.py --restore {run_dir} --into DIR, then lightseg train --resume "
                              f"DIR/{run_dir.name}")
    if not ckpt.is_file():
        raise CheckpointError(f"--resume: no checkpoint at {str(ckpt)!r}; pass the run directory that holds last.pt "
                              f"(or the .pt file), or start without --resume")
    return ckpt, run_dir


def amp_dtype(amp, device: torch.device, warn: bool = True):
    """The autocast dtype ``train.amp`` asks for on ``device``, or None for float32.

    CUDA takes bf16 and fp16. Every other device trains in float32, with a warning. On the CPU bf16 autocast
    is faster where the CPU has bfloat16 instructions (1.2-1.4x on a Zen 5, docs/benchmarks.md, "Training
    throughput"), but with torch 2.13's oneDNN kernels it is not safe to train with: in channels_last the bf16
    backward of a dilated depthwise conv returns non-finite weight gradients in up to one pass in seven, and an
    RDS-Net run in NCHW reached a nan loss after 300 steps that a rerun of the same steps did not."""
    if not amp:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if amp == "bf16" else torch.float16
    if warn:
        why = (" (CPU bf16 autocast is faster on CPUs with bfloat16 instructions but now and then gives non-finite "
               "gradients with torch's oneDNN kernels, which ends a run with a nan loss)") if device.type == "cpu" else ""
        print(f"lightseg train: train.amp={amp} is for CUDA; training in float32 on {device.type}{why}", file=sys.stderr)
    return None


def iteration_budget(train_samples: int, global_batch: int, train_cfg: dict) -> tuple[int, int]:
    """(iterations per epoch, iterations planned): an epoch is one pass over the training samples at the global
    batch size (the last partial batch dropped); ``train.iters`` overrides ``train.epochs``."""
    per_epoch = max(1, int(train_samples) // int(global_batch))
    planned = int(train_cfg["iters"]) if train_cfg.get("iters") is not None else int(train_cfg["epochs"]) * per_epoch
    return per_epoch, planned


class Trainer:
    """Builds model, data, optimiser, schedule and criterion from a resolved config; ``fit()`` trains."""

    def __init__(self, cfg: dict, resume=None, skip_bad: bool = False, config_path=None, force_override: bool = False,
                 max_bad: float = MAX_BAD_SHARE, next_free_dir: bool = False):
        """``next_free_dir``: ``output_dir`` came from the recipe or the default, not from the user, so a new run
        whose folder already holds a run writes to ``NAME2``, ``NAME3``, ... instead of being refused."""
        self.cfg = cfg
        self.next_free_dir = next_free_dir and not resume
        self.init_record = None
        self.skip_bad = skip_bad
        self.config_path = config_path
        self.resume = resume
        self.force_override = force_override
        if not 0 <= max_bad <= 1:
            raise ConfigError(f"--max-bad {max_bad}: expected a share between 0 and 1, e.g. 0.1 for 10%")
        self.max_bad = max_bad
        self.run_dir = Path(cfg["output_dir"])
        self.resume_ckpt = None
        if resume:
            self.resume_ckpt, self.run_dir = _resolve_resume(resume, self.run_dir)
        check_output_dir(self.run_dir, "output_dir")  # a file, under a file, read-only: said before any work
        recipe = config_path if not resume and config_path and Path(str(config_path)).is_file() else None
        check_outputs_apart([("the recipe", recipe), ("data.root", cfg["data"].get("root"))],
                            [("output_dir", self.run_dir, (*RUN_FILES, LOCK_NAME, "tensorboard"))])
        self.log_path = self.run_dir / "log.jsonl"
        self.bad_path = self.run_dir / "bad_samples.jsonl"

    # ------------------------------------------------------------ building blocks
    def _build(self):
        cfg, t = self.cfg, self.cfg["train"]
        self.dist = du.setup(t["device"])
        self.device = self.dist.device
        if self.dist.distributed and self.next_free_dir:  # rank 0 chose the folder (NAME2, ...): every rank uses it
            chosen = [str(self.run_dir)]
            torch.distributed.broadcast_object_list(chosen, src=0)
            self._use_run_dir(Path(chosen[0]))
        if t["deterministic"]:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        else:
            torch.backends.cudnn.benchmark = True
        seed_everything(t["seed"])

        from ..data import build_dataset
        from ..models import create_model, model_info

        self.train_set = build_dataset(cfg["data"], cfg["data"]["train_split"], train=True)
        # train.val_interval 0 (--no-val): no validation set is needed, and none is read.
        validating = bool(t["val_every_epochs"] or t["val_interval"])
        self.val_set = build_dataset(cfg["data"], cfg["data"]["val_split"], train=False) if validating else None
        from ..data import FINGERPRINT_KIND, check_train_sizes, data_fingerprint, merged_data_cfg, sample_fingerprints

        check_train_sizes(self.train_set, merged_data_cfg(cfg["data"])["train_transforms"])
        self._check_val_split()
        self.device_train_set = None
        if cfg["data"].get("on_device"):
            from ..data import loader_workers
            from ..data.on_device import DeviceTrainSet

            self.device_train_set = DeviceTrainSet(
                self.train_set, merged_data_cfg(cfg["data"])["train_transforms"], self.device,
                workers=max(1, loader_workers(cfg["data"]["num_workers"], "lightseg train", self.dist.is_main)),
                skip_bad=self.skip_bad)

        self.data_samples = sample_fingerprints(self.train_set)  # names, sizes, each file's first and last 16 KiB
        self.data_fingerprint = data_fingerprint(self.train_set, self.data_samples)
        self.data_fingerprint_kind = FINGERPRINT_KIND
        n_cls = cfg["model"]["num_classes"]
        if getattr(self.train_set, "num_classes", n_cls) != n_cls:
            raise ConfigError(f"model.num_classes is {n_cls} but the {cfg['data']['name']} dataset at {cfg['data']['root']!r} "
                              f"has {self.train_set.num_classes} classes; set model.num_classes={self.train_set.num_classes}")

        torch.manual_seed(t["seed"])  # the same initial weights on every rank and every run
        # On resume the checkpoint replaces every weight: the ImageNet file is not needed (nor fetched).
        pretrained = None if self.resume_ckpt is not None else cfg["model"]["pretrained_backbone"]
        model = create_model(cfg["model"]["name"], num_classes=n_cls, pretrained_backbone=pretrained,
                             **(cfg["model"]["kwargs"] or {}))
        if cfg["model"]["init_from"] and self.resume_ckpt is None:  # on resume the checkpoint holds every weight
            self._init_from(model, cfg["model"]["init_from"])
        elif self.resume_ckpt is not None:
            self.init_record = self._resume_state.get("init_from")
        paper_init = model_info(cfg["model"]["name"]).paper_pretrained
        if (paper_init and cfg["model"]["pretrained_backbone"] is None and not cfg["model"]["init_from"]
                and self.dist.is_main and self.resume_ckpt is None):
            print(f"lightseg train: warning: {cfg['model']['name']}'s paper starts from {paper_init}; this run trains "
                  f"the backbone from random weights (model.pretrained_backbone: null; 'imagenet' takes torchvision's)",
                  file=sys.stderr)
        if self.dist.distributed and t["sync_bn"]:
            if self.device.type == "cuda":
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            elif self.dist.is_main:  # PyTorch's SyncBatchNorm is CUDA-only
                print("lightseg train: train.sync_bn needs CUDA; using per-process BatchNorm on CPU", file=sys.stderr)
        if t["bn_momentum"] is not None:
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.momentum = float(t["bn_momentum"])
        model.to(self.device)
        # channels_last: faster on CUDA and on CPU too (oneDNN): mininet_211k trains 1.6x faster on
        # the 2-core CPU (0.29 s vs 0.47 s per batch of 8 at 256x256). `false` turns it off.
        self.channels_last = t["channels_last"] in ("auto", True)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.aux_names = tuple(getattr(model, "aux_names", ()))

        # Iteration budget: an epoch is one pass over the training set at the global batch size.
        self.global_batch = t["batch_size"] * self.dist.world_size
        self.iters_per_epoch, self.max_iters = iteration_budget(len(self.train_set), self.global_batch, t)
        self.val_interval = (t["val_every_epochs"] * self.iters_per_epoch) if t["val_every_epochs"] else t["val_interval"]

        self.optimizer = build_optimizer(model, t["optimizer"])
        self.scheduler = IterationScheduler(self.optimizer, t["scheduler"], t["optimizer"]["lr"], self.max_iters,
                                            self.iters_per_epoch)
        self.amp_dtype = amp_dtype(t["amp"], self.device, warn=self.dist.is_main)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

        class_weights = None
        if t["loss"]["class_weights"]:
            from ..losses import cached_class_weights

            cache = self.run_dir / "cache"
            if self.dist.is_main:
                class_weights = cached_class_weights(self.train_set, t["loss"]["class_weights"], cache)
            du.barrier(self.dist)
            if not self.dist.is_main:
                class_weights = cached_class_weights(self.train_set, t["loss"]["class_weights"], cache)
        from ..losses import build_criterion

        ignore = getattr(self.train_set, "ignore_index", 255)
        self.criterion = build_criterion(t["loss"], n_cls, ignore, class_weights, self.aux_names,
                                         getattr(self.model, "aux_weights", None))
        if hasattr(self.criterion, "to"):
            self.criterion = self.criterion.to(self.device)

        self.ddp_model = model
        if self.dist.distributed:
            self.ddp_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

        self.iteration = 0
        self.best_miou = -1.0
        self.optimizer_steps = 0
        self.val_pending = False
        if self.resume_ckpt is not None:
            self._load_resume()

    def _use_run_dir(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.cfg["output_dir"] = str(run_dir)
        self.log_path = run_dir / "log.jsonl"
        self.bad_path = run_dir / "bad_samples.jsonl"

    def _init_from(self, model, spec: str) -> None:
        """Fine-tuning: load every tensor of ``spec`` whose name and shape match; the others keep the fresh
        initialisation. Recorded in each checkpoint (source, sha256, what was loaded)."""
        from ..checkpoint import format_init_report, load_matching_weights
        from ..weights import resolve_init_source

        state, label, digest = resolve_init_source(spec, self.cfg["model"]["name"])
        report = load_matching_weights(model, state, source=f"--init-from {spec} ({label})")
        self.init_record = {"source": spec, "file": label, "sha256": digest, "loaded": len(report["loaded"]),
                            "reinitialized": report["reinitialized"], "unused": report["unused"]}
        if self.dist.is_main:
            print(format_init_report(f"lightseg train: --init-from {spec} ({label}, sha256 {digest[:12]})", report),
                  file=sys.stderr)

    def _check_val_split(self):
        """Find unusable validation samples before training (not at the first validation, hours in): missing,
        truncated or unreadable files, image/label size mismatches, images under the models' minimum size.
        ``--skip-bad`` leaves them out of validation (logged); without it the run does not start."""
        from ..data import scan_samples

        self._val_bad_records = []
        if self.val_set is None:  # no validation (train.val_interval 0)
            return
        e = self.cfg["eval"]
        problems = scan_samples(self.val_set, eval_size=self.cfg["data"]["eval_size"], scales=e["scales"], mode=e["mode"],
                                crop=e["crop"])
        n = len(self.val_set)
        if not problems:
            return
        listed = "; ".join(msg for _, msg in problems[:3]) + (f"; ... ({len(problems)} in all)" if len(problems) > 3 else "")
        if not self.skip_bad:
            raise DataError(f"{len(problems)} of {n} validation samples (data.val_split={self.cfg['data']['val_split']!r}) "
                            f"cannot be used: {listed}. Fix or remove them, or pass --skip-bad to leave them out of "
                            f"validation (they are then listed in {self.bad_path})")
        if len(problems) >= n or len(problems) > self.max_bad * n:
            raise DataError(f"{len(problems)} of {n} validation samples are bad, more than --max-bad {self.max_bad:g} allows: "
                            f"{listed}. Fix the validation split (data.val_split={self.cfg['data']['val_split']!r})")
        bad = {i for i, _ in problems}
        self._val_bad_records = [{"split": "val", "index": i, "files": [str(f) for f in self.val_set.files[i]],
                                  "reason": msg} for i, msg in problems]
        self.val_set.files = [f for i, f in enumerate(self.val_set.files) if i not in bad]

    def _check_resume_config(self, ckpt: dict) -> None:
        """The resumed run must train what the saved one trained: a changed batch size, seed, schedule,
        optimiser, loss, model or data would not continue it exactly. Refused unless ``force_override``."""
        saved = ckpt.get("config")
        if saved is None and (self.run_dir / "config.yaml").is_file():
            import yaml

            with contextlib.suppress(yaml.YAMLError, UnicodeDecodeError):
                saved = safe_load_bounded((self.run_dir / "config.yaml").read_text(encoding="utf-8"))
        if not isinstance(saved, dict):
            return
        changed = resume_differences(saved, self.cfg)
        if not changed:
            return
        if not self.force_override:
            raise ConfigError(f"--resume {self.resume_ckpt}: the recipe or --set changes {len(changed)} setting(s) the run was "
                              f"trained with: {'; '.join(changed)}. The run would not continue exactly. Continue it with its "
                              f"own settings: lightseg train --resume {self.run_dir}; or pass --force-override to train on "
                              f"with the new values")
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"lightseg train: --force-override: continuing {self.run_dir} with changed settings: {'; '.join(changed)} "
                  f"(the result will differ from an uninterrupted run)", file=sys.stderr)

    def _load_resume(self):
        ckpt = self._resume_state
        name = self.cfg["model"]["name"]
        if ckpt.get("model_name") not in (None, name):
            raise CheckpointError(f"{self.resume_ckpt}: trained model {ckpt['model_name']!r}, but the recipe builds {name!r}; "
                                  f"resume with the recipe of that run ({self.run_dir / 'config.yaml'})")
        load_model_weights(self.model, ckpt, path_for_errors=str(self.resume_ckpt))
        for key in ("optimizer", "iteration"):
            if key not in ckpt:
                raise CheckpointError(f"{self.resume_ckpt}: holds weights only (no {key!r}); it cannot be resumed. "
                                      f"Fine-tune from its weights in a new run instead: lightseg train RECIPE --init-from {self.resume_ckpt}")
        saved_opt = ckpt.get("optimizer_name")
        want_opt = self.cfg["train"]["optimizer"]["name"]
        if saved_opt is not None and saved_opt != want_opt:
            raise CheckpointError(f"{self.resume_ckpt}: was trained with train.optimizer.name={saved_opt!r}, the recipe says "
                                  f"{want_opt!r}; its optimizer state cannot be resumed by another optimiser. Resume with "
                                  f"--set train.optimizer.name={saved_opt}, or start a new run")
        # The recipe's hyper-parameters (momentum, weight decay, betas) win over the saved ones, so that
        # --set overrides apply on resume; not the rate: torch's schedulers continue from the saved one.
        fresh = [{k: v for k, v in g.items() if k not in ("params", "lr")} for g in self.optimizer.param_groups]
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            for group, hyper in zip(self.optimizer.param_groups, fresh):
                group.update(hyper)
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{self.resume_ckpt}: optimizer state does not fit train.optimizer={self.cfg['train']['optimizer']['name']!r} "
                                  f"({e}); resume with the same optimiser settings") from e
        self.scheduler.load_state_dict(ckpt["scheduler"], iteration=int(ckpt["iteration"]))
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if "rng" in ckpt:
            set_rng_state(ckpt["rng"])
        self.iteration = int(ckpt["iteration"])
        self.best_miou = float(ckpt.get("best_miou", -1.0))
        self.optimizer_steps = int(ckpt.get("optimizer_steps", self.iteration))
        self.val_pending = bool(ckpt.get("val_pending", False))
        saved_n = ckpt.get("train_samples")
        if saved_n is not None and saved_n != len(self.train_set):
            msg = (f"{self.resume_ckpt}: the run trained on {saved_n} samples, but data.train_split "
                   f"{self.cfg['data']['train_split']!r} at {self.cfg['data']['root']!r} now has {len(self.train_set)}; the data "
                   f"order and the schedule would change")
            if not self.force_override:
                raise ConfigError(msg + ". Resume with the data it was trained on, or pass --force-override")
            if self.dist.is_main:
                print(f"lightseg train: --force-override: {msg}", file=sys.stderr)
        elif ckpt.get("data_fingerprint") not in (None, self.data_fingerprint):
            self._data_changed(ckpt)
        self._resume_threads(ckpt.get("num_threads"))
        if ckpt.get("optimizer_moments_dropped") and self.dist.is_main:
            print(f"lightseg train: warning: {self.resume_ckpt} was saved without the optimiser's moments (a landed copy, kept "
                  f"small); the run continues at iteration {self.iteration} on its schedule, but "
                  f"{self.cfg['train']['optimizer']['name']} restarts its moments there, so it is not bitwise the "
                  f"uninterrupted run", file=sys.stderr)

    def _data_changed(self, ckpt: dict) -> None:
        """Same sample count, other content (a file replaced or edited in place: another size, other bytes at its
        start or end): the run would not continue on what it trained on. Names the samples; refused unless
        forced."""
        saved = ckpt.get("data_samples") or []
        changed = [i for i, (a, b) in enumerate(zip(saved, self.data_samples)) if a != b]
        fix = ". Restore those files, or pass --force-override to train on with the new data"
        if changed and ckpt.get("data_fingerprint_kind") != self.data_fingerprint_kind:
            msg = (f"{self.resume_ckpt}: the training data cannot be compared with what the run saw: it was saved by "
                   "an earlier lightseg, whose fingerprint of the training files included their modification times, "
                   "which a copy of the data (another machine or folder) changes; if the files are the ones it "
                   "trained on")
            fix = ", pass --force-override (the next save records a fingerprint that copies keep)"
        else:
            if changed:
                named = "; ".join(" and ".join(map(str, self.train_set.files[i])) for i in changed[:3])
                what = (f"{len(changed)} of {len(self.data_samples)} training samples have files of another size or "
                        f"content than when it was saved: {named}" + (" ..." if len(changed) > 3 else ""))
            else:
                what = "the training set's classes or label mapping changed"
            msg = f"{self.resume_ckpt}: the training data changed since the run saved it: {what}"
        if not self.force_override:
            raise ConfigError(msg + fix)
        if self.dist.is_main:
            print(f"lightseg train: --force-override: {msg}", file=sys.stderr)

    def _resume_threads(self, saved) -> None:
        """Continue with the intra-op thread count the run was trained with: float sums (convolutions, BatchNorm)
        are split per thread, so another count changes the weights in the last bits (a max diff of 1e-5 after a
        few iterations) and the resume would not be bitwise. Said on stderr; put back when the run ends."""
        now = torch.get_num_threads()
        if not saved or saved == now:
            return
        if not self.cfg["train"]["deterministic"]:
            if self.dist.is_main:
                print(f"lightseg train: warning: {self.resume_ckpt} was trained with {saved} intra-op threads, this "
                      f"process has {now}; the result will differ from an uninterrupted run in the last bits", file=sys.stderr)
            return
        torch.set_num_threads(int(saved))
        self._threads_before = now
        if self.dist.is_main:
            print(f"lightseg train: resuming with {saved} intra-op threads as {self.resume_ckpt} was trained (this "
                  f"process had {now}), so that it continues bitwise as an uninterrupted run", file=sys.stderr)

    def _commit_log(self) -> None:
        """A resumed run's first save: drop the records the interrupted run wrote after the checkpoint it
        resumed from (they were redone), then add this run's records, in one atomic rewrite. Until then
        log.jsonl is left as it was, so that a resume that fails leaves the run folder untouched."""
        keep = []
        records = getattr(self, "_resume_log", None)
        for rec in read_run_log(self.log_path) if records is None else records:  # checked as the resume started
            it = rec.get("iter", 0)
            if it < self.resumed_from or (it == self.resumed_from and not (self.resumed_val_pending and rec.get("kind") == "val")):
                keep.append(json.dumps(rec))
        keep.extend(json.dumps(rec) for rec in self._log_pending)
        text = ("\n".join(keep) + "\n" if keep else "").encode()
        atomic_write_bytes(self.log_path, lambda f: f.write(text))
        self._log_pending = None

    def _loader(self):
        from ..data import loader_workers

        d, t = self.cfg["data"], self.cfg["train"]
        sampler = InfiniteBatchSampler(len(self.train_set), t["batch_size"], t["seed"], self.dist.rank,
                                       self.dist.world_size, start_iter=self.iteration)
        if self.device_train_set is not None:
            return self._device_batches(sampler)
        return DataLoader(SeededSamples(self.train_set), batch_sampler=sampler,
                          num_workers=loader_workers(d["num_workers"], "lightseg train", self.dist.is_main),
                          collate_fn=collate_with_bad, pin_memory=self.device.type == "cuda",
                          worker_init_fn=_worker_init,
                          # DataLoader draws its workers' base seed from this, not from the global generator
                          generator=torch.Generator().manual_seed(t["seed"]))

    def _device_batches(self, sampler):
        """The sampler's batches augmented on the device (``data.on_device``), as the loader's triples."""
        files = getattr(self.train_set, "files", None)
        for samples in sampler:
            images, labels, bad = self.device_train_set.batch(samples)
            yield images, labels, [BadSample(i, files[i] if files is not None else None, why) for i, why in bad]

    # ------------------------------------------------------------ records and checkpoints
    def _log(self, record: dict) -> None:
        if not self.dist.is_main:
            return
        if self._log_pending is not None:  # a resumed run before its first save: see _commit_log
            self._log_pending.append(record)
            return
        self._append(self.log_path, [record])

    def _append(self, path: Path, records) -> None:
        try:
            append_text(path, "".join(json.dumps(r) + "\n" for r in records))
        except OSError as e:
            raise write_error(e, path, self._held()) from e

    def _held(self, extra: str = "") -> str:
        """What the run folder holds and the command that continues it (``extra``: arguments to add)."""
        last = self.run_dir / "last.pt"
        if not last.is_file():
            return f"no checkpoint was written before it (ckpt_interval {self.cfg['train']['ckpt_interval']})"
        try:
            it = load_checkpoint(last).get("iteration")
        except LightsegError:
            it = "?"
        return f"{last} holds the last good state (iteration {it}); continue with: lightseg train --resume {self.run_dir}{extra}"

    def epoch_of(self, iteration: int) -> int:
        return iteration * self.global_batch // len(self.train_set)

    def state(self) -> dict:
        ds = self.train_set
        return {
            "model": self.model.state_dict(),
            "model_name": self.cfg["model"]["name"],
            "num_classes": int(self.cfg["model"]["num_classes"]),
            "classes": list(getattr(ds, "classes", ())),
            "palette": [list(map(int, c)) for c in getattr(ds, "palette", ())],
            # what the weights expect of their input: eval refuses other settings (checkpoint.check_trained_input)
            "normalize": self.cfg["data"]["normalize"],
            "ignore_index": int(getattr(ds, "ignore_index", 255)),
            "channel_order": CHANNEL_ORDER,
            "config": self.cfg,
            "optimizer": self.optimizer.state_dict(),
            "optimizer_name": self.cfg["train"]["optimizer"]["name"],
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "iteration": int(self.iteration),
            "epoch": int(self.epoch_of(self.iteration)),
            "max_iters": int(self.max_iters),
            "rng": rng_state(),
            # The sampler is a function of (seed, iteration): its position is the iteration.
            "sampler": {"seed": int(self.cfg["train"]["seed"]), "iteration": int(self.iteration),
                        "batch_size": int(self.cfg["train"]["batch_size"]), "world_size": int(self.dist.world_size)},
            "best_miou": float(self.best_miou),
            "optimizer_steps": int(self.optimizer_steps),
            "train_samples": len(ds),
            "data_fingerprint": self.data_fingerprint,
            "data_samples": self.data_samples,
            "data_fingerprint_kind": self.data_fingerprint_kind,
            # float sums depend on the intra-op thread count: a resume runs with the same one
            "num_threads": int(torch.get_num_threads()),
            "val_pending": False,
            # Fine-tuning's starting point (model.init_from): what was loaded, from which file (sha256).
            "init_from": self.init_record,
        }

    def _check_savable(self, lr: float) -> None:
        """Never save a state that is worse than the one on disk: weights with NaN/inf (the loss is checked
        before each step, the weights after it only here), or a model no sample has trained."""
        bad = non_finite_tensor(self.model.state_dict()) or non_finite_tensor(self.optimizer.state_dict()["state"])
        if bad is not None:
            raise NonFiniteLossError(
                f"the weights became NaN or infinite ({bad}) by iteration {self.iteration} (lr {lr:.3g}); stopped without "
                f"saving: {self._held(' --set train.optimizer.lr=<lower> --force-override')}. "
                f"Lower train.optimizer.lr or set train.grad_clip")
        if self.optimizer_steps == 0:
            raise DataError(f"no training step was taken in {self.iteration} iteration(s): every sample was bad (see "
                            f"{self.bad_path}); nothing was saved. Fix or remove the bad files")

    def save(self, name: str, val_pending: bool = False) -> None:
        if self.dist.is_main:
            state = self.state()
            state["val_pending"] = val_pending
            try:
                save_checkpoint(state, self.run_dir / name)
            except OutputError as e:  # a full disk: the old file is intact, say how to go on
                raise OutputError(f"{e}; {self._held()}") from e
            if self._config_pending:  # a resumed run's config replaces the old one with its first checkpoint
                save_config(self.cfg, self.run_dir / "config.yaml")
                self._config_pending = False
            if self._log_pending is not None:
                self._commit_log()

    def validate(self) -> dict:
        from .evaluate import evaluate

        e = self.cfg["eval"]

        def on_bad(index, error):
            # last.pt was saved just before validating: nothing is lost when this stops the run
            if not self.skip_bad:
                raise DataError(f"{error} (validation sample {index}). {self._held()} once the file is fixed or "
                                f"removed; or pass --skip-bad to leave such samples out of validation") from None
            rec = {"iter": self.iteration, "split": "val", "index": index,
                   "files": [str(f) for f in self.val_set.files[index]], "reason": str(error)}
            if self.dist.is_main:
                self._append(self.bad_path, [rec])
                _say(f"lightseg train: skipped bad validation sample {index}, see {self.bad_path}")

        self.model.eval()
        try:
            # its own bar under the training bar, removed when done (evaluate shows it on rank 0 only)
            report = evaluate(self.model, self.val_set, self.device, flip=e["flip"], scales=e["scales"],
                              eval_size=self.cfg["data"]["eval_size"], batch_size=e["batch_size"],
                              distributed=self.dist.distributed, progress="val", on_bad=on_bad)
        finally:
            self.model.train()
        return report

    # ------------------------------------------------------------ the loop
    def _train_step(self, images, labels):
        """One update's forward and backward; returns (loss, {term: value}) detached."""
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            outputs = self.ddp_model(images)
            loss = self.criterion(outputs, labels)
        parts = {}
        if isinstance(loss, tuple):  # build_criterion returns (total, {part: value}) for logging
            loss, parts = loss
        self.scaler.scale(loss).backward()
        return loss.detach(), parts

    def _handle_bad(self, bad: list, images) -> bool:
        """Log/raise for samples that raised DataError. Returns True when this iteration has data."""
        if bad and not self.skip_bad:
            raise DataError(f"{bad[0].reason} (sample {bad[0].index} of the training set). Fix or remove the file, "
                            f"or pass --skip-bad to skip and log such samples to {self.bad_path}")
        if self.skip_bad:
            everyone = [b for part in du.all_gather_objects([b.record() for b in bad], self.dist) for b in part]
            if everyone and self.dist.is_main:
                self._append(self.bad_path, [{"iter": self.iteration + 1, **rec} for rec in everyone])
                _say(f"lightseg train: skipped {len(everyone)} bad sample(s), see {self.bad_path}")
            self._bad_train.update(rec["index"] for rec in everyone)
            n = len(self.train_set)
            if len(self._bad_train) > self.max_bad * n:
                raise DataError(f"{len(self._bad_train)} of {n} training samples are bad, more than --max-bad "
                                f"{self.max_bad:g} allows ({self.bad_path} lists them); stopped without saving: "
                                f"{self._held()} once the files are fixed")
            empty = torch.tensor([1.0 if images is None else 0.0])
            return du.all_reduce_sum(empty, self.dist).item() == 0  # every rank skips together
        return True

    def fit(self) -> Path:
        self.tb = None
        main = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 writes
        try:
            # One process per run folder: a second one exits naming the first, before it writes anything (or,
            # when the folder is the recipe's own, takes the next free NAME2, ...). A failed start is taken back.
            claim = claim_run_dir(self.run_dir, fresh=self.resume_ckpt is None, next_free=self.next_free_dir)
            how = (f"nothing was changed: continue with lightseg train --resume {self.resume_ckpt.parent}"
                   if self.resume_ckpt is not None else "nothing was kept")
            with _StopWhileStarting(how), claim if main else contextlib.nullcontext(self.run_dir) as run_dir:
                if run_dir != self.run_dir:
                    self._use_run_dir(run_dir)
                try:
                    if main:  # a link planted where the run writes would send a write out of the folder
                        refuse_links_in(self.run_dir, (*RUN_FILES, "tensorboard"))
                    if main:  # what a process killed during a save left (we hold the lock: nobody is writing)
                        remove_stale_temp_files(self.run_dir, RUN_FILES)
                    if self.resume_ckpt is not None:
                        self._resume_state = load_checkpoint(self.resume_ckpt)
                        self._check_resume_config(self._resume_state)
                        # read (and refuse, naming the line) before anything is written: see _commit_log
                        self._resume_log = read_run_log(self.log_path) if main else []
                    self._build()
                    if self.cfg["train"]["tensorboard"] and self.dist.is_main:
                        from .tensorboard import TensorBoardLogger

                        self.tb = TensorBoardLogger(output_subdir(self.run_dir / "tensorboard"),
                                                    purge_step=self.iteration + 1 if self.resume_ckpt is not None else None)
                    try:
                        return self._fit()
                    except LightsegError as e:
                        if main and self.resume_ckpt is None and not isinstance(e, TrainingInterrupted):
                            self._forget_unsaved_run()
                        raise
                finally:  # closed while the folder is still held (a failed start's files are then taken back)
                    if self.tb is not None:
                        self.tb.close()
                        self.tb = None
        finally:
            if getattr(self, "_threads_before", None):
                torch.set_num_threads(self._threads_before)
            if hasattr(self, "dist"):
                du.teardown(self.dist)

    def _forget_unsaved_run(self) -> None:
        """A fresh run refused before its first checkpoint (a batch that cannot be formed, a loss that is NaN
        at once, ...) removes the config.yaml and log.jsonl it wrote: with nothing to continue from they would
        only make the next run refuse the folder. bad_samples.jsonl stays: the refusal points to it."""
        if (self.run_dir / "last.pt").exists():
            return
        for name in ("config.yaml", "log.jsonl"):
            with contextlib.suppress(FileNotFoundError):
                (self.run_dir / name).unlink()

    def _fit(self) -> Path:
        from tqdm import tqdm

        t = self.cfg["train"]
        # A fresh run writes its config now. A resumed run keeps the old config.yaml until it has saved a
        # checkpoint of its own, so a resume that fails at once (bad data, ...) leaves the run dir untouched.
        self._config_pending = self.resume_ckpt is not None
        # Likewise its log records wait in memory for its first save (see _commit_log).
        self._log_pending = [] if self.resume_ckpt is not None else None
        self.resumed_from, self.resumed_val_pending = self.iteration, self.val_pending
        self._bad_train: set = set()
        if self.dist.is_main and not self._config_pending:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, self.run_dir / "config.yaml")
        if self.dist.is_main and self._val_bad_records:
            self._append(self.bad_path, [{"iter": self.iteration, **r} for r in self._val_bad_records])
            print(f"lightseg train: left {len(self._val_bad_records)} bad validation sample(s) out, see {self.bad_path}",
                  file=sys.stderr)
        self.t_start = time.time()
        if self.val_pending and self.val_set is not None:  # it stopped while validating: validate that state now (exact)
            self._validate_and_keep_best()
            self.save("last.pt")
        if self.scheduler.converged:
            if self.dist.is_main:
                print(f"lightseg train: {self.run_dir} has ended at iteration {self.iteration}: {self._converged_text()}; "
                      f"to train further: lightseg train --resume {self.run_dir} --set "
                      f"train.scheduler.plateau_max_reductions=N (N above {self.scheduler.plateau_reductions}: the stall "
                      f"that ended it then lowers the rate)",
                      file=sys.stderr)
            return self.run_dir
        if self.iteration >= self.max_iters:
            if self.dist.is_main:
                print(f"lightseg train: {self.run_dir} is already at iteration {self.iteration} of {self.max_iters}; "
                      f"to train further: lightseg train --resume {self.run_dir} --set train.iters=N --force-override "
                      f"(a longer schedule than the run had)", file=sys.stderr)
            return self.run_dir

        if not self.val_interval and self.dist.is_main:
            print("lightseg train: validation is off (train.val_interval: 0 / --no-val): no best.pt will be written; "
                  f"evaluate {self.run_dir / 'last.pt'} with lightseg eval", file=sys.stderr)
        self.ddp_model.train()
        bar = tqdm(total=self.max_iters, initial=self.iteration, file=sys.stderr, disable=not self.dist.is_main,
                   dynamic_ncols=True, mininterval=1.0, desc=f"train {self.cfg['model']['name']}")
        loss_sum, loss_count, seen, t_log = 0.0, 0, 0, time.perf_counter()
        part_sums: dict = {}
        t_start = self.t_start
        params = [p for p in self.model.parameters() if p.requires_grad]
        with _StopRequest() as stop, bar:
            for images, labels, bad in self._loader():
                has_data = self._handle_bad(bad, images)
                it = self.iteration  # 0-based index of this update
                lr = self.scheduler.step(it)
                # Dropout & co. depend only on (seed, iteration, rank): exact on resume.
                torch.manual_seed(derive_seed(t["seed"], it, self.dist.rank, 0xD80))
                if has_data:
                    loss, parts = self._train_step(images, labels)
                    # one all-reduce carries the loss and the stop request, so all ranks agree
                    packed = torch.tensor([float(loss), 1.0 if stop.signal_name else 0.0], dtype=torch.float64)
                    du.all_reduce_sum(packed, self.dist)
                    loss_value = packed[0].item() / self.dist.world_size
                    if not math.isfinite(loss_value):
                        raise NonFiniteLossError(
                            f"the loss is {loss_value} at iteration {it + 1} (lr {lr:.3g}); stopped without saving: "
                            f"{self._held(' --set train.optimizer.lr=<lower> --force-override')}. "
                            f"Lower train.optimizer.lr, set train.grad_clip, or check the data/labels")
                    if t["grad_clip"]:
                        self.scaler.unscale_(self.optimizer)
                        torch.nn.utils.clip_grad_norm_(params, t["grad_clip"])
                    try:
                        self.scaler.step(self.optimizer)
                    except RuntimeError as e:  # torch's optimisers refuse a step size beyond float32
                        if "overflow" not in str(e):
                            raise
                        raise NonFiniteLossError(
                            f"the optimiser step of iteration {it + 1} overflows float32 (lr {lr:.3g}); stopped without "
                            f"saving: {self._held(' --set train.optimizer.lr=<lower> --force-override')}. "
                            f"Lower train.optimizer.lr") from None
                    self.scaler.update()
                    self.scheduler.on_train_loss(it, loss_value)
                    self.optimizer_steps += 1
                    loss_sum += loss_value
                    loss_count += 1
                    for name, value in parts.items():
                        part_sums[name] = part_sums.get(name, 0.0) + float(value)
                    seen += images.shape[0] * self.dist.world_size
                    stop_requested = packed[1].item() > 0
                else:
                    stop_requested = bool(stop.signal_name)
                self.iteration = it + 1
                # the planned end, or the plateau schedule's (train.scheduler.plateau_max_reductions)
                end = self.iteration == self.max_iters or self.scheduler.converged

                if self.iteration % t["log_interval"] == 0 or end:
                    now = time.perf_counter()
                    ips = seen / max(now - t_log, 1e-9)
                    if loss_count:
                        self._log({"kind": "train", "iter": self.iteration, "epoch": self.epoch_of(self.iteration),
                                   "time": round(time.time() - t_start, 3), "loss": loss_sum / loss_count,
                                   "lr": lr, "images_per_s": ips})
                        if self.tb is not None:  # the loss terms are rank 0's (the total is averaged over ranks)
                            self.tb.train(self.iteration, loss_sum / loss_count, lr,
                                          {k: v / loss_count for k, v in part_sums.items()}, ips)
                        bar.set_postfix(loss=f"{loss_sum / loss_count:.4f}", lr=f"{lr:.2e}", img_s=f"{ips:.1f}")
                    loss_sum, loss_count, seen, t_log = 0.0, 0, 0, now
                    part_sums = {}
                bar.update(1)

                do_val = bool(self.val_interval) and (self.iteration % self.val_interval == 0 or end)
                do_save = self.iteration % t["ckpt_interval"] == 0 or end or stop_requested
                if (do_val or do_save) and self.dist.distributed:
                    # BatchNorm running statistics are per process under DDP: take rank 0's so that
                    # every rank validates, and rank 0 saves, the same model.
                    for buf in self.model.buffers():
                        torch.distributed.broadcast(buf, src=0)
                if do_val or do_save:
                    self._check_savable(lr)
                if do_val:
                    # Save first: a fault found while validating then costs nothing. The mark makes a resume
                    # from this file validate before training on, so that it stays exact.
                    self.save("last.pt", val_pending=True)
                    self._validate_and_keep_best()
                if do_save or do_val:
                    self.save("last.pt")
                if self.scheduler.converged:  # set by this iteration's epoch end or validation
                    if self.dist.is_main:
                        _say(f"lightseg train: {self._converged_text()}; the run ends here, at iteration "
                             f"{self.iteration} of the {self.max_iters} planned")
                    break
                if stop_requested:
                    how = f"lightseg train --resume {self.run_dir}"  # the run's own config: continues exactly
                    raise TrainingInterrupted(
                        f"stopped by {stop.signal_name or 'a signal on another rank'} after iteration {self.iteration} of "
                        f"{self.max_iters}; {self.run_dir / 'last.pt'} holds that state. Continue with: {how}")
                if self.iteration >= self.max_iters:
                    break
        return self.run_dir

    def _converged_text(self) -> str:
        s = self.scheduler
        what = "the epoch's mean training loss" if s.plateau_monitor == "train_loss" else "the val mIoU"
        return (f"the plateau schedule has converged: its rate was reduced {s.plateau_reductions} times "
                f"(train.scheduler.plateau_max_reductions: {s.max_reductions}) and {what} stalled again")

    def _validate_and_keep_best(self) -> None:
        report = self.validate()
        self.last_val_report = report
        miou = float(report["miou"] or 0.0)  # None: no labelled pixel in the validation set
        self.scheduler.on_validation(miou)
        self._log({"kind": "val", "iter": self.iteration, "time": round(time.time() - self.t_start, 3), "miou": miou,
                   "pixel_acc": report.get("pixel_acc"),
                   "iou": {k: (None if v is None else float(v)) for k, v in dict(report.get("iou", {})).items()}})
        if miou > self.best_miou:
            self.best_miou = miou
            self.save("best.pt")
        if self.tb is not None:
            from .tensorboard import validation_overlays

            self.tb.val(self.iteration, report, validation_overlays(self.model, self.val_set, self.device,
                                                                     getattr(self.val_set, "palette", None) or self._palette()))
        if self.dist.is_main:
            _say(f"lightseg train: iteration {self.iteration}: val mIoU {miou:.4f} (best {self.best_miou:.4f})")

    def _palette(self):
        from ..viz import palette_for

        return palette_for(min(int(self.cfg["model"]["num_classes"]), 255))


def fit(cfg: dict, resume=None, skip_bad: bool = False, **kwargs) -> Path:
    """Train from a resolved config dict (see ``lightseg.config.load_config``); returns the run directory."""
    return Trainer(cfg, resume=resume, skip_bad=skip_bad, **kwargs).fit()


def run_config(resume, overrides=()) -> dict:
    """The config a run was trained with (saved in its checkpoint, else its config.yaml), ``overrides`` applied;
    ``output_dir`` is the run folder itself (it may have been moved)."""
    ckpt_path, run_dir = _resolve_resume(resume, None)
    saved = load_checkpoint(ckpt_path).get("config")
    if saved is not None:
        cfg = load_config(ckpt_path, overrides, recipe=saved)
    elif (run_dir / "config.yaml").is_file():
        cfg = load_config(run_dir / "config.yaml", overrides)
    else:
        raise ConfigError(f"{ckpt_path} holds no config and {run_dir / 'config.yaml'} is missing; pass the recipe it was "
                          f"trained with: lightseg train RECIPE --resume {run_dir}")
    cfg["output_dir"] = str(run_dir)
    return cfg


def train(config_path=None, overrides=(), resume=None, skip_bad: bool = False, force_override: bool = False,
          max_bad: float = MAX_BAD_SHARE) -> Path:
    """`lightseg train`: load the recipe, apply ``--set`` overrides, train (or resume); returns the run dir.

    Without ``config_path``, ``resume`` (a run folder or .pt) continues the run with its own saved config.
    A new run whose ``output_dir`` comes from the recipe or the default (no ``--set output_dir=``) and holds
    an earlier run writes to ``NAME2``, ``NAME3``, ...; a folder the user named is refused instead."""
    if config_path is None:
        if not resume:
            raise ConfigError("lightseg train needs a RECIPE (a YAML file such as configs/mininet_95k_camvid.yaml), "
                              "or --resume RUN_DIR to continue a run with its own settings")
        cfg = run_config(resume, overrides)
    else:
        cfg = load_config(config_path, overrides)
    named = any(parse_override(text)[0] == "output_dir" for text in overrides or ())
    run_dir = Trainer(cfg, resume=resume, skip_bad=skip_bad, config_path=config_path, force_override=force_override,
                      max_bad=max_bad, next_free_dir=not named).fit()
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"lightseg train: done, run directory {run_dir}", file=sys.stderr)
    return run_dir

"""The training engine: `lightseg train CONFIG [--set k=v] [--resume [RUN_DIR|CKPT]] [--skip-bad]`.

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
``ckpt_interval`` iterations, at the end and on SIGINT/SIGTERM), ``best.pt`` (best validation mIoU),
``bad_samples.jsonl`` (``--skip-bad``). Under torchrun only rank 0 writes.
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

from ..checkpoint import atomic_write_bytes, load_checkpoint, load_model_weights, save_checkpoint
from ..config import load_config, save_config
from ..errors import CheckpointError, ConfigError, DataError, LightsegError
from . import distributed as du
from .optim import IterationScheduler, build_optimizer


class NonFiniteLossError(LightsegError):
    """The loss became NaN or infinite: the run stops without writing a checkpoint."""


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


# ---------------------------------------------------------------- trainer
def _resolve_resume(resume, output_dir: Path) -> tuple[Path, Path]:
    """-> (checkpoint path, run dir) for ``--resume`` given as 'auto', a run directory or a .pt file."""
    if resume in (True, "auto"):
        run_dir = output_dir
        ckpt = run_dir / "last.pt"
    else:
        p = Path(resume)
        if p.is_dir():
            run_dir, ckpt = p, p / "last.pt"
        else:
            run_dir, ckpt = p.parent, p
    if not ckpt.is_file():
        raise CheckpointError(f"--resume: no checkpoint at {str(ckpt)!r}; pass the run directory that holds last.pt "
                              f"(or the .pt file), or start without --resume")
    return ckpt, run_dir


class Trainer:
    """Builds model, data, optimiser, schedule and criterion from a resolved config; ``fit()`` trains."""

    def __init__(self, cfg: dict, resume=None, skip_bad: bool = False, config_path=None):
        self.cfg = cfg
        self.skip_bad = skip_bad
        self.config_path = config_path
        self.resume = resume
        self.run_dir = Path(cfg["output_dir"])
        self.resume_ckpt = None
        if resume:
            self.resume_ckpt, self.run_dir = _resolve_resume(resume, self.run_dir)
        elif (self.run_dir / "last.pt").exists():
            raise ConfigError(f"output_dir {str(self.run_dir)!r} already holds last.pt of an earlier run; continue it with "
                              f"--resume, or write elsewhere with --set output_dir=runs/NEW_NAME")
        self.log_path = self.run_dir / "log.jsonl"
        self.bad_path = self.run_dir / "bad_samples.jsonl"

    # ------------------------------------------------------------ building blocks
    def _build(self):
        cfg, t = self.cfg, self.cfg["train"]
        self.dist = du.setup(t["device"])
        self.device = self.dist.device
        if t["deterministic"]:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        else:
            torch.backends.cudnn.benchmark = True
        seed_everything(t["seed"])

        from ..data import build_dataset
        from ..models import create_model

        self.train_set = build_dataset(cfg["data"], cfg["data"]["train_split"], train=True)
        # train.val_interval 0 (--no-val): no validation set is needed, and none is read.
        validating = bool(t["val_every_epochs"] or t["val_interval"])
        self.val_set = build_dataset(cfg["data"], cfg["data"]["val_split"], train=False) if validating else None
        n_cls = cfg["model"]["num_classes"]
        if getattr(self.train_set, "num_classes", n_cls) != n_cls:
            raise ConfigError(f"model.num_classes is {n_cls} but the {cfg['data']['name']} dataset at {cfg['data']['root']!r} "
                              f"has {self.train_set.num_classes} classes; set model.num_classes={self.train_set.num_classes}")

        torch.manual_seed(t["seed"])  # the same initial weights on every rank and every run
        model = create_model(cfg["model"]["name"], num_classes=n_cls,
                             pretrained_backbone=cfg["model"]["pretrained_backbone"], **(cfg["model"]["kwargs"] or {}))
        if self.dist.distributed and t["sync_bn"]:
            if self.device.type == "cuda":
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            elif self.dist.is_main:  # PyTorch's SyncBatchNorm is CUDA-only
                print("lightseg train: train.sync_bn needs CUDA; using per-process BatchNorm on CPU", file=sys.stderr)
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
        self.iters_per_epoch = max(1, len(self.train_set) // self.global_batch)
        self.max_iters = t["iters"] if t["iters"] is not None else t["epochs"] * self.iters_per_epoch
        self.val_interval = (t["val_every_epochs"] * self.iters_per_epoch) if t["val_every_epochs"] else t["val_interval"]

        self.optimizer = build_optimizer(model, t["optimizer"])
        self.scheduler = IterationScheduler(self.optimizer, t["scheduler"], t["optimizer"]["lr"], self.max_iters,
                                            self.iters_per_epoch)
        self.amp_dtype = None
        if t["amp"] and self.device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if t["amp"] == "bf16" else torch.float16
        elif t["amp"] and self.dist.is_main:
            print(f"lightseg train: train.amp={t['amp']} is for CUDA; training in float32 on {self.device}", file=sys.stderr)
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
        if self.resume_ckpt is not None:
            self._load_resume()

    def _load_resume(self):
        ckpt = load_checkpoint(self.resume_ckpt)
        name = self.cfg["model"]["name"]
        if ckpt.get("model_name") not in (None, name):
            raise CheckpointError(f"{self.resume_ckpt}: trained model {ckpt['model_name']!r}, but the recipe builds {name!r}; "
                                  f"resume with the recipe of that run ({self.run_dir / 'config.yaml'})")
        load_model_weights(self.model, ckpt, path_for_errors=str(self.resume_ckpt))
        for key in ("optimizer", "iteration"):
            if key not in ckpt:
                raise CheckpointError(f"{self.resume_ckpt}: holds weights only (no {key!r}); it cannot be resumed. "
                                      f"Start a new run (and load the weights with model.pretrained_backbone or in Python)")
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
        if self.dist.is_main:
            self._truncate_log(self.iteration)

    def _truncate_log(self, iteration: int) -> None:
        """Drop records that an interrupted run wrote after its last checkpoint (they will be redone)."""
        if not self.log_path.is_file():
            return
        keep = []
        for line in self.log_path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            if rec.get("iter", 0) <= iteration:
                keep.append(json.dumps(rec))
        text = ("\n".join(keep) + "\n" if keep else "").encode()
        atomic_write_bytes(self.log_path, lambda f: f.write(text))

    def _loader(self):
        d, t = self.cfg["data"], self.cfg["train"]
        sampler = InfiniteBatchSampler(len(self.train_set), t["batch_size"], t["seed"], self.dist.rank,
                                       self.dist.world_size, start_iter=self.iteration)
        return DataLoader(SeededSamples(self.train_set), batch_sampler=sampler, num_workers=d["num_workers"],
                          collate_fn=collate_with_bad, pin_memory=self.device.type == "cuda",
                          worker_init_fn=_worker_init,
                          # DataLoader draws its workers' base seed from this, not from the global generator
                          generator=torch.Generator().manual_seed(t["seed"]))

    # ------------------------------------------------------------ records and checkpoints
    def _log(self, record: dict) -> None:
        if not self.dist.is_main:
            return
        with open(self.log_path, "a") as f:
            f.write(json.dumps(record) + "\n")

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
        }

    def save(self, name: str) -> None:
        if self.dist.is_main:
            save_checkpoint(self.state(), self.run_dir / name)
            if self._config_pending:  # a resumed run's config replaces the old one with its first checkpoint
                save_config(self.cfg, self.run_dir / "config.yaml")
                self._config_pending = False

    def validate(self) -> dict:
        from .evaluate import evaluate

        e = self.cfg["eval"]
        self.model.eval()
        try:
            report = evaluate(self.model, self.val_set, self.device, flip=e["flip"], scales=e["scales"],
                              eval_size=self.cfg["data"]["eval_size"], batch_size=e["batch_size"],
                              distributed=self.dist.distributed, progress=False)
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
                with open(self.bad_path, "a") as f:
                    for rec in everyone:
                        f.write(json.dumps({"iter": self.iteration + 1, **rec}) + "\n")
                print(f"lightseg train: skipped {len(everyone)} bad sample(s), see {self.bad_path}", file=sys.stderr)
            empty = torch.tensor([1.0 if images is None else 0.0])
            return du.all_reduce_sum(empty, self.dist).item() == 0  # every rank skips together
        return True

    def fit(self) -> Path:
        self.tb = None
        try:
            self._build()
            if self.cfg["train"]["tensorboard"] and self.dist.is_main:
                from .tensorboard import TensorBoardLogger

                self.tb = TensorBoardLogger(self.run_dir / "tensorboard",
                                            purge_step=self.iteration + 1 if self.resume_ckpt is not None else None)
            return self._fit()
        finally:
            if self.tb is not None:
                self.tb.close()
            if hasattr(self, "dist"):
                du.teardown(self.dist)

    def _fit(self) -> Path:
        from tqdm import tqdm

        t = self.cfg["train"]
        # A fresh run writes its config now. A resumed run keeps the old config.yaml until it has saved a
        # checkpoint of its own, so a resume that fails at once (bad data, ...) leaves the run dir untouched.
        self._config_pending = self.resume_ckpt is not None
        if self.dist.is_main and not self._config_pending:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, self.run_dir / "config.yaml")
        if self.iteration >= self.max_iters:
            if self.dist.is_main:
                print(f"lightseg train: {self.run_dir} is already at iteration {self.iteration} of {self.max_iters}; "
                      f"raise train.iters to train further", file=sys.stderr)
            return self.run_dir

        if not self.val_interval and self.dist.is_main:
            print("lightseg train: validation is off (train.val_interval: 0 / --no-val): no best.pt will be written; "
                  f"evaluate {self.run_dir / 'last.pt'} with lightseg eval", file=sys.stderr)
        self.ddp_model.train()
        bar = tqdm(total=self.max_iters, initial=self.iteration, file=sys.stderr, disable=not self.dist.is_main,
                   dynamic_ncols=True, mininterval=1.0, desc=f"train {self.cfg['model']['name']}")
        loss_sum, loss_count, seen, t_log = 0.0, 0, 0, time.perf_counter()
        part_sums: dict = {}
        self.t_start = t_start = time.time()
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
                        last = self.run_dir / "last.pt"
                        held = (f"{last} holds the last good state (iteration {load_checkpoint(last).get('iteration')})"
                                if last.is_file() else f"no checkpoint was written before it (ckpt_interval {t['ckpt_interval']})")
                        raise NonFiniteLossError(
                            f"the loss is {loss_value} at iteration {it + 1} (lr {lr:.3g}); stopped without saving: {held}. "
                            f"Lower train.optimizer.lr, set train.grad_clip, or check the data/labels; resume with --resume")
                    if t["grad_clip"]:
                        self.scaler.unscale_(self.optimizer)
                        torch.nn.utils.clip_grad_norm_(params, t["grad_clip"])
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                    self.scheduler.on_train_loss(it, loss_value)
                    loss_sum += loss_value
                    loss_count += 1
                    for name, value in parts.items():
                        part_sums[name] = part_sums.get(name, 0.0) + float(value)
                    seen += images.shape[0] * self.dist.world_size
                    stop_requested = packed[1].item() > 0
                else:
                    stop_requested = bool(stop.signal_name)
                self.iteration = it + 1

                if self.iteration % t["log_interval"] == 0 or self.iteration == self.max_iters:
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

                do_val = bool(self.val_interval) and (self.iteration % self.val_interval == 0 or self.iteration == self.max_iters)
                do_save = self.iteration % t["ckpt_interval"] == 0 or self.iteration == self.max_iters or stop_requested
                if (do_val or do_save) and self.dist.distributed:
                    # BatchNorm running statistics are per process under DDP: take rank 0's so that
                    # every rank validates, and rank 0 saves, the same model.
                    for buf in self.model.buffers():
                        torch.distributed.broadcast(buf, src=0)
                if do_val:
                    self._validate_and_keep_best()
                if do_save:
                    self.save("last.pt")
                if stop_requested:
                    how = f"lightseg train {self.config_path or 'CONFIG'} --resume {self.run_dir}"
                    raise TrainingInterrupted(
                        f"stopped by {stop.signal_name or 'a signal on another rank'} after iteration {self.iteration} of "
                        f"{self.max_iters}; {self.run_dir / 'last.pt'} holds that state. Continue with: {how}")
                if self.iteration >= self.max_iters:
                    break
        return self.run_dir

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
            print(f"lightseg train: iteration {self.iteration}: val mIoU {miou:.4f} (best {self.best_miou:.4f})", file=sys.stderr)

    def _palette(self):
        from ..viz import palette_for

        return palette_for(min(int(self.cfg["model"]["num_classes"]), 255))


def fit(cfg: dict, resume=None, skip_bad: bool = False) -> Path:
    """Train from a resolved config dict (see ``lightseg.config.load_config``); returns the run directory."""
    return Trainer(cfg, resume=resume, skip_bad=skip_bad).fit()


def train(config_path, overrides=(), resume=None, skip_bad: bool = False) -> Path:
    """`lightseg train`: load the recipe, apply ``--set`` overrides, train (or resume); returns the run dir."""
    cfg = load_config(config_path, overrides)
    run_dir = Trainer(cfg, resume=resume, skip_bad=skip_bad, config_path=config_path).fit()
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"lightseg train: done, run directory {run_dir}", file=sys.stderr)
    return run_dir

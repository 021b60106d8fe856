"""Optimisers with per-group learning rates and iteration-based learning-rate schedules.

The schedule is a pure function of the iteration (plus, for ``plateau``, a factor that changes on
validation), so resuming a run at any iteration gives the same learning rates as never stopping.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..errors import ConfigError


def param_groups(model: nn.Module, lr: float, backbone_lr_mult: float = 1.0) -> list[dict]:
    """Two groups: the parameters of ``model.backbone`` (lr x backbone_lr_mult) and the rest.

    ATONet trains its ImageNet backbone at a tenth of the decoder's rate (backbone_lr_mult 0.1).
    The head group comes first, so ``optimizer.param_groups[0]['lr']`` is the rate that is logged.
    """
    backbone = getattr(model, "backbone", None)
    backbone_ids = {id(p) for p in backbone.parameters()} if isinstance(backbone, nn.Module) else set()
    head = [p for p in model.parameters() if p.requires_grad and id(p) not in backbone_ids]
    body = [p for p in model.parameters() if p.requires_grad and id(p) in backbone_ids]
    groups = [{"params": head, "lr": lr, "lr_mult": 1.0, "name": "head"}]
    if body:
        groups.append({"params": body, "lr": lr * backbone_lr_mult, "lr_mult": float(backbone_lr_mult), "name": "backbone"})
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, opt_cfg: dict) -> torch.optim.Optimizer:
    name = opt_cfg["name"]
    lr = float(opt_cfg["lr"])
    groups = param_groups(model, lr, float(opt_cfg.get("backbone_lr_mult", 1.0)))
    wd = float(opt_cfg.get("weight_decay", 0.0))
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=float(opt_cfg["momentum"]), weight_decay=wd,
                               nesterov=bool(opt_cfg.get("nesterov", False)))
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=tuple(opt_cfg["betas"]), weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(opt_cfg["betas"]), weight_decay=wd)
    raise ConfigError(f"train.optimizer.name: unknown optimiser {name!r}; use sgd, adam or adamw")


class IterationScheduler:
    """Sets every group's lr to ``base_lr * lr_mult * factor(iteration)`` before each step.

    * ``poly``: ``(1 - it / max_iters) ** power`` (power 0.9, the DeepLab/MiniNet schedule);
    * ``cosine``: half a cosine from the base lr down to ``min_lr`` (ATONet: 1e-6);
    * ``constant``;
    * ``plateau``: constant, multiplied by ``plateau_factor`` (0.5: RDS-Net halves it) when the monitored
      value has not improved for ``plateau_patience`` checks. ``plateau_monitor``: ``val_miou`` (checked at
      each validation) or ``train_loss`` (the epoch's mean training loss, checked at each epoch's end:
      RDS-Net's "when the loss is stagnant").
    * warm-up (any of them): the first ``warmup_iters`` iterations ramp linearly from
      ``warmup_start x`` to the full rate (the "slow start" of the ShuffleNetV2+DPC recipe).
    ``min_lr`` is a floor for poly and cosine.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, sched_cfg: dict, base_lr: float, max_iters: int,
                 iters_per_epoch: int = 1):
        self.optimizer = optimizer
        self.name = sched_cfg["name"]
        if self.name not in ("poly", "cosine", "constant", "plateau"):
            raise ConfigError(f"train.scheduler.name: unknown schedule {self.name!r}; use poly, cosine, constant or plateau")
        self.base_lr = float(base_lr)
        self.max_iters = int(max_iters)
        self.power = float(sched_cfg.get("power", 0.9))
        self.min_lr = float(sched_cfg.get("min_lr", 0.0))
        self.warmup_iters = int(sched_cfg.get("warmup_iters", 0))
        self.warmup_start = float(sched_cfg.get("warmup_start", 0.1))
        self.plateau_factor = float(sched_cfg.get("plateau_factor", 0.5))
        self.plateau_patience = int(sched_cfg.get("plateau_patience", 3))
        self.plateau_monitor = sched_cfg.get("plateau_monitor", "val_miou")
        if self.plateau_monitor not in ("val_miou", "train_loss"):
            raise ConfigError(f"train.scheduler.plateau_monitor: {self.plateau_monitor!r}; use val_miou or train_loss")
        self.iters_per_epoch = max(1, int(iters_per_epoch))
        # plateau state (the only state that is not a function of the iteration): the scale, the best value
        # seen (higher is better: the loss is stored negated), checks without improvement, and the current
        # epoch's running loss sum and count (train_loss monitor; saved so that resuming mid-epoch is exact).
        self.plateau_scale = 1.0
        self.best_metric = -math.inf
        self.num_bad = 0
        self.epoch_loss_sum = 0.0
        self.epoch_loss_count = 0

    def lr_at(self, iteration: int) -> float:
        """The (head group's) learning rate used for the update of 0-based ``iteration``."""
        t = min(max(iteration, 0), self.max_iters) / max(self.max_iters, 1)
        base, floor = self.base_lr, min(self.min_lr, self.base_lr)
        if self.name == "poly":
            lr = floor + (base - floor) * (1.0 - t) ** self.power
        elif self.name == "cosine":
            lr = floor + (base - floor) * 0.5 * (1.0 + math.cos(math.pi * t))
        elif self.name == "plateau":
            lr = base * self.plateau_scale
        else:
            lr = base
        if self.warmup_iters > 0 and iteration < self.warmup_iters:
            lr *= self.warmup_start + (1.0 - self.warmup_start) * iteration / self.warmup_iters
        return lr

    def step(self, iteration: int) -> float:
        lr = self.lr_at(iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
        return lr

    def on_validation(self, metric: float) -> None:
        """A validation mIoU (plateau bookkeeping when it is the monitored value)."""
        if self.plateau_monitor == "val_miou":
            self._plateau_check(metric)

    def on_train_loss(self, iteration: int, loss: float) -> None:
        """The training loss of 0-based ``iteration``; at an epoch's last iteration the epoch's mean loss
        is the monitored value when ``plateau_monitor`` is ``train_loss``."""
        if self.plateau_monitor != "train_loss":
            return
        self.epoch_loss_sum += float(loss)
        self.epoch_loss_count += 1
        if (iteration + 1) % self.iters_per_epoch == 0:
            mean = self.epoch_loss_sum / self.epoch_loss_count
            self.epoch_loss_sum, self.epoch_loss_count = 0.0, 0
            self._plateau_check(-mean)

    def _plateau_check(self, metric: float) -> None:
        """Plateau bookkeeping (every schedule keeps it; only ``plateau`` acts on it). Higher is better."""
        if metric > self.best_metric + 1e-6:
            self.best_metric = float(metric)
            self.num_bad = 0
            return
        self.num_bad += 1
        if self.name == "plateau" and self.num_bad >= self.plateau_patience:
            self.plateau_scale *= self.plateau_factor
            self.num_bad = 0

    def state_dict(self) -> dict:
        return {"name": self.name, "plateau_scale": float(self.plateau_scale),
                "best_metric": float(self.best_metric), "num_bad": int(self.num_bad),
                "epoch_loss_sum": float(self.epoch_loss_sum), "epoch_loss_count": int(self.epoch_loss_count)}

    def load_state_dict(self, state: dict) -> None:
        self.plateau_scale = float(state["plateau_scale"])
        self.best_metric = float(state["best_metric"])
        self.num_bad = int(state["num_bad"])
        self.epoch_loss_sum = float(state.get("epoch_loss_sum", 0.0))
        self.epoch_loss_count = int(state.get("epoch_loss_count", 0))

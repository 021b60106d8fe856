"""Optimisers with per-group learning rates, and the learning-rate schedules as torch's own schedulers.

``train.scheduler.name``:

* ``poly``: ``torch.optim.lr_scheduler.PolynomialLR``, ``base * (1 - it / max_iters) ** power`` (power 0.9,
  the DeepLab/MiniNet schedule);
* ``cosine``: ``CosineAnnealingLR``, half a cosine from the base rate down to ``min_lr`` (ATONet: 1e-6);
* ``constant``;
* ``plateau``: constant, multiplied by ``plateau_factor`` (0.5: RDS-Net halves it) by ``ReduceLROnPlateau``
  when the monitored value has not improved for ``plateau_patience`` checks. ``plateau_monitor``:
  ``val_miou`` (checked at each validation) or ``train_loss`` (the epoch's mean training loss, checked at
  each epoch's end: RDS-Net's "when the loss is stagnant"). ``plateau_max_reductions`` ends the schedule:
  once the rate has been reduced that many times, the next stall sets ``converged`` instead of reducing it
  again, and the trainer ends the run there (null: it runs to its planned end).
* warm-up (any of them), over the first ``warmup_iters`` iterations, multiplied with the schedule (both
  step every iteration: ``lr = base x warm-up x schedule``, the schedule counting from iteration 0):
  ``warmup_mode: linear``, ``LinearLR`` from ``warmup_start x`` to the full rate; ``constant``,
  ``ConstantLR``: ``warmup_start x`` throughout, then the full rate (DeepLab's "slow start",
  ``tf.where(global_step < slow_start_step, slow_start_lr, lr)``: ShuffleNetV2+DPC's first 186 steps).

``IterationScheduler`` drives them by iteration: ``step(it)`` sets the rates of update ``it`` and returns
the head group's. torch's schedulers compute each rate from the previous one, so the state (the
schedulers' and the optimiser's rates, both in the checkpoint) is what makes a resumed run take the
rates of a run that never stopped.
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn as nn
from torch.optim import lr_scheduler

from ..errors import ConfigError

SCHEDULES = ("poly", "cosine", "constant", "plateau")
WARMUP_MODES = ("linear", "constant")


BACKBONE_PARAMS = ("all", "stage_convs")
WEIGHT_DECAY_ON = ("all", "conv_weights")


def _is_stage_conv(name: str) -> bool:
    """A conv weight inside a ResNet-style stage (``layer1.0.conv1.weight``, ``layer2.0.downsample.0.weight``):
    the parameters the ATONet authors train at lr/10 (``'layer' in k and ('conv' in k or 'downsample.0' in k)``)."""
    return name.startswith("layer") and ("conv" in name or "downsample.0" in name)


def _decays(module: nn.Module, pname: str, weight_decay_on: str) -> bool:
    """Whether a parameter gets weight decay. ``conv_weights``: the weights of dense convolutions and linear
    layers only, as TF-slim's ``weights_regularizer`` on ``slim.conv2d`` (no BN, no biases, no depthwise)."""
    if weight_decay_on == "all":
        return True
    if pname != "weight":
        return False
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and not (module.groups > 1 and module.groups == module.in_channels)


def param_groups(model: nn.Module, lr: float, backbone_lr_mult: float = 1.0, weight_decay: float = 0.0,
                 backbone_weight_decay_mult: float = 1.0, backbone_params: str = "all",
                 weight_decay_on: str = "all") -> list[dict]:
    """Parameter groups: the head, then the backbone (lr x ``backbone_lr_mult``, weight decay x
    ``backbone_weight_decay_mult``), each split off into a no-decay group where ``weight_decay_on`` exempts
    some parameters (groups that would be empty are left out).

    ``backbone_params``: ``all`` of ``model.backbone`` takes the backbone rate; ``stage_convs`` only its
    stages' conv weights (the ATONet authors' rule; the stem and every BN keep the head's rate).
    ATONet trains its ImageNet backbone at a tenth of the decoder's rate (backbone_lr_mult 0.1).
    The head group comes first, so ``optimizer.param_groups[0]['lr']`` is the rate that is logged. With the
    defaults the groups are exactly ``head`` and ``backbone``, so older checkpoints resume.
    """
    if backbone_params not in BACKBONE_PARAMS:
        raise ConfigError(f"train.optimizer.backbone_params must be one of {', '.join(BACKBONE_PARAMS)}, got {backbone_params!r}")
    if weight_decay_on not in WEIGHT_DECAY_ON:
        raise ConfigError(f"train.optimizer.weight_decay_on must be one of {', '.join(WEIGHT_DECAY_ON)}, got {weight_decay_on!r}")
    backbone = getattr(model, "backbone", None)
    in_backbone = {}
    if isinstance(backbone, nn.Module):
        for name, p in backbone.named_parameters():
            in_backbone[id(p)] = backbone_params == "all" or _is_stage_conv(name)
    buckets: dict[tuple[bool, bool], list] = {}
    seen = set()  # a shared parameter goes in one group (model.parameters() order, as torch lists them)
    for _, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                key = (in_backbone.get(id(p), False), _decays(module, pname, weight_decay_on))
                buckets.setdefault(key, []).append(p)
    groups = []
    for body in (False, True):
        lr_mult = float(backbone_lr_mult) if body else 1.0
        wd = weight_decay * (float(backbone_weight_decay_mult) if body else 1.0)
        for decay in (True, False):
            params = buckets.get((body, decay))
            if params:
                name = ("backbone" if body else "head") + ("" if decay else "_no_decay")
                groups.append({"params": params, "lr": lr * lr_mult, "lr_mult": lr_mult,
                               "weight_decay": wd if decay else 0.0, "name": name})
    return groups


def build_optimizer(model: nn.Module, opt_cfg: dict) -> torch.optim.Optimizer:
    name = opt_cfg["name"]
    lr = float(opt_cfg["lr"])
    wd = float(opt_cfg.get("weight_decay", 0.0))
    groups = param_groups(model, lr, float(opt_cfg.get("backbone_lr_mult", 1.0)), wd,
                          float(opt_cfg.get("backbone_weight_decay_mult", 1.0)),
                          opt_cfg.get("backbone_params", "all"), opt_cfg.get("weight_decay_on", "all"))
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=float(opt_cfg["momentum"]), weight_decay=wd,
                               nesterov=bool(opt_cfg.get("nesterov", False)))
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=tuple(opt_cfg["betas"]), weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(opt_cfg["betas"]), weight_decay=wd)
    raise ConfigError(f"train.optimizer.name: unknown optimiser {name!r}; use sgd, adam or adamw")


class IterationScheduler:
    """``step(it)`` before update ``it`` (0-based) sets every group's rate for that update and returns the
    head group's; ``on_train_loss(it, loss)`` after it and ``on_validation(miou)`` after each validation
    feed the plateau schedule."""

    def __init__(self, optimizer: torch.optim.Optimizer, sched_cfg: dict, base_lr: float, max_iters: int,
                 iters_per_epoch: int = 1):
        self.optimizer = optimizer
        self.name = sched_cfg["name"]
        if self.name not in SCHEDULES:
            raise ConfigError(f"train.scheduler.name: unknown schedule {self.name!r}; use {', '.join(SCHEDULES)}")
        self.max_iters = max(int(max_iters), 1)
        self.base_lr = float(base_lr)
        self.cfg = dict(sched_cfg)
        min_lr = float(sched_cfg.get("min_lr", 0.0))
        if min_lr > 0 and self.name != "cosine":
            raise ConfigError(f"train.scheduler.min_lr={min_lr} is the floor of the cosine schedule; the {self.name} "
                              "schedule has none: set it to 0 or use name: cosine")
        if sched_cfg.get("warmup_mode", "linear") not in WARMUP_MODES:
            raise ConfigError(f"train.scheduler.warmup_mode: {sched_cfg.get('warmup_mode')!r}; use linear or constant")
        self.plateau_monitor = sched_cfg.get("plateau_monitor", "val_miou")
        if self.plateau_monitor not in ("val_miou", "train_loss"):
            raise ConfigError(f"train.scheduler.plateau_monitor: {self.plateau_monitor!r}; use val_miou or train_loss")
        self.iters_per_epoch = max(1, int(iters_per_epoch))
        max_red = sched_cfg.get("plateau_max_reductions")
        self.max_reductions = None if max_red is None else int(max_red)
        self._build()

    def _build(self) -> None:
        """torch's schedulers over the optimiser, every rate starting from the recipe's."""
        cfg, optimizer = self.cfg, self.optimizer
        for group in optimizer.param_groups:
            group["lr"] = self.base_lr * group.get("lr_mult", 1.0)
            group.pop("initial_lr", None)
        per_iteration = []
        warmup = int(cfg.get("warmup_iters", 0))
        if warmup > 0:
            start = float(cfg.get("warmup_start", 0.1))
            if cfg.get("warmup_mode", "linear") == "constant":
                per_iteration.append(lr_scheduler.ConstantLR(optimizer, factor=start, total_iters=warmup))
            else:
                per_iteration.append(lr_scheduler.LinearLR(optimizer, start_factor=start, end_factor=1.0, total_iters=warmup))
        if self.name == "poly":
            per_iteration.append(lr_scheduler.PolynomialLR(optimizer, total_iters=self.max_iters,
                                                           power=float(cfg.get("power", 0.9))))
        elif self.name == "cosine":
            per_iteration.append(lr_scheduler.CosineAnnealingLR(
                optimizer, T_max=self.max_iters, eta_min=min(float(cfg.get("min_lr", 0.0)), self.base_lr)))
        self.per_iteration = per_iteration
        # Higher is better (the loss is fed negated). ReduceLROnPlateau acts after `patience` bad checks
        # *plus one*; ours after `plateau_patience`.
        self.plateau = lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=float(cfg.get("plateau_factor", 0.5)),
            patience=max(int(cfg.get("plateau_patience", 3)) - 1, 0), threshold=1e-6, threshold_mode="abs",
            eps=0.0) if self.name == "plateau" else None
        self.iteration = 0  # the update whose rates the optimiser holds
        self.plateau_scale = 1.0  # the product of the plateau's reductions so far
        self.plateau_reductions = 0
        self.converged = False  # a stall after plateau_max_reductions reductions: the schedule has ended
        # the current epoch's running training loss (train_loss monitor; saved so that resuming mid-epoch is exact)
        self.epoch_loss_sum, self.epoch_loss_count = 0.0, 0

    def step(self, iteration: int) -> float:
        """Set the rates of update ``iteration``; iterations come one after another (from 0, or from the
        iteration a resumed state left off at)."""
        iteration = int(iteration)
        if iteration < self.iteration or iteration > self.iteration + 1:
            raise ValueError(f"the schedule is at iteration {self.iteration}; step({iteration}) must follow it")
        if iteration == self.iteration + 1:
            for s in self.per_iteration:
                s.step()
            self.iteration = iteration
        return float(self.optimizer.param_groups[0]["lr"])

    def _plateau_check(self, metric: float) -> None:
        if self.plateau is not None and not self.converged:
            before = [g["lr"] for g in self.optimizer.param_groups]
            self.plateau.step(float(metric))
            if self.optimizer.param_groups[0]["lr"] < before[0]:
                if self.max_reductions is not None and self.plateau_reductions >= self.max_reductions:
                    for group, lr in zip(self.optimizer.param_groups, before):  # the run ends at the rate it had
                        group["lr"] = lr
                    self.converged = True
                else:
                    self.plateau_scale *= self.plateau.factor
                    self.plateau_reductions += 1

    def signature(self) -> dict:
        """What defines the rates; a resumed run whose recipe changed it (e.g. more train.iters, another
        lr) gets the new schedule's rates at its iteration, as the recipe now says."""
        keys = ("warmup_iters", "warmup_start", "warmup_mode", "power", "min_lr", "plateau_factor", "plateau_patience", "plateau_monitor")
        return {"name": self.name, "base_lr": self.base_lr, "max_iters": self.max_iters,
                "lr_mults": [float(g.get("lr_mult", 1.0)) for g in self.optimizer.param_groups],
                **{k: self.cfg.get(k) for k in keys}}

    def on_validation(self, metric: float) -> None:
        """A validation mIoU (the plateau's value when it monitors ``val_miou``)."""
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

    def state_dict(self) -> dict:
        return {"name": self.name, "iteration": self.iteration, "signature": self.signature(),
                "per_iteration": [s.state_dict() for s in self.per_iteration],
                "plateau": self.plateau.state_dict() if self.plateau is not None else None,
                "plateau_scale": float(self.plateau_scale), "plateau_reductions": int(self.plateau_reductions),
                "converged": bool(self.converged),
                "epoch_loss_sum": float(self.epoch_loss_sum), "epoch_loss_count": int(self.epoch_loss_count)}

    def load_state_dict(self, state: dict, iteration: int | None = None) -> None:
        """Restore a state (the optimiser's rates are restored with the optimiser): exactly, when the
        schedule is the one that wrote it. Otherwise (the recipe changed on resume, or a checkpoint of a
        lightseg before torch's schedulers, which held a formula's state) the schedulers are stepped to
        ``iteration``, the checkpoint's, and the plateau's reductions applied: the recipe's rates now,
        up to rounding."""
        if state.get("signature") == self.signature():
            self.iteration = int(state["iteration"])
            for s, sd in zip(self.per_iteration, state["per_iteration"]):
                s.load_state_dict(sd)
            if self.plateau is not None:
                self.plateau.load_state_dict(state["plateau"])
            self.plateau_scale = float(state.get("plateau_scale", 1.0))
        else:
            if iteration is None:
                raise ValueError("a schedule state written by another schedule needs the checkpoint's iteration")
            self._build()
            with warnings.catch_warnings():  # stepping without optimiser steps is the point here
                warnings.simplefilter("ignore", UserWarning)
                for _ in range(max(int(iteration) - 1, 0)):
                    for s in self.per_iteration:
                        s.step()
            self.iteration = max(int(iteration) - 1, 0)
            saved_plateau = state.get("plateau") or {}
            best = saved_plateau.get("best", state.get("best_metric"))
            num_bad = saved_plateau.get("num_bad_epochs", state.get("num_bad", 0))
            scale = float(state.get("plateau_scale", 1.0)) if self.plateau is not None else 1.0
            for group in self.optimizer.param_groups:
                group["lr"] *= scale
            self.plateau_scale = scale
            if self.plateau is not None and best is not None:
                self.plateau.best, self.plateau.num_bad_epochs = float(best), int(num_bad)
        self.epoch_loss_sum = float(state.get("epoch_loss_sum", 0.0))
        self.epoch_loss_count = int(state.get("epoch_loss_count", 0))
        if self.plateau is not None:
            # states saved before the count was kept: the reductions are in the scale (factor ** n)
            factor = float(self.cfg.get("plateau_factor", 0.5))
            derived = round(math.log(self.plateau_scale) / math.log(factor)) if self.plateau_scale < 1 else 0
            self.plateau_reductions = int(state.get("plateau_reductions", derived))
            self.converged = bool(state.get("converged", False))
            if self.converged and (self.max_reductions is None or self.plateau_reductions < self.max_reductions):
                # resumed with more reductions allowed: the stall that ended the run lowers the rate now, as it
                # would have with that setting from the start
                for group in self.optimizer.param_groups:
                    group["lr"] *= factor
                self.plateau_scale *= factor
                self.plateau_reductions += 1
                self.converged = False

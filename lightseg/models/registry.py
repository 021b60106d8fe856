"""Model registry: ``@register_model`` on a builder function, ``create_model(name)`` to build.

Each builder takes ``num_classes`` and keyword switches, returns an ``nn.Module`` that follows
the output contract of :class:`lightseg.models.base.SegmentationModel`.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Callable

import torch.nn as nn

from ..errors import LightsegError


@dataclass(frozen=True)
class ModelInfo:
    name: str
    builder: Callable[..., nn.Module]
    paper: str
    # The input size (H, W) at which the paper reports MACs / speed; used by `lightseg models`.
    paper_size: tuple[int, int] = (512, 1024)
    # Paper targets, for `lightseg models` and docs: params, MACs (at paper_size), FPS and hardware.
    paper_params: float | None = None
    paper_macs: float | None = None
    paper_fps: float | None = None
    paper_hardware: str | None = None
    # What the paper initialises the backbone from (e.g. "ImageNet ..."): training without
    # ``pretrained_backbone`` then prints a warning. None: the paper trains from scratch.
    paper_pretrained: str | None = None
    extra: dict = field(default_factory=dict)


_REGISTRY: dict[str, ModelInfo] = {}


@dataclass(frozen=True)
class PaperRow:
    """One row of a paper's complexity table, rebuilt from the code by ``lightseg models --paper``.

    ``params`` and ``flops`` are the paper's printed figures; ``flops`` is in the paper's own unit (its
    :class:`PaperTable` says whether that is MACs or 2 x MACs). ``kwargs`` are the ``create_model``
    switches that build the row's network; ``size`` its input (H, W), ``None`` for the model's paper size.
    """

    table: str
    label: str
    model: str
    kwargs: dict = field(default_factory=dict)
    params: float | None = None
    flops: float | None = None
    size: tuple[int, int] | None = None
    num_classes: int = 19
    note: str = ""


@dataclass(frozen=True)
class PaperTable:
    """A paper's complexity rows. ``flops_per_mac``: 1 when the paper's "FLOPs" are multiply-adds
    (MACs), 2 when they count multiplies and adds separately."""

    key: str
    title: str
    flops_per_mac: int
    flops_note: str
    rows: tuple[PaperRow, ...]


_PAPER_TABLES: dict[str, PaperTable] = {}


def register_paper_table(key: str, title: str, rows, flops_per_mac: int, flops_note: str) -> None:
    """Declare a paper's complexity tables (called at import time by the paper's model file)."""
    if key in _PAPER_TABLES:
        raise RuntimeError(f"paper table {key!r} registered twice")
    if flops_per_mac not in (1, 2):
        raise ValueError(f"flops_per_mac must be 1 (FLOPs are MACs) or 2, got {flops_per_mac}")
    _PAPER_TABLES[key] = PaperTable(key, title, flops_per_mac, flops_note, tuple(rows))


def paper_tables() -> dict[str, PaperTable]:
    _ensure_loaded()
    return dict(_PAPER_TABLES)


def register_model(name: str | None = None, **info):
    """Decorator: register a builder ``fn(num_classes=19, **kwargs) -> nn.Module``."""

    def deco(fn):
        key = name or fn.__name__
        if key in _REGISTRY:
            raise RuntimeError(f"model {key!r} registered twice")
        _REGISTRY[key] = ModelInfo(name=key, builder=fn, **info)
        return fn

    return deco


def _ensure_loaded() -> None:
    # Importing the package's model files runs their @register_model decorators.
    from . import _all  # noqa: F401


def list_models() -> list[str]:
    _ensure_loaded()
    return sorted(_REGISTRY)


def model_info(name: str) -> ModelInfo:
    _ensure_loaded()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise LightsegError(
            f"unknown model {name!r}.{hint} `lightseg models` lists the {len(_REGISTRY)} registered names."
        )
    return _REGISTRY[name]


def create_model(name: str, num_classes: int | None = None, pretrained_backbone: str | None = None,
                 weights: str | None = None, **kwargs) -> nn.Module:
    """Build a registered model (``num_classes`` defaults to 19, Cityscapes).

    ``pretrained_backbone``: ``"imagenet"`` (torchvision's published checkpoint for the model's backbone,
    from torch's hub cache, see :func:`lightseg.models.backbones.imagenet_state_dict`) or the path of a
    torchvision ImageNet checkpoint (e.g. ``resnet18-f37072fd.pth``); loaded with ``weights_only=True``
    and strict key matching.
    ``weights``: the name of trained weights shipped with lightseg (e.g. ``"camvid"``, see
    :mod:`lightseg.weights`): the network comes back trained, in eval mode, with ``classes``,
    ``palette`` and ``normalize`` attributes from the weights' manifest record.
    """
    info = model_info(name)
    if weights is not None:
        return _create_trained(info, weights, num_classes, pretrained_backbone, kwargs)
    num_classes = 19 if num_classes is None else num_classes
    if not isinstance(num_classes, int) or num_classes < 1:
        raise LightsegError(f"num_classes must be a positive integer, got {num_classes!r}")
    try:
        model = info.builder(num_classes=num_classes, **kwargs)
    except LightsegError:
        raise
    except (TypeError, ValueError) as e:  # a wrong or out-of-range switch: a user error
        raise LightsegError(f"model {name!r}: {e}") from e
    model.lightseg_name = name
    if pretrained_backbone is not None:
        from .backbones import load_pretrained_backbone

        backbone = getattr(model, "backbone", None)
        if backbone is None:
            raise LightsegError(f"model {name!r} has no ImageNet backbone (it is trained from scratch); drop pretrained_backbone")
        load_pretrained_backbone(backbone, pretrained_backbone)
    return model


def _create_trained(info: ModelInfo, weights: str, num_classes, pretrained_backbone, kwargs) -> nn.Module:
    from ..checkpoint import load_model_weights
    from ..weights import find_weights, load_weights

    record = find_weights(info.name, weights)
    if pretrained_backbone is not None:
        raise LightsegError(f"weights={weights!r} holds the whole trained network; drop pretrained_backbone")
    n = int(record["num_classes"])
    if num_classes is not None and int(num_classes) != n:
        raise LightsegError(f"{info.name} weights {weights!r} have {n} classes, not num_classes={num_classes}; "
                            "drop num_classes (fine-tune from them in Python to change the classes)")
    model = create_model(info.name, num_classes=n, **{**(record.get("model_kwargs") or {}), **kwargs})
    load_model_weights(model, load_weights(record), path_for_errors=f"{info.name} weights {weights!r} ({record['file']})")
    model.classes = list(record["classes"])
    model.palette = [tuple(int(v) for v in c) for c in record["palette"]]
    model.normalize = record.get("normalize", "imagenet")
    model.weights_record = dict(record)
    return model.eval()

"""The one confusion matrix behind evaluation, ``lightseg score`` and distributed evaluation.

Rows are ground truth, columns predictions. IoU follows the official Cityscapes evaluation
(cityscapesscripts ``evalPixelLevelSemanticLabeling``):

* ground-truth pixels equal to ``ignore_index`` (or outside 0..C-1) are not counted at all;
* a prediction outside 0..C-1 on a counted pixel (a saved PNG holding "void") is a miss: a false
  negative of the true class, false positive of nobody (``pred_outside`` below);
* ``IoU_c = TP / (TP + FP + FN)``; NaN when the class is in neither ground truth nor prediction,
  and NaN classes are left out of every mean;
* category IoU (Cityscapes' "flat", "vehicle", ...): TP = pixels whose true and predicted class
  both lie in the category, FN = the category's rows minus TP, FP = the category's columns on rows
  outside it.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .data.classes import IGNORE_INDEX


def _as_long_tensor(x) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    return x.long()


def _none_if_nan(v):
    v = float(v)
    return None if math.isnan(v) else v


class ConfusionMatrix:
    """Accumulate a (C, C) confusion matrix with ``update(pred, target)``; read IoU, mIoU, accuracy."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        # Counted pixels whose prediction is not a class (see module docstring): misses per true class.
        self.pred_outside = torch.zeros(self.num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.matrix.zero_()
        self.pred_outside.zero_()

    def update(self, pred, target) -> None:
        """Add predicted class ids ``pred`` against labels ``target`` (same shape; tensors or numpy)."""
        pred, target = _as_long_tensor(pred), _as_long_tensor(target)
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} and label shape {tuple(target.shape)} differ")
        pred, target = pred.reshape(-1), target.reshape(-1).to(pred.device)
        n = self.num_classes
        counted = (target >= 0) & (target < n) & (target != self.ignore_index)
        pred_ok = (pred >= 0) & (pred < n)
        both = counted & pred_ok
        pairs = torch.bincount(target[both] * n + pred[both], minlength=n * n)
        self.matrix += pairs.view(n, n).cpu()
        self.pred_outside += torch.bincount(target[counted & ~pred_ok], minlength=n).cpu()

    def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        self.matrix += other.matrix
        self.pred_outside += other.pred_outside
        return self

    def all_reduce(self) -> "ConfusionMatrix":
        """Sum the matrix over processes (no-op unless ``torch.distributed`` is initialised)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        packed = torch.cat([self.matrix.reshape(-1), self.pred_outside]).to(device)
        dist.all_reduce(packed, op=dist.ReduceOp.SUM)
        packed = packed.cpu()
        n = self.num_classes
        self.matrix = packed[: n * n].view(n, n).clone()
        self.pred_outside = packed[n * n:].clone()
        return self

    # ------------------------------------------------------------ scores
    def _counts(self):
        m = self.matrix.double().numpy()
        tp = np.diag(m)
        gt = m.sum(1) + self.pred_outside.double().numpy()  # TP + FN
        predicted = m.sum(0)  # TP + FP
        return m, tp, gt, predicted

    def iou(self) -> np.ndarray:
        """Per-class IoU, NaN for a class absent from both ground truth and prediction."""
        _, tp, gt, predicted = self._counts()
        denom = gt + predicted - tp
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(denom > 0, tp / np.maximum(denom, 1), np.nan)

    @property
    def miou(self) -> float:
        iou = self.iou()
        return float(np.nanmean(iou)) if not np.isnan(iou).all() else float("nan")

    @property
    def pixel_acc(self) -> float:
        _, tp, gt, _ = self._counts()
        return float(tp.sum() / gt.sum()) if gt.sum() > 0 else float("nan")

    def class_acc(self) -> np.ndarray:
        """Per-class recall TP / (TP + FN), NaN for a class absent from the ground truth."""
        _, tp, gt, _ = self._counts()
        return np.where(gt > 0, tp / np.maximum(gt, 1), np.nan)

    @property
    def mean_acc(self) -> float:
        acc = self.class_acc()
        return float(np.nanmean(acc)) if not np.isnan(acc).all() else float("nan")

    def category_iou(self, categories: dict, class_names=None) -> dict:
        """IoU of groups of classes, as cityscapesscripts' ``getIouScoreForCategory``.

        ``categories`` maps a category name to its classes (indices, or names from ``class_names``).
        """
        m, _, _, _ = self._counts()
        outside = self.pred_outside.double().numpy()
        index = {name: i for i, name in enumerate(class_names or ())}
        result = {}
        for category, members in categories.items():
            ids = sorted({index[c] if isinstance(c, str) else int(c) for c in members})
            if not ids:
                result[category] = float("nan")
                continue
            others = [i for i in range(self.num_classes) if i not in ids]
            tp = m[np.ix_(ids, ids)].sum()
            fn = m[ids, :].sum() + outside[ids].sum() - tp
            fp = m[np.ix_(others, ids)].sum()
            denom = tp + fp + fn
            result[category] = float(tp / denom) if denom > 0 else float("nan")
        return result

    def report(self, class_names, categories: dict | None = None) -> dict:
        """JSON-ready metrics; NaN (class absent from ground truth and prediction) becomes None."""
        class_names = list(class_names)
        if len(class_names) != self.num_classes:
            raise ValueError(f"{len(class_names)} class names for a {self.num_classes}-class confusion matrix")
        iou = self.iou()
        out = {
            "miou": _none_if_nan(self.miou),
            "pixel_acc": _none_if_nan(self.pixel_acc),
            "mean_acc": _none_if_nan(self.mean_acc),
            "iou": {name: _none_if_nan(v) for name, v in zip(class_names, iou)},
            "num_pixels": int(self.matrix.sum() + self.pred_outside.sum()),
            "confusion_matrix": self.matrix.tolist(),
            "pred_outside_classes": self.pred_outside.tolist(),
        }
        if categories:
            cat = self.category_iou(categories, class_names)
            valid = [v for v in cat.values() if not math.isnan(v)]
            out["category_iou"] = {k: _none_if_nan(v) for k, v in cat.items()}
            out["category_miou"] = float(np.mean(valid)) if valid else None
        return out


def _pct(v) -> str:
    return "   n/a" if v is None else f"{100 * v:6.2f}"


def format_table(report: dict) -> str:
    """A per-class IoU table (percent) with the means, for the terminal."""
    width = max([len("pixel accuracy")] + [len(k) for k in report["iou"]] + [len(k) for k in report.get("category_iou", {})])
    lines = [f"{'class':<{width}}  IoU (%)", "-" * (width + 9)]
    lines += [f"{name:<{width}}  {_pct(v)}" for name, v in report["iou"].items()]
    lines.append("-" * (width + 9))
    lines.append(f"{'mIoU':<{width}}  {_pct(report['miou'])}")
    lines.append(f"{'pixel accuracy':<{width}}  {_pct(report['pixel_acc'])}")
    lines.append(f"{'mean accuracy':<{width}}  {_pct(report['mean_acc'])}")
    if "category_iou" in report:
        lines += ["", f"{'category':<{width}}  IoU (%)", "-" * (width + 9)]
        lines += [f"{name:<{width}}  {_pct(v)}" for name, v in report["category_iou"].items()]
        lines.append("-" * (width + 9))
        lines.append(f"{'category mIoU':<{width}}  {_pct(report['category_miou'])}")
    return "\n".join(lines)

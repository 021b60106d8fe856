"""Segmentation losses, class weights and deep supervision.

* :class:`CrossEntropy` - pixel-wise cross entropy with an ignore index and optional class weights.
* :class:`OhemCrossEntropy` - online hard example mining: only pixels whose true-class probability
  is below ``thresh`` (at least the ``min_kept`` hardest) contribute (Wu et al. 2016; the version
  used by OCNet / HRNet-Seg).
* :class:`LovaszSoftmax` - the Lovasz extension of the Jaccard loss (Berman et al., CVPR 2018),
  averaged over the classes present in the batch.
* :func:`class_weights_enet` / :func:`class_weights_median_freq` - the ENet and SegNet class
  weighting formulas; :func:`label_statistics` and :func:`cached_class_weights` compute them on a
  dataset once and cache the pixel counts as JSON.
* :class:`DeepSupervisionLoss` - main loss plus weighted auxiliary-head losses (MiniNet, ATONet).
* :func:`build_criterion` - the ``train.loss`` section of a recipe turned into a criterion.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .data.classes import IGNORE_INDEX
from .errors import ConfigError

LOSS_NAMES = ("ce", "ohem", "lovasz", "ce+lovasz")
AUX_MODES = ("downsample", "upsample")
CLASS_WEIGHT_METHODS = ("enet", "median_freq")


def _zero_loss(logits: torch.Tensor) -> torch.Tensor:
    # A crop can be entirely "ignore": return a zero that still belongs to the graph instead of NaN.
    return logits.sum() * 0.0


def _weight_tensor(weight) -> torch.Tensor | None:
    if weight is None:
        return None
    return torch.as_tensor(weight, dtype=torch.float32)


class CrossEntropy(nn.Module):
    """Cross entropy over pixels, ``ignore_index`` pixels excluded.

    With class weights ``w`` the loss is ``sum_i w[y_i] * ce_i / sum_i w[y_i]`` (PyTorch's
    weighted mean), so weights change the balance between classes, not the loss scale.
    """

    def __init__(self, weight=None, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.ignore_index = ignore_index
        self.register_buffer("weight", _weight_tensor(weight), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not (target != self.ignore_index).any():
            return _zero_loss(logits)
        # float32 softmax even under AMP (fp16 log-sum-exp over 19 classes loses precision)
        return F.cross_entropy(logits.float(), target.long(), weight=self.weight, ignore_index=self.ignore_index)


class OhemCrossEntropy(nn.Module):
    """Cross entropy on the hard pixels only.

    A valid pixel is kept when its predicted probability of the true class is below
    ``max(thresh, p_k)``, where ``p_k`` is the ``min_kept``-th smallest such probability in the
    batch; so at least ``min_kept`` hardest pixels (all valid pixels if fewer) always count.
    The selection carries no gradient. Kept pixels are averaged like :class:`CrossEntropy`
    (weighted mean when class weights are given).
    """

    def __init__(self, thresh: float = 0.7, min_kept: int = 100000, weight=None, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        if not 0.0 < thresh:
            raise ConfigError(f"train.loss.ohem_thresh must be > 0 (a probability, e.g. 0.7), got {thresh}")
        if min_kept < 0:
            raise ConfigError(f"train.loss.ohem_min_kept must be >= 0, got {min_kept}")
        self.thresh = float(thresh)
        self.min_kept = int(min_kept)
        self.ignore_index = ignore_index
        self.register_buffer("weight", _weight_tensor(weight), persistent=False)

    def keep_mask(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Boolean mask (N, H, W) of the pixels that contribute to the loss."""
        with torch.no_grad():
            valid = target != self.ignore_index
            if not valid.any():
                return valid
            safe_target = torch.where(valid, target, torch.zeros_like(target)).long()
            prob = logits.float().softmax(dim=1).gather(1, safe_target.unsqueeze(1)).squeeze(1)
            valid_prob = prob[valid]
            if self.min_kept > 0:
                kth = torch.sort(valid_prob).values[min(self.min_kept, valid_prob.numel()) - 1]
                # strictly below the threshold; the min_kept-th pixel itself is kept with <=
                return valid & ((prob < self.thresh) | (prob <= kth))
            return valid & (prob < self.thresh)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        keep = self.keep_mask(logits, target)
        if not keep.any():
            return _zero_loss(logits)
        target = target.long()
        pixel_loss = F.cross_entropy(logits.float(), torch.where(keep, target, torch.zeros_like(target)), reduction="none")
        if self.weight is None:
            return pixel_loss[keep].mean()
        w = self.weight[target[keep]]
        return (pixel_loss[keep] * w).sum() / w.sum()


def _lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovasz extension w.r.t. sorted errors (Berman et al. 2018, Alg. 1)."""
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1.0 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    if gt_sorted.numel() > 1:
        jaccard[1:] = jaccard[1:] - jaccard[:-1]
    return jaccard


class LovaszSoftmax(nn.Module):
    """Lovasz-Softmax loss (Berman et al., CVPR 2018, Eq. 8-9), ``classes="present"``.

    Softmax probabilities of the non-ignored pixels of the whole batch; for each class present
    in the labels, the Lovasz extension of its Jaccard loss; the mean over those classes.
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        num_classes = logits.shape[1]
        probs = logits.float().softmax(dim=1).permute(0, 2, 3, 1).reshape(-1, num_classes)
        labels = target.reshape(-1)
        valid = labels != self.ignore_index
        probs, labels = probs[valid], labels[valid]
        if labels.numel() == 0:
            return _zero_loss(logits)
        losses = []
        for c in labels.unique().tolist():
            fg = (labels == c).float()
            errors = (fg - probs[:, c]).abs()
            errors_sorted, perm = torch.sort(errors, descending=True)
            losses.append(torch.dot(errors_sorted, _lovasz_grad(fg[perm])))
        return torch.stack(losses).mean()


class CombinedLoss(nn.Module):
    """``sum_k weight_k * loss_k(logits, target)`` (e.g. cross entropy + Lovasz)."""

    def __init__(self, losses, weights):
        super().__init__()
        self.losses = nn.ModuleList(losses)
        self.weights = [float(w) for w in weights]

    def forward(self, logits, target):
        return sum(w * loss(logits, target) for loss, w in zip(self.losses, self.weights))


# ---------------------------------------------------------------- class weights
def class_weights_enet(counts, c: float = 1.02) -> torch.Tensor:
    """ENet's weights ``1 / ln(c + p_i)``, ``p_i`` the pixel share of class i (Paszke et al. 2016, Sec. 5.2).

    ``c = 1.02`` bounds the weights to [1, 1/ln(1.02) = 50.5].
    """
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        raise ValueError("class_weights_enet: the label counts are all zero (no labelled pixel)")
    return torch.tensor(1.0 / np.log(c + counts / total), dtype=torch.float32)


def class_weights_median_freq(counts, image_counts) -> torch.Tensor:
    """SegNet's median frequency balancing (Eigen & Fergus 2015; SegNet Sec. 3.4).

    ``freq_c = pixels of c / total pixels of the images where c is present`` (``image_counts[c]``),
    weight ``median(freq) / freq_c``. A class that never occurs gets weight 0 (it has no
    frequency, and never appears in a label to be weighted); the median is over occurring classes.
    """
    counts = np.asarray(counts, dtype=np.float64)
    image_counts = np.asarray(image_counts, dtype=np.float64)
    if counts.shape != image_counts.shape:
        raise ValueError(f"counts {counts.shape} and image_counts {image_counts.shape} differ in length")
    present = (counts > 0) & (image_counts > 0)
    if not present.any():
        raise ValueError("class_weights_median_freq: no class occurs in the labels")
    freq = np.zeros_like(counts)
    freq[present] = counts[present] / image_counts[present]
    weights = np.zeros_like(counts)
    weights[present] = np.median(freq[present]) / freq[present]
    return torch.tensor(weights, dtype=torch.float32)


def label_statistics(dataset, progress: bool = False) -> dict:
    """Pixel statistics of ``dataset``'s labels (read with ``dataset.load_label(i)``, no augmentation).

    Returns ``{"counts": [pixels of class c], "image_counts": [labelled pixels of the images
    containing c], "num_images": n}``. Ignored / out-of-range pixels count nowhere: "total pixels of
    an image" means its labelled pixels, so the frequencies of one image sum to 1.
    """
    num_classes = int(dataset.num_classes)
    counts = np.zeros(num_classes, dtype=np.int64)
    image_counts = np.zeros(num_classes, dtype=np.int64)
    indices = range(len(dataset))
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc="label statistics", leave=False)
    for i in indices:
        label = np.asarray(dataset.load_label(i)).reshape(-1).astype(np.int64)
        label = label[(label >= 0) & (label < num_classes)]
        per_image = np.bincount(label, minlength=num_classes)
        counts += per_image
        image_counts[per_image > 0] += label.size
    return {"counts": counts.tolist(), "image_counts": image_counts.tolist(), "num_images": len(dataset)}


def _dataset_key(dataset) -> str:
    # The data fingerprint (files' names, sizes and first and last bytes; classes; label mapping) identifies the statistics:
    # a label edited in place changes the key, as a changed file list does.
    from .data import data_fingerprint

    files = [[str(p) for p in pair] for pair in dataset.files]
    blob = json.dumps({"files": files, "fingerprint": data_fingerprint(dataset)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def weights_from_statistics(stats: dict, method: str) -> torch.Tensor:
    if method == "enet":
        return class_weights_enet(stats["counts"])
    if method == "median_freq":
        return class_weights_median_freq(stats["counts"], stats["image_counts"])
    raise ConfigError(f"train.loss.class_weights: unknown method {method!r}; use one of {', '.join(CLASS_WEIGHT_METHODS)} or null")


def cached_class_weights(dataset, method: str, cache_dir) -> torch.Tensor:
    """Class weights of ``method`` ("enet" | "median_freq") for ``dataset``, computed once.

    The label statistics are cached in ``cache_dir/class_stats_<hash>.json``, the hash taken over
    the dataset's file list and its data fingerprint (names, sizes, first and last bytes), so a second run (or the other method) reads them instead of
    decoding every label again.
    """
    if method not in CLASS_WEIGHT_METHODS:
        weights_from_statistics({}, method)  # raises the ConfigError
    path = Path(cache_dir) / f"class_stats_{_dataset_key(dataset)}.json"
    stats = None
    if path.is_file():
        try:
            stats = json.loads(path.read_text())
            if len(stats["counts"]) != dataset.num_classes:
                stats = None
        except (ValueError, KeyError, TypeError):
            stats = None  # corrupt or foreign file: recompute and overwrite
    if stats is None:
        stats = label_statistics(dataset)
        from .checkpoint import atomic_write_bytes

        record = dict(stats, classes=list(getattr(dataset, "classes", [])), files_hash=path.stem.split("_")[-1])
        atomic_write_bytes(path, lambda f: f.write(json.dumps(record, indent=1).encode()))
    return weights_from_statistics(stats, method)


# ---------------------------------------------------------------- deep supervision
def downsample_labels(target: torch.Tensor, size) -> torch.Tensor:
    """Nearest-neighbour resize of an (N, H, W) label map (no mixing of class ids)."""
    size = tuple(int(s) for s in size)
    if tuple(target.shape[-2:]) == size:
        return target
    return F.interpolate(target[:, None].float(), size=size, mode="nearest")[:, 0].to(target.dtype)


class DeepSupervisionLoss(nn.Module):
    """``loss(out) + sum_k aux_weights[k] * loss(aux_k)``.

    ``aux_mode="downsample"``: labels are nearest-downsampled to each aux logit's size (ATONet);
    ``"upsample"``: aux logits are bilinearly upsampled to the label size. Takes the model output
    (a tensor, or ``{"out": ..., "aux": [...]}`` in train mode) and the (N, H, W) label.

    Returns ``(total, parts)``; ``parts`` maps "out" and each aux name to its unweighted loss,
    detached, for logging.
    """

    def __init__(self, main_loss: nn.Module, aux_weights=(), aux_mode: str = "downsample", aux_names=()):
        super().__init__()
        if aux_mode not in AUX_MODES:
            raise ConfigError(f"train.loss.aux_mode must be one of {', '.join(AUX_MODES)}, got {aux_mode!r}")
        self.main_loss = main_loss
        self.aux_weights = [float(w) for w in (aux_weights or ())]
        self.aux_mode = aux_mode
        self.aux_names = tuple(aux_names) or tuple(f"aux{i}" for i in range(len(self.aux_weights)))

    def forward(self, output, target: torch.Tensor):
        if isinstance(output, dict):
            logits, aux = output["out"], list(output.get("aux", ()))
        else:
            logits, aux = output, []
        total = self.main_loss(logits, target)
        parts = {"out": total.detach()}
        if aux and len(aux) != len(self.aux_weights):
            raise ValueError(f"the model returned {len(aux)} aux outputs but {len(self.aux_weights)} aux_weights are set")
        for name, weight, aux_logits in zip(self.aux_names, self.aux_weights, aux):
            if self.aux_mode == "downsample":
                value = self.main_loss(aux_logits, downsample_labels(target, aux_logits.shape[-2:]))
            else:
                up = F.interpolate(aux_logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
                value = self.main_loss(up, target)
            parts[name] = value.detach()
            # added even with weight 0: under DDP every parameter must take part in the graph
            total = total + weight * value
        return total, parts


def build_criterion(loss_cfg: dict, num_classes: int, ignore_index: int = IGNORE_INDEX, class_weights=None,
                    aux_names=(), default_aux_weights=None) -> DeepSupervisionLoss:
    """The recipe's ``train.loss`` section as a :class:`DeepSupervisionLoss`.

    ``class_weights``: a tensor of ``num_classes`` weights (from :func:`cached_class_weights`) or None.
    ``aux_names``: the model's ``aux_names``; ``aux_weights`` must have one entry per name. Null takes
    ``default_aux_weights`` (the model's ``aux_weights``: its paper's); a model with aux heads and no
    defaults then needs them in the recipe (refused, not silently trained at weight 0).
    """
    name = loss_cfg.get("name", "ce")
    if name not in LOSS_NAMES:
        close = difflib.get_close_matches(str(name), LOSS_NAMES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"train.loss.name: unknown loss {name!r}.{hint} Choose one of {', '.join(LOSS_NAMES)}.")
    if class_weights is not None:
        class_weights = torch.as_tensor(class_weights, dtype=torch.float32)
        if class_weights.shape != (num_classes,):
            raise ConfigError(f"class weights have shape {tuple(class_weights.shape)}, expected ({num_classes},) (one per class)")
    lovasz_weight = float(loss_cfg.get("lovasz_weight", 0.0) or 0.0)
    if name == "ce+lovasz" and lovasz_weight <= 0:
        raise ConfigError("train.loss.name is 'ce+lovasz' but train.loss.lovasz_weight is 0; set it > 0, e.g. --set train.loss.lovasz_weight=1.0")
    if name != "ce+lovasz" and lovasz_weight > 0:
        raise ConfigError(f"train.loss.lovasz_weight={lovasz_weight} only applies to train.loss.name='ce+lovasz' (got {name!r}); set the name or drop the weight")

    if name == "ce":
        main = CrossEntropy(class_weights, ignore_index)
    elif name == "ohem":
        main = OhemCrossEntropy(loss_cfg.get("ohem_thresh", 0.7), loss_cfg.get("ohem_min_kept", 100000), class_weights, ignore_index)
    elif name == "lovasz":
        if class_weights is not None:
            raise ConfigError("train.loss.class_weights does not apply to the Lovasz loss (it has no per-pixel weights); set it to null")
        main = LovaszSoftmax(ignore_index)
    else:
        main = CombinedLoss([CrossEntropy(class_weights, ignore_index), LovaszSoftmax(ignore_index)], [1.0, lovasz_weight])

    aux_names = tuple(aux_names)
    aux_weights = loss_cfg.get("aux_weights")
    if aux_weights is None:
        if aux_names and not default_aux_weights:
            raise ConfigError(
                f"train.loss.aux_weights is null but the model has {len(aux_names)} aux heads ({', '.join(aux_names)}) "
                f"and no paper default; give one weight per head, e.g. --set train.loss.aux_weights="
                f"[{', '.join(['0.4'] * len(aux_names))}] (0 to train them without effect)")
        aux_weights = list(default_aux_weights or [])
    if not isinstance(aux_weights, (list, tuple)) or not all(isinstance(w, (int, float)) and math.isfinite(w) for w in aux_weights):
        raise ConfigError(f"train.loss.aux_weights must be a list of numbers (one per aux head), got {aux_weights!r}")
    if len(aux_weights) != len(aux_names):
        heads = f"{len(aux_names)} aux heads ({', '.join(aux_names)})" if aux_names else "no aux heads"
        raise ConfigError(
            f"train.loss.aux_weights has {len(aux_weights)} entries but the model has {heads}; "
            f"give one weight per head, e.g. --set train.loss.aux_weights=[{', '.join(['0.4'] * len(aux_names))}]"
            + ("" if aux_names else " or null")
        )
    return DeepSupervisionLoss(main, aux_weights, loss_cfg.get("aux_mode", "downsample"), aux_names)

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lightseg.errors import ConfigError
from lightseg.losses import (
    CrossEntropy,
    DeepSupervisionLoss,
    LovaszSoftmax,
    OhemCrossEntropy,
    build_criterion,
    cached_class_weights,
    class_weights_enet,
    class_weights_median_freq,
    downsample_labels,
    label_statistics,
)

LN2 = math.log(2.0)


def two_pixel_logits():
    # 1x2x1x2: pixel 0 logits [0, 0] (p = 1/2, 1/2); pixel 1 logits [ln 3, 0] (p = 3/4, 1/4)
    return torch.tensor([[[[0.0, math.log(3.0)]], [[0.0, 0.0]]]], requires_grad=True)


def logits_from_true_prob(p_true):
    """2-class logits, all labels 0, with the given true-class probabilities; shape 1x2x1xN."""
    p = torch.tensor(p_true, dtype=torch.float64)
    logits = torch.stack([p.log(), (1 - p).log()]).float()[None, :, None, :]
    return logits, torch.zeros(1, 1, len(p_true), dtype=torch.long)


def test_cross_entropy_hand_values():
    logits, target = two_pixel_logits(), torch.tensor([[[0, 1]]])
    # pixel 0: -ln(1/2) = ln 2; pixel 1: -ln(1/4) = 2 ln 2; mean 1.5 ln 2
    assert CrossEntropy()(logits, target).item() == pytest.approx(1.5 * LN2, rel=1e-6)
    # weights [1, 3]: (1 * ln2 + 3 * 2 ln2) / (1 + 3) = 7/4 ln 2
    assert CrossEntropy(weight=[1.0, 3.0])(logits, target).item() == pytest.approx(1.75 * LN2, rel=1e-6)


def test_cross_entropy_ignore_changes_nothing():
    logits = two_pixel_logits()
    loss = CrossEntropy()(logits, torch.tensor([[[0, 255]]]))
    assert loss.item() == pytest.approx(LN2, rel=1e-6)
    loss.backward()
    assert logits.grad[0, :, 0, 1].abs().sum() == 0  # the ignored pixel gets no gradient
    other = logits.detach().clone()
    other[0, :, 0, 1] = torch.tensor([9.0, -9.0])
    assert CrossEntropy()(other, torch.tensor([[[0, 255]]])).item() == pytest.approx(loss.item())
    # an all-ignore crop: zero loss (not NaN) that still backpropagates
    zero = CrossEntropy()(logits, torch.full((1, 1, 2), 255))
    assert zero.item() == 0.0
    zero.backward()


def test_ohem_keeps_the_hard_pixels():
    p = [0.9, 0.6, 0.3, 0.8]
    logits, target = logits_from_true_prob(p)
    ohem = OhemCrossEntropy(thresh=0.7, min_kept=1)
    assert ohem.keep_mask(logits, target)[0, 0].tolist() == [False, True, True, False]
    assert ohem(logits, target).item() == pytest.approx(-(math.log(0.6) + math.log(0.3)) / 2, rel=1e-5)
    # min_kept=3: the 3 lowest probabilities (0.3, 0.6, 0.8) are kept although 0.8 >= thresh
    ohem3 = OhemCrossEntropy(thresh=0.7, min_kept=3)
    assert ohem3.keep_mask(logits, target)[0, 0].tolist() == [False, True, True, True]
    assert ohem3(logits, target).item() == pytest.approx(-(math.log(0.6) + math.log(0.3) + math.log(0.8)) / 3, rel=1e-5)
    # min_kept above the number of valid pixels keeps all valid pixels, never an ignored one
    target_ign = target.clone()
    target_ign[0, 0, 2] = 255
    assert OhemCrossEntropy(thresh=0.7, min_kept=10).keep_mask(logits, target_ign)[0, 0].tolist() == [True, True, False, True]
    # a threshold above 1 keeps everything: plain cross entropy
    assert OhemCrossEntropy(thresh=1.01, min_kept=0)(logits, target).item() == pytest.approx(CrossEntropy()(logits, target).item(), rel=1e-6)


def test_ohem_gradient_only_on_kept_pixels():
    logits, target = logits_from_true_prob([0.9, 0.6, 0.3, 0.8])
    logits.requires_grad_(True)
    OhemCrossEntropy(thresh=0.7, min_kept=1)(logits, target).backward()
    has_grad = logits.grad.abs().sum(1)[0, 0] > 0
    assert has_grad.tolist() == [False, True, True, False]


def test_lovasz_hand_values_and_gradient():
    # One pixel of class c with probability p: the Jaccard loss of class c is 1 - p; other classes are absent.
    logits = torch.tensor([0.0, math.log(3.0)]).view(1, 2, 1, 1)  # p = (1/4, 3/4)
    assert LovaszSoftmax()(logits, torch.tensor([[[1]]])).item() == pytest.approx(0.25, rel=1e-6)
    # Two pixels, labels (0, 1), class-0 probabilities (0.8, 0.3).
    # class 0: errors (0.2, 0.3) sorted (0.3 [bg], 0.2 [fg]); Jaccard losses of the prefixes (1/2, 1)
    #          -> increments (1/2, 1/2) -> 0.3/2 + 0.2/2 = 0.25
    # class 1: errors (0.2, 0.3) sorted (0.3 [fg], 0.2 [bg]); prefix Jaccard losses (1, 1) -> (1, 0) -> 0.3
    p0 = torch.tensor([0.8, 0.3])
    logits = torch.stack([p0.log(), (1 - p0).log()])[None, :, None, :].requires_grad_(True)
    target = torch.tensor([[[0, 1]]])
    loss = LovaszSoftmax()(logits, target)
    assert loss.item() == pytest.approx((0.25 + 0.3) / 2, rel=1e-5)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    # an ignored third pixel changes nothing
    logits3 = torch.cat([logits.detach(), torch.tensor([5.0, -5.0]).view(1, 2, 1, 1)], dim=3)
    assert LovaszSoftmax()(logits3, torch.tensor([[[0, 1, 255]]])).item() == pytest.approx(loss.item(), rel=1e-6)


def test_lovasz_perfect_prediction_is_zero():
    target = torch.tensor([[[0, 1], [2, 1]]])
    logits = F.one_hot(target, 3).permute(0, 3, 1, 2).float() * 30.0
    assert LovaszSoftmax()(logits, target).item() == pytest.approx(0.0, abs=1e-6)
    wrong = F.one_hot((target + 1) % 3, 3).permute(0, 3, 1, 2).float() * 30.0
    assert LovaszSoftmax()(wrong, target).item() == pytest.approx(1.0, abs=1e-6)


def test_class_weight_formulas():
    # ENet: p = (1/4, 3/4) -> 1 / ln(1.02 + p)
    w = class_weights_enet([10, 30])
    assert w.tolist() == pytest.approx([1 / math.log(1.27), 1 / math.log(1.77)], rel=1e-6)
    # median frequency: freq = (10/100, 30/40) = (0.1, 0.75); median 0.425; absent class -> 0
    w = class_weights_median_freq([10, 30, 0], [100, 40, 0])
    assert w.tolist() == pytest.approx([4.25, 0.425 / 0.75, 0.0], rel=1e-6)


class LabelOnlyDataset:
    def __init__(self, labels, names=("a", "b")):
        self.labels = [np.array(x, dtype=np.uint8) for x in labels]
        self.num_classes = len(names)
        self.classes = names
        self.files = [(f"img{i}.png", f"lbl{i}.png") for i in range(len(labels))]
        self.loads = 0

    def __len__(self):
        return len(self.labels)

    def load_label(self, i):
        self.loads += 1
        return self.labels[i]


def test_label_statistics_and_cache(tmp_path):
    # image A: class 0 x2, class 1 x1, one ignored pixel (3 labelled); image B: class 1 x4 (4 labelled)
    ds = LabelOnlyDataset([[[0, 0], [1, 255]], [[1, 1], [1, 1]]])
    stats = label_statistics(ds)
    assert stats["counts"] == [2, 5]
    assert stats["image_counts"] == [3, 7]
    w = cached_class_weights(ds, "median_freq", tmp_path)
    # freq = (2/3, 5/7); median = mean of the two
    freq = np.array([2 / 3, 5 / 7])
    assert w.tolist() == pytest.approx((np.median(freq) / freq).tolist(), rel=1e-6)
    cache_files = list(tmp_path.glob("class_stats_*.json"))
    assert len(cache_files) == 1 and json.loads(cache_files[0].read_text())["counts"] == [2, 5]
    loads = ds.loads
    w_enet = cached_class_weights(ds, "enet", tmp_path)  # read from the cache: no label decoded
    assert ds.loads == loads
    assert w_enet.tolist() == pytest.approx(class_weights_enet([2, 5]).tolist())
    ds.files.append(("img2.png", "lbl2.png"))
    ds.labels.append(np.zeros((2, 2), np.uint8))
    cached_class_weights(ds, "enet", tmp_path)  # a different file list: new statistics
    assert ds.loads > loads and len(list(tmp_path.glob("class_stats_*.json"))) == 2
    with pytest.raises(ConfigError, match="median_freq"):
        cached_class_weights(ds, "median", tmp_path)


def test_downsample_labels_is_nearest():
    label = torch.arange(16).view(1, 4, 4)
    # nearest picks source rows/cols floor(i * 4/2) = 0, 2
    assert downsample_labels(label, (2, 2))[0].tolist() == [[0, 2], [8, 10]]
    assert downsample_labels(label, (2, 2)).dtype == label.dtype


def test_deep_supervision_weights_and_modes():
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 8, 8))
    target[0, 0, :3] = 255
    out = torch.randn(2, 3, 8, 8)
    aux = [torch.randn(2, 3, 4, 4), torch.randn(2, 3, 2, 2)]
    ce = CrossEntropy()
    loss = DeepSupervisionLoss(ce, [0.4, 0.5], "downsample", ("a", "b"))
    total, parts = loss({"out": out, "aux": aux}, target)
    want_a = ce(aux[0], target[:, ::2, ::2])  # nearest downsampling by 2 = every 2nd pixel
    want_b = ce(aux[1], target[:, ::4, ::4])
    assert parts["a"].item() == pytest.approx(want_a.item(), rel=1e-6)
    assert parts["b"].item() == pytest.approx(want_b.item(), rel=1e-6)
    assert total.item() == pytest.approx(ce(out, target).item() + 0.4 * want_a.item() + 0.5 * want_b.item(), rel=1e-6)

    up = DeepSupervisionLoss(ce, [0.4, 0.5], "upsample", ("a", "b"))
    total_up, parts_up = up({"out": out, "aux": aux}, target)
    want_a = ce(F.interpolate(aux[0], size=(8, 8), mode="bilinear", align_corners=False), target)
    assert parts_up["a"].item() == pytest.approx(want_a.item(), rel=1e-6)
    # a plain tensor (eval mode / no aux heads) is the main loss only
    total_plain, parts_plain = loss(out, target)
    assert total_plain.item() == pytest.approx(ce(out, target).item()) and set(parts_plain) == {"out"}


def test_build_criterion_from_recipe():
    cfg = {"name": "ce", "aux_weights": [0.4, 0.4, 0.4], "aux_mode": "downsample", "lovasz_weight": 0.0}
    crit = build_criterion(cfg, 3, aux_names=("s1", "s2", "s3"))
    assert crit.aux_weights == [0.4, 0.4, 0.4] and crit.aux_names == ("s1", "s2", "s3")
    with pytest.raises(ConfigError, match=r"aux_weights has 2 entries but the model has 3 aux heads \(s1, s2, s3\)"):
        build_criterion(dict(cfg, aux_weights=[1, 1]), 3, aux_names=("s1", "s2", "s3"))
    with pytest.raises(ConfigError, match="Did you mean 'ohem'"):
        build_criterion(dict(cfg, name="ohm"), 3, aux_names=("s1", "s2", "s3"))
    with pytest.raises(ConfigError, match="lovasz_weight"):
        build_criterion({"name": "ce+lovasz"}, 3)
    with pytest.raises(ConfigError, match=r"shape \(2,\), expected \(3,\)"):
        build_criterion({"name": "ce"}, 3, class_weights=torch.ones(2))
    # ce + 0.5 * lovasz on a real pair
    logits, target = torch.randn(1, 3, 4, 4), torch.randint(0, 3, (1, 4, 4))
    total, _ = build_criterion({"name": "ce+lovasz", "lovasz_weight": 0.5}, 3)(logits, target)
    assert total.item() == pytest.approx(CrossEntropy()(logits, target).item() + 0.5 * LovaszSoftmax()(logits, target).item(), rel=1e-6)
    # aux_weights null: the model's (paper's) default weights; a model with aux heads and none is refused,
    # never trained silently at weight 0
    aux = torch.randn(1, 3, 4, 4)
    crit = build_criterion({"name": "ce", "aux_weights": None, "aux_mode": "upsample"}, 3, aux_names=("s1",),
                           default_aux_weights=(0.4,))
    total, parts = crit({"out": logits, "aux": [aux]}, target)
    assert set(parts) == {"out", "s1"}
    assert total.item() == pytest.approx(CrossEntropy()(logits, target).item() + 0.4 * CrossEntropy()(aux, target).item(), rel=1e-6)
    with pytest.raises(ConfigError, match=r"aux_weights is null but the model has 1 aux heads \(s1\)"):
        build_criterion({"name": "ce", "aux_weights": None}, 3, aux_names=("s1",))
    # an explicit 0 still trains the heads without effect on the loss
    crit = build_criterion({"name": "ce", "aux_weights": [0.0]}, 3, aux_names=("s1",))
    total, parts = crit({"out": logits, "aux": [aux]}, target)
    assert total.item() == pytest.approx(CrossEntropy()(logits, target).item())

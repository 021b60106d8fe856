import json
import math
import random
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from lightseg.errors import ConfigError
import torch
import torch.nn as nn

from lightseg.checkpoint import load_checkpoint
from lightseg.config import load_config
from lightseg.data.classes import CAMVID_PALETTE
from lightseg.engine.optim import IterationScheduler, build_optimizer
from lightseg.engine.train import InfiniteBatchSampler, Trainer, rng_state, set_rng_state

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- helpers shared by the engine tests
@pytest.fixture(autouse=True)
def one_thread():
    """Training tests use one intra-op thread: on a shared 2-core machine two threads that wait for
    each other make these tiny runs ten times slower. The previous setting is put back."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_camvid_like(root, n_train=8, n_val=3, size=(64, 64), seed=0):
    """A tiny dataset in SegNet's CamVid layout: three coloured regions (+ a void corner) per image,
    colours = class colours + noise, so that a few iterations already learn something."""
    rng = np.random.default_rng(seed)
    palette = np.array(list(CAMVID_PALETTE) + [(0, 0, 0)], np.uint8)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / f"{split}annot").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            h, w = size
            label = np.zeros((h, w), np.uint8)
            c1, c2 = rng.integers(1, 11, 2)
            y, x = rng.integers(8, h - 8), rng.integers(8, w - 8)
            label[y:, :x] = c1
            label[:y, x:] = c2
            label[:4, :4] = 11  # void -> ignore
            image = palette[label] + rng.integers(0, 20, (h, w, 3)).astype(np.uint8)
            cv2.imwrite(str(root / split / f"s{i:03d}.png"), image[..., ::-1])
            cv2.imwrite(str(root / f"{split}annot" / f"s{i:03d}.png"), label)
    return root


def tiny_recipe(tmp_path, data_root, iters=12, extra=""):
    p = tmp_path / "tiny.yaml"
    p.write_text(f"""
model: {{name: mininet_95k, num_classes: 11}}
data: {{name: camvid, root: {data_root}, num_workers: 0}}
train:
  iters: {iters}
  batch_size: 2
  ckpt_interval: 4
  val_interval: 1000
  log_interval: 1
  loss: {{aux_weights: [0.4, 0.4, 0.4], aux_mode: upsample}}
{extra}
output_dir: {tmp_path / 'run'}
""")
    return p


# ---------------------------------------------------------------- schedules
def _sched(**kw):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    cfg = {"name": "poly", "power": 0.9, "min_lr": 0.0, "warmup_iters": 0, "warmup_start": 0.1,
           "plateau_factor": 0.5, "plateau_patience": 2, **kw}
    return IterationScheduler(opt, cfg, base_lr=0.1, max_iters=100), opt


def _rates(s, n, start=0):
    return [s.step(it) for it in range(start, n)]


def test_poly_cosine_constant_by_hand():
    s, opt = _sched()
    lrs = _rates(s, 100)
    assert lrs[0] == 0.1 and lrs[50] == pytest.approx(0.1 * 0.5 ** 0.9, rel=1e-12)
    assert lrs[99] == pytest.approx(0.1 * 0.01 ** 0.9, rel=1e-12)
    assert opt.param_groups[0]["lr"] == lrs[99]
    s, _ = _sched(name="cosine", min_lr=1e-6)
    lrs = _rates(s, 101)
    assert lrs[50] == pytest.approx(1e-6 + (0.1 - 1e-6) * 0.5, rel=1e-9) and lrs[100] == pytest.approx(1e-6, rel=1e-6)
    s, _ = _sched(name="constant")
    assert set(_rates(s, 100)) == {0.1}
    with pytest.raises(ValueError, match="must follow"):
        s.step(5)  # iterations come one after another
    with pytest.raises(ConfigError, match="min_lr"):
        _sched(name="poly", min_lr=1e-4)


def test_warmup_is_linear_from_start_fraction():
    s, _ = _sched(name="constant", warmup_iters=10, warmup_start=0.1)
    lrs = _rates(s, 12)
    assert lrs[0] == pytest.approx(0.01) and lrs[5] == pytest.approx(0.1 * (0.1 + 0.9 * 0.5))
    assert lrs[10] == pytest.approx(0.1) and lrs[11] == pytest.approx(0.1)
    s, _ = _sched(name="poly", warmup_iters=10, warmup_start=0.1)  # warm-up x poly over the whole run
    assert _rates(s, 6)[5] == pytest.approx(0.1 * (0.1 + 0.9 * 0.5) * (1 - 5 / 100) ** 0.9)


def test_constant_warmup_is_deeplabs_slow_start():
    # ShuffleNetV2+DPC: "a slow start at [a low] learning rate for the first 186 steps"; DeepLab's
    # tf.where(step < slow_start_step, slow_start_lr, poly(step)): the poly keeps counting from step 0.
    s, _ = _sched(name="poly", warmup_iters=10, warmup_start=0.1, warmup_mode="constant")
    lrs = _rates(s, 12)
    assert lrs[:10] == pytest.approx([0.1 * 0.1 * (1 - i / 100) ** 0.9 for i in range(10)], rel=1e-12)
    # then the poly rate of steps 10, 11: not a restarted poly
    assert lrs[10:] == pytest.approx([0.1 * (1 - i / 100) ** 0.9 for i in (10, 11)], rel=1e-12)
    with pytest.raises(ConfigError, match="warmup_mode"):
        _sched(warmup_mode="cosine")


def test_constant_warmup_resumes_exactly_across_its_end(tmp_path):
    """Stopped inside the slow start (iteration 4 of 6) and resumed: the same learning rates and the same
    weights as an uninterrupted run (the schedule is a function of the iteration only)."""
    data = make_camvid_like(tmp_path / "data", n_train=4, n_val=1)
    sched = "  scheduler: {name: constant, warmup_iters: 6, warmup_start: 0.1, warmup_mode: constant}"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ref_dir = Trainer(load_config(tiny_recipe(tmp_path / "a", data, iters=10, extra=sched))).fit()
    stopped = Trainer(load_config(tiny_recipe(tmp_path / "b", data, iters=4, extra=sched))).fit()
    resumed = Trainer(load_config(tiny_recipe(tmp_path / "b", data, iters=4, extra=sched), ["train.iters=10"]),
                      resume=str(stopped), force_override=True).fit()  # more iterations: the user's explicit choice

    def lrs(run):
        return [r["lr"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r["kind"] == "train"]
    assert lrs(ref_dir) == lrs(resumed) == pytest.approx([2e-4] * 6 + [2e-3] * 4)
    ref, out = load_checkpoint(ref_dir / "last.pt")["model"], load_checkpoint(resumed / "last.pt")["model"]
    assert all(torch.equal(ref[k], out[k]) for k in ref)


def test_plateau_halves_after_patience_and_state_round_trip():
    s, opt = _sched(name="plateau", plateau_patience=2)
    _rates(s, 10)
    for miou in (0.3, 0.4, 0.4, 0.39):  # improves twice, then two validations without improvement
        s.on_validation(miou)
    assert s.step(10) == pytest.approx(0.05)
    s2, opt2 = _sched(name="plateau", plateau_patience=2)
    opt2.load_state_dict(opt.state_dict())
    s2.load_state_dict(s.state_dict())
    assert s2.step(11) == pytest.approx(0.05) and s2.plateau.best == 0.4
    s2.on_validation(0.39)
    s2.on_validation(0.39)
    assert s2.step(12) == pytest.approx(0.025)


def test_plateau_max_reductions_ends_the_schedule_at_the_next_stall_and_a_resume_may_allow_more():
    """With plateau_max_reductions 2 the rate is halved twice (0.1 -> 0.05 -> 0.025); the third stall sets
    converged and keeps 0.025. The count survives a state round trip, is derived from the scale for states
    saved before it was kept, and a resume that allows a third reduction applies the stall that ended it."""
    s, opt = _sched(name="plateau", plateau_patience=1, plateau_max_reductions=2)
    _rates(s, 3)
    s.on_validation(0.5)
    rates = []
    for _ in range(3):  # each validation without improvement is a stall (patience 1)
        s.on_validation(0.4)
        rates.append(opt.param_groups[0]["lr"])
    assert rates == pytest.approx([0.05, 0.025, 0.025])
    assert s.converged and s.plateau_reductions == 2 and s.plateau_scale == 0.25
    s.on_validation(0.3)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.025)  # ended: no further reduction

    state = s.state_dict()
    again, opt2 = _sched(name="plateau", plateau_patience=1, plateau_max_reductions=2)
    opt2.load_state_dict(opt.state_dict())
    again.load_state_dict(state)
    assert again.converged and again.plateau_reductions == 2

    old = {k: v for k, v in state.items() if k not in ("plateau_reductions", "converged")}
    older, opt3 = _sched(name="plateau", plateau_patience=1, plateau_max_reductions=2)
    opt3.load_state_dict(opt.state_dict())
    older.load_state_dict(old)
    assert older.plateau_reductions == 2 and not older.converged  # the count from 0.25 = 0.5 ** 2

    more, opt4 = _sched(name="plateau", plateau_patience=1, plateau_max_reductions=3)
    opt4.load_state_dict(opt.state_dict())
    more.load_state_dict(state)
    assert not more.converged and more.plateau_reductions == 3
    assert more.step(3) == pytest.approx(0.0125) and more.plateau_scale == 0.125


def test_a_run_whose_plateau_schedule_converges_ends_there_from_the_cli_and_a_resume_may_allow_more(
        tmp_path, monkeypatch, capsys):
    """`lightseg train` with plateau_max_reductions 1 and a val mIoU that never improves (validation every
    iteration, patience 1): the rate is halved at iteration 2, the stall at 3 ends the run there (exit 0,
    saved, said), a plain resume says it has ended and trains nothing, and a resume allowing 2 reductions
    halves the rate again and ends at the next stall, exactly where a run given 2 from the start ends."""
    from lightseg.cli import main

    monkeypatch.setattr(Trainer, "validate", lambda self: {"miou": 0.5, "pixel_acc": 0.5, "iou": {}})
    data = make_camvid_like(tmp_path / "data", n_train=2, n_val=1)
    sched = "  scheduler: {name: plateau, plateau_patience: 1, plateau_max_reductions: 1}"
    recipe = tiny_recipe(tmp_path, data, iters=10, extra=sched).read_text().replace("val_interval: 1000", "val_interval: 1")
    (tmp_path / "plateau.yaml").write_text(recipe)
    torch.set_num_threads(1)
    assert main(["train", str(tmp_path / "plateau.yaml")]) == 0
    err = capsys.readouterr().err
    assert "the plateau schedule has converged: its rate was reduced 1 times" in err and "at iteration 3 of the 10" in err
    run = tmp_path / "run"
    ended = load_checkpoint(run / "last.pt")
    assert ended["iteration"] == 3 and ended["scheduler"]["converged"]
    assert ended["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.5 * load_config(tmp_path / "plateau.yaml")["train"]["optimizer"]["lr"])

    assert main(["train", "--resume", str(run)]) == 0
    assert "has ended at iteration 3" in capsys.readouterr().err
    assert load_checkpoint(run / "last.pt")["iteration"] == 3

    assert main(["train", "--resume", str(run), "--set", "train.scheduler.plateau_max_reductions=2"]) == 0
    more = load_checkpoint(run / "last.pt")
    assert more["iteration"] == 4 and more["scheduler"]["plateau_reductions"] == 2 and more["scheduler"]["converged"]

    whole = tmp_path / "whole"
    assert main(["train", str(tmp_path / "plateau.yaml"), "--set", "train.scheduler.plateau_max_reductions=2",
                 "--set", f"output_dir={whole}"]) == 0
    ref = load_checkpoint(whole / "last.pt")
    assert ref["iteration"] == 4
    assert [g["lr"] for g in ref["optimizer"]["param_groups"]] == [g["lr"] for g in more["optimizer"]["param_groups"]]
    assert all(torch.equal(ref["model"][k], more["model"][k]) for k in ref["model"])


def test_plateau_on_the_training_loss_per_epoch_and_resume_mid_epoch():
    # RDS-Net halves the lr "when the loss is stagnant": the epoch's mean training loss, lower is better.
    def sched():
        opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
        return IterationScheduler(opt, {"name": "plateau", "plateau_patience": 2, "plateau_monitor": "train_loss"},
                                  base_lr=0.1, max_iters=100, iters_per_epoch=2), opt
    s, opt = sched()
    s.on_validation(0.9)  # a val mIoU is not what it watches
    losses = [2.0, 1.0, 1.0, 0.8, 0.95, 0.95, 1.0, 0.9]  # epoch means 1.5, 0.9, 0.95, 0.95
    for it, loss in enumerate(losses[:7]):
        s.step(it)
        s.on_train_loss(it, loss)
    assert s.step(7) == pytest.approx(0.1) and s.plateau.num_bad_epochs == 1 and s.plateau.best == pytest.approx(-0.9)
    mid, mid_opt = s.state_dict(), opt.state_dict()  # mid-epoch: one loss of the fourth epoch seen
    s.on_train_loss(7, losses[7])
    assert s.step(8) == pytest.approx(0.05)  # two epochs without a lower mean loss
    resumed, opt2 = sched()
    opt2.load_state_dict(mid_opt)
    resumed.load_state_dict(mid)
    assert resumed.step(7) == pytest.approx(0.1)
    resumed.on_train_loss(7, losses[7])
    assert resumed.step(8) == pytest.approx(0.05) and resumed.state_dict() == s.state_dict()
    with pytest.raises(ConfigError, match="plateau_monitor"):
        IterationScheduler(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1),
                           {"name": "plateau", "plateau_monitor": "val_loss"}, 0.1, 10)


def test_resumed_schedule_continues_bitwise():
    """Stop after any iteration, restore optimiser and schedule state into new objects: the same rates."""
    for kw in ({"name": "poly", "warmup_iters": 7}, {"name": "cosine", "min_lr": 1e-6}):
        s, opt = _sched(**kw)
        full = _rates(s, 40)
        s, opt = _sched(**kw)
        head = _rates(s, 17)
        s2, opt2 = _sched(**kw)
        opt2.load_state_dict(opt.state_dict())
        s2.load_state_dict(s.state_dict())
        assert head + _rates(s2, 40, start=17) == full


def test_resume_with_a_changed_recipe_takes_the_new_schedule():
    """More train.iters (or another lr) on --resume: the recipe's schedule at that iteration, as before."""
    s, opt = _sched(name="poly")
    _rates(s, 31)
    opt2 = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    longer = IterationScheduler(opt2, {"name": "poly", "power": 0.9}, base_lr=0.1, max_iters=200)
    opt2.load_state_dict(opt.state_dict())
    longer.load_state_dict(s.state_dict(), iteration=31)
    assert longer.step(31) == pytest.approx(0.1 * (1 - 31 / 200) ** 0.9, rel=1e-12)
    s, opt = _sched(name="plateau", plateau_patience=1)
    _rates(s, 5)
    s.on_validation(0.5)
    s.on_validation(0.4)  # one bad check: halved
    opt3 = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    other_lr = IterationScheduler(opt3, {"name": "plateau", "plateau_patience": 1}, base_lr=0.02, max_iters=100)
    opt3.load_state_dict(opt.state_dict())
    other_lr.load_state_dict(s.state_dict(), iteration=5)
    assert other_lr.step(5) == pytest.approx(0.01) and other_lr.plateau.best == 0.5  # new lr, the reduction kept


def test_schedule_state_of_an_older_lightseg_is_rebuilt():
    """Checkpoints written before torch's schedulers held a formula's state; resuming them steps the new
    schedulers to the checkpoint's iteration (the same rates up to rounding)."""
    s, _ = _sched(name="plateau", plateau_patience=2, warmup_iters=5, plateau_monitor="train_loss")
    old = {"name": "plateau", "plateau_scale": 0.5, "best_metric": -0.4, "num_bad": 1,
           "epoch_loss_sum": 1.5, "epoch_loss_count": 2}
    s.load_state_dict(old, iteration=8)
    assert s.step(8) == pytest.approx(0.05) and s.plateau.num_bad_epochs == 1 and s.plateau.best == -0.4
    assert (s.epoch_loss_sum, s.epoch_loss_count) == (1.5, 2)
    s, _ = _sched(name="poly", warmup_iters=5)
    s.load_state_dict({"name": "poly", "plateau_scale": 1.0, "best_metric": -1e9, "num_bad": 0}, iteration=30)
    assert s.step(30) == pytest.approx(0.1 * (1 - 30 / 100) ** 0.9, rel=1e-12)


def test_backbone_lr_mult_groups():
    model = nn.Sequential()
    model.backbone = nn.Linear(2, 2)
    model.head = nn.Linear(2, 3)
    opt = build_optimizer(model, {"name": "sgd", "lr": 0.02, "momentum": 0.9, "weight_decay": 1e-4,
                                  "nesterov": True, "betas": [0.9, 0.999], "backbone_lr_mult": 0.1})
    head, body = opt.param_groups
    assert head["name"] == "head" and len(head["params"]) == 2 and body["name"] == "backbone"
    s = IterationScheduler(opt, {"name": "constant"}, base_lr=0.02, max_iters=10)
    _rates(s, 4)
    assert head["lr"] == pytest.approx(0.02) and body["lr"] == pytest.approx(0.002)
    assert opt.defaults["nesterov"] is True


def test_atonet_recipe_trains_only_the_stage_convs_at_a_tenth_as_the_authors_code_does():
    from lightseg.config import load_config
    from lightseg.models import create_model

    cfg = load_config("atonet_r18_camvid")
    model = create_model("atonet_r18", num_classes=11)
    opt = build_optimizer(model, cfg["train"]["optimizer"])
    by_id = {id(p): g for g in opt.param_groups for p in g["params"]}
    # the authors' rule, written out: 'layer' in k and ('conv' in k or 'downsample.0' in k), lr/10 and wd/10
    for name, p in model.named_parameters():
        k = name.removeprefix("backbone.")
        slow = name.startswith("backbone.") and "layer" in k and ("conv" in k or "downsample.0" in k)
        g = by_id[id(p)]
        assert g["lr"] == pytest.approx(0.02 * (0.1 if slow else 1.0)), name
        assert g["weight_decay"] == pytest.approx(1e-4 * (0.1 if slow else 1.0)), name
    assert by_id[id(model.backbone.conv1.weight)]["name"] == "head"  # the stem keeps the full rate
    assert by_id[id(model.backbone.layer1[0].bn1.weight)]["name"] == "head"
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_shufflenet_recipe_decays_only_dense_conv_weights_as_tf_slim_does():
    from lightseg.config import load_config
    from lightseg.models import create_model

    cfg = load_config("shufflenetv2_dpc_cityscapes")
    model = create_model("shufflenetv2_dpc", num_classes=19)
    opt = build_optimizer(model, cfg["train"]["optimizer"])
    by_id = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    seen = {"dense": 0, "depthwise": 0, "bn": 0}
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            depthwise = m.groups > 1 and m.groups == m.in_channels
            assert by_id[id(m.weight)] == (0.0 if depthwise else pytest.approx(4e-5))
            seen["depthwise" if depthwise else "dense"] += 1
            if m.bias is not None:
                assert by_id[id(m.bias)] == 0.0
        elif isinstance(m, nn.BatchNorm2d):
            assert by_id[id(m.weight)] == 0.0 and by_id[id(m.bias)] == 0.0
            seen["bn"] += 1
    assert all(seen.values()), seen
    assert cfg["train"]["bn_momentum"] == pytest.approx(1 - 0.9997)


def test_default_optimizer_groups_are_head_then_backbone_so_older_checkpoints_resume():
    from lightseg.models import create_model

    model = create_model("atonet_r18", num_classes=5)
    opt = build_optimizer(model, {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4,
                                  "betas": [0.9, 0.999], "backbone_lr_mult": 0.1})
    assert [g["name"] for g in opt.param_groups] == ["head", "backbone"]
    body = {id(p) for p in model.backbone.parameters()}
    assert [id(p) for p in opt.param_groups[1]["params"]] == [id(p) for p in model.parameters() if id(p) in body]
    assert all(g["weight_decay"] == 1e-4 for g in opt.param_groups)


def test_bn_momentum_sets_every_running_average_and_bad_values_exit_2(tmp_path, capsys):
    from lightseg.cli import main

    assert main(["train", "mininet_95k_synthetic", "--set", "train.bn_momentum=1.5", "--set", f"output_dir={tmp_path / 'r'}"]) == 2
    assert "train.bn_momentum" in capsys.readouterr().err and not (tmp_path / "r").exists()
    data = make_camvid_like(tmp_path / "data", n_train=2, n_val=1)
    means = {}
    for m in ("0.5", "0.25"):
        (tmp_path / f"m{m}").mkdir()
        recipe = tiny_recipe(tmp_path / f"m{m}", data, iters=1)
        out = tmp_path / f"m{m}" / "run"
        assert main(["train", str(recipe), "--no-val", "--set", f"train.bn_momentum={m}"]) == 0
        state = load_checkpoint(out / "last.pt")["model"]
        means[m] = {k: v for k, v in state.items() if k.endswith("running_mean")}
    # one update from a zero running mean: m x the batch mean, and the batch is the same in both runs
    assert len(means["0.5"]) > 10
    for k, v in means["0.5"].items():
        torch.testing.assert_close(v, 2 * means["0.25"][k], rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- sampler and RNG state
def test_sampler_shards_the_global_stream():
    single = InfiniteBatchSampler(10, batch_size=4, seed=3)
    r0 = InfiniteBatchSampler(10, batch_size=2, seed=3, rank=0, world_size=2)
    r1 = InfiniteBatchSampler(10, batch_size=2, seed=3, rank=1, world_size=2)
    for it in range(6):
        assert sorted(r0.batch(it) + r1.batch(it)) == sorted(single.batch(it))
        assert not set(r0.batch(it)) & set(r1.batch(it))
    # each epoch (10 samples) is a permutation; seeds differ between epochs
    stream = [s for it in range(5) for s in single.batch(it)]  # 20 samples = 2 epochs
    assert sorted(i for i, _ in stream[:10]) == list(range(10)) == sorted(i for i, _ in stream[10:])
    assert len({seed for _, seed in stream}) == 20
    # starting at iteration k gives the same batches as running up to it
    it = iter(InfiniteBatchSampler(10, batch_size=4, seed=3, start_iter=3))
    assert next(it) == single.batch(3)


def test_rng_state_is_weights_only_and_restores(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    state = rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]


# ---------------------------------------------------------------- a short run
def test_short_run_lowers_loss_and_writes_run_dir(tmp_path):
    data = make_camvid_like(tmp_path / "data")
    cfg = load_config(tiny_recipe(tmp_path, data, iters=16, extra="  val_interval: 8"),
                      ["train.optimizer.lr=5e-3"])
    run_dir = Trainer(cfg).fit()
    assert sorted(p.name for p in run_dir.iterdir()) == ["best.pt", "config.yaml", "last.pt", "log.jsonl"]
    assert load_config(run_dir / "config.yaml") == cfg
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    val = [r for r in records if r["kind"] == "val"]
    assert [r["iter"] for r in train] == list(range(1, 17))
    assert set(train[0]) == {"kind", "iter", "epoch", "time", "loss", "lr", "images_per_s"}
    assert train[-1]["epoch"] == 16 * 2 // 8
    assert [r["iter"] for r in val] == [8, 16] and set(val[0]["iou"]) >= {"Sky", "Car"}
    first, last = np.mean([r["loss"] for r in train[:3]]), np.mean([r["loss"] for r in train[-3:]])
    assert last < 0.8 * first, (first, last)
    # poly schedule, logged lr of update i (1-based iter) is the rate of update i - 1
    assert train[0]["lr"] == pytest.approx(5e-3)
    assert train[8]["lr"] == pytest.approx(5e-3 * (1 - 8 / 16) ** 0.9)

    ckpt = load_checkpoint(run_dir / "last.pt")  # weights_only=True inside
    assert ckpt["iteration"] == 16 and ckpt["epoch"] == 4 and ckpt["model_name"] == "mininet_95k"
    assert ckpt["num_classes"] == 11 and ckpt["classes"][0] == "Sky" and len(ckpt["palette"]) == 11
    assert ckpt["config"] == cfg and ckpt["sampler"]["iteration"] == 16
    assert set(ckpt["rng"]) >= {"torch", "numpy", "python"} and "state" in ckpt["optimizer"]
    best = load_checkpoint(run_dir / "best.pt")
    assert best["best_miou"] == max(r["miou"] for r in val) and 0 < best["best_miou"] <= 1
    assert not math.isnan(best["best_miou"])


# ---------------------------------------------------------------- the papers' CamVid protocol: train + val
def test_train_on_train_plus_val_from_the_command_line_yaml_and_resume(tmp_path):
    """`lightseg train RECIPE --set "data.train_split=[train, val]"` (the command docs/models.md gives)
    trains on both splits, and so does the same list in a YAML recipe (exact resume of such a run: test_resume)."""
    from lightseg.cli import main

    data = make_camvid_like(tmp_path / "data", n_train=5, n_val=3)
    recipe = tiny_recipe(tmp_path, data, iters=4)
    assert main(["train", str(recipe), "--set", "data.train_split=[train, val]", "--set", "train.iters=2",
                 "--no-val", "--set", f"output_dir={tmp_path / 'cli'}"]) == 0
    ckpt = load_checkpoint(tmp_path / "cli" / "last.pt")
    assert ckpt["train_samples"] == 8 and ckpt["config"]["data"]["train_split"] == ["train", "val"]

    yaml_recipe = tiny_recipe(tmp_path, data, iters=2, extra="  val_interval: 0")
    yaml_recipe.write_text(yaml_recipe.read_text().replace("num_workers: 0}", "num_workers: 0, train_split: [train, val]}"))
    assert main(["train", str(yaml_recipe), "--set", f"output_dir={tmp_path / 'yaml'}"]) == 0
    assert load_checkpoint(tmp_path / "yaml" / "last.pt")["train_samples"] == 8


@pytest.mark.parametrize("bad", ["[]", "[train, train]", "[train, 3]", "3"])
def test_a_bad_split_list_is_refused_naming_the_key(tmp_path, bad, capsys):
    from lightseg.cli import main

    data = make_camvid_like(tmp_path / "data", n_train=2, n_val=1)
    assert main(["train", str(tiny_recipe(tmp_path, data)), "--set", f"data.train_split={bad}"]) == 2
    err = capsys.readouterr().err
    assert "data.train_split" in err and "Traceback" not in err and not (tmp_path / "run").exists()


# ---------------------------------------------------------------- what the terminal shows
def render_terminal(text: str) -> list[str]:
    """The rows a terminal shows after ``text``: '\\r' returns to column 0 (what follows overwrites), '\\n'
    starts the next row, ESC[A moves up a row (tqdm's nested bars); other escapes are dropped."""
    import re

    rows, row, col = [[]], 0, 0
    for token in re.findall(r"\x1b\[A|\x1b\[[0-9;]*[A-Za-z]|\r|\n|[^\x1b\r\n]", text):
        if token == "\r":
            col = 0
        elif token == "\n":
            row, col = row + 1, 0
            rows.extend([] for _ in range(row + 1 - len(rows)))
        elif token == "\x1b[A":
            row = max(row - 1, 0)
        elif token.startswith("\x1b"):
            continue
        else:
            while len(rows) <= row:
                rows.append([])
            line = rows[row]
            line.extend(" " * (col + 1 - len(line)))
            line[col] = token
            col += 1
    return ["".join(r).rstrip() for r in rows]


def test_render_terminal_by_hand():
    assert render_terminal("abc\rX\nnext") == ["Xbc", "next"]
    assert render_terminal("bar 1\n\x1b[Atop") == ["top 1", ""]


def test_val_lines_print_on_their_own_rows_beside_the_bars(tmp_path, capsys):
    from lightseg.cli import main

    data = make_camvid_like(tmp_path / "data", n_train=2, n_val=2)
    recipe = tiny_recipe(tmp_path, data, iters=2, extra="  val_interval: 1")
    assert main(["train", str(recipe)]) == 0
    err = capsys.readouterr().err
    rows = render_terminal(err)
    val_rows = [r for r in rows if "val mIoU" in r]
    assert len(val_rows) == 2, rows
    for r in val_rows:  # the val line is a row of its own, nothing of a bar before or after it
        assert r.startswith("lightseg train: iteration ") and r.endswith(")"), r
    assert "\rval" in err  # validation draws its own progress bar (named val) ...
    assert not any(r.lstrip().startswith("val") for r in rows)  # the val bar is gone once validation ends (leave=False)
    assert any(r.startswith("train mininet_95k") for r in rows)  # the training bar stays


# ---------------------------------------------------------------- mixed precision on the CPU
def test_amp_on_the_cpu_trains_in_float32_from_the_cli_and_says_why(tmp_path, capsys):
    """`--set train.amp=bf16` on a CPU trains in float32 (no autocast around any module), and the warning says
    why: CPU bf16 autocast now and then gives non-finite gradients with torch's oneDNN kernels."""
    from lightseg.cli import main

    data = make_camvid_like(tmp_path / "d", n_train=4, n_val=1)
    recipe = tiny_recipe(tmp_path, data, iters=2)
    seen = []
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda m, i, o: seen.append(torch.is_autocast_enabled("cpu")))
    try:
        code = main(["train", str(recipe), "--no-val", "--set", "train.amp=bf16"])
    finally:
        hook.remove()
    err = capsys.readouterr().err
    assert code in (0, None), err
    assert seen and not any(seen)
    assert "train.amp=bf16 is for CUDA; training in float32 on cpu" in err and "nan loss" in err, err
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()
              if '"loss"' in line]
    assert losses and all(math.isfinite(x) for x in losses)


def test_amp_takes_bf16_and_fp16_on_cuda_and_float32_elsewhere(capsys):
    from lightseg.engine.train import amp_dtype

    cpu = torch.device("cpu")
    assert amp_dtype(None, cpu) is None
    assert amp_dtype("bf16", cpu, warn=False) is None
    assert capsys.readouterr().err == ""
    assert amp_dtype("fp16", cpu) is None
    assert "train.amp=fp16 is for CUDA; training in float32 on cpu" in capsys.readouterr().err
    assert amp_dtype("bf16", torch.device("mps")) is None
    assert "nan loss" not in capsys.readouterr().err  # the oneDNN reason is the CPU's alone
    assert amp_dtype("fp16", torch.device("cuda")) is torch.float16
    assert amp_dtype("bf16", torch.device("cuda")) is torch.bfloat16


def _trace_nonfinite():
    import importlib.util

    spec = importlib.util.spec_from_file_location("trace_nonfinite", ROOT / "tools" / "trace_nonfinite.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class _InfWeightGrad(torch.autograd.Function):
    """x * w whose backward gives w an infinite gradient and x a finite one: a kernel fault in one layer."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(w)
        return x * w

    @staticmethod
    def backward(ctx, g):
        (w,) = ctx.saved_tensors
        return g * w, torch.full_like(w, float("inf"))


class _Scale(torch.nn.Module):
    def __init__(self, fault: bool):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1, 3, 1, 1))
        self.fault = fault

    def forward(self, x):
        return _InfWeightGrad.apply(x, self.w) if self.fault else x * self.w


def test_the_nonfinite_trace_names_the_layer_whose_own_kernel_made_the_first_inf():
    """A weight gradient that turns infinite while the gradients reaching its module stay finite is named
    as that parameter, not as a later symptom; a forward overflow from finite inputs is named as the module
    that overflowed; a clean model passes."""
    tool = _trace_nonfinite()
    x = torch.randn(2, 3, 4, 4)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), _Scale(fault=True), torch.nn.Conv2d(3, 3, 1))
    trace = tool.NonFiniteTrace(model)
    trace.step = 7
    with pytest.raises(tool.NonFiniteFound, match=r"^iteration 7: the weight gradient of 1\.w \(1, 3, 1, 1\)$"):
        model(x).sum().backward()
    trace.remove()

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), _Scale(fault=False), torch.nn.Conv2d(3, 3, 1))
    with torch.no_grad():
        model[1].w.fill_(3e38)  # finite, but 3e38 x anything above ~1.1 overflows float32
    trace = tool.NonFiniteTrace(model)
    with pytest.raises(tool.NonFiniteFound, match=r"^the forward output of 1 \(_Scale\(\)\), from finite inputs$"):
        model(x * 100)
    trace.remove()

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), _Scale(fault=False))
    trace = tool.NonFiniteTrace(model)
    model(x).sum().backward()  # nothing raised
    trace.remove()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_the_nonfinite_trace_resumes_a_copy_of_a_run_and_reports_from_its_command_line(tmp_path, capsys):
    """tools/trace_nonfinite.py RUN: a diverging resume (a learning rate of 1e30) is traced to a named first
    non-finite value at a named iteration (exit 1); the same steps at the run's own rate run clean (exit 0);
    the run folder is not changed either way; a finished run says that no update ran."""
    tool = _trace_nonfinite()
    data = make_camvid_like(tmp_path / "data", n_train=4, n_val=2)
    recipe = tiny_recipe(tmp_path, data, iters=3)
    torch.set_num_threads(1)
    run = Trainer(load_config(recipe)).fit()
    before = {f.name: f.read_bytes() for f in run.iterdir() if f.is_file()}
    more = ["--set", "train.iters=6"]
    assert tool.main([str(run), "--steps", "2", *more]) == 0
    assert "no non-finite value in 2 update(s)" in capsys.readouterr().out
    assert tool.main([str(run), "--steps", "3", *more, "--set", "train.optimizer.lr=1e30"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"first non-finite value: iteration [4-6]: the (forward output|gradient|weight gradient) of \S+", out), out
    assert {f.name: f.read_bytes() for f in run.iterdir() if f.is_file()} == before
    with pytest.raises(SystemExit, match="end of its schedule"):
        tool.main([str(run), "--steps", "2"])

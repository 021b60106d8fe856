"""Write docs/reference/recipes.md from lightseg.config: every recipe key, its type and range (the declared
``SCHEMA``), its default (``DEFAULTS``) and what it does (``MEANING`` below).

    python tools/recipes_reference.py [--check]

A key added to ``lightseg.config.SCHEMA`` needs a line in ``MEANING``: the generator refuses to write the
page without one (and the test of the page fails), so the reference never lists a key without saying what it
does.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from docgen import GENERATED, cell, main  # noqa: E402

from lightseg.config import DEFAULTS, FREE_KEYS, MAX_BASE_DEPTH, SCHEMA  # noqa: E402

PATH = "docs/reference/recipes.md"
TOOL = "tools/recipes_reference.py"

MEANING = {
    "model.name": "the registered network (`lightseg models` lists them)",
    "model.num_classes": "classes the network predicts; a folder dataset's `data.classes` must have as many",
    "model.pretrained_backbone": "`imagenet` (torchvision's ImageNet weights, from torch's hub cache, downloaded "
                                 "once) or a file's path, for the encoder only; null: random initialisation",
    "model.init_from": "fine-tuning: shipped weights of this model (`camvid`) or a `.pt` file; every tensor whose "
                       "name and shape match is loaded, the rest keep their fresh initialisation (`--init-from`)",
    "model.kwargs": "the model's switches, passed to `create_model` (e.g. `{reduced_tail: true}`, `{decoder_branches: 3}`); "
                    "free keys, checked by the model",
    "data.name": "the dataset reader: `camvid` (SegNet's 11-class release), `camvid32` (the original 32-class colour "
                 "labels), `cityscapes` (gtFine labelIds mapped to 19 classes), `mapillary` (mapped to Cityscapes' "
                 "19), `folder` (your own images and label PNGs)",
    "data.root": "the dataset folder (`--data-root`); relative paths resolve against the current directory",
    "data.train_split": "the split(s) trained on; a list joins them (`[train, val]`: the papers' CamVid protocol)",
    "data.val_split": "the split validated on during training and scored by `lightseg eval` by default",
    "data.normalize": "input normalisation: `imagenet` (torchvision's mean and std) or `minus_one_one` (x / 127.5 - 1); "
                      "recorded in checkpoints, and `eval` refuses weights trained with another",
    "data.num_workers": "data-loading processes; lowered to the CPUs this process may use",
    "data.on_device": "decode the training set once into the training device's memory and augment each batch "
                      "there with one `grid_sample` (for a GPU, which a CPU loader cannot keep busy with a small "
                      "network); the same augmentations, not the same pixels (`lightseg.data.on_device`)",
    "data.image_dir": "folder datasets: the image folder under `data.root`, `{split}` replaced by the split name",
    "data.label_dir": "folder datasets: the label PNG folder (same stems as the images), `{split}` replaced",
    "data.list_file": "folder datasets, instead of the two folders: a list of `image label` lines per split "
                      "(`{split}.txt`), paths relative to `data.root`",
    "data.classes": "folder datasets: the class names, index 0 first",
    "data.palette": "folder datasets: a colour per class for overlays and colour PNGs (null: generated)",
    "data.label_map": "folder datasets: `{raw value: class index}`; with a map, every raw value it does not name "
                      "is ignored (255)",
    "data.train_transforms.scale": "random rescaling of each training sample by a factor drawn from [min, max]",
    "data.train_transforms.scale_step": "draw the scale factor from {min, min + step, ..., max} (null: continuous)",
    "data.train_transforms.crop": "random crop [H, W] after scaling; smaller samples are padded (labels with ignore)",
    "data.train_transforms.flip": "random horizontal flip",
    "data.train_transforms.translate": "random shift by up to this many pixels in x and y (RDS-Net: 2)",
    "data.train_transforms.color_jitter": "brightness, contrast and saturation factors drawn from [1 - s, 1 + s] (0: off)",
    "data.train_transforms.resize": "fixed resize of each training sample to [H, W] before the other transforms",
    "data.eval_size": "evaluation: resize the input to [H, W] before the model and upsample the logits to the "
                      "label's size (null: full resolution)",
    "train.iters": "iterations (optimiser steps) to train; overrides `train.epochs` when set",
    "train.epochs": "passes over the training split, turned into iterations at `train.batch_size`",
    "train.batch_size": "images per step and process (with torchrun, the global batch is this x processes)",
    "train.optimizer.name": "`sgd`, `adam` or `adamw`",
    "train.optimizer.lr": "the base learning rate",
    "train.optimizer.weight_decay": "L2 weight decay (decoupled for adamw)",
    "train.optimizer.momentum": "sgd: momentum",
    "train.optimizer.betas": "adam / adamw: the moment decay rates",
    "train.optimizer.nesterov": "sgd: Nesterov momentum",
    "train.optimizer.backbone_lr_mult": "the encoder's learning rate as a multiple of the base rate (ATONet: 0.1)",
    "train.optimizer.backbone_weight_decay_mult": "the encoder's weight decay as a multiple of weight_decay (ATONet's code: 0.1)",
    "train.optimizer.backbone_params": "which encoder parameters take the encoder's rates: all, or stage_convs (a ResNet's layer1-4 conv weights only, as ATONet's code)",
    "train.optimizer.weight_decay_on": "all parameters, or conv_weights (dense conv and linear weights only: no BN, biases or depthwise, as TF-slim)",
    "train.scheduler.name": "`poly` (base x (1 - it / max_iters)^power), `cosine` (down to `min_lr`), `constant`, "
                            "or `plateau` (multiplied by `plateau_factor` when the monitored value stalls)",
    "train.scheduler.power": "poly: the exponent",
    "train.scheduler.min_lr": "cosine: the final learning rate",
    "train.scheduler.warmup_iters": "warm-up iterations at the start (0: none), multiplied with the schedule",
    "train.scheduler.warmup_start": "warm-up: the starting fraction of the learning rate",
    "train.scheduler.warmup_mode": "`linear` (from `warmup_start` x lr to lr) or `constant` (`warmup_start` x lr "
                                   "throughout the warm-up: DeepLab's slow start)",
    "train.scheduler.plateau_factor": "plateau: the factor applied when the monitored value stalls (RDS-Net: 0.5)",
    "train.scheduler.plateau_patience": "plateau: checks without improvement before the rate is lowered",
    "train.scheduler.plateau_max_reductions": "plateau: after this many reductions the next stall ends the run "
                                              "(converged) instead of lowering the rate again; null: never",
    "train.scheduler.plateau_monitor": "plateau: `val_miou` (at each validation) or `train_loss` (the epoch's mean "
                                       "training loss)",
    "train.loss.name": "`ce` (cross-entropy), `ohem` (online hard example mining), `lovasz`, `ce+lovasz`",
    "train.loss.class_weights": "per-class weights computed from the training labels: `enet` (1 / ln(1.02 + p)), "
                                "`median_freq` (SegNet's), null: none",
    "train.loss.aux_weights": "weights of the auxiliary (deep-supervision) outputs, one per output; null: the "
                              "model's own (`model.aux_weights`)",
    "train.loss.aux_mode": "auxiliary outputs: `downsample` the labels to each output's size (nearest) or "
                           "`upsample` the outputs to the labels",
    "train.loss.ohem_thresh": "ohem: pixels whose true-class probability is below this are kept",
    "train.loss.ohem_min_kept": "ohem: at least this many pixels per batch are kept",
    "train.loss.lovasz_weight": "ce+lovasz: the Lovász-softmax term's weight",
    "train.amp": "mixed precision on CUDA: `bf16` or `fp16` (null: float32; a CPU trains in float32, with a warning: its bf16 autocast now and then gives non-finite gradients)",
    "train.channels_last": "channels-last memory format (`auto`: on)",
    "train.bn_momentum": "BatchNorm running-average momentum in torch's convention (TF decay d is 1 - d); null: torch's 0.1",
    "train.seed": "the seed of the sampler, the augmentation and the initialisation",
    "train.deterministic": "deterministic kernels, so that a resumed run gives bitwise the weights of an "
                           "uninterrupted one (on the CPU)",
    "train.val_interval": "validate every N iterations (0: never, no `best.pt`)",
    "train.val_every_epochs": "validate every N epochs instead of `train.val_interval`",
    "train.log_interval": "write a `log.jsonl` record and update the progress bar every N iterations",
    "train.ckpt_interval": "save `last.pt` every N iterations",
    "train.sync_bn": "with torchrun on CUDA: synchronised BatchNorm across processes",
    "train.grad_clip": "clip the gradients' total norm to this value (null: no clipping)",
    "train.device": "where training runs (`--device`): `auto` = CUDA if available, then Apple MPS, then the CPU",
    "train.tensorboard": "also write TensorBoard event files to `RUN_DIR/tensorboard` (`--tensorboard`)",
    "eval.flip": "average the prediction with that of the mirrored image (`--flip`)",
    "eval.scales": "average the predictions at these input scales (`--scales`)",
    "eval.batch_size": "images per evaluation call",
    "eval.mode": "`whole` image or `slide` windows (`--mode`)",
    "eval.crop": "slide: the window [H, W] (`--crop`)",
    "eval.stride": "slide: the step between windows (null: two thirds of the window)",
    "output_dir": "the run folder (`--output-dir`); null: `runs/<recipe name>`; not inherited from a base",
}


def _default(path: str):
    value = DEFAULTS
    for part in path.split("."):
        value = value[part]
    return value


def _yaml(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in value.items()) + "}"
    return str(value)


def render() -> str:
    missing = sorted(set(SCHEMA) - set(MEANING))
    stale = sorted(set(MEANING) - set(SCHEMA))
    if missing or stale:
        raise SystemExit(f"{TOOL}: MEANING lacks {missing} / names keys that are gone {stale}; edit MEANING")
    out = [GENERATED.format(tool=TOOL), "", "# Recipe reference", "",
           "A recipe is a YAML file (or a shipped recipe's name: `lightseg train nosuchname` lists them) that states "
           "only what differs from the defaults below. `base: NAME_OR_PATH` (or mmsegmentation's `_base_`; a list "
           "is merged in order) reads another recipe first and deep-merges this one over it, a path being relative "
           f"to this recipe's folder; chains of up to {MAX_BASE_DEPTH} files are followed. `--set KEY=VALUE` "
           "overrides any key from the command line, the value parsed as YAML (`1e-3`, `[512, 1024]`, `null`). "
           "`lightseg config RECIPE` prints the result with every key filled in.", "",
           "Every value is checked against its rule before anything runs: a wrong type or range, or an unknown key "
           "(with the nearest valid one suggested), is refused naming the key and the file. "
           + ", ".join(f"`{k}`" for k in sorted(FREE_KEYS)) + " take free keys.", ""]
    section = None
    for key, rule in SCHEMA.items():
        top = key.split(".")[0] if "." in key else "other"
        if top != section:
            section = top
            out += ["", f"## {'Other keys' if top == 'other' else f'`{top}`'}", "",
                    "| key | type and range | default | meaning |", "|---|---|---|---|"]
        out.append(f"| `{key}` | {cell(rule.expected)} | `{cell(_yaml(_default(key)))}` | {cell(MEANING[key])} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main(render, PATH, TOOL))

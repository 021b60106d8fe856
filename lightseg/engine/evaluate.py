"""Evaluation at full resolution (``lightseg eval``) and scoring of saved predictions (``lightseg score``).

Both fill the same :class:`lightseg.metrics.ConfusionMatrix`. ``evaluate`` runs a model over a dataset
built with ``train=False`` (no resizing), optionally with flip and multi-scale testing (softmax
probabilities averaged), or with ``eval_size``: the input is resized to that size and the logits
upsampled back to the label size (MiniNet trains at 512x1024 and reports 1024x2048 results).
``score_command`` scores PNG files (``lightseg predict``'s ``*_label.png`` or PNGs named like the labels,
paired by :func:`pair_predictions`); on Cityscapes it reproduces the official
``cityscapesscripts`` pixel-level evaluation (class and category IoU).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch

from ..checkpoint import atomic_write_bytes
from ..data.classes import (
    CAMVID_CLASSES,
    CITYSCAPES_CATEGORIES,
    CITYSCAPES_CLASSES,
    CITYSCAPES_TRAINID_TO_CATEGORY,
    CITYSCAPES_TRAINID_TO_LABELID,
    IGNORE_INDEX,
    cityscapes_label_lut,
)
from ..errors import CheckpointError, ConfigError, DataError, LightsegError
# The one inference function, shared with predict (lightseg.Segmenter); predict_probabilities is re-exported.
from ..inference import check_mode, predict_labels, predict_probabilities  # noqa: F401
from ..viz import save_png
from ..metrics import ConfusionMatrix, format_table
from ..models.base import resize_to


def cityscapes_categories() -> dict:
    """Category name -> its trainIds (the benchmark's 7 scored categories)."""
    return {name: [t for t, c in enumerate(CITYSCAPES_TRAINID_TO_CATEGORY) if c == k]
            for k, name in enumerate(CITYSCAPES_CATEGORIES)}


def _is_cityscapes(dataset) -> bool:
    return getattr(dataset, "name", None) == "cityscapes" or tuple(getattr(dataset, "classes", ())) == CITYSCAPES_CLASSES


# ---------------------------------------------------------------- prediction
def _encode_prediction(pred: np.ndarray, cityscapes: bool) -> np.ndarray:
    if cityscapes:  # the test server wants labelIds
        lut = np.zeros(256, dtype=np.uint8)
        lut[: len(CITYSCAPES_TRAINID_TO_LABELID)] = CITYSCAPES_TRAINID_TO_LABELID
        return lut[pred]
    return pred


def _prediction_name(dataset, index: int) -> str:
    # Cityscapes: <city>_<seq>_<frame>_leftImg8bit.png -> the same name, as the test server expects.
    return Path(dataset.files[index][0]).stem + ".png"


def check_prediction_names(dataset) -> None:
    """Every sample's prediction PNG gets its own name (compared ignoring case, as on macOS and Windows):
    otherwise one would overwrite another. Refused before any work, naming both images."""
    seen: dict[str, int] = {}
    for i in range(len(dataset)):
        name = _prediction_name(dataset, i).lower()
        if name in seen:
            a, b = dataset.files[seen[name]][0], dataset.files[i][0]
            raise DataError(f"--save-predictions: images {a} and {b} would both be saved as {_prediction_name(dataset, i)}; "
                            "rename one of them (predictions are named after the image, so that lightseg score pairs "
                            "them with the labels)")
        seen[name] = i


def _first(batch):
    return batch[0]


class _CatchDataErrors:
    """``dataset[i]``, or the ``DataError`` it raised (returned, so that one bad file can be skipped)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        try:
            return self.dataset[i]
        except DataError as e:
            return e


def _batches(dataset, indices, batch_size: int, num_workers: int, on_bad=None):
    """Yield (indices, images, labels) with up to ``batch_size`` consecutive samples of one size.
    A sample that raises ``DataError`` is passed to ``on_bad(index, error)`` (default: raise it)."""
    from torch.utils.data import DataLoader, Subset

    loader = DataLoader(Subset(_CatchDataErrors(dataset), indices), batch_size=1, num_workers=num_workers,
                        collate_fn=_first)
    group = []
    for index, item in zip(indices, loader):
        if isinstance(item, DataError):
            if on_bad is None:
                raise item
            on_bad(index, item)
            continue
        image, label = item
        if group and (len(group) == batch_size or group[0][1].shape != image.shape):
            yield _stack(group)
            group = []
        group.append((index, image, label))
    if group:
        yield _stack(group)


def _stack(group):
    return [g[0] for g in group], torch.stack([g[1] for g in group]), torch.stack([g[2] for g in group])


def evaluate(model, dataset, device="cpu", flip: bool = False, scales=(1.0,), eval_size=None, batch_size: int = 1,
             distributed: bool = False, progress: bool | str = True, save_predictions=None, num_workers: int = 0,
             mode: str = "whole", crop=None, stride=None, on_bad=None) -> dict:
    """Evaluate ``model`` on ``dataset`` (built with ``train=False``: full resolution) and return the report.

    ``mode``/``crop``/``stride``: whole-image or sliding-window inference (:mod:`lightseg.inference`).
    ``progress``: a progress bar on stderr (rank 0), removed when done; a string names it (default "eval").

    ``distributed``: each rank takes every world_size-th sample and the confusion matrices are summed
    (all ranks get the full report). ``save_predictions``: a folder for prediction PNGs (Cityscapes:
    labelIds named like the test-server export; otherwise train ids). ``on_bad(index, error)``: called for a
    sample that raises ``DataError`` instead of stopping (it may raise); such samples are not scored.
    """
    import torch.distributed as dist

    device = torch.device(device)
    mode, crop, stride = check_mode(mode, crop, stride)
    rank, world = 0, 1
    if distributed and dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    indices = list(range(rank, len(dataset), world))
    cityscapes = _is_cityscapes(dataset)
    out_dir = Path(save_predictions) if save_predictions else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)

    # ``model`` may also be a deploy.Runtime (an inference backend), which needs no mode or layout.
    is_module = isinstance(model, torch.nn.Module)
    was_training = model.training if is_module else False
    if is_module:
        # channels_last: the same numbers, far faster for these nets (mininet_211k at 360x480 on the 2-core
        # CPU: 3.0 s per image NCHW vs 0.3 s channels_last, dilated depthwise convs being the slow NCHW path).
        model.eval().to(device).to(memory_format=torch.channels_last)
    cm = ConfusionMatrix(dataset.num_classes, getattr(dataset, "ignore_index", IGNORE_INDEX))
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=len(indices), desc=progress if isinstance(progress, str) else "eval", file=sys.stderr,
                   leave=False, dynamic_ncols=True)
    try:
        with torch.inference_mode():
            for idx, images, labels in _batches(dataset, indices, max(1, int(batch_size)), num_workers, on_bad):
                images, labels = images.to(device), labels.to(device)
                pred = predict_labels(model, images, labels.shape[-2:], flip, scales, eval_size, mode, crop, stride)
                cm.update(pred, labels)
                if out_dir is not None:
                    for i, p in zip(idx, pred.to(torch.uint8).cpu().numpy()):
                        save_png(out_dir / _prediction_name(dataset, i), _encode_prediction(p, cityscapes))
                if bar is not None:
                    bar.update(len(idx))
    finally:
        if bar is not None:
            bar.close()
        if is_module:
            model.train(was_training)
    if distributed:
        cm.all_reduce()
    report = cm.report(dataset.classes, cityscapes_categories() if cityscapes else None)
    report.update(num_images=len(dataset), flip=bool(flip), scales=[float(s) for s in scales],
                  eval_size=list(eval_size) if eval_size else None, mode=mode,
                  crop=list(crop) if crop else None, stride=list(stride) if stride else None)
    return report


# ---------------------------------------------------------------- `lightseg eval`
def _dump(report: dict) -> str:
    return json.dumps(report, indent=2, allow_nan=False)


def _inputs(config, data_cfg, dataset, checkpoint, calibration) -> list:
    """What ``lightseg eval`` reads, for :func:`lightseg.outputs.check_outputs_apart`: the recipe, the
    dataset's root and every folder its samples lie in, the checkpoint and the calibration images."""
    folders = {str(Path(f).parent) for sample in getattr(dataset, "files", ()) for f in sample}
    return [("the recipe", config if Path(str(config)).is_file() else None), ("the dataset", data_cfg.get("root")),
            *(("the dataset folder", f) for f in sorted(folders)), ("--checkpoint", checkpoint), ("--calib", calibration)]


def metrics_filename(split="val", backend="eager", flip=False, scales=(1.0,), mode="whole", crop=None, stride=None) -> str:
    """The metrics file an evaluation writes, named by its settings so that evaluations with different
    settings never overwrite each other: ``metrics.json`` for the plain one (val split, eager, whole image,
    no flip, scale 1), else e.g. ``metrics_test_onnxruntime_flip_ms-0.75-1.0-1.25_slide-360x360.json``
    (``_stride-HxW`` after the crop when the stride is not the default two thirds of it)."""
    mode, crop, stride = check_mode(mode, crop, stride)
    parts = [] if split == "val" else [split]
    if backend != "eager":
        parts.append(backend)
    if flip:
        parts.append("flip")
    if tuple(float(s) for s in scales) != (1.0,):
        parts.append("ms-" + "-".join(str(float(s)) for s in scales))
    if mode == "slide":
        parts.append(f"slide-{crop[0]}x{crop[1]}")
        if tuple(stride) != check_mode(mode, crop)[2]:
            parts.append(f"stride-{stride[0]}x{stride[1]}")
    return "_".join(["metrics", *parts]) + ".json"


def evaluate_command(config, checkpoint=None, split="val", data_root=None, overrides=(), flip=False, scales=None,
                     as_json=False, output=None, save_predictions=None, backend="eager", calibration=None,
                     calibration_count=None, int8_mode=None, weights=None, mode=None, crop=None, stride=None,
                     device="auto", precision=None) -> dict:
    """``lightseg eval``: evaluate a checkpoint (or shipped ``weights``) on a split of the recipe's dataset;
    write metrics JSON.

    ``backend``: ``eager`` (PyTorch) or a deployment path (``onnxruntime``, ``onnxruntime_int8`` with
    ``calibration`` images and weight format ``int8_mode``, default this CPU's; ``openvino``, ``executorch``,
    ``ncnn`` with ``precision``; ``auto``: the fastest that agrees with PyTorch here, :mod:`lightseg.deploy.auto`),
    so what is deployed is what is measured. ``checkpoint`` may be a file written by ``lightseg export`` (.onnx,
    .xml, .pte, .ncnn.param): its metadata gives the model, classes and normalisation (the recipe gives the
    dataset), its format the backend. ``mode``/``crop``/``stride`` override the recipe's
    ``eval.mode``/``eval.crop``/``eval.stride`` (whole-image or sliding window). ``device``: auto (CUDA, then MPS, then CPU), cpu, cuda or mps; under
    torchrun each rank's GPU.
    """
    from .. import create_model
    from ..checkpoint import CHANNEL_ORDER, check_trained_input, load_checkpoint, load_model_weights, trained_input
    from ..config import load_config
    from ..data import build_dataset, loader_workers, resolve_split, scan_samples
    from ..devices import resolve_device
    from ..outputs import (check_output_dir, check_output_file, check_outputs_apart, refuse_links_in,
                           remove_stale_temp_files)
    from .distributed import setup

    if (checkpoint is None) == (weights is None):
        raise ConfigError("pass --checkpoint CKPT (a .pt written by lightseg train) or --weights NAME (weights shipped "
                          "with lightseg), one of them")
    cfg = load_config(config, overrides or ())
    from ..deploy.metadata import format_of

    meta = None
    if checkpoint is not None and format_of(checkpoint) is not None:  # a file written by lightseg export
        from ..deploy.metadata import read_metadata
        from ..deploy.runtime import file_backend

        meta = read_metadata(checkpoint)
        backend = file_backend(checkpoint, backend)
        if cfg["data"].get("normalize") != meta["normalize"]:
            print(f"{checkpoint}: normalisation {meta['normalize']!r} from its metadata (the recipe says "
                  f"{cfg['data'].get('normalize')!r})", file=sys.stderr)
        cfg["data"]["normalize"] = meta["normalize"]
        cfg["model"].update(name=meta["model"], num_classes=meta["num_classes"])
    # Where the results go is checked before the (long) evaluation, not after it.
    if output:
        check_output_file(output, "--output", example="metrics.json")
    if save_predictions:
        check_output_dir(save_predictions, "--save-predictions")
    for s in scales or ():
        if not (isinstance(s, (int, float)) and 0 < s < float("inf")):
            raise ConfigError(f"--scales {s}: each scale must be a finite number > 0, e.g. --scales 0.75 1.0 1.25")
    data_cfg = cfg["data"]
    if data_root is not None:
        data_cfg["root"] = str(data_root)
    split_name = resolve_split(data_cfg, split)  # "val" -> data.val_split
    dataset = build_dataset(data_cfg, split_name, train=False)
    inputs = _inputs(config, data_cfg, dataset, checkpoint, calibration)
    check_outputs_apart(inputs, [("--output", output, None), ("--save-predictions", save_predictions, ("*.png",))])
    model_cfg = cfg["model"]
    if meta is not None and meta["num_classes"] != dataset.num_classes:
        raise ConfigError(f"{checkpoint} is a {meta['num_classes']}-class {meta['model']} but the {data_cfg['name']} "
                          f"dataset has {dataset.num_classes} classes; evaluate it on the dataset it was trained on")
    if model_cfg["num_classes"] != dataset.num_classes:
        raise ConfigError(f"{config}: model.num_classes is {model_cfg['num_classes']} but the {data_cfg['name']} dataset "
                          f"has {dataset.num_classes} classes; set model.num_classes: {dataset.num_classes}")

    if meta is not None:
        model, source = None, str(checkpoint)
        # class names lightseg made up for an export without them ("class 0", ...) are not checked
        named = meta["classes"] != [f"class {i}" for i in range(meta["num_classes"])]
        trained = {"normalize": meta["normalize"], "classes": meta["classes"] if named else None,
                   "ignore_index": None, "channel_order": meta["channel_order"]}
    elif weights is not None:
        model = create_model(model_cfg["name"], weights=weights, num_classes=model_cfg["num_classes"])
        source = f"{model_cfg['name']} weights {weights!r}"
        trained = trained_input(model.weights_record)
    else:
        ckpt = load_checkpoint(checkpoint)
        trained_as = ckpt.get("model_name")
        if trained_as is not None and trained_as != model_cfg["name"]:
            raise CheckpointError(f"{checkpoint} holds a {trained_as!r} model but recipe {config} builds {model_cfg['name']!r}; "
                                  f"use the recipe it was trained with (or --set model.name={trained_as})")
        model = create_model(model_cfg["name"], num_classes=model_cfg["num_classes"], **(model_cfg.get("kwargs") or {}))
        load_model_weights(model, ckpt, path_for_errors=str(checkpoint))
        source = str(checkpoint)
        trained = trained_input(ckpt)
    # The weights' own normalisation, classes, ignore index and channel order, or a refusal naming both values.
    check_trained_input(trained, {"normalize": data_cfg["normalize"], "classes": list(dataset.classes),
                                  "ignore_index": getattr(dataset, "ignore_index", IGNORE_INDEX),
                                  "channel_order": CHANNEL_ORDER}, source)

    if backend != "onnxruntime_int8" and (calibration or calibration_count or int8_mode not in (None, "auto")):
        raise ConfigError("--calib, --calib-count and --int8-mode apply to int8 quantisation; use --backend onnxruntime_int8 or drop them")
    if precision not in (None, "auto") and backend not in ("openvino", "ncnn"):
        raise ConfigError(f"--precision applies to --backend openvino or ncnn, not {backend}"
                          + (" (auto picks among the paths at their default precision)" if backend == "auto" else ""))
    auto = None
    if backend == "auto":  # the fastest path that agrees with PyTorch at this dataset's image size, measured once
        from ..deploy.auto import choose_backend

        size = data_cfg.get("eval_size") or tuple(dataset[0][0].shape[-2:])
        auto = choose_backend(model.eval(), size, device=device)
        backend = auto["backend"]
    cpu_only = ("onnxruntime_int8", "openvino", "executorch", "ncnn")
    info = setup(cfg["train"].get("device", "auto") if backend not in cpu_only else "cpu")
    run_device = info.device
    if not info.distributed and backend == "eager":
        run_device = resolve_device(device)
    runner = model
    if backend != "eager":
        from ..deploy.runtime import Runtime

        runner = Runtime(model.eval() if meta is None else Path(checkpoint), backend=backend,
                         device=device if not info.distributed else info.device,
                         calibration=calibration, calibration_count=calibration_count,
                         normalize=data_cfg.get("normalize", "imagenet"), int8_mode=int8_mode, precision=precision)
        run_device = runner.device
    eval_cfg = cfg.get("eval", {})
    mode = mode or eval_cfg.get("mode", "whole")
    flip = bool(flip or eval_cfg.get("flip", False))
    scales = tuple(scales or eval_cfg.get("scales") or (1.0,))
    crop = crop if crop is not None else eval_cfg.get("crop")
    stride = stride if stride is not None else eval_cfg.get("stride")
    name = metrics_filename(split, backend, flip, scales, mode, crop, stride)
    if output:
        out = Path(output)
    elif weights is not None:
        out = Path(cfg["output_dir"]) / f"weights_{weights}" / name
    else:
        out = Path(checkpoint).parent / name
    if not output:
        check_output_file(out, "the metrics file (choose another with --output)")
        check_outputs_apart(inputs, [("the metrics file (choose another with --output)", out, None)])
    remove_stale_temp_files(out.parent, ("metrics*.json",))  # what an eval killed while writing left
    if save_predictions:
        remove_stale_temp_files(save_predictions, ("*.png",))
        refuse_links_in(save_predictions, ("*.png",))
    if save_predictions:
        check_prediction_names(dataset)
    problems = scan_samples(dataset, eval_size=data_cfg.get("eval_size"), scales=scales, mode=mode, crop=crop)
    if problems:
        listed = "; ".join(m for _, m in problems[:3]) + (f"; ... ({len(problems)} in all)" if len(problems) > 3 else "")
        raise DataError(f"{len(problems)} of {len(dataset)} samples of split {split_name!r} cannot be evaluated: {listed}")
    report = evaluate(
        runner, dataset, device=run_device,
        flip=flip,
        scales=scales,
        eval_size=data_cfg.get("eval_size"),
        batch_size=eval_cfg.get("batch_size", 1),
        distributed=info.distributed,
        progress=True,
        save_predictions=save_predictions,
        num_workers=loader_workers(data_cfg.get("num_workers", 0), "lightseg eval"),
        mode=mode,
        crop=crop,
        stride=stride,
    )
    report = {"model": model_cfg["name"], "checkpoint": source, "dataset": data_cfg["name"],
              "split": split_name, "backend": backend, "device": str(run_device), **report}
    if getattr(runner, "precision", None):
        report["precision"] = runner.precision
    if auto is not None:
        report["backend_auto"] = {k: auto.get(k) for k in ("latency_ms", "agreement", "skipped", "cached")}
    if backend == "onnxruntime_int8":
        from ..hardware import cpu_info

        report["calibration"] = str(calibration) if calibration else "synthetic scenes"
        report["int8_mode"] = runner.int8_mode
        report["machine"] = cpu_info().as_dict()
    if not info.is_main:
        return report
    text = _dump(report)
    atomic_write_bytes(out, lambda f: f.write(text.encode()))
    if as_json:
        print(text)
        print(f"wrote {out}", file=sys.stderr)
    else:
        print(format_table(report))
        if "int8_mode" in report:
            print(f"int8 mode {report['int8_mode']} on {report['machine']['cpu']} ({' '.join(report['machine']['isa'])})")
        print(f"wrote {out}")
    return report


# ---------------------------------------------------------------- `lightseg score`
def _read_png(path) -> np.ndarray:
    from ..data.base import read_label

    return read_label(path)


def _first_few(names, limit: int = 5) -> str:
    return ", ".join(map(str, names[:limit])) + (f" ... ({len(names)} in all)" if len(names) > limit else "")


class _Naming(NamedTuple):
    """How one dataset's labels and predictions are named: ``label_key(label)`` and ``pred_key(prediction,
    label keys)`` give the key that pairs them, ``expected(label)`` the prediction name a message shows,
    ``rule`` the rule in words."""

    label_key: Callable
    pred_key: Callable
    expected: Callable
    rule: str


def _cityscapes_key(path: Path) -> str:
    # The official script's rule: a prediction belongs to <city>_<seq>_<frame>*.png, searched recursively.
    return "_".join(path.name.split("_")[:3])


def _camvid_pred_key(path: Path, keys) -> str:
    from ..deploy.predict import LABEL_SUFFIX

    stem = path.stem
    if stem not in keys and stem.endswith(LABEL_SUFFIX) and stem[: -len(LABEL_SUFFIX)] in keys:
        return stem[: -len(LABEL_SUFFIX)]
    return stem


CITYSCAPES_NAMING = _Naming(_cityscapes_key, lambda p, keys: _cityscapes_key(p), lambda g: f"{_cityscapes_key(g)}*.png",
                            "a label <city>_<seq>_<frame>_gtFine_labelIds.png pairs with the prediction "
                            "<city>_<seq>_<frame>*.png")
CAMVID_NAMING = _Naming(lambda g: g.stem, _camvid_pred_key, lambda g: g.name,
                        "a label <stem>.png pairs with the prediction <stem>.png or <stem>_label.png, "
                        "what lightseg predict writes")


def pair_predictions(pred_dir, gt_files, naming: _Naming, subset: bool = False):
    """Pair the label files ``gt_files`` with the prediction PNGs under ``pred_dir`` (searched recursively).

    ``lightseg predict``'s pictures (``*_color.png``, ``*_overlay.png``) are not labels and are left out.
    Refused, naming the files: two labels or two predictions of one key (one would be scored twice, or
    never); a label without a prediction, unless ``subset`` (then only the labels that have one are
    scored). Returns ``(pairs, unmatched)``: ``[(prediction, label)]`` in label order, and the predictions
    that pair with no label (reported by the caller, not scored)."""
    from ..deploy.predict import PICTURE_SUFFIXES

    pred_dir = Path(pred_dir)
    labels = _unique_by(gt_files, naming.label_key, "labels", "--gt-dir")
    found: dict[str, list[Path]] = {}
    unmatched = []
    for p in sorted(pred_dir.rglob("*.png")):
        if p.stem.endswith(PICTURE_SUFFIXES):
            continue
        key = naming.pred_key(p, labels)
        if key in labels:
            found.setdefault(key, []).append(p)
        else:
            unmatched.append(p)
    for key, preds in found.items():
        if len(preds) > 1:
            more = f" (and {len(preds) - 2} more)" if len(preds) > 2 else ""
            raise DataError(f"--pred-dir: predictions {preds[0]} and {preds[1]}{more} both pair with the label "
                            f"{labels[key]} ({naming.rule}); keep one of them")
    pairs = [(found[k][0], g) for k, g in labels.items() if k in found]
    missing = [naming.expected(g) for k, g in labels.items() if k not in found]
    if missing and not (subset and pairs):
        if pairs and not subset:
            hint = f"; pass --subset to score only the {len(pairs)} that have one"
        else:
            hint = f"; {len(unmatched)} PNGs in --pred-dir pair with no label: check the folders"
        raise LightsegError(f"no prediction for {_first_few(missing)} in {pred_dir}: {len(missing)} of {len(labels)} "
                            f"label files have none ({naming.rule}){hint}")
    return pairs, unmatched


def _unique_by(files, key, what, where) -> dict:
    """``{key(f): f}``; two files with one key (one name in two sub-folders) are refused: one would be
    scored twice and the other never."""
    out = {}
    for f in files:
        k = key(f)
        if k in out:
            raise DataError(f"{where}: {what} {out[k]} and {f} have the same name {k!r}; predictions are paired with "
                            f"labels by name: keep one {what[:-1]} of each name")
        out[k] = f
    return out


def _cityscapes_labels(gt_dir: Path) -> list:
    # gt_dir is the Cityscapes root (then gtFine/val is scored, like the official script) or a gtFine/<split> folder.
    search = gt_dir / "gtFine" / "val" if (gt_dir / "gtFine").is_dir() else gt_dir
    gt_files = sorted(search.rglob("*_gtFine_labelIds.png"))
    if not gt_files:
        raise DataError(f"no *_gtFine_labelIds.png under {search}; pass --gt-dir the Cityscapes root "
                        "(containing gtFine/val) or a gtFine/<split> folder")
    return gt_files


def _cityscapes_train_ids(pred: np.ndarray, path: Path, lut: np.ndarray):
    """A Cityscapes prediction as trainIds, and whether the file held trainIds. ``lightseg predict`` writes
    trainIds (``*_label.png``); ``eval --save-predictions`` and the test server's format hold labelIds
    (named like the image). The name says which; values that contradict it are refused, never scored as
    the other kind."""
    from ..deploy.predict import LABEL_SUFFIX

    n = len(CITYSCAPES_CLASSES)
    top = int(pred.max()) if pred.size else 0
    if path.stem.endswith(LABEL_SUFFIX):
        if top >= n:
            raise DataError(f"prediction {path} holds value {top}, which is no Cityscapes trainId (0..{n - 1}): a "
                            f"*{LABEL_SUFFIX}.png is read as the trainIds lightseg predict writes; name a labelId PNG "
                            "after its image (<city>_<seq>_<frame>_leftImg8bit.png, as lightseg eval --save-predictions "
                            "writes it)")
        return pred, True
    # trainIds 0..18 read as labelIds: most of them (0..6, 9, 10, 14..16, 18) are void labelIds, which a
    # model's labelId export never holds (it maps each trainId to its class's labelId).
    if top < n and (lut[pred.astype(np.uint8)] == IGNORE_INDEX).any():
        void = sorted({int(v) for v in np.unique(pred) if lut[v] == IGNORE_INDEX})
        raise DataError(f"prediction {path} holds only values 0..{n - 1}, among them {', '.join(map(str, void[:5]))}, "
                        "void labelIds no labelId export holds: it looks like trainIds (what lightseg predict writes), "
                        f"and a file named like the image is read as labelIds; keep lightseg predict's name <image "
                        f"stem>{LABEL_SUFFIX}.png (read as trainIds), or write labelIds with lightseg eval --save-predictions")
    return lut[np.clip(pred, 0, 255).astype(np.uint8)], False


def score_predictions(pred_dir, gt_dir, dataset: str, subset: bool = False) -> dict:
    """Score prediction PNGs against ground-truth PNGs; returns the metrics report.

    Predictions are ``lightseg predict``'s ``<stem>_label.png`` or PNGs named like the label (CamVid) or the
    image (Cityscapes, labelIds as ``eval --save-predictions`` and the test server have them); see
    :func:`pair_predictions`. ``subset``: score only the labels that have a prediction. The report adds
    ``num_images`` (scored), ``num_labels`` (found), ``predictions_without_label`` (paths, not scored) and,
    for Cityscapes, ``prediction_ids`` (``labelIds``, ``trainIds`` or both)."""
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    for what, d in (("--pred-dir", pred_dir), ("--gt-dir", gt_dir)):
        if not d.is_dir():
            raise LightsegError(f"{what} {str(d)!r} is not a folder")
    if dataset == "cityscapes":
        gt_files, naming = _cityscapes_labels(gt_dir), CITYSCAPES_NAMING
        lut = cityscapes_label_lut()  # labelId -> trainId (void ids -> 255)
        classes, categories = CITYSCAPES_CLASSES, cityscapes_categories()
    elif dataset == "camvid":
        gt_files, naming = sorted(gt_dir.rglob("*.png")), CAMVID_NAMING
        if not gt_files:
            raise DataError(f"no label PNGs under {gt_dir}; pass --gt-dir the CamVid label folder (e.g. testannot)")
        lut = None  # train ids already; ground-truth 11 (void) is outside 0..10 and so not counted
        classes, categories = CAMVID_CLASSES, None
    else:
        raise LightsegError(f"unknown dataset {dataset!r} for scoring; use cityscapes or camvid")
    pairs, unmatched = pair_predictions(pred_dir, gt_files, naming, subset)
    cm = ConfusionMatrix(len(classes))
    kinds = set()
    for pred_path, gt_path in pairs:
        pred, gt = _read_png(pred_path), _read_png(gt_path)
        if pred.shape != gt.shape:
            raise DataError(f"prediction {pred_path} is {'x'.join(map(str, pred.shape))} but ground truth {gt_path} is "
                            f"{'x'.join(map(str, gt.shape))} (HxW); predictions must be single-channel class ids at "
                            "full label resolution")
        if lut is not None:
            pred, train_ids = _cityscapes_train_ids(pred, pred_path, lut)
            kinds.add("trainIds" if train_ids else "labelIds")
            gt = lut[np.clip(gt, 0, 255).astype(np.uint8)]
        cm.update(pred, gt)
    report = cm.report(classes, categories)
    report.update(num_images=len(pairs), num_labels=len(gt_files),
                  predictions_without_label=[p.relative_to(pred_dir).as_posix() for p in unmatched])
    if lut is not None:
        report["prediction_ids"] = " and ".join(sorted(kinds))
    return report


def score_command(pred_dir, gt_dir, dataset: str, as_json: bool = False, subset: bool = False) -> dict:
    """``lightseg score``: print the per-class table (or the JSON with ``--json``), then how many label
    files were scored and the predictions that pair with no label (on stderr with ``--json``)."""
    report = score_predictions(pred_dir, gt_dir, dataset, subset=subset)
    print(_dump(report) if as_json else format_table(report))
    notes = sys.stderr if as_json else sys.stdout
    print(f"scored {report['num_images']} of {report['num_labels']} label files", file=notes)
    extra = report["predictions_without_label"]
    if extra:
        print(f"note: {len(extra)} prediction(s) in {pred_dir} pair with no label under {gt_dir} and were not scored: "
              f"{_first_few(extra)}", file=notes)
    return report

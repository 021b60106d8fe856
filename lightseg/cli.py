"""The `lightseg` command line: argument parsing only. Every verb calls the Python API.

User errors (``LightsegError``: a bad path, key or value) print one message and exit 2 without a
traceback; ``--debug`` shows the traceback.
"""
from __future__ import annotations

import argparse
import json
import sys

from .errors import LightsegError

EXIT_USER_ERROR = 2


def _version() -> str:
    from . import __version__

    return __version__


def _size(values):
    return (int(values[0]), int(values[1])) if values else None


def _min_size() -> int:
    from .models.base import MIN_SIZE  # imported late: `lightseg --help` need not load torch

    return MIN_SIZE


def _checked(cast, ok, expected):
    """An argparse ``type``: ``cast(text)`` that must satisfy ``ok``; the error names the value and ``expected``."""

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if cast is int else 'a number'}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{text} is not {expected() if callable(expected) else expected}")
        return value

    return parse


def _max_side() -> int:
    from .bounds import MAX_SIDE

    return MAX_SIDE


_side = _checked(int, lambda v: _min_size() <= v <= _max_side(),
                 lambda: f"a size of at least {_min_size()} (the smallest input lightseg models take) and at most {_max_side()}")
_positive_int = _checked(int, lambda v: v >= 1, "a positive integer (1 or more)")
_positive_float = _checked(float, lambda v: 0 < v < float("inf"), "a finite number > 0")
_share = _checked(float, lambda v: 0 <= v <= 1, "a share between 0 and 1 (0.1 = 10%)")
# bench's call counts: beyond 10,000 calls of each backend a run would take hours at a paper's size, and a
# typo (--runs 1000000) would look like a hang
_bench_runs = _checked(int, lambda v: 1 <= v <= 10_000, "a count from 1 to 10000")
_bench_warmup = _checked(int, lambda v: 0 <= v <= 10_000, "a count from 0 to 10000")


# ---------------------------------------------------------------- verbs
def cmd_models(args):
    if args.paper is not None:
        from .zoo import format_paper_rows, paper_rows

        rows = paper_rows(args.paper or None)
        print(json.dumps(rows, indent=2) if args.json else format_paper_rows(rows))
        return
    from .zoo import format_models_table, models_table

    rows = models_table(size=_size(args.size))
    if args.markdown:
        from .zoo import format_models_markdown

        print(format_models_markdown(rows))
        return
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(format_models_table(rows))


def cmd_train(args):
    from .engine.train import train

    overrides = _recipe_overrides(args)
    if args.init_from is not None:
        overrides.append(f"model.init_from={json.dumps(args.init_from)}")
    if args.output_dir is not None:
        overrides.append(f"output_dir={json.dumps(args.output_dir)}")
    if args.device is not None:
        overrides.append(f"train.device={args.device}")
    if args.no_val:
        overrides.append("train.val_interval=0")
    if args.tensorboard:
        overrides.append("train.tensorboard=true")
    train(args.config, overrides=overrides, resume=args.resume, skip_bad=args.skip_bad, force_override=args.force_override,
          max_bad=args.max_bad)


def _recipe_overrides(args) -> list[str]:
    """--set pairs, then --data-root as data.root (quoted: a path is not parsed as YAML)."""
    overrides = list(args.set)
    if args.data_root is not None:
        overrides.append(f"data.root={json.dumps(args.data_root)}")
    return overrides


def cmd_config(args):
    from .config import dump_config, load_config

    sys.stdout.write(dump_config(load_config(args.config, _recipe_overrides(args))))


def cmd_eval(args):
    from .engine.evaluate import evaluate_command

    evaluate_command(
        args.config,
        checkpoint=args.checkpoint,
        weights=args.weights,
        split=args.split,
        data_root=args.data_root,
        overrides=args.set,
        flip=args.flip,
        scales=args.scales,
        mode=args.mode,
        crop=args.crop,
        stride=args.stride,
        device=args.device,
        as_json=args.json,
        output=args.output,
        save_predictions=args.save_predictions,
        backend=args.backend,
        calibration=args.calib,
        calibration_count=args.calib_count,
        int8_mode=args.int8_mode,
        precision=args.precision,
    )


def cmd_score(args):
    from .engine.evaluate import score_command

    score_command(args.pred_dir, args.gt_dir, dataset=args.dataset, as_json=args.json, subset=args.subset)


def cmd_bench(args):
    from .deploy.bench import bench_command

    bench_command(args)


def cmd_export(args):
    from .deploy.commands import export_command

    export_command(args)


def cmd_predict(args):
    from .deploy.predict import predict_command

    predict_command(args)


def cmd_plot(args):
    from .viz import plot_run

    out = plot_run(args.run_dir, output=args.output)
    print(f"wrote {out}")


# ---------------------------------------------------------------- parser
DEVICES = ("auto", "cpu", "cuda", "mps")


def _key_value(text: str) -> str:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (e.g. train.iters=1000); "
                                         "the recipe goes before --set: lightseg train RECIPE --set KEY=VALUE ...")
    return text


def _add_set(s):
    # nargs="+" with "extend": --set a=1 b=2 (mmseg's --cfg-options style) and --set a=1 --set b=2 both work.
    s.add_argument("--set", nargs="+", action="extend", default=[], type=_key_value, metavar="KEY=VALUE",
                   help="override recipe keys, e.g. --set train.iters=1000 train.batch_size=4 (values are YAML; "
                        "repeating --set works too)")


def _add_device(s, what="the model"):
    s.add_argument("--device", default="auto", choices=DEVICES,
                   help=f"where {what} runs: auto = CUDA if available, then Apple MPS, then the CPU (default auto)")


def _add_calibration_args(s):
    s.add_argument("--calib", default=None, metavar="DIR",
                   help="int8 only: a folder of images like those the model will see, to calibrate the int8 ranges "
                        "(default: the synthetic street scenes, fine for timing, not for accuracy)")
    s.add_argument("--calib-count", type=_positive_int, default=None, metavar="N", help="int8 only: calibration images used (default 8)")


def _add_int8_mode_arg(s):
    from .deploy.quantize import INT8_MODES

    s.add_argument("--int8-mode", default=None, choices=["auto", *INT8_MODES],
                   help="int8 only: the weight format; auto (default) = the one this CPU runs accurately "
                        "(u8s8 with VNNI/AMX/ARM, u8s8_reduce_range on x86 without VNNI); give the target CPU's")


def _add_run_backend_args(s, auto_size):
    """--backend and --precision of the verbs that run a model (eval, predict)."""
    s.add_argument("--backend", default="eager",
                   choices=["eager", "onnxruntime", "onnxruntime_int8", "openvino", "executorch", "ncnn", "auto"],
                   help="what runs the model: PyTorch, fp32 ONNX Runtime, int8 ONNX Runtime (CPU), or OpenVINO, ExecuTorch, "
                        "ncnn (extras; see lightseg bench); auto: the fastest fp32 path that agrees with PyTorch on this "
                        f"CPU at {auto_size}, measured once and cached; with --checkpoint FILE from lightseg export, "
                        "that file's format")
    s.add_argument("--precision", default=None, choices=["f32", "bf16", "fp16"],
                   help="openvino: its inference precision (default bf16 on CPUs with AVX512_BF16/AMX, else f32); "
                        "ncnn: f32 (default) or fp16")


def _add_window_args(s, default, where):
    s.add_argument("--mode", default=default, choices=["whole", "slide"],
                   help=f"whole-image or sliding-window inference (default: {where})")
    s.add_argument("--crop", nargs=2, type=int, default=None, metavar=("H", "W"),
                   help="slide: the window size in pixels (of the image as the model sees it)")
    s.add_argument("--stride", nargs=2, type=int, default=None, metavar=("H", "W"),
                   help="slide: the step between windows (default: two thirds of --crop)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lightseg", description="Lightweight real-time semantic segmentation.")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}", help="print the version and exit")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks for errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("models", help="list registered models with params, MACs and shipped weights")
    s.add_argument("--size", nargs=2, type=_side, metavar=("H", "W"), help="input size for MACs (default: each paper's size)")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.add_argument("--markdown", action="store_true",
                   help="print the table as markdown: README.md's Models table between its models-table markers")
    s.add_argument("--paper", nargs="?", const="", default=None, metavar="NAME",
                   help="every row of the papers' complexity tables (or of paper NAME: mininet, atonet, dual_aspp, "
                        "shufflenetv2_dpc), the paper's params and FLOPs beside ours (the RDS-Net paper has no such table)")
    s.set_defaults(func=cmd_models)

    s = sub.add_parser("train", help="train from a recipe (a name such as mininet_211k_camvid, or a YAML path)")
    s.add_argument("config", metavar="RECIPE", nargs="?", default=None,
                   help="a recipe name such as mininet_211k_camvid (an unknown name lists them) or a YAML file; "
                        "optional with --resume RUN_DIR, which continues with the run's own saved config")
    _add_set(s)
    s.add_argument("--data-root", default=None, metavar="DIR", help="the dataset folder (same as --set data.root=DIR)")
    s.add_argument("--init-from", default=None, metavar="WEIGHTS|CKPT",
                   help="fine-tune: start from shipped weights of the recipe's model (e.g. camvid) or a .pt file; tensors "
                        "whose name and shape match are loaded, the rest (e.g. the classifier) re-initialised; iteration "
                        "0, fresh optimiser (same as --set model.init_from=...)")
    s.add_argument("--output-dir", default=None, metavar="DIR",
                   help="the run folder (same as --set output_dir=DIR); a folder named so that already holds a run is "
                        "refused, while the recipe's own output_dir moves on to NAME2, NAME3, ...")
    s.add_argument("--device", default=None, choices=DEVICES,
                   help="where training runs (same as --set train.device=...): auto = CUDA if available, then Apple MPS, "
                        "then the CPU (default: the recipe's train.device, auto unless set)")
    s.add_argument("--resume", nargs="?", const="auto", default=None, metavar="RUN_DIR|CKPT",
                   help="continue a run (no value: the run directory of this recipe)")
    s.add_argument("--force-override", action="store_true",
                   help="with --resume: accept --set/recipe changes that break exact resume (batch size, seed, schedule, data...)")
    s.add_argument("--no-val", action="store_true",
                   help="train without validation (same as --set train.val_interval=0): no best.pt is written")
    s.add_argument("--tensorboard", action="store_true",
                   help="also log to TensorBoard event files in RUN_DIR/tensorboard (needs pip install 'lightseg[tensorboard]')")
    s.add_argument("--skip-bad", action="store_true", help="skip and log unreadable/inconsistent samples instead of stopping")
    s.add_argument("--max-bad", type=_share, default=0.1, metavar="SHARE",
                   help="with --skip-bad: stop when more than this share of a split's samples is bad (default 0.1)")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("config", help="print the fully resolved recipe (bases merged, --set applied) as YAML")
    s.add_argument("config", metavar="RECIPE", help="a recipe name such as mininet_211k_camvid or a YAML file")
    _add_set(s)
    s.add_argument("--data-root", default=None, metavar="DIR", help="the dataset folder (same as --set data.root=DIR)")
    s.set_defaults(func=cmd_config)

    s = sub.add_parser("eval", help="evaluate a checkpoint: confusion matrix, per-class IoU, mIoU")
    s.add_argument("config", metavar="RECIPE", help="the recipe the model was trained with (a name or a YAML file)")
    s.add_argument("--checkpoint", default=None, metavar="CKPT",
                   help="a .pt written by lightseg train, or a file written by lightseg export (model.onnx, model.xml, "
                        "model.pte, model.ncnn.param: its metadata gives the model, classes and normalisation)")
    s.add_argument("--weights", default=None, metavar="NAME",
                   help="instead of --checkpoint: weights shipped with lightseg for the recipe's model (e.g. camvid)")
    s.add_argument("--split", default="val", choices=["train", "val", "test"], help="which split to score (default val)")
    s.add_argument("--data-root", default=None, metavar="DIR", help="the dataset folder (same as --set data.root=DIR)")
    _add_set(s)
    s.add_argument("--flip", action="store_true", help="average with horizontally flipped prediction")
    s.add_argument("--scales", nargs="+", type=_positive_float, default=None, help="multi-scale evaluation, e.g. 0.75 1.0 1.25")
    _add_window_args(s, None, "the recipe's eval.mode, whole unless set")
    _add_run_backend_args(s, "the first image's size")
    _add_device(s)
    _add_calibration_args(s)
    _add_int8_mode_arg(s)
    s.add_argument("--json", action="store_true", help="print the metrics JSON on stdout")
    s.add_argument("--output", default=None, help="where to write metrics JSON (default: next to the checkpoint)")
    s.add_argument("--save-predictions", default=None, metavar="DIR",
                   help="also write prediction PNGs (Cityscapes: labelId PNGs with the test server's file names)")
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("score", help="score saved prediction PNGs against ground truth")
    s.add_argument("--pred-dir", required=True, metavar="DIR",
                   help="the prediction PNGs: lightseg predict's --output (<stem>_label.png) or PNGs named like the labels")
    s.add_argument("--gt-dir", required=True, metavar="DIR",
                   help="ground truth: the Cityscapes root (or a gtFine/<split> folder), or CamVid's label folder")
    s.add_argument("--dataset", required=True, choices=["cityscapes", "camvid"], help="which label convention to score")
    s.add_argument("--subset", action="store_true",
                   help="score only the label files that have a prediction (default: every label file needs one)")
    s.add_argument("--json", action="store_true", help="print the metrics JSON instead of a table")
    s.set_defaults(func=cmd_score)

    s = sub.add_parser("bench", help="params, MACs, latency and FPS on this machine")
    s.add_argument("--model", action="append", default=None, help="model name (repeatable)")
    s.add_argument("--all-models", action="store_true", help="every registered model at its paper's resolution")
    s.add_argument("--size", nargs=2, type=_side, metavar=("H", "W"), help="input size (default: the paper's)")
    s.add_argument("--batch", type=_positive_int, default=1, help="images per call (default 1)")
    _add_device(s)
    s.add_argument("--backend", default="eager",
                   choices=["eager_nchw", "eager", "compile", "onnxruntime", "onnxruntime_int8", "openvino", "executorch",
                            "ncnn", "peer_ort", "peer_openvino", "onnxruntime_plain", "all"],
                   help="eager_nchw: the model as written; eager: BN folded + channels_last; compile: torch.compile; "
                        "onnxruntime: fp32 ONNX; onnxruntime_int8: int8 static quantisation (CPU); openvino (default "
                        "precision: bf16 on CPUs with AVX512_BF16/AMX, else f32), executorch (XNNPACK), ncnn: lightseg's "
                        "export in those runtimes (extras); peer_ort (formerly onnxruntime_plain), peer_openvino: what a "
                        "user runs without lightseg (plain torch.onnx.export, the runtime's defaults); all: each of them "
                        "installed, timed together, the fastest whose argmax agrees with fp32 PyTorch on >= 99%% marked")
    s.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="eager backends: the arithmetic type (float16 is for CUDA)")
    s.add_argument("--warmup", type=_bench_warmup, default=None, help="untimed calls first (default: until two calls agree within 10%%)")
    s.add_argument("--runs", type=_bench_runs, default=None, help="timed calls (default: as many as fit the time budget, 3..100)")
    s.add_argument("--peak", action="store_true", help="measure this machine's fp32 ceiling (fastest conv/GEMM kernel) and copy bandwidth")
    s.add_argument("--roofline", action="store_true",
                   help="per model: FLOPs, minimum bytes, the compute and memory bounds, and each backend's efficiency")
    s.add_argument("--json", action="store_true", help="print JSON records instead of a table")
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("export", help="export a model to ONNX, OpenVINO, ExecuTorch or ncnn (with a parity check against PyTorch)")
    s.add_argument("--model", default=None, help="model name (optional with a lightseg checkpoint, which names it)")
    s.add_argument("--checkpoint", default=None, metavar="CKPT", help="trained weights (default: random weights)")
    s.add_argument("--weights", default=None, metavar="NAME", help="instead of --checkpoint: weights shipped with lightseg")
    s.add_argument("--num-classes", type=_positive_int, default=None, help="classes of an untrained model (default 19)")
    s.add_argument("--size", nargs=2, type=_side, required=True, metavar=("H", "W"), help="the input size to export for")
    s.add_argument("--dynamic", action="store_true", help="dynamic batch, height and width")
    s.add_argument("--int8", action="store_true", help="quantise to int8 (static, calibrated; CPU deployment)")
    _add_device(s, "the parity check")
    _add_calibration_args(s)
    _add_int8_mode_arg(s)
    s.add_argument("--format", default=None, choices=["onnx", "openvino", "executorch", "ncnn"],
                   help="onnx (.onnx), openvino (.xml + .bin), executorch (.pte, XNNPACK) or ncnn (.ncnn.param + .ncnn.bin); "
                        "default: what -o's name says, else onnx. OpenVINO, ExecuTorch and ncnn are extras: "
                        "pip install 'lightseg[openvino]' (or executorch, ncnn)")
    s.add_argument("--precision", default=None, choices=["f32", "fp16"],
                   help="ncnn only: f32 (default; fp32 weights and arithmetic, as PyTorch) or fp16 (fp16 weights and "
                        "ncnn's fp16 storage: half the file, looser parity)")
    s.add_argument("-o", "--output", required=True, metavar="FILE",
                   help="the file to write: model.onnx, model.xml, model.pte or model.ncnn.param; the model's name, "
                        "classes, palette and normalisation go into it (or beside it as FILE.json), so "
                        "lightseg predict --checkpoint FILE runs it alone")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("predict", help="segment images, a folder, a glob, a video, a camera or a stream")
    s.add_argument("--model", default=None, help="model name (optional with a lightseg checkpoint, which names it)")
    s.add_argument("--checkpoint", default=None, metavar="CKPT", help="a .pt written by lightseg train")
    s.add_argument("--weights", default=None, metavar="NAME",
                   help="instead of --checkpoint: weights shipped with lightseg (e.g. camvid; see lightseg models)")
    s.add_argument("--input", required=True, metavar="SOURCE",
                   help="an image, a folder, a glob ('imgs/*.png'), a video file, a camera index (0) or a stream URL")
    s.add_argument("--output", default="predictions", metavar="DIR", help="output folder (default predictions)")
    _add_run_backend_args(s, "--size (default the model's paper size)")
    _add_device(s)
    s.add_argument("--size", nargs=2, type=_side, default=None, metavar=("H", "W"), help="resize inputs to H W before the model")
    s.add_argument("--batch", type=_positive_int, default=1, help="images per model call (same-size images; default 1)")
    _add_window_args(s, "whole", "whole")
    s.add_argument("--show", action="store_true", help="video/camera/stream: also show the overlay in a window (q quits)")
    s.add_argument("--max-frames", type=_positive_int, default=None, metavar="N", help="video/camera/stream: stop after N frames")
    _add_calibration_args(s)
    _add_int8_mode_arg(s)
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("plot", help="loss, learning rate and mIoU curves of a run as a PNG")
    s.add_argument("run_dir", help="a run directory (holds log.jsonl)")
    s.add_argument("--output", default=None, help="the PNG to write (default RUN_DIR/curves.png)")
    s.set_defaults(func=cmd_plot)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except LightsegError as e:
        if args.debug:
            raise
        print(f"lightseg {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as e:
        # A write the command's own checks did not foresee (a disk that filled up, a folder made read-only
        # meanwhile): the operating system's reason and the path, not a traceback.
        from .outputs import WRITE_ERRNOS

        if args.debug or e.errno not in WRITE_ERRNOS:
            raise
        print(f"lightseg {args.command}: error: {e.strerror}: {e.filename or 'an output file'}; free space or "
              f"choose a writable location", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"lightseg {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The model tables behind `lightseg models`: params and MACs of every registered model with the
trained weights shipped for it (and their measured val mIoU), and (`--paper`) every row of the papers'
complexity tables rebuilt from the code beside the paper's figures.

Speed: every model is built on the meta device and profiled by one shapes-only forward pass
(:func:`profile_model`). The first meta operation of a process imports ``torch._dynamo`` (about a second
here), so the rows of `lightseg models` are also cached, keyed by the hash of lightseg's source code, the
torch version and the arguments: a cached table is the one the code gives, and any change to the code
computes it again. A cache hit imports neither torch nor the models. The cache is
``$XDG_CACHE_HOME/lightseg`` (default ``~/.cache/lightseg``); ``LIGHTSEG_CACHE=0`` turns it off.
"""
from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path

from .errors import LightsegError

PACKAGE_DIR = Path(__file__).resolve().parent
CACHE_VERSION = 1


def profile_model(name: str, size, num_classes: int = 19, **kwargs) -> dict:
    """Params (all, and those an eval-mode forward uses) and MACs at ``size`` of one model, built on
    the meta device: shapes only, no weight initialisation or arithmetic, so it is fast at any size."""
    import torch

    from .models.registry import create_model
    from .profile import profile

    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, **kwargs)
    # params_inference: without train-only auxiliary / deep-supervision heads, as the papers count
    return profile(model, tuple(size))


def _compute_rows(size=None, num_classes: int = 19) -> list[dict]:
    from .models.registry import list_models, model_info

    rows = []
    for name in list_models():
        info = model_info(name)
        hw = tuple(size) if size else info.paper_size
        rows.append(
            {
                "name": name,
                "paper": info.paper,
                **profile_model(name, hw, num_classes),
                "input_size": list(hw),
                "num_classes": num_classes,
                "paper_params": info.paper_params,
                "paper_macs": info.paper_macs,
                "paper_note": info.extra.get("paper_note"),
            }
        )
    return rows


def source_hash() -> str:
    """sha256 over lightseg's Python sources (path and content of every file)."""
    h = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        h.update(str(path.relative_to(PACKAGE_DIR)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lightseg"


def _cache_path(size, num_classes) -> Path:
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:  # pragma: no cover - a torch built from source
        torch_version = "unknown"
    key = json.dumps([CACHE_VERSION, source_hash(), torch_version, list(size) if size else None, num_classes])
    return cache_dir() / f"models-{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"


def models_table(size=None, num_classes: int = 19, cache: bool | None = None) -> list[dict]:
    """One record per model: name, paper, params, MACs at ``size`` (default: the paper's size) and its
    shipped ``weights`` (``[{"weights": "camvid", "dataset": ..., "val_miou": ...}]``, empty when none)."""
    if cache is None:
        cache = os.environ.get("LIGHTSEG_CACHE", "1") != "0"
    rows = None
    path = _cache_path(size, num_classes) if cache else None
    if path is not None and path.is_file():
        try:
            rows = json.loads(path.read_text())
        except (OSError, ValueError):
            rows = None  # a damaged cache file is recomputed and replaced

    if rows is None:
        rows = _compute_rows(size, num_classes)
        from .models.registry import model_info

        # Only lightseg's own models are cached: one registered at run time (a user's, a test's) is not in
        # every process, and the cache is read without importing the registry.
        own = all(model_info(r["name"]).builder.__module__.startswith("lightseg.") for r in rows)
        if path is not None and own:
            try:
                from .checkpoint import atomic_write_bytes

                atomic_write_bytes(path, lambda f: f.write(json.dumps(rows).encode()))
            except OSError:
                pass  # a read-only home: no cache, same table
    from .weights import list_weights

    shipped = list_weights()
    for r in rows:
        r["weights"] = [{"weights": w["weights"], "dataset": w["dataset"], "val_miou": w.get("val_miou")}
                        for w in shipped if w["model"] == r["name"]]
    return rows


def _fmt(v, unit):
    return "-" if v is None else f"{v / unit:.2f}"


def _fmt_weights(weights) -> str:
    if not weights:
        return "-"
    return ", ".join(w["weights"] + (f" {100 * w['val_miou']:.1f}" if w.get("val_miou") is not None else "") for w in weights)


def format_models_table(rows) -> str:
    head = (f"{'name':32s} {'paper':26s} {'params(M)':>9s} {'infer(M)':>8s} {'paper':>7s} "
            f"{'GMACs':>8s} {'paper':>7s}  {'input':9s}  weights (val mIoU %)")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['name']:32s} {r['paper'][:26]:26s} {_fmt(r['params'], 1e6):>9s} "
            f"{_fmt(r['params_inference'], 1e6):>8s} {_fmt(r['paper_params'], 1e6):>7s} "
            f"{_fmt(r['macs'], 1e9):>8s} {_fmt(r['paper_macs'], 1e9):>7s}  "
            f"{str(r['input_size'][0]) + 'x' + str(r['input_size'][1]):9s}  {_fmt_weights(r.get('weights'))}"
        )
    lines.append("params: all; infer: those used at inference (train-only aux heads excluded).")
    lines.append("MACs = multiply-accumulates of one forward pass (conv + linear layers; FLOPs = 2 x MACs), batch 1.")
    lines.append("weights: trained weights shipped with lightseg (lightseg predict --model NAME --weights W), with the "
                 "val mIoU lightseg eval measured; '-' = none yet.")
    return "\n".join(lines)


README_MARKERS = ("<!-- models-table:start -->", "<!-- models-table:end -->")


def _count_short(v) -> str:
    return f"{v / 1e6:.2f}M" if v >= 1e6 else f"{v / 1e3:.1f}K"


def _paper_figures(r) -> str:
    figures = [f"{r['paper_params'] / 1e6:g}M" if r["paper_params"] >= 1e6 else f"{r['paper_params'] / 1e3:g}K"] \
        if r.get("paper_params") else []
    if r.get("paper_macs"):
        figures.append(f"{r['paper_macs'] / 1e9:g} G")
    text = ", ".join(figures)
    if r.get("paper_note"):
        text += ("; " if text else "") + r["paper_note"]
    return text or "-"


def format_models_markdown(rows) -> str:
    """The models table as markdown (`lightseg models --markdown`): README.md's "Models" table between
    :data:`README_MARKERS` is this text, so the README shows what the code gives. The paper's figures are
    the ``paper_params``/``paper_macs`` of each model's registration, at the same input, and its
    ``extra["paper_note"]`` where the paper counts differently."""
    lines = ["| name | paper | params | GMACs (input) | paper's figures |", "|---|---|---|---|---|"]
    for r in rows:
        params = _count_short(r["params_inference"])
        if r["params"] > r["params_inference"]:
            params += f" (+{_count_short(r['params'] - r['params_inference'])} train-only aux heads)"
        h, w = r["input_size"]
        lines.append(f"| `{r['name']}` | {r['paper']} | {params} | {r['macs'] / 1e9:.2f} ({h}x{w}) | {_paper_figures(r)} |")
    return "\n".join(lines)


def readme_models_block(text: str) -> str:
    """What README.md holds between :data:`README_MARKERS` (without them), stripped."""
    start, end = README_MARKERS
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise LightsegError(f"README.md must hold one {start} ... {end} pair around the models table")
    return text[text.index(start) + len(start):text.index(end)].strip()


def _delta(ours, paper):
    return None if paper in (None, 0) else (ours - paper) / paper


# Papers of registered models that print no params/FLOPs table, and what they report instead (read from
# /work/shared/papers): asked for with --paper, they get this line rather than a list of other names.
PAPERS_WITHOUT_TABLES = {
    "rdsnet": "the RDS-Net paper (Doan et al.) has no complexity table: its tables give the architecture (I), "
              "accuracy (II-IV) and speed (V), no params or FLOPs; `lightseg models` lists rdsnet's params and MACs "
              "computed from the code",
}


def paper_rows(paper: str | None = None) -> list[dict]:
    """Every row of the papers' complexity tables (or of one paper, by key), rebuilt from the code.

    ``params`` is the inference network's count (train-only heads excluded, as the papers count);
    ``flops`` is ours in the paper's own unit (MACs x the paper's ``flops_per_mac``)."""
    from .models.registry import model_info, paper_tables

    tables = paper_tables()
    if paper in PAPERS_WITHOUT_TABLES:
        raise LightsegError(f"{PAPERS_WITHOUT_TABLES[paper]}; the papers with tables: {', '.join(sorted(tables))}")
    if paper is not None and paper not in tables:
        raise LightsegError(f"no complexity tables for paper {paper!r}; choose one of {', '.join(sorted(tables))}")
    out = []
    for key in [paper] if paper else sorted(tables):
        t = tables[key]
        for row in t.rows:
            size = tuple(row.size) if row.size else model_info(row.model).paper_size
            prof = profile_model(row.model, size, row.num_classes, **row.kwargs)
            flops = prof["macs"] * t.flops_per_mac
            out.append({
                "paper": key, "table": row.table, "label": row.label, "model": row.model, "kwargs": row.kwargs,
                "input_size": list(size), "num_classes": row.num_classes,
                "paper_params": row.params, "params": prof["params_inference"],
                "params_delta": _delta(prof["params_inference"], row.params),
                "paper_flops": row.flops, "flops": flops, "flops_delta": _delta(flops, row.flops),
                "flops_per_mac": t.flops_per_mac, "note": row.note,
            })
    return out


def _pct(d):
    return "" if d is None else f"{100 * d:+.1f}%"


def _count(v, unit):
    return "-" if v is None else (f"{v / 1e6:.2f}M" if unit == "M" else f"{v / 1e3:.0f}K" if unit == "K" else f"{v / 1e9:.2f}G")


def format_paper_rows(rows) -> str:
    """A markdown table per paper: the paper's params and FLOPs beside ours."""
    from .models.registry import paper_tables

    tables = paper_tables()
    lines = []
    for key in dict.fromkeys(r["paper"] for r in rows):
        t = tables[key]
        lines += [f"### {t.title}", "", f"FLOPs: {t.flops_note}", "",
                  "| table | row | model (switches) | input | params paper | params ours | diff | FLOPs paper | FLOPs ours | diff | note |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in (r for r in rows if r["paper"] == key):
            unit = "M" if (r["paper_params"] or r["params"]) >= 1e6 else "K"
            switches = ", ".join(f"{k}={v}" for k, v in r["kwargs"].items())
            model = f"`{r['model']}`" + (f" ({switches})" if switches else "")
            h, w = r["input_size"]
            lines.append(
                f"| {r['table']} | {r['label']} | {model} | {h}x{w}, {r['num_classes']} cl. | "
                f"{_count(r['paper_params'], unit)} | {_count(r['params'], unit)} | {_pct(r['params_delta'])} | "
                f"{_count(r['paper_flops'], 'G')} | {_count(r['flops'], 'G')} | {_pct(r['flops_delta'])} | {r['note']} |")
        lines.append("")
    return "\n".join(lines)

"""The model tables behind `lightseg models`: params and MACs of every registered model, and
(`--paper`) every row of the papers' complexity tables rebuilt from the code beside the paper's figures."""
from __future__ import annotations

import torch

from .errors import LightsegError
from .models.registry import create_model, list_models, model_info, paper_tables
from .profile import profile


def profile_model(name: str, size, num_classes: int = 19, **kwargs) -> dict:
    """Params (all, and those an eval-mode forward uses) and MACs at ``size`` of one model, built on
    the meta device: shapes only, no weight initialisation or arithmetic, so it is fast at any size."""
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, **kwargs)
    # params_inference: without train-only auxiliary / deep-supervision heads, as the papers count
    return profile(model, tuple(size))


def models_table(size=None, num_classes: int = 19) -> list[dict]:
    """One record per model: name, paper, params, MACs at ``size`` (default: the paper's size)."""
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
            }
        )
    return rows


def _fmt(v, unit):
    return "-" if v is None else f"{v / unit:.2f}"


def format_models_table(rows) -> str:
    head = (f"{'name':32s} {'paper':26s} {'params(M)':>9s} {'infer(M)':>8s} {'paper':>7s} "
            f"{'GMACs':>8s} {'paper':>7s}  input")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['name']:32s} {r['paper'][:26]:26s} {_fmt(r['params'], 1e6):>9s} "
            f"{_fmt(r['params_inference'], 1e6):>8s} {_fmt(r['paper_params'], 1e6):>7s} "
            f"{_fmt(r['macs'], 1e9):>8s} {_fmt(r['paper_macs'], 1e9):>7s}  {r['input_size'][0]}x{r['input_size'][1]}"
        )
    lines.append("params: all; infer: those used at inference (train-only aux heads excluded).")
    lines.append("MACs = multiply-accumulates of one forward pass (conv + linear layers; FLOPs = 2 x MACs), batch 1.")
    return "\n".join(lines)


def _delta(ours, paper):
    return None if paper in (None, 0) else (ours - paper) / paper


def paper_rows(paper: str | None = None) -> list[dict]:
    """Every row of the papers' complexity tables (or of one paper, by key), rebuilt from the code.

    ``params`` is the inference network's count (train-only heads excluded, as the papers count);
    ``flops`` is ours in the paper's own unit (MACs x the paper's ``flops_per_mac``)."""
    tables = paper_tables()
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
    tables = paper_tables()
    lines = []
    for key in dict.fromkeys(r["paper"] for r in rows):
        t = tables[key]
        lines += [f"### {t.title}", "", f"FLOPs: {t.flops_note}", "",
                  "| table | row | model (switches) | input | params paper | params ours | diff | FLOPs paper | FLOPs ours | diff |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in (r for r in rows if r["paper"] == key):
            unit = "M" if (r["paper_params"] or r["params"]) >= 1e6 else "K"
            switches = ", ".join(f"{k}={v}" for k, v in r["kwargs"].items())
            model = f"`{r['model']}`" + (f" ({switches})" if switches else "")
            h, w = r["input_size"]
            lines.append(
                f"| {r['table']} | {r['label']} | {model} | {h}x{w}, {r['num_classes']} cl. | "
                f"{_count(r['paper_params'], unit)} | {_count(r['params'], unit)} | {_pct(r['params_delta'])} | "
                f"{_count(r['paper_flops'], 'G')} | {_count(r['flops'], 'G')} | {_pct(r['flops_delta'])} |"
                + (f" {r['note']}" if r["note"] else ""))
        lines.append("")
    return "\n".join(lines)

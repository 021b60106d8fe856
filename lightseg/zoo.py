"""The model table behind `lightseg models`: params and MACs of every registered model."""
from __future__ import annotations

from .models.registry import create_model, list_models, model_info
from .profile import count_inference_params, count_macs, count_params


def models_table(size=None, num_classes: int = 19) -> list[dict]:
    """One record per model: name, paper, params, MACs at ``size`` (default: the paper's size)."""
    rows = []
    for name in list_models():
        info = model_info(name)
        model = create_model(name, num_classes=num_classes)
        hw = tuple(size) if size else info.paper_size
        rows.append(
            {
                "name": name,
                "paper": info.paper,
                "params": count_params(model),
                # without train-only auxiliary / deep-supervision heads: what the papers usually report
                "params_inference": count_inference_params(model),
                "macs": count_macs(model, hw, device="meta"),
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

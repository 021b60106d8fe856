"""The model table behind `lightseg models`: params and MACs of every registered model."""
from __future__ import annotations

from .models.registry import create_model, list_models, model_info
from .profile import count_macs, count_params


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
    head = f"{'name':34s} {'paper':28s} {'params(M)':>9s} {'paper':>7s} {'GMACs':>8s} {'paper':>7s}  input"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['name']:34s} {r['paper'][:28]:28s} {_fmt(r['params'], 1e6):>9s} {_fmt(r['paper_params'], 1e6):>7s} "
            f"{_fmt(r['macs'], 1e9):>8s} {_fmt(r['paper_macs'], 1e9):>7s}  {r['input_size'][0]}x{r['input_size'][1]}"
        )
    lines.append("MACs = multiply-accumulates of one forward pass (conv + linear layers; FLOPs = 2 x MACs), batch 1.")
    return "\n".join(lines)

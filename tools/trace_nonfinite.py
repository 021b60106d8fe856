"""Find where a run's first non-finite value appears: which module's forward, or which gradient.

    python tools/trace_nonfinite.py /work/runs/mininet_211k_camvid_trainval --steps 20 --set train.amp=bf16

A run that stops with "the loss is nan at iteration N" says that something overflowed, not where. This tool
resumes a copy of the run folder (the run itself is not touched) exactly as ``lightseg train --resume`` would,
with ``--set`` overrides as there, and watches every value as the next ``--steps`` updates run:

- the output of every module's forward, where its inputs were finite;
- the gradient with respect to every module's output as backward passes it;
- the gradient of every parameter.

It stops at the first non-finite one and names it (exit 1), or reports that the steps ran clean (exit 0).
What a report means: a forward output from finite inputs, or a weight gradient whose module's output gradient
was finite, points at that module's own kernel (the finding behind CPU bf16 training in docs/benchmarks.md,
"Training throughput"); an output gradient points at the module that consumed that output.

The checks cost a full pass over every activation, so steps run slower than in training. A maintainer's tool
(not part of the installed package).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightseg.engine.train import NonFiniteLossError, Trainer, run_config  # noqa: E402
from lightseg.errors import LightsegError  # noqa: E402


class NonFiniteFound(Exception):
    def __init__(self, where: str):
        super().__init__(where)
        self.where = where


class _StepsDone(Exception):
    pass


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


def _finite(obj) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in _tensors(obj) if t.is_floating_point())


class NonFiniteTrace:
    """Hooks on every module and parameter of ``model``; the first non-finite value raises
    :class:`NonFiniteFound`, naming it. ``step`` is put in the message (set it before each update)."""

    def __init__(self, model: torch.nn.Module):
        self.step = None
        self.handles = []
        for name, module in model.named_modules():
            self.handles.append(module.register_forward_hook(self._forward(name or type(module).__name__, module)))
        for name, p in model.named_parameters():
            if p.requires_grad:
                self.handles.append(p.register_hook(self._grad(f"the weight gradient of {name} {tuple(p.shape)}")))

    def _at(self) -> str:
        return f"iteration {self.step}: " if self.step is not None else ""

    def _forward(self, name: str, module: torch.nn.Module):
        def hook(mod, inputs, output):
            if not _finite(output):
                if _finite(inputs):
                    raise NonFiniteFound(f"{self._at()}the forward output of {name} ({module!r}), from finite inputs")
                return  # its input was already non-finite: an earlier hook names where that began
            for t in _tensors(output):
                if t.requires_grad:
                    t.register_hook(self._grad(f"the gradient with respect to the output of {name} ({module!r})"))
        return hook

    def _grad(self, what: str):
        def hook(grad):
            if not _finite(grad):
                raise NonFiniteFound(f"{self._at()}{what}")
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def trace(run_dir: Path, steps: int, overrides=()) -> str | None:
    """Resume a copy of ``run_dir`` for ``steps`` updates under a :class:`NonFiniteTrace`; the first non-finite
    value's description, or None when they ran clean."""
    run_dir = Path(run_dir)
    if not (run_dir / "last.pt").is_file():
        raise SystemExit(f"trace_nonfinite: no last.pt in {run_dir}; pass a run folder written by lightseg train")
    with tempfile.TemporaryDirectory(prefix="trace_nonfinite.") as tmp:
        copy = Path(tmp) / run_dir.name
        copy.mkdir()
        for name in ("last.pt", "config.yaml", "log.jsonl"):
            if (run_dir / name).is_file():
                shutil.copyfile(run_dir / name, copy / name)
        cfg = run_config(copy, overrides)
        trainer = Trainer(cfg, resume=str(copy), force_override=bool(overrides))
        step = trainer._train_step
        state = {"trace": None, "done": 0}

        def traced_step(images, labels):
            if state["trace"] is None:
                state["trace"] = NonFiniteTrace(trainer.model)
            if state["done"] == steps:
                raise _StepsDone
            state["trace"].step = trainer.iteration + 1
            state["done"] += 1
            return step(images, labels)

        trainer._train_step = traced_step
        try:
            trainer.fit()
        except NonFiniteFound as e:
            return e.where
        except NonFiniteLossError as e:
            return f"{e} (every module's output was finite: the loss itself, or its labels and class weights)"
        except _StepsDone:
            pass
        finally:
            if state["trace"] is not None:
                state["trace"].remove()
        if state["done"] == 0:
            raise SystemExit(f"trace_nonfinite: {run_dir} is at the end of its schedule, so no update ran; pass "
                             f"--set train.iters=<more> to watch further updates")
        return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir", type=Path, help="a run folder (it is copied; nothing in it changes)")
    p.add_argument("--steps", type=int, default=20, help="updates to watch (default 20)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="as for lightseg train --resume (implies --force-override)")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error(f"--steps {args.steps}: expected 1 or more")
    try:
        where = trace(args.run_dir, args.steps, args.overrides)
    except LightsegError as e:
        print(f"trace_nonfinite: error: {e}", file=sys.stderr)
        return 2
    if where is None:
        print(f"no non-finite value in {args.steps} update(s) from {args.run_dir}")
        return 0
    print(f"first non-finite value: {where}")
    return 1


if __name__ == "__main__":
    sys.exit(main())

"""Everyday use: --set with several pairs, recipes by name, training without validation,
TensorBoard, help on every flag, error messages that name existing flags, --version, `lightseg models`."""
import ast
import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import lightseg
from lightseg import zoo
from lightseg.cli import build_parser, main
from lightseg.config import list_recipes, load_config, resolve_recipe
from lightseg.errors import ConfigError

from test_train import make_camvid_like, one_thread, tiny_recipe  # noqa: F401 - fixture

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ command line
def _subparsers(parser):
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return action.choices


def test_set_takes_several_pairs_and_repeats(capsys):
    args = build_parser().parse_args(["train", "r.yaml", "--set", "train.iters=5", "train.batch_size=2", "--set", "seed=1"])
    assert args.set == ["train.iters=5", "train.batch_size=2", "seed=1"] and args.config == "r.yaml"
    cfg = load_config(ROOT / "configs" / "mininet_95k_camvid.yaml", args.set[:2])
    assert cfg["train"]["iters"] == 5 and cfg["train"]["batch_size"] == 2 and cfg["train"]["epochs"] is None
    with pytest.raises(SystemExit) as e:  # the recipe after --set is not a pair: say so
        build_parser().parse_args(["train", "--set", "train.iters=5", "mininet_95k_camvid"])
    assert e.value.code == 2 and "recipe goes before --set" in capsys.readouterr().err


def test_every_flag_has_a_help_text():
    parser = build_parser()
    missing = [f"lightseg {' '.join(a.option_strings)}" for a in parser._actions if a.option_strings and not a.help]
    for name, sub in _subparsers(parser).items():
        missing += [f"lightseg {name} {a.option_strings[0] if a.option_strings else a.dest}"
                    for a in sub._actions if not a.help]
    assert not missing, missing


# Flags of other tools that messages may quote.
FOREIGN_FLAGS = {"--force-reinstall", "--nproc_per_node"}


def _message_strings():
    """String constants of lightseg's code that are not docstrings (messages, help, f-string parts)."""
    for path in (ROOT / "lightseg").rglob("*.py"):
        tree = ast.parse(path.read_text())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                      and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                yield path, node.value


def _defined_flags():
    """Every option string given to an ``add_argument`` call in lightseg (the CLI and the module entry
    points such as ``python -m lightseg.demo``) and in the checkout's ``tools/`` scripts, which messages
    about a checkout's training runs name (``tools/land_run.py --restore``)."""
    flags = set()
    for path in [*(ROOT / "lightseg").rglob("*.py"), *(ROOT / "tools").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
                flags |= {a.value for a in node.args if isinstance(a, ast.Constant) and str(a.value).startswith("--")}
    return flags


def test_error_messages_suggest_only_flags_that_exist():
    known = _defined_flags()
    bad = set()
    for path, text in _message_strings():
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9_-]*", text):
            if flag not in known and flag not in FOREIGN_FLAGS:
                bad.add(f"{path.relative_to(ROOT)}: {flag}")
    assert not bad, sorted(bad)
    train = _subparsers(build_parser())["train"]
    assert "--data-root" in {o for a in train._actions for o in a.option_strings}  # errors recommend it


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"lightseg {lightseg.__version__}" == f"lightseg {metadata.version('lightseg')}"


# ------------------------------------------------------------------ recipes by name
def test_recipes_are_found_by_name():
    path = ROOT / "configs" / "mininet_211k_camvid.yaml"
    for name in ("mininet_211k_camvid", "mininet_211k_camvid.yaml", "configs/mininet_211k_camvid.yaml", str(path)):
        assert resolve_recipe(name).resolve() == path
    assert load_config("mininet_211k_camvid") == load_config(path)
    assert "rdsnet_camvid" in list_recipes() and len(list_recipes()) == len(list((ROOT / "configs").glob("*.yaml")))
    with pytest.raises(ConfigError, match="Did you mean mininet_211k_camvid") as e:
        resolve_recipe("mininet_221k_camvid")
    assert "rdsnet_camvid" in str(e.value)  # the error lists the shipped recipes


# ------------------------------------------------------------------ validation off, TensorBoard
def test_val_interval_zero_trains_without_validation(tmp_path, capsys):
    data = make_camvid_like(tmp_path / "data", n_val=0)  # no validation images at all: nothing reads them
    recipe = tiny_recipe(tmp_path, data, iters=3)
    assert main(["train", str(recipe), "--no-val", "--set", "train.ckpt_interval=100", "--data-root", str(data)]) == 0
    err = capsys.readouterr().err
    assert "validation is off" in err and "no best.pt" in err
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "last.pt", "log.jsonl"]
    kinds = {json.loads(line)["kind"] for line in (run / "log.jsonl").read_text().splitlines()}
    assert kinds == {"train"}
    # val_interval on the command line wins over a recipe's val_every_epochs
    cfg = load_config("mininet_211k_camvid", ["train.val_interval=0"])
    assert cfg["train"]["val_interval"] == 0 and cfg["train"]["val_every_epochs"] is None
    with pytest.raises(ConfigError, match="val_interval"):
        load_config("mininet_211k_camvid", ["train.val_interval=-1"])


def test_tensorboard_event_files_hold_loss_lr_and_val_miou(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = make_camvid_like(tmp_path / "data", n_val=2)
    recipe = tiny_recipe(tmp_path, data, iters=4, extra="  tensorboard: true")
    assert main(["train", str(recipe), "--set", "train.val_interval=2", "train.log_interval=2"]) == 0
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0}).Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "val/mIoU", "val/pixel_acc", "val_iou/Sky"} <= scalars
    assert {"train/loss_out", "train/loss_f2"} <= scalars  # the loss terms: main output and MiniNet's side outputs
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4]
    assert [e.step for e in events.Scalars("val/mIoU")] == [2, 4]
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    val = [r for r in log if r["kind"] == "val"]  # the same numbers as log.jsonl, the source of truth
    assert [e.value for e in events.Scalars("val/mIoU")] == pytest.approx([r["miou"] for r in val])
    train = [r for r in log if r["kind"] == "train"]
    assert [e.value for e in events.Scalars("train/lr")] == pytest.approx([r["lr"] for r in train])
    assert "val_overlay/0" in events.Tags()["images"]


def test_tensorboard_missing_says_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    data = make_camvid_like(tmp_path / "data", n_val=1)
    assert main(["train", str(tiny_recipe(tmp_path, data, iters=2)), "--tensorboard"]) == 2
    assert "pip install 'lightseg[tensorboard]'" in capsys.readouterr().err


# ------------------------------------------------------------------ lightseg models
def test_models_table_is_cached_by_source_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    from lightseg.models import registry  # lightseg's own models only: others (a test's) are never cached

    monkeypatch.setattr(registry, "_REGISTRY", {k: v for k, v in registry._REGISTRY.items()
                                                if v.builder.__module__.startswith("lightseg.")})
    calls = []
    real = zoo._compute_rows
    monkeypatch.setattr(zoo, "_compute_rows", lambda *a: calls.append(a) or real(*a))
    rows = zoo.models_table(size=(128, 128))
    assert len(calls) == 1 and [r["name"] for r in rows] == lightseg.list_models()
    assert zoo.models_table(size=(128, 128)) == rows and len(calls) == 1  # from the cache
    # the same numbers as the counters on a model built the ordinary way
    from lightseg.profile import count_inference_params, count_macs, count_params

    net = lightseg.create_model("mininet_95k")
    row = next(r for r in rows if r["name"] == "mininet_95k")
    assert row["macs"] == count_macs(net, (128, 128), device="meta") and row["params"] == count_params(net)
    assert row["params_inference"] == count_inference_params(net)
    monkeypatch.setattr(zoo, "source_hash", lambda: "changed code")
    zoo.models_table(size=(128, 128))
    assert len(calls) == 2  # another code version computes the table again
    zoo.models_table(size=(128, 128), cache=False)
    assert len(calls) == 3


def test_models_from_the_cache_import_no_torch(tmp_path):
    env = {"XDG_CACHE_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    code = "import sys; from lightseg.cli import main; main(['models']); print('torch' in sys.modules)"
    first = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    again = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert first.stdout.splitlines()[-1] == "True" and again.stdout.splitlines()[-1] == "False"
    assert first.stdout.splitlines()[:-1] == again.stdout.splitlines()[:-1]
    assert "mininet_211k" in again.stdout and "weights" in again.stdout

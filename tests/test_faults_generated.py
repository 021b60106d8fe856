"""Generated faults: for each class of bad input, hypothesis draws cases and runs the command a user types
(`lightseg.cli.main`). For every draw: exit 2 with one line and no traceback where the input is bad (0 where
it is valid), the message names the file or key, every file written before is byte-identical after, and no
file appears outside the folder the command was given. The draws are derandomized (no example database), so
CI runs the same cases every time; counts are small enough for the file to run in about a minute on 2 cores."""
import json
import math
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from PIL import Image

import lightseg.bounds
from lightseg.bounds import MAX_SIDE
import lightseg.engine.train
from lightseg.cli import main
from lightseg.config import DEFAULTS, MAX_RECIPE_BYTES, MAX_YAML_ALIASES, MAX_YAML_NODES, SCHEMA, parse_override
from lightseg.errors import ConfigError, LightsegError
from lightseg.runlog import read_log
from test_faults import _tree, make_world
from test_faults_data import make_folder_data, untrained_checkpoint, write_recipe
from test_train import one_thread, tiny_recipe  # noqa: F401 - fixture

LINK = "is a symbolic link; lightseg does not write through links"


def drawn(n):
    """Settings of a generated test: ``n`` cases, the same ones on every run, no time limit per case."""
    return settings(max_examples=n, deadline=None, derandomize=True, database=None, print_blob=False,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.filter_too_much])


def run(argv, capsys) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `lightseg ARGV`, argparse's own exits included; never a traceback."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Traceback" not in out, err
    return code, out, err


def refused(argv, capsys, *named) -> str:
    code, _, err = run(argv, capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    for n in named:
        assert str(n) in err, (n, err)
    return err


def unchanged(root: Path, before: dict, *allowed) -> None:
    """Every file of ``before`` byte-identical; nothing new under ``root`` except under ``allowed``."""
    now = _tree(root)
    assert {k: v for k, v in now.items() if k in before} == before
    new = [k for k in now if k not in before and not any(k.startswith(str(a) + os.sep) or k == str(a) for a in allowed)]
    assert not new, new


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A CamVid-like dataset, a 1-iteration recipe, a checkpoint, two photos, a finished run's log and a file
    outside every folder a command is given."""
    w = make_world(tmp_path_factory.mktemp("world"))
    tmp = w["tmp"]
    (w["outside"] / "dir").mkdir()
    logged = tmp / "logged"
    logged.mkdir()
    (logged / "log.jsonl").write_text("".join(json.dumps({"kind": "train", "iter": i, "loss": 1.0 / i, "lr": 0.1}) + "\n"
                                              for i in range(1, 4)))
    recipes = tmp / "recipes"
    recipes.mkdir()
    (tmp / "scratch").mkdir()
    return {**w, "logged": logged, "recipe": tiny_recipe(recipes, w["data"], iters=1), "scratch": tmp / "scratch"}


def fresh(world) -> Path:
    """A new empty folder for one drawn case (its outputs go there)."""
    return Path(tempfile.mkdtemp(dir=world["scratch"]))


# ================================================================ 1. recipe values
LEAVES = sorted(SCHEMA)


def _yaml_float(x: float) -> str:
    if math.isnan(x):
        return ".nan"
    if math.isinf(x):
        return ".inf" if x > 0 else "-.inf"
    return repr(x)


_WORD = st.text(alphabet="abcxyz_019", min_size=1, max_size=6)
_SCALAR = st.one_of(
    st.integers(-10 ** 30, 10 ** 30).map(str),  # huge ints among small ones
    st.integers(-3, 3).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(_yaml_float),
    st.sampled_from(["null", "~", "true", "false", "yes", "off"]),
    st.sampled_from(["\u0663", "\u00b2", "\u0661\u0662", "\u0663.\u0665", "\u2163", "\U0001d7d9", "\uff11"]),  # not 0-9
    _WORD, _WORD.map(json.dumps),
)
_LIST = st.lists(_SCALAR, max_size=4).map(lambda xs: "[" + ", ".join(xs) + "]")
_YAML_TEXT = st.one_of(_SCALAR, _LIST, st.lists(_LIST, min_size=1, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]"),
                       st.sampled_from(["", "{}", "{a: 1}", "{name: x}", "[[300, 0, 0]]", "[0.5, 0.25]", "[64, 64]"]))


@st.composite
def key_and_text(draw, defaults=True):
    """A recipe key and a YAML text for its value: anything at all, a near miss of one of its choices, or
    (``defaults``) its default written out, a value the rules accept."""
    key = draw(st.sampled_from(LEAVES))
    if defaults and draw(st.integers(0, 5)) == 0:
        return key, json.dumps(_lookup(DEFAULTS, key))
    choices = [c for c in SCHEMA[key].choices or () if isinstance(c, str)]
    if choices and draw(st.booleans()):
        c = draw(st.sampled_from(choices))
        return key, draw(st.sampled_from([c.upper(), c + "x", c[:-1], json.dumps(c + " "), c]))
    return key, draw(_YAML_TEXT)


def _expected(key, value):
    """What the recipe's declared rules say of ``key: value`` over the 1-iteration recipe: None (valid) or
    the words the refusal names."""
    if not SCHEMA[key].ok(value):
        return key
    if key == "train.iters" and value is None:  # and the recipe sets no train.epochs
        return "train.iters / train.epochs"
    return None


def _nested(key, text) -> str:
    """``a.b.c`` and a YAML text as a block mapping ``a:\\n  b:\\n    c: TEXT``."""
    parts = key.split(".")
    return "".join("  " * i + p + ":" + ("\n" if i < len(parts) - 1 else f" {text}\n") for i, p in enumerate(parts))


def _lookup(tree, key):
    for part in key.split("."):
        tree = tree[part]
    return tree


def _same(a, b) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # NaN equals NaN here


def _layer(world, key, text) -> tuple[Path, object]:
    """A recipe file that inherits the 1-iteration recipe and sets ``key`` to ``text``, and the value YAML
    gives it (ConfigError: the text is not YAML)."""
    from lightseg.config import _fix_float_strings  # what a recipe file's '2e-3' becomes (a number)

    path = fresh(world) / "layer.yaml"
    body = _nested(key, text)
    path.write_text(f"base: {world['recipe']}\n{body}", encoding="utf-8")
    try:
        value = _lookup(_fix_float_strings(yaml.safe_load(body)), key)
    except yaml.YAMLError:
        value = ConfigError("not valid YAML")
    return path, value


def _check_config_output(out, key, value):
    printed = _lookup(yaml.safe_load(out), key)
    if key == "output_dir" and value is None:
        assert isinstance(printed, str) and printed  # runs/<recipe name>
    else:
        assert _same(printed, value), (printed, value)


@drawn(80)
@given(kt=key_and_text())
def test_config_prints_every_valid_value_and_refuses_the_rest_naming_the_key(world, capsys, kt):
    key, text = kt
    before = _tree(world["tmp"])
    setting = f"{key}={text}"
    try:
        value = parse_override(setting)[1]
    except ConfigError as e:  # not YAML: the same refusal from the command
        refused(["config", world["recipe"], "--set", setting], capsys, "--set", str(e).split(":")[0])
        return
    code, out, err = run(["config", world["recipe"], "--set", setting], capsys)
    words = _expected(key, value)
    event("valid" if words is None else "refused")  # --hypothesis-show-statistics: both kinds are drawn
    if words is None:
        assert code == 0, err
        _check_config_output(out, key, value)
    else:
        assert code == 2 and len(err.strip().splitlines()) == 1 and words in err and f"--set {setting}" in err, err
    unchanged(world["tmp"], before)


@drawn(40)
@given(kt=key_and_text())
def test_config_reads_values_from_a_recipe_file_by_the_same_rules(world, capsys, kt):
    key, text = kt
    before = _tree(world["tmp"])
    path, value = _layer(world, key, text)
    code, out, err = run(["config", path], capsys)
    words = "not valid YAML" if isinstance(value, ConfigError) else _expected(key, value)
    event("valid" if words is None else "refused")
    if words is None:
        assert code == 0, err
        _check_config_output(out, key, value)
    else:
        assert code == 2 and len(err.strip().splitlines()) == 1 and words in err and str(path) in err, err
    unchanged(world["tmp"], before, path.parent)


class _Reached(Exception):
    pass


@pytest.fixture
def no_trainer(monkeypatch):
    """Any draw that gets as far as building the trainer fails the test: refusals come before any work."""
    def reached(*args, **kwargs):
        raise _Reached("the recipe was accepted and the trainer built")

    monkeypatch.setattr(lightseg.engine.train, "Trainer", reached)


def _invalid(kt) -> bool:
    key, text = kt
    try:
        return _expected(key, parse_override(f"{key}={text}")[1]) is not None
    except ConfigError:
        return True


@drawn(40)
@given(kt=key_and_text(defaults=False).filter(_invalid))
def test_train_refuses_bad_set_values_before_any_work(world, capsys, no_trainer, kt):
    key, text = kt
    before = _tree(world["tmp"])
    setting = f"{key}={text}"
    err = refused(["train", world["recipe"], "--set", "train.iters=1", "--set", setting], capsys, f"--set {setting}")
    assert "not valid YAML" in err or key in err, err
    unchanged(world["tmp"], before)  # no run folder, nothing else


@drawn(25)
@given(kt=key_and_text(defaults=False))
def test_train_refuses_bad_recipe_file_values_before_any_work(world, capsys, no_trainer, kt):
    key, text = kt
    path, value = _layer(world, key, text)
    words = "not valid YAML" if isinstance(value, ConfigError) else _expected(key, value)
    assume(words is not None)
    before = _tree(world["tmp"])
    # the 1-iteration recipe below; a --set train.iters=1 would replace a drawn train.iters or train.epochs
    one_iter = [] if key in ("train.iters", "train.epochs") else ["--set", "train.iters=1"]
    refused(["train", path, *one_iter], capsys, path, words)
    unchanged(world["tmp"], before)


# ================================================================ 2. image and label files, through eval's pre-scan
def _image_file(draw, path: Path, h: int, w: int) -> tuple[Path, str | None]:
    """An image of a drawn kind at ``path`` (its suffix may change); the words of its refusal or None."""
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 16)))
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    kind = draw(st.sampled_from(["1", "L", "P", "RGB", "I;16", "LA", "RGBA", "CMYK", "EXIF"]))
    if kind in ("CMYK", "EXIF"):
        path = path.with_suffix(".jpg")
        if kind == "CMYK":
            Image.fromarray(rgb).convert("CMYK").save(path, "JPEG")
            return path, "CMYK"
        orientation = draw(st.integers(1, 8))
        exif = Image.Exif()
        exif[0x0112] = orientation
        Image.fromarray(rgb).save(path, "JPEG", exif=exif.tobytes())
        return path, None if orientation == 1 else f"EXIF orientation {orientation}"
    if kind == "I;16":
        Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16)).save(path)
        return path, None
    im = Image.fromarray(rgb)
    if kind in ("LA", "RGBA"):
        alpha = np.full((h, w), 255, np.uint8)
        transparent = draw(st.booleans())
        if transparent:
            alpha[draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))] = draw(st.integers(0, 254))
        im = im.convert(kind[:-1])
        im.putalpha(Image.fromarray(alpha))
        im.save(path)
        return path, "transparent" if transparent else None
    im.convert(kind).save(path)
    return path, None


def _label_file(draw, path: Path, h: int, w: int) -> tuple[Path, str | None]:
    """A 2-class label of a drawn kind at ``path``; the words of its refusal or None."""
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 16)))
    kind = draw(st.sampled_from(["1", "L", "P", "I;16", "LA"]))
    values = rng.integers(0, 2, (h, w)).astype(np.uint16)
    bad = None
    if kind != "1" and draw(st.booleans()):  # one pixel outside the classes (0, 1) and not ignore (255)
        bad = draw(st.integers(256, 65535) if kind == "I;16" else st.integers(2, 254))
        values[draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))] = bad
    elif kind != "1" and draw(st.booleans()):
        values[0, 0] = 255  # ignore: valid
    if kind == "1":
        Image.fromarray(values.astype(bool)).save(path)
    elif kind == "I;16":
        Image.fromarray(values).save(path)
    elif kind == "P":
        im = Image.fromarray(values.astype(np.uint8), "P")
        im.putpalette([v for i in range(256) for v in (i, 255 - i, i // 2)])
        im.save(path)
    elif kind == "L":
        Image.fromarray(values.astype(np.uint8), "L").save(path)
    else:
        transparent = draw(st.booleans())
        alpha = np.full((h, w), 255, np.uint8)
        alpha[0, 1] = 0 if transparent else 255
        Image.fromarray(np.dstack([values.astype(np.uint8), alpha]), "LA").save(path)
        if transparent:
            return path, "transparent"
    return path, None if bad is None else f"[{bad}]"


@st.composite
def sample_fault(draw):
    """(which file, how it is written, damage): the drawn replacement of sample 1's image or label."""
    return (draw(st.sampled_from(["images", "labels"])),
            draw(st.sampled_from([(64, 64)] * 4 + [(72, 64), (64, 80)])),
            draw(st.sampled_from(["none"] * 6 + ["truncated", "empty"])), draw(st.data()))


@pytest.fixture(scope="module")
def folder_world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("folder")
    data = make_folder_data(tmp / "pristine")
    recipe = write_recipe(tmp / "r.yaml", tmp / "data", tmp / "run")
    return tmp, data, recipe, untrained_checkpoint(tmp / "model.pt", recipe)


@drawn(40)
@given(fault=sample_fault())
def test_eval_evaluates_or_names_every_drawn_image_and_label_file(folder_world, capsys, fault):
    tmp, pristine, recipe, ckpt = folder_world
    which, size, damage, data = fault
    root = tmp / "data"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(pristine, root)
    for old in (root / which).glob("s1.*"):
        old.unlink()
    write = _image_file if which == "images" else _label_file
    path, words = write(data.draw, root / which / "s1.png", *size)
    if size != (64, 64) and words is None:
        words = "must be the same size"
    if damage == "empty":
        path.write_bytes(b"")
        words = "empty"
    elif damage == "truncated":  # at least the end marker (PNG: the IEND chunk; JPEG: EOI) is cut off
        raw = path.read_bytes()
        path.write_bytes(raw[:data.draw(st.integers(1, len(raw) - 12))])
        words = None  # a cut header or a cut body: either refusal names the file
    before = _tree(tmp)
    metrics = tmp / "out" / "m.json"
    code, _, err = run(["eval", recipe, "--checkpoint", ckpt, "--output", metrics], capsys)
    event("evaluated" if words is None and damage == "none" else "refused")
    if words is None and damage == "none":
        assert code == 0, err
        assert metrics.is_file()
        unchanged(tmp, before, tmp / "out")
    else:
        assert code == 2 and len(err.strip().splitlines()) == 1 and path.name in err, err
        assert words is None or words in err, (words, err)
        unchanged(tmp, before)  # the pre-scan refused it: no metrics, nothing else
    shutil.rmtree(tmp / "out", ignore_errors=True)


# ================================================================ 3. links and outputs onto inputs
# Every name each command writes, and the argv writing there (``out``: its output folder).
OUTPUT_NAMES = {
    "train": [".lightseg-train.lock", "log.jsonl", "config.yaml", "last.pt", "best.pt", "tensorboard"],
    "predict": ["p0_label.png", "p0_color.png", "p1_overlay.png"],
    "eval": ["m.json", "preds/s000.png"],
    "export": ["m.onnx"],
    "plot": ["curves.png"],
}


def _argv(world, command, out: Path, name: str) -> list:
    if command == "train":  # the recipe's own run folder (one named by --set output_dir= is refused as a run)
        recipe = out.parent / f"{out.name}.yaml"
        recipe.write_text(f"base: {world['recipe']}\noutput_dir: {out}\n")
        return ["train", recipe, "--set", "train.iters=1"]
    if command == "predict":
        return ["predict", "--checkpoint", world["ckpt"], "--input", world["photos"], "--output", out]
    if command == "eval":
        return ["eval", world["recipe"], "--checkpoint", world["ckpt"], "--output", out / "m.json",
                "--save-predictions", out / "preds"]
    if command == "export":
        return ["export", "--checkpoint", world["ckpt"], "--size", 64, 64, "-o", out / name]
    return ["plot", world["logged"], "--output", out / name]


@st.composite
def planted_link(draw):
    command = draw(st.sampled_from(sorted(OUTPUT_NAMES)))
    return command, draw(st.sampled_from(OUTPUT_NAMES[command])), draw(st.sampled_from(["file", "missing", "dir", "input"]))


@drawn(24)
@given(case=planted_link())
def test_a_link_planted_at_any_output_name_is_refused_and_its_target_kept(world, capsys, case):
    command, name, target_kind = case
    out = fresh(world)
    target = {"file": world["outside"] / "target", "missing": world["outside"] / "missing",
              "dir": world["outside"] / "dir", "input": world["photos"] / "p0.png"}[target_kind]
    link = out / name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    argv = _argv(world, command, out, name)
    before = _tree(world["tmp"])
    err = refused(argv, capsys, link)
    assert LINK in err or "onto an input" in err, err
    assert not (world["outside"] / "missing").exists()
    unchanged(world["tmp"], before)  # the target and everything else untouched, nothing new


def _onto_input(world, command, how, case: Path) -> tuple[Path, list]:
    """(output, argv) for ``command`` with an output that is its input (``same``), inside an input folder
    (``inside``) or a link to the input (``link``)."""
    w = world
    source = {"train": w["data"], "predict": w["photos"], "eval": w["data"] / "valannot", "export": w["ckpt"],
              "plot": w["logged"] / "log.jsonl"}[command]
    if how == "inside" and source.is_dir():
        output = source / "out"
    elif how == "link":
        output = case / ("link" + source.suffix)
        output.symlink_to(source)
    else:
        output = source
    argv = {"train": ["train", w["recipe"], "--set", "train.iters=1", "--set", f"output_dir={output}"],
            "predict": ["predict", "--checkpoint", w["ckpt"], "--input", w["photos"], "--output", output],
            "eval": ["eval", w["recipe"], "--checkpoint", w["ckpt"], "--output", case / "m.json", "--save-predictions",
                     output],
            "export": ["export", "--checkpoint", w["ckpt"], "--size", 64, 64, "-o", output],
            "plot": ["plot", w["logged"], "--output", output]}[command]
    return output, argv


@drawn(15)
@given(command=st.sampled_from(["train", "predict", "eval", "export", "plot"]),
       how=st.sampled_from(["same", "inside", "link"]))
def test_an_output_onto_an_input_is_refused_before_any_work(world, capsys, command, how):
    case = fresh(world)
    output, argv = _onto_input(world, command, how, case)
    before = _tree(world["tmp"])
    err = refused(argv, capsys, output)
    assert "onto an input" in err or (how == "link" and LINK in err), err  # a file named as a link: never written
    unchanged(world["tmp"], before)


# ================================================================ 4. YAML that inflates, checkpoints with bad entries
@st.composite
def yaml_bomb(draw):
    """Model switches (a free mapping) of nested aliases: ``levels`` anchors, each a list of ``width`` aliases of
    the one before; and the loader's verdict worked out by hand: None (read), or the words of its refusal."""
    if draw(st.booleans()):  # a fan: many aliases of one scalar, nothing inflates but the alias count
        n = draw(st.integers(1, 2 * MAX_YAML_ALIASES))
        text = "    x0: &x0 a\n" + "".join(f"    x{i}: *x0\n" for i in range(1, n + 1))
        return text, f"more than {MAX_YAML_ALIASES} aliases" if n > MAX_YAML_ALIASES else None, n + 1
    levels, width = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    text = "    x0: &x0 [a, a, a, a]\n"
    aliases, sizes, verdict = 0, [5], None
    for i in range(1, levels):
        text += f"    x{i}: &x{i} [{', '.join([f'*x{i - 1}'] * width)}]\n"
        if verdict is None:
            aliases += width
            sizes.append(1 + width * sizes[-1])  # a sequence: itself and each alias's whole subtree again
            verdict = (f"more than {MAX_YAML_ALIASES} aliases" if aliases > MAX_YAML_ALIASES else
                       "expands to more than" if sizes[-1] > MAX_YAML_NODES else None)
    # the kwargs mapping counts its keys and values, model: and the document's own keys count too
    total = 1 + 2 + 1 + 2 + 1 + 1 + sum(1 + s for s in sizes)
    if verdict is None and total > MAX_YAML_NODES:
        verdict = "expands to more than"
    assume(not 0.9 * MAX_YAML_NODES < max(total, sizes[-1]) < 1.1 * MAX_YAML_NODES or verdict and "aliases" in verdict)
    return text, verdict, levels


@drawn(20)
@given(bomb=yaml_bomb())
def test_recipe_aliases_are_printed_within_the_bounds_and_refused_past_them(world, capsys, bomb):
    text, verdict, levels = bomb
    path = fresh(world) / "bomb.yaml"
    path.write_text(f"base: {world['recipe']}\nmodel:\n  kwargs:\n{text}")
    code, out, err = run(["config", path], capsys)
    event(verdict or "read")
    if verdict:
        assert code == 2 and str(path) in err and verdict in err, err
    else:
        assert code == 0, err
        assert sorted(yaml.safe_load(out)["model"]["kwargs"]) == sorted(f"x{i}" for i in range(levels))


@drawn(12)
@given(depth=st.one_of(st.integers(1, 55), st.integers(66, 400)), mapping=st.booleans())
def test_recipe_nesting_is_printed_within_the_bound_and_refused_past_it(world, capsys, depth, mapping):
    value = "{a: " * depth + "1" + "}" * depth if mapping else "[" * depth + "1" + "]" * depth
    path = fresh(world) / "deep.yaml"
    path.write_text(f"base: {world['recipe']}\nmodel:\n  kwargs: {{deep: {value}}}\n")
    code, out, err = run(["config", path], capsys)
    if depth > 60:
        assert code == 2 and str(path) in err and "nested deeper than" in err, err
    else:
        assert code == 0, err


@drawn(6)
@given(kib=st.integers(16, 2 * MAX_RECIPE_BYTES // 1024))
def test_recipe_file_size_is_bounded(world, capsys, kib):
    path = fresh(world) / "big.yaml"
    path.write_text(f"base: {world['recipe']}\n# " + "x" * (kib * 1024) + "\n")
    code, _, err = run(["config", path], capsys)
    if path.stat().st_size > MAX_RECIPE_BYTES:
        assert code == 2 and str(path) in err and "MiB" in err, err
    else:
        assert code == 0, err
    path.unlink()


@st.composite
def damaged_checkpoint(draw):
    """What is done to a valid checkpoint's zip: entries cut, renamed, added (huge, escaping), bytes cut."""
    how = draw(st.sampled_from(["truncate", "drop_entry", "rename_entry", "escaping_entry", "bomb_entry", "flip_byte",
                                "not_a_zip"]))
    return how, draw(st.integers(0, 2 ** 31))


def _damage(src: Path, dst: Path, how: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    raw = src.read_bytes()
    if how == "truncate":
        dst.write_bytes(raw[:int(rng.integers(1, len(raw) - 1))])
        return
    if how == "flip_byte":
        b = bytearray(raw)
        i = int(rng.integers(0, len(b)))
        b[i] ^= 1 << int(rng.integers(0, 8))
        dst.write_bytes(bytes(b))
        return
    if how == "not_a_zip":
        dst.write_bytes(rng.integers(0, 256, int(rng.integers(0, 4096)), dtype=np.uint8).tobytes())
        return
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(dst, "w") as out:
        infos = z.infolist()
        victim = infos[int(rng.integers(0, len(infos)))]
        for info in infos:
            data = z.read(info)
            if info is victim and how == "drop_entry":
                continue
            if info is victim and how == "rename_entry":
                info = zipfile.ZipInfo(info.filename + "x")
            out.writestr(info, data)
        if how == "escaping_entry":
            out.writestr(f"../../{rng.integers(0, 1000)}.pkl", b"x")
        if how == "bomb_entry":
            out.writestr(zipfile.ZipInfo(infos[0].filename.split("/")[0] + "/extra"), b"\0" * (48 * 1024 ** 2),
                         compress_type=zipfile.ZIP_DEFLATED)


@drawn(20)
@given(damage=damaged_checkpoint())
def test_a_damaged_checkpoint_is_refused_naming_it_or_used(world, capsys, damage):
    how, seed = damage
    case = fresh(world)
    bad = case / "bad.pt"
    _damage(world["ckpt"], bad, how, seed)
    before = _tree(world["tmp"])
    out = case / "out"
    code, _, err = run(["predict", "--checkpoint", bad, "--input", world["photos"] / "p0.png", "--output", out], capsys)
    if how in ("truncate", "bomb_entry", "not_a_zip"):
        assert code == 2, err  # the zip directory is gone, or declares more than the bounds allow
    event(f"{how}: exit {code}")
    if code == 2:
        assert len(err.strip().splitlines()) == 1 and str(bad) in err, err
        assert not out.exists() or not any(out.iterdir())
    else:
        assert code == 0, err  # a flipped bit in tensor data or a stray entry: the weights still load
    unchanged(world["tmp"], before, out)
    shutil.rmtree(case)


# ================================================================ 5. what cannot fit in memory
@pytest.mark.skipif(lightseg.bounds.available_memory() is None, reason="this system does not say how much memory is free")
@drawn(20)
@given(batch=st.integers(1, 10 ** 9), h=st.integers(64, 10 ** 6), w=st.integers(64, 10 ** 6))
def test_bench_refuses_what_cannot_fit_with_the_estimate_and_the_limit(capsys, batch, h, w):
    need = batch * lightseg.bounds.estimate_memory(h, w, None)  # a model of the registry's default class count
    available = lightseg.bounds.available_memory()
    assume(available is not None and need > 2 * available)  # far over: the free memory moves meanwhile
    err = refused(["bench", "--model", "mininet_95k", "--batch", batch, "--size", h, w], capsys,
                  f"--batch {batch} --size {h} {w}", "lower --batch or --size")
    estimate, limit = map(float, re.search(r"about ([\d.]+) GB of memory and ([\d.]+) GB is available", err).groups())
    assert estimate == pytest.approx(need / 1024 ** 3, abs=0.06) and limit <= estimate / 2 + 0.06, err


@drawn(12)
@given(command=st.sampled_from(["models", "bench", "export", "predict"]), side=st.integers(MAX_SIDE + 1, 10 ** 40),
       other=st.integers(64, 512))
def test_a_size_past_the_largest_side_is_refused_by_every_command(world, capsys, command, side, other):
    """Past MAX_SIDE an element count overflows torch's int64 (a TypeError from torch.zeros): refused while
    parsing, naming the value and the bound."""
    case = fresh(world)
    argv = {"models": ["models"], "bench": ["bench", "--model", "mininet_95k"],
            "export": ["export", "--checkpoint", world["ckpt"], "-o", case / "m.onnx"],
            "predict": ["predict", "--checkpoint", world["ckpt"], "--input", world["photos"], "--output", case / "out"]}
    before = _tree(world["tmp"])
    code, _, err = run([*argv[command], "--size", side, other], capsys)
    last = err.strip().splitlines()[-1]  # argparse's refusal: its usage, then one line
    assert code == 2 and "--size" in last and str(side) in last and f"at most {MAX_SIDE}" in last, err
    unchanged(world["tmp"], before)


@pytest.mark.skipif(lightseg.bounds.available_memory() is None, reason="this system does not say how much memory is free")
@drawn(10)
@given(side=st.integers(64, MAX_SIDE), scale=st.one_of(st.floats(1000, 1e30), st.integers(1000, 10 ** 30)))
def test_export_and_eval_refuse_what_cannot_fit_before_allocating_it(world, capsys, side, scale):
    """An export's example input and an evaluation at a scale are compared with the memory first (they
    ended in int64 overflows or allocation failures inside torch)."""
    available = lightseg.bounds.available_memory()
    scaled = round(64 * scale)  # the 64x64 validation image at that scale
    assume(lightseg.bounds.estimate_memory(side, side, None) > 2 * available)
    assume(lightseg.bounds.estimate_memory(64, 64, 11, size=(scaled, scaled)) > 2 * available)
    case = fresh(world)
    before = _tree(world["tmp"])
    refused(["export", "--checkpoint", world["ckpt"], "--size", side, side, "-o", case / "m.onnx"], capsys,
            f"{side}x{side}", "GB of memory", "lower --size")
    refused(["eval", world["recipe"], "--checkpoint", world["ckpt"], "--output", case / "m.json", "--scales", 1, scale],
            capsys, "s000.png", "at eval scale", "GB of memory", "lower eval.scales")
    unchanged(world["tmp"], before)


# ================================================================ 6. the run log: strict for resume, lenient for plots
_RECORD = st.fixed_dictionaries({"kind": st.sampled_from(["train", "val"]), "iter": st.integers(0, 10 ** 6),
                                 "loss": st.floats(0, 10)}).map(json.dumps)
_NOT_A_RECORD = st.one_of(st.sampled_from(["[1, 2]", "3", '"text"', "null", '{"iter": -1}', '{"iter": true}',
                                           '{"iter": "4"}', '{"iter": 1.5}']),
                          st.text(alphabet="{}[]:,abc\"' 12", min_size=1, max_size=12))


@drawn(60)
@given(good=st.lists(_RECORD, min_size=1, max_size=5), bad=_NOT_A_RECORD, at=st.integers(0, 5), last=st.booleans())
def test_one_log_reader_strict_for_resume_lenient_for_plots(tmp_path, capsys, good, bad, at, last):
    """A line that is not a record lightseg writes: a resume names its number unless it is the last line and
    not JSON (cut short); a plot skips it when it is JSON and names it when it is not JSON (and not the last)."""
    lines = list(good)
    n = len(lines) + 1 if last else min(at, len(lines)) + 1  # 1-based number of the bad line
    lines.insert(n - 1, bad)
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(lines) + "\n")
    try:
        parsed = json.loads(bad)
    except ValueError:
        parsed = ConfigError
    blank = not bad.strip()
    cut_last = parsed is ConfigError and n == len(lines)
    record = isinstance(parsed, dict) and isinstance(parsed.get("iter", 0), int) and not isinstance(
        parsed.get("iter", 0), bool) and parsed.get("iter", 0) >= 0
    # strict
    if blank or record or cut_last:
        assert len(read_log(log, strict=True)) == len(good) + (1 if record else 0)
    else:
        with pytest.raises(ConfigError, match=f"log.jsonl:{n}:"):
            read_log(log, strict=True)
    # lenient
    if parsed is ConfigError and not cut_last and not blank:
        with pytest.raises(LightsegError, match=f"log.jsonl:{n}:"):
            read_log(log, strict=False)
    else:
        assert len(read_log(log, strict=False)) == len(good) + (1 if isinstance(parsed, dict) else 0)
    capsys.readouterr()


def test_plot_names_a_log_that_is_not_text(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "log.jsonl").write_bytes(b'{"iter": 1, "loss": 1.0}\n\xff\xfe\n')
    refused(["plot", run_dir], capsys, run_dir / "log.jsonl", "not UTF-8")
    assert sorted(p.name for p in run_dir.iterdir()) == ["log.jsonl"]

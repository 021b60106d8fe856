"""Recipes: YAML files that state only what differs from ``DEFAULTS``.

``load_config(path, overrides)`` reads a recipe with ``yaml.safe_load``, deep-merges it over
``DEFAULTS``, applies ``--set a.b=c`` overrides (the value is parsed as YAML, so ``1e-3`` is a float,
``[512, 1024]`` a list and ``null`` None), and checks every key and value. A key that does not exist
is a ``ConfigError`` naming the key, the file and the nearest valid key.

Relative paths in a recipe (``data.root``, ``output_dir``, ``model.pretrained_backbone``,
``model.init_from``) are resolved against the current working directory, not against the recipe's
folder: run `lightseg` from the checkout root (or pass absolute paths / ``--set data.root=...``).

Inheritance: ``base: other.yaml`` (mmseg's ``_base_`` is accepted too; a list of bases is merged in
order) reads the base first and deep-merges the recipe over it. The base is a path relative to the
recipe's own folder, or a shipped recipe's name. Chains are followed up to ``MAX_BASE_DEPTH`` files;
a cycle is refused naming the files. ``output_dir`` is not inherited: a recipe's runs go to its own
``output_dir``, else ``runs/<its file name>``, never into its base's folder.
"""
from __future__ import annotations

import copy
import difflib
import io
from pathlib import Path

import yaml

from .checkpoint import atomic_write_bytes
from .errors import ConfigError
from .schema import MAPPING as _MAPPING, Rule, is_int as _is_int, is_num as _is_num, one_of as _choice, \
    boolean as _bool, integer as _int, list_of as _list, number as _num, string as _str

def _data_defaults() -> dict:
    from .data import DEFAULT_DATA_CFG  # the data part of the schema belongs to lightseg.data

    return copy.deepcopy(DEFAULT_DATA_CFG)


DEFAULTS: dict = {
    "model": {
        "name": "mininet_211k",
        "num_classes": 11,
        "pretrained_backbone": None,
        # Fine-tuning: a shipped weights name of this model (camvid) or a .pt path; every tensor whose name
        # and shape match is loaded, the rest (e.g. a classifier for another class count) keeps its fresh init.
        "init_from": None,
        "kwargs": {},
    },
    "data": _data_defaults(),
    "train": {
        "iters": None,
        "epochs": 300,
        "batch_size": 8,
        "optimizer": {
            "name": "adam",
            "lr": 2.0e-3,
            "weight_decay": 1.0e-4,
            "momentum": 0.9,
            "betas": [0.9, 0.999],
            "nesterov": False,
            "backbone_lr_mult": 1.0,
            "backbone_weight_decay_mult": 1.0,
            "backbone_params": "all",
            "weight_decay_on": "all",
        },
        "scheduler": {
            "name": "poly",
            "power": 0.9,
            "min_lr": 0.0,
            "warmup_iters": 0,
            "warmup_start": 0.1,
            "warmup_mode": "linear",
            "plateau_factor": 0.5,
            "plateau_patience": 3,
            "plateau_monitor": "val_miou",
            "plateau_max_reductions": None,
        },
        "loss": {
            "name": "ce",
            "class_weights": None,
            "aux_weights": None,
            "aux_mode": "downsample",
            "ohem_thresh": 0.7,
            "ohem_min_kept": 100000,
            "lovasz_weight": 0.0,
        },
        "amp": None,
        "channels_last": "auto",
        # BatchNorm's running-average momentum, torch's convention (new = (1 - m) old + m batch); null keeps
        # each layer's own (torch's 0.1). TF's decay d is m = 1 - d (DeepLab's 0.9997 is 0.0003).
        "bn_momentum": None,
        "seed": 0,
        "deterministic": True,
        "val_interval": 1000,   # 0: no validation (no best.pt)
        "val_every_epochs": None,
        "log_interval": 20,
        "ckpt_interval": 500,
        "sync_bn": False,
        "grad_clip": None,
        "device": "auto",
        "tensorboard": False,   # also write TensorBoard event files (pip install 'lightseg[tensorboard]')
    },
    "eval": {
        "flip": False,
        "scales": [1.0],
        "batch_size": 1,
        "mode": "whole",   # or "slide": windows of eval.crop every eval.stride (lightseg.inference)
        "crop": None,
        "stride": None,
    },
    # null: runs/<recipe file name without .yaml>
    "output_dir": None,
}

# ---------------------------------------------------------------- the schema
# One rule per recipe key: its type, its range and whether null is allowed. `validate` checks every key of
# DEFAULTS against its rule before anything runs (a test asserts that every key has one), so that a value
# that would crash later (train.batch_size: null, train.log_interval: null) is refused at once, naming it.
def _split_ok(v) -> bool:
    names = v if isinstance(v, list) else [v]
    return bool(names) and all(isinstance(n, str) and n for n in names) and len(set(names)) == len(names)


def _scale_ok(v) -> bool:
    return isinstance(v, list) and len(v) == 2 and all(_is_num(s) for s in v) and 0 < v[0] <= v[1]


def _device_ok(v) -> bool:
    return v in ("auto", "cpu", "cuda", "mps") or (isinstance(v, str) and v.startswith("cuda:") and v[5:].isascii()
                                            and v[5:].isdigit())


_SIZE = _list(lambda x: _is_int(x) and x > 0, "[H, W] with two positive integers", length=2, null=True)
_SPLIT = Rule("a split name (train, val, test) or a list of distinct names, e.g. [train, val]", _split_ok)
_RATE = _num(0, lo_open=True, what="a number")  # a learning rate: > 0 (an lr of 0 trains nothing)

SCHEMA: dict[str, Rule] = {
    "model.name": _str(),
    "model.num_classes": _int(1),
    "model.pretrained_backbone": _str(null=True),
    "model.init_from": Rule("null, a shipped weights name of the model (e.g. camvid) or a .pt file",
                            lambda v: v is None or (isinstance(v, str) and bool(v.strip()))),
    "model.kwargs": _MAPPING,
    "data.name": _choice("camvid", "camvid32", "cityscapes", "mapillary", "folder"),
    "data.root": _str(null=True),
    "data.train_split": _SPLIT,
    "data.val_split": _SPLIT,
    "data.normalize": _choice("imagenet", "minus_one_one"),
    "data.num_workers": _int(0),
    "data.on_device": _bool(),
    "data.image_dir": _str(null=True),
    "data.label_dir": _str(null=True),
    "data.list_file": _str(null=True),
    "data.classes": _list(lambda x: isinstance(x, str) and bool(x), "a list of class names", null=True),
    "data.palette": _list(lambda c: isinstance(c, list) and len(c) == 3 and all(_is_int(x) and 0 <= x <= 255 for x in c),
                          "a list of [R, G, B] triples of integers 0..255", null=True),
    "data.label_map": _MAPPING,
    "data.train_transforms.scale": Rule("[min, max] with 0 < min <= max", _scale_ok, null=True),
    "data.train_transforms.scale_step": _num(0, lo_open=True, null=True),
    "data.train_transforms.crop": _SIZE,
    "data.train_transforms.flip": _bool(),
    "data.train_transforms.translate": _int(0),
    "data.train_transforms.color_jitter": _num(0),
    "data.train_transforms.resize": _SIZE,
    "data.eval_size": _SIZE,
    "train.iters": _int(1, null=True),
    "train.epochs": _int(1, null=True),
    "train.batch_size": _int(1),
    "train.optimizer.name": _choice("sgd", "adam", "adamw"),
    "train.optimizer.lr": _RATE,
    "train.optimizer.weight_decay": _num(0),
    "train.optimizer.momentum": _num(0),
    "train.optimizer.betas": _list(lambda b: _is_num(b) and 0 <= b < 1, "[beta1, beta2] with 0 <= beta < 1", length=2),
    "train.optimizer.nesterov": _bool(),
    "train.optimizer.backbone_lr_mult": _num(0),
    "train.optimizer.backbone_weight_decay_mult": _num(0),
    "train.optimizer.backbone_params": _choice("all", "stage_convs"),
    "train.optimizer.weight_decay_on": _choice("all", "conv_weights"),
    "train.scheduler.name": _choice("poly", "cosine", "constant", "plateau"),
    "train.scheduler.power": _num(0),
    "train.scheduler.min_lr": _num(0),
    "train.scheduler.warmup_iters": _int(0),
    "train.scheduler.warmup_start": _num(0),
    "train.scheduler.warmup_mode": _choice("linear", "constant"),
    "train.scheduler.plateau_factor": _num(0, 1, lo_open=True, hi_open=True),
    "train.scheduler.plateau_patience": _int(0),
    "train.scheduler.plateau_monitor": _choice("val_miou", "train_loss"),
    "train.scheduler.plateau_max_reductions": _int(1, null=True),
    "train.loss.name": _choice("ce", "ohem", "lovasz", "ce+lovasz"),
    "train.loss.class_weights": _choice(None, "enet", "median_freq"),
    "train.loss.aux_weights": _list(_is_num, "a list of numbers, one per auxiliary output of the model", null=True,
                                    empty=True),
    "train.loss.aux_mode": _choice("downsample", "upsample"),
    "train.loss.ohem_thresh": _num(0, 1),
    "train.loss.ohem_min_kept": _int(0),
    "train.loss.lovasz_weight": _num(0),
    "train.amp": _choice(None, "bf16", "fp16"),
    "train.channels_last": _choice("auto", True, False),
    "train.bn_momentum": _num(0, 1, lo_open=True, null=True),
    "train.seed": _int(),
    "train.deterministic": _bool(),
    "train.val_interval": _int(0),
    "train.val_every_epochs": _int(1, null=True),
    "train.log_interval": _int(1),
    "train.ckpt_interval": _int(1),
    "train.sync_bn": _bool(),
    "train.grad_clip": _num(0, null=True),
    "train.device": Rule("auto, cpu, cuda, cuda:N or mps", _device_ok),
    "train.tensorboard": _bool(),
    "eval.flip": _bool(),
    "eval.scales": _list(lambda s: _is_num(s) and s > 0, "a non-empty list of positive numbers, e.g. [1.0]"),
    "eval.batch_size": _int(1),
    "eval.mode": _choice("whole", "slide"),
    "eval.crop": _SIZE,
    "eval.stride": _SIZE,
    "output_dir": _str(null=True),
}
# Dicts whose keys are free (model switches, a label mapping): not checked against DEFAULTS.
FREE_KEYS = {k for k, rule in SCHEMA.items() if rule is _MAPPING}


# Recipe inheritance (base: / _base_): the longest chain of files followed.
MAX_BASE_DEPTH = 8
BASE_KEYS = ("base", "_base_")


def _where(source) -> str:
    return f" in {source}" if source else ""


def _all_paths(tree: dict, prefix="") -> list[str]:
    out = []
    for k, v in tree.items():
        path = f"{prefix}{k}"
        out.append(path)
        if isinstance(v, dict) and path not in FREE_KEYS:
            out.extend(_all_paths(v, path + "."))
    return out


def _suggest(path: str, siblings) -> str:
    """' Did you mean ...?' for a wrong dotted key: the same name elsewhere ('train.lr' ->
    'train.optimizer.lr'), else the key whose last part is closest ('train.lrr' -> 'train.optimizer.lr',
    a sibling winning ties). Comparing whole dotted paths instead suggests keys that only share the
    prefix ('train.lrr' -> 'train.loss'), so it is not done."""
    leaf = path.rsplit(".", 1)[-1]
    every = _all_paths(DEFAULTS)
    same_leaf = [p for p in every if p.rsplit(".", 1)[-1] == leaf]
    if same_leaf:
        return f" Did you mean {same_leaf[0]!r}?"
    parent = path.rsplit(".", 1)[0] + "." if "." in path else ""
    candidates = [parent + str(s) for s in siblings] + every
    scored = [(difflib.SequenceMatcher(None, leaf, c.rsplit(".", 1)[-1]).ratio(), -i, c) for i, c in enumerate(candidates)]
    best = max(scored, default=None)
    return f" Did you mean {best[2]!r}?" if best and best[0] >= 0.6 else ""


def deep_merge(base: dict, update: dict, source=None, prefix="", schema=None) -> dict:
    """Return ``base`` with ``update`` merged in; every key of ``update`` must exist in ``schema``."""
    schema = DEFAULTS if schema is None and prefix == "" else schema
    out = copy.deepcopy(base)
    if not isinstance(update, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'the recipe'}{_where(source)} must be a mapping of keys, got {update!r}")
    for key, value in update.items():
        path = f"{prefix}{key}"
        if schema is not None and key not in schema:
            raise ConfigError(f"unknown key {path!r}{_where(source)}.{_suggest(path, schema.keys())} "
                              f"Valid keys here: {', '.join(map(str, schema))}.")
        sub_schema = schema.get(key) if schema is not None else None
        if isinstance(sub_schema, dict) and path not in FREE_KEYS and isinstance(value, dict):
            out[key] = deep_merge(out.get(key) or {}, value, source, path + ".", sub_schema)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _set_path(cfg: dict, dotted: str, value, source: str) -> dict:
    """Merge a single ``a.b.c = value`` override (checked like a recipe key)."""
    keys = dotted.split(".")
    if not all(keys):
        raise ConfigError(f"bad key {dotted!r}{_where(source)}: expected dotted keys like train.optimizer.lr")
    # Inside a free dict (model.kwargs.foo) any key goes; build the nested update and merge it.
    update = value
    for k in reversed(keys):
        update = {k: update}
    return deep_merge(cfg, update, source)


# A recipe is a few KB. YAML aliases (*name) repeat a whole subtree, so a 1 KB file of nested aliases
# ("billion laughs") expands to more nodes than memory holds as soon as the tree is walked: the loader
# refuses files and trees past these bounds while it composes, before anything is built.
MAX_RECIPE_BYTES = 1024 ** 2
MAX_YAML_ALIASES = 100
MAX_YAML_DEPTH = 64
MAX_YAML_NODES = 100_000  # counting every alias's subtree again, as a walk of the tree sees it


class YamlTooLarge(yaml.YAMLError):
    """A YAML text past the loader's bounds (aliases, nesting depth, expanded size)."""


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that counts alias events, nesting depth and the expanded node count as it composes."""

    def __init__(self, stream):
        super().__init__(stream)
        self._aliases = self._depth = 0
        self._sizes: dict = {}

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_YAML_ALIASES:
                raise YamlTooLarge(f"more than {MAX_YAML_ALIASES} aliases (*name)")
        self._depth += 1
        if self._depth > MAX_YAML_DEPTH:
            raise YamlTooLarge(f"nested deeper than {MAX_YAML_DEPTH} levels")
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if id(node) not in self._sizes:
            if isinstance(node, yaml.SequenceNode):
                children = node.value
            elif isinstance(node, yaml.MappingNode):
                children = [n for pair in node.value for n in pair]
            else:
                children = ()
            size = 1 + sum(self._sizes.get(id(c), 1) for c in children)
            if size > MAX_YAML_NODES:
                raise YamlTooLarge(f"expands to more than {MAX_YAML_NODES} values (aliases repeat their subtree)")
            self._sizes[id(node)] = size
        return node


def safe_load_bounded(text: str):
    """``yaml.safe_load`` within the bounds above (:class:`YamlTooLarge` past them)."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def parse_override(text: str):
    """'a.b=c' -> ('a.b', parsed c). The value is YAML: 1e-3, [1, 2], null, true, 'text'."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set train.iters=1000")
    key, raw = text.split("=", 1)
    try:
        value = safe_load_bounded(raw) if raw.strip() else None
    except YamlTooLarge as e:
        raise ConfigError(f"--set {text!r}: the value is too large a YAML tree: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {text!r}: the value {raw!r} is not valid YAML ({e.__class__.__name__})") from e
    # YAML 1.1 reads "1e-3" as a string (it wants "1.0e-3"); a learning rate is a number.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value.lower() for c in ".e") and value.lower() not in ("nan", "inf") else value
        except ValueError:
            pass
    return key.strip(), value


def _fix_float_strings(tree):
    """YAML 1.1 reads '2e-3' (no dot) as a string; every numeric default is a number, so convert."""
    if isinstance(tree, dict):
        return {k: _fix_float_strings(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_fix_float_strings(v) for v in tree]
    if isinstance(tree, str):
        try:
            return float(tree) if ("e" in tree.lower() and tree[0] in "0123456789.-+") else tree
        except ValueError:
            return tree
    return tree


def _apply_iters_or_epochs(cfg: dict, layer: dict) -> None:
    """A layer that sets train.iters (epochs) without the other one switches the other one off."""
    train = layer.get("train") if isinstance(layer, dict) else None
    if not isinstance(train, dict):
        return
    if train.get("iters") is not None and "epochs" not in train:
        cfg["train"]["epochs"] = None
    if train.get("epochs") is not None and "iters" not in train:
        cfg["train"]["iters"] = None
    # Likewise the validation cadence: a layer that sets train.val_interval (0: no validation) wins over
    # an earlier layer's val_every_epochs.
    if "val_interval" in train and "val_every_epochs" not in train:
        cfg["train"]["val_every_epochs"] = None


def _type_name(v) -> str:
    return "null" if v is None else type(v).__name__


def validate(cfg: dict, source=None, origins=None) -> dict:
    """Type and value sanity; raises ConfigError naming the key, the value, where it was set
    (``origins``: dotted key -> '--set ...'; else ``source``) and what is expected."""

    def where(path):
        for key, origin in (origins or {}).items():
            if path == key or path.startswith(key + ".") or key.startswith(path + "."):
                return origin
        return source

    def fail(path, value, expected):
        raise ConfigError(f"{path}{_where(where(path))}: got {value!r} ({_type_name(value)}); expected {expected}")

    def walk(tree, schema, prefix):
        for key, default in schema.items():
            path = f"{prefix}{key}"
            value = tree.get(key)
            if isinstance(default, dict) and path not in FREE_KEYS:
                if not isinstance(value, dict):
                    fail(path, value, "a mapping")
                walk(value, default, path + ".")
                continue
            rule = SCHEMA[path]
            if not rule.ok(value):
                hint = ""
                if rule.choices:
                    close = difflib.get_close_matches(str(value), [str(c) for c in rule.choices if c is not None], n=1)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                fail(path, value, rule.expected + hint)

    walk(cfg, DEFAULTS, "")
    t = cfg["train"]
    if (t["iters"] is None) == (t["epochs"] is None):
        # blame the --set that made them clash, if one did, not the recipe file
        origin = next((where(k) for k in ("train.iters", "train.epochs") if where(k) != source), source)
        raise ConfigError(f"train.iters / train.epochs{_where(origin)}: set exactly one of them "
                          f"(got iters={t['iters']!r}, epochs={t['epochs']!r}); the other must be null")
    return cfg


def recipe_dirs() -> list[Path]:
    """Where recipes are found by name: the package's ``recipes`` folder (an installed wheel carries
    the checkout's ``configs/`` there) and, in a checkout, ``configs/`` itself."""
    here = Path(__file__).resolve().parent
    return [d for d in (here / "recipes", here.parent / "configs") if d.is_dir()]


def list_recipes() -> list[str]:
    return sorted({p.stem for d in recipe_dirs() for p in d.glob("*.yaml")})


def resolve_recipe(name_or_path) -> Path:
    """A recipe file: ``name_or_path`` itself when it is a file, else the shipped recipe of that name
    (``mininet_211k_camvid``, ``mininet_211k_camvid.yaml`` or ``configs/mininet_211k_camvid.yaml``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.parent.name in ("", "configs") and path.suffix in ("", ".yaml", ".yml"):
        for d in recipe_dirs():
            candidate = d / f"{path.stem}.yaml"
            if candidate.is_file():
                return candidate
    names = list_recipes()
    close = difflib.get_close_matches(path.stem, names, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(f"recipe {str(name_or_path)!r} not found: no such YAML file and no shipped recipe of that name.{hint} "
                      f"Shipped recipes: {', '.join(names) or 'none'}")


def _read_recipe(path: Path) -> dict:
    size = path.stat().st_size
    if size > MAX_RECIPE_BYTES:
        raise ConfigError(f"{path}: {size / 1024 ** 2:.1f} MiB, over the {MAX_RECIPE_BYTES // 1024 ** 2} MiB a recipe "
                          "can be; is it the right file?")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
                          "save the recipe as UTF-8") from None
    try:
        return safe_load_bounded(text) or {}
    except YamlTooLarge as e:
        raise ConfigError(f"{path}: refused: the YAML {e}; a recipe needs none of that, write the values out") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e


def _base_of(recipe: dict, path: Path) -> list[Path]:
    """The files named by ``recipe``'s ``base:`` / ``_base_:`` (popped from it), resolved: a path relative
    to the recipe's folder, else a shipped recipe's name."""
    given = [k for k in BASE_KEYS if k in recipe]
    if len(given) > 1:
        raise ConfigError(f"{path}: both 'base' and '_base_' are set; keep one of them")
    if not given:
        return []
    names = recipe.pop(given[0])
    names = names if isinstance(names, list) else [names]
    out = []
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{path}: {given[0]}: got {name!r}; expected a recipe file (relative to {path.parent}) "
                              f"or a shipped recipe's name")
        local = path.parent / name
        if local.is_file():
            out.append(local)
            continue
        try:
            out.append(resolve_recipe(name))
        except ConfigError as e:
            raise ConfigError(f"{path}: {given[0]}: {name!r} not found: no file {local} and no shipped recipe of that "
                              f"name; fix the {given[0]} line of {path}") from e
    return out


def recipe_layers(path) -> list[tuple[Path, dict]]:
    """``[(file, its own keys), ...]`` of the recipe at ``path`` and of the bases it inherits from, the
    farthest base first: the order in which they are merged over ``DEFAULTS``."""
    layers: list[tuple[Path, dict]] = []

    def visit(file: Path, chain: list[Path]):
        real = file.resolve()
        if real in chain:
            cycle = " -> ".join(str(p) for p in [*chain[chain.index(real):], real])
            raise ConfigError(f"recipe inheritance loops: {cycle}; remove the base line that closes the loop")
        if len(chain) >= MAX_BASE_DEPTH:
            raise ConfigError(f"{file}: more than {MAX_BASE_DEPTH} recipes chained through base: "
                              f"({' -> '.join(str(p) for p in chain)} -> ...); shorten the chain")
        recipe = _fix_float_strings(_read_recipe(file))
        if not isinstance(recipe, dict):
            raise ConfigError(f"{file}: the recipe must be a mapping of keys, got {recipe!r}")
        bases = _base_of(recipe, file)
        for base in bases:
            visit(base, [*chain, real])
            if layers and "output_dir" in layers[-1][1]:  # a base's run folder is its own (module docstring)
                layers[-1] = (layers[-1][0], {k: v for k, v in layers[-1][1].items() if k != "output_dir"})
        layers.append((file, recipe))

    visit(Path(path), [])
    return layers


def load_config(path, overrides=(), recipe=None) -> dict:
    """Read the recipe at ``path`` (a YAML file or a shipped recipe's name) and the recipes it inherits
    from (``base:``), merge them over DEFAULTS, apply ``overrides`` ('a.b=c'), validate.

    ``recipe``: the recipe as a dict already read (e.g. the config saved in a checkpoint); ``path``
    then only names it in messages.
    """
    if recipe is None:
        path = resolve_recipe(path)
        layers = recipe_layers(path)
    else:
        layers = [(Path(path), _fix_float_strings(recipe))]
    path = Path(path)
    cfg = DEFAULTS
    for source, layer in layers:
        cfg = deep_merge(cfg, layer, source=str(source))
        _apply_iters_or_epochs(cfg, layer)
    origins = {}  # dotted key -> the --set that gave it, so that a bad value blames the --set, not the file
    for text in overrides or ():
        key, value = parse_override(text)
        cfg = _set_path(cfg, key, value, source=f"--set {text}")
        origins[key] = f"--set {text}"
        layer: dict = value
        for k in reversed(key.split(".")):
            layer = {k: layer}
        _apply_iters_or_epochs(cfg, layer)
    if cfg.get("output_dir") is None:
        cfg["output_dir"] = str(Path("runs") / path.stem)
    return validate(cfg, source=str(path), origins=origins)


def dump_config(cfg: dict) -> str:
    buf = io.StringIO()
    yaml.safe_dump(cfg, buf, sort_keys=False, default_flow_style=None)
    return buf.getvalue()


def save_config(cfg: dict, path) -> Path:
    """Write the resolved config as YAML, atomically (temp file in the same folder, fsync, rename)."""
    text = dump_config(cfg).encode()
    return atomic_write_bytes(path, lambda f: f.write(text))

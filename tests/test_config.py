from pathlib import Path

import pytest
import yaml

import lightseg
from lightseg.config import DEFAULTS, load_config, parse_override, save_config
from lightseg.errors import ConfigError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
DATASET_CLASSES = {"camvid": 11, "cityscapes": 19}


def _recipe(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_defaults_merge_and_overrides(tmp_path):
    p = _recipe(tmp_path, "model: {name: mininet_95k}\ntrain: {optimizer: {lr: 1e-3}}\n")
    cfg = load_config(p, ["train.batch_size=4", "data.train_transforms.crop=[32, 48]", "train.iters=12",
                          "model.kwargs.width=2", "train.loss.aux_weights=null"])
    assert cfg["model"]["name"] == "mininet_95k"
    assert cfg["train"]["optimizer"]["lr"] == 1e-3 and isinstance(cfg["train"]["optimizer"]["lr"], float)
    # untouched siblings keep their defaults (deep merge, not replace)
    assert cfg["train"]["optimizer"]["weight_decay"] == DEFAULTS["train"]["optimizer"]["weight_decay"]
    assert cfg["train"]["batch_size"] == 4
    assert cfg["data"]["train_transforms"]["crop"] == [32, 48]
    # setting iters switches the default epochs off (exactly one of them)
    assert cfg["train"]["iters"] == 12 and cfg["train"]["epochs"] is None
    assert cfg["model"]["kwargs"] == {"width": 2}
    assert cfg["output_dir"] == str(Path("runs") / "r")
    assert parse_override("train.optimizer.lr=1e30") == ("train.optimizer.lr", 1e30)
    assert parse_override("data.root=data/cityscapes") == ("data.root", "data/cityscapes")


@pytest.mark.parametrize("text,override,words", [
    ("train: {optimiser: {lr: 0.1}}\n", [], ["train.optimiser", "train.optimizer", "r.yaml"]),
    ("model: {name: mininet_95k}\n", ["train.batchsize=4"], ["train.batchsize", "train.batch_size"]),
    ("model: {name: mininet_95k}\n", ["train.lr=0.1"], ["train.lr", "train.optimizer.lr"]),
])
def test_unknown_key_names_key_and_nearest(tmp_path, text, override, words):
    with pytest.raises(ConfigError) as e:
        load_config(_recipe(tmp_path, text), override)
    for w in words:
        assert w in str(e.value)


@pytest.mark.parametrize("override,words", [
    ("train.batch_size=0", ["train.batch_size", "positive"]),
    ("train.batch_size=2.5", ["train.batch_size", "integer"]),
    ("train.optimizer.name=adamm", ["train.optimizer.name", "adam"]),
    ("data.train_transforms.crop=[512]", ["data.train_transforms.crop", "[H, W]"]),
    ("train.deterministic=3", ["train.deterministic", "true or false"]),
    ("train={iters: 10, epochs: 5}", ["train.iters / train.epochs", "exactly one"]),
    ("train.optimizer.lr=-1", ["train.optimizer.lr", "> 0"]),
    ("train.batch_size", ["KEY=VALUE"]),
])
def test_bad_values(tmp_path, override, words):
    p = _recipe(tmp_path, "train: {iters: 10}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p, [override])
    for w in words:
        assert w in str(e.value)


def test_missing_file_names_path(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_save_config_round_trip(tmp_path):
    cfg = load_config(_recipe(tmp_path, "train: {iters: 7, optimizer: {lr: 3.0e-4}}\n"))
    out = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert yaml.safe_load(out.read_text()) == cfg
    assert load_config(out) == cfg  # a resolved config is itself a valid recipe
    assert [p.name for p in out.parent.iterdir()] == ["config.yaml"]  # no temp file left


def test_configs_exist_for_every_paper():
    names = {p.stem for p in CONFIGS}
    for model in ("mininet_95k", "mininet_211k", "rdsnet", "atonet_r18", "dualaspp_mobilenetv2",
                  "deeplabv3plus_mobilenetv2", "shufflenetv2_dpc", "shufflenetv2_basic"):
        assert {f"{model}_camvid", f"{model}_cityscapes"} <= names
    assert "mininet_95k_synthetic" in names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_recipe_resolves(path):
    cfg = load_config(path)
    assert cfg["model"]["name"] in lightseg.list_models()
    assert cfg["data"]["name"] in DATASET_CLASSES
    assert cfg["model"]["num_classes"] == DATASET_CLASSES[cfg["data"]["name"]]
    stem = path.stem
    assert stem.startswith(cfg["model"]["name"] + "_")
    dataset = stem[len(cfg["model"]["name"]) + 1:]
    dataset, _, variant = dataset.partition("_")  # mininet_211k_camvid_trainval: a variant of the camvid recipe
    assert variant in ("", "trainval")
    if dataset != "synthetic":
        assert dataset == cfg["data"]["name"]
        assert cfg["output_dir"] == f"runs/{stem}"
    # the model switches must be accepted by the builder (cheap: 11/19 classes, no forward pass)
    lightseg.create_model(cfg["model"]["name"], num_classes=cfg["model"]["num_classes"], **cfg["model"]["kwargs"])
    aux = cfg["train"]["loss"]["aux_weights"]
    if aux is not None:
        m = lightseg.create_model(cfg["model"]["name"], num_classes=cfg["model"]["num_classes"])
        assert len(aux) == len(m.aux_names)

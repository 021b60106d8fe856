"""`pretrained_backbone: imagenet`: torchvision's published ImageNet checkpoints through torch's own hub cache
($TORCH_HOME/hub/checkpoints), without network: every file here is written into a temporary $TORCH_HOME."""
import hashlib
import urllib.error
from pathlib import Path

import pytest
import torch

import lightseg
from lightseg.config import load_config
from lightseg.errors import CheckpointError
from lightseg.models import backbones
from lightseg.models.backbones import IMAGENET_CHECKPOINTS, imagenet_cache_path
from lightseg.models.backbones.resnet import ResNet18

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty torch home, and no network: a download attempt fails the way an offline machine's does."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    calls = []

    def offline(url, dst, hash_prefix=None, progress=True):
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return tmp_path / "torch", calls


def _resnet18_file(folder: Path, seed=0) -> tuple[Path, dict]:
    """A resnet18-shaped checkpoint (with torchvision's fc keys) named like torchvision's files: the hex part
    of the name is the start of the file's own sha256, the convention torch hub checks."""
    torch.manual_seed(seed)
    state = {k: torch.randn_like(v.float()).to(v.dtype) if v.is_floating_point() else v.clone()
             for k, v in ResNet18().state_dict().items()}
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, 512), torch.randn(1000)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "tmp.pth"
    torch.save(state, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    path = folder / f"resnet18-{digest[:8]}.pth"
    tmp.rename(path)
    return path, state


def test_cached_file_is_used_without_download(torch_home, monkeypatch):
    home, calls = torch_home
    path, state = _resnet18_file(home / "hub" / "checkpoints")
    monkeypatch.setitem(IMAGENET_CHECKPOINTS, "resnet18", f"https://download.pytorch.org/models/{path.name}")
    assert imagenet_cache_path(IMAGENET_CHECKPOINTS["resnet18"]) == path  # $TORCH_HOME/hub/checkpoints/<name>
    model = lightseg.create_model("atonet_r18", pretrained_backbone="imagenet")
    loaded = model.backbone.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in loaded)
    assert calls == []


def test_published_name_with_other_content_is_refused(torch_home):
    home, calls = torch_home
    # The file a user might have dropped in by hand: torchvision's name, but not torchvision's bytes.
    cached = home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    path, _ = _resnet18_file(cached.parent)
    path.rename(cached)
    with pytest.raises(CheckpointError, match=r"resnet18-f37072fd\.pth: its sha256 [0-9a-f]+\.\.\. does not start with f37072fd"):
        lightseg.create_model("atonet_r18", pretrained_backbone="imagenet")
    assert calls == []


def test_offline_and_not_cached_names_file_url_and_path(torch_home):
    home, calls = torch_home
    with pytest.raises(CheckpointError) as e:
        lightseg.create_model("shufflenetv2_dpc", pretrained_backbone="imagenet")
    msg = str(e.value)
    url = "https://download.pytorch.org/models/shufflenetv2_x1-5666bf0f80.pth"
    assert calls == [url]
    assert url in msg and "shufflenetv2_x1-5666bf0f80.pth is not in torch's hub cache" in msg
    assert f"put it at {home / 'hub' / 'checkpoints' / 'shufflenetv2_x1-5666bf0f80.pth'}" in msg


def test_cli_offline_is_a_user_error(torch_home, tmp_path, capsys):
    # The recipe's default `imagenet` on a machine without the file: one line, exit 2, no traceback.
    from lightseg.cli import main
    from test_train import make_camvid_like

    data = make_camvid_like(tmp_path / "data", n_train=2, n_val=1)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {name: dualaspp_mobilenetv3_small, num_classes: 11, pretrained_backbone: imagenet}\n"
                      f"data: {{name: camvid, root: {data}, num_workers: 0}}\ntrain: {{iters: 1}}\n"
                      f"output_dir: {tmp_path / 'run'}\n")
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "mobilenet_v3_small-047dcff4.pth" in err and "Traceback" not in err


def test_reduced_tail_has_no_imagenet_file(torch_home):
    with pytest.raises(CheckpointError, match="reduced_tail=False"):
        lightseg.create_model("dualaspp_mobilenetv3_large", reduced_tail=True, pretrained_backbone="imagenet")


def test_every_torchvision_name_has_a_hashed_published_file():
    import re

    for name, url in IMAGENET_CHECKPOINTS.items():
        assert url.startswith("https://download.pytorch.org/models/"), name
        assert re.search(r"-[0-9a-f]{8,}\.pth$", url), url  # torch hub's check_hash needs the prefix


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_imagenet_recipes_default_to_imagenet(path):
    """A recipe whose paper starts from ImageNet defaults to `imagenet`, and its backbone (as the recipe
    builds it) is one torchvision publishes weights for; the others train from scratch."""
    cfg = load_config(path)
    info = lightseg.model_info(cfg["model"]["name"])
    if info.paper_pretrained is None:
        assert cfg["model"]["pretrained_backbone"] is None
        return
    assert cfg["model"]["pretrained_backbone"] == "imagenet"
    with torch.device("meta"):
        model = lightseg.create_model(cfg["model"]["name"], num_classes=cfg["model"]["num_classes"], **cfg["model"]["kwargs"])
    assert model.backbone.torchvision_name in IMAGENET_CHECKPOINTS


def test_training_without_the_papers_init_warns_once(tmp_path, capsys):
    from lightseg.engine.train import Trainer
    from test_train import make_camvid_like

    data = make_camvid_like(tmp_path / "data", n_train=2, n_val=1)

    def start(model):
        recipe = tmp_path / f"{model}.yaml"
        recipe.write_text(f"model: {{name: {model}, num_classes: 11}}\ndata: {{name: camvid, root: {data}, num_workers: 0}}\n"
                          f"train: {{iters: 1, batch_size: 2}}\noutput_dir: {tmp_path / model}\n")
        Trainer(load_config(recipe)).fit()
        return [line for line in capsys.readouterr().err.splitlines() if "warning" in line]

    lines = start("shufflenetv2_basic")
    assert len(lines) == 1 and "ImageNet" in lines[0] and "pretrained_backbone" in lines[0]
    assert start("mininet_95k") == []  # trained from scratch by its paper


def test_hub_dir_follows_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    assert backbones.imagenet_cache_path("https://x/y/resnet18-f37072fd.pth") == tmp_path / "th" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"

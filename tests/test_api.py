"""The Python package as tools see it: dir() and __all__, the PEP 561 marker, torch.hub entry points."""
import fnmatch
import subprocess
import sys
from pathlib import Path

import pytest

import lightseg

from test_predict import trained  # noqa: F401 - fixture: a checkpoint as `lightseg train` writes it

ROOT = Path(__file__).resolve().parents[1]


def test_dir_lists_the_lazily_imported_names_without_importing_them():
    code = ("import sys, lightseg; names = dir(lightseg); print(' '.join(names)); print(sorted(lightseg.__all__)); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    names, public, torch_loaded = out.stdout.splitlines()[-3:]
    names = names.split()
    for name in ("create_model", "list_models", "model_info", "register_model", "Segmenter", "export_onnx",
                 "load_checkpoint", "LightsegError", "__version__"):
        assert name in names, name
        assert name in public, name
    assert names == sorted(names) and torch_loaded == "False"  # listing them imports nothing
    assert set(lightseg.__all__) <= set(dir(lightseg))
    for name in lightseg.__all__:  # every public name resolves: `from lightseg import *` works
        assert getattr(lightseg, name) is not None
    namespace = {}
    exec("from lightseg import *", namespace)
    assert {"Segmenter", "create_model", "list_models"} <= set(namespace)


def test_py_typed_marker_is_package_data():
    """PEP 561: the empty marker in the package, and a package-data pattern that puts it in the wheel
    (tests/test_weights.py's wheel test finds it there)."""
    tomllib = pytest.importorskip("tomllib")
    assert (Path(lightseg.__file__).parent / "py.typed").is_file()
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert any(fnmatch.fnmatch("py.typed", pattern) for pattern in package_data.get("lightseg", []))


def _hub_entry_points():
    """What ``torch.hub.list`` returns for a GitHub repository (its callables not starting with "_"),
    read from the checkout's hubconf.py: torch.hub.list itself takes no ``source="local"``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("hubconf", ROOT / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, sorted(f for f in dir(module) if callable(getattr(module, f)) and not f.startswith("_"))


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """Any download fails the test, and torch's hub folder is an empty one that must stay empty."""
    import urllib.request

    import torch

    def refuse(*args, **kwargs):
        raise AssertionError(f"hubconf tried to download: {args[:1]}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    yield
    assert not (tmp_path / "torch_home").exists()


def test_torch_hub_loads_the_shipped_weights_from_a_checkout(offline):
    import torch

    model = torch.hub.load(str(ROOT), "rdsnet", weights="camvid", source="local")
    ref = lightseg.create_model("rdsnet", weights="camvid")
    assert not model.training and model.classes == ref.classes and model.palette == ref.palette
    assert model.normalize == ref.normalize
    got, want = model.state_dict(), ref.state_dict()
    assert list(got) == list(want)
    for key in want:
        assert torch.equal(got[key], want[key]), key
    untrained = torch.hub.load(str(ROOT), "mininet_95k", num_classes=5, source="local")
    assert untrained.num_classes == 5 and not hasattr(untrained, "classes")


def test_every_registered_model_is_a_hub_entry_point(offline):
    module, entries = _hub_entry_points()
    assert entries == lightseg.list_models()
    assert module.dependencies == ["torch", "numpy", "yaml", "cv2"]
    assert "rdsnet" in module.rdsnet.__name__ and "weights" in module.rdsnet.__doc__


def test_torch_hub_loads_a_checkpoint_path(offline, trained):  # noqa: F811
    import torch

    from lightseg.data.classes import CAMVID_CLASSES

    path, ref = trained
    model = torch.hub.load(str(ROOT), ref.lightseg_name, weights=str(path), source="local")
    assert model.classes == list(CAMVID_CLASSES) and model.normalize == "minus_one_one"
    for key, value in ref.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    with pytest.raises(lightseg.LightsegError, match="reduced_tail.*recipe"):
        torch.hub.load(str(ROOT), ref.lightseg_name, weights=str(path), source="local", reduced_tail=True)
    with pytest.raises(lightseg.LightsegError, match="missing.pt"):
        torch.hub.load(str(ROOT), ref.lightseg_name, weights=str(path.parent / "missing.pt"), source="local")

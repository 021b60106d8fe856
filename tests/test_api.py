"""The Python package as tools see it: dir() and __all__, the PEP 561 marker, torch.hub entry points."""
import fnmatch
import subprocess
import sys
from pathlib import Path

import pytest

import lightseg

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

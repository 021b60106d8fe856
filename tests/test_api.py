"""The Python package as tools see it: dir() and __all__, the PEP 561 marker, torch.hub entry points."""
import subprocess
import sys
from pathlib import Path

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

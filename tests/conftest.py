import os
from pathlib import Path

import pytest
import torch

# make test runs two pytest-xdist workers on the 2-core CI machine: one thread each keeps the cores at one
# thread apiece (two 2-thread workers would make libgomp's and ONNX Runtime's pools fight over them).
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, os.cpu_count() or 1))

ROOT = Path(__file__).resolve().parents[1]


def camvid_root() -> Path | None:
    """The real CamVid (SegNet layout): $LIGHTSEG_CAMVID or ../shared/data/camvid beside the checkout."""
    p = Path(os.environ.get("LIGHTSEG_CAMVID", ROOT.parent / "shared" / "data" / "camvid"))
    return p if (p / "train.txt").is_file() else None


@pytest.fixture
def camvid():
    p = camvid_root()
    if p is None:
        pytest.skip("real CamVid not found: set LIGHTSEG_CAMVID or place it at ../shared/data/camvid")
    return p

"""--backend auto: the fastest path that agrees with PyTorch, measured once per model, input size and CPU and
cached in the user cache folder; a path that disagrees (or fails) is never chosen."""
import json
import os

import numpy as np
import pytest
import torch

import lightseg
from lightseg.deploy import auto

from test_export import randomize

FAST = ("eager", "onnxruntime")  # two quick candidates: what is tested is the choice and its cache, not each runtime


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("LIGHTSEG_CACHE", raising=False)
    monkeypatch.setattr(auto, "AUTO_CANDIDATES", FAST)
    calls = []
    measure = auto.measure_backends
    monkeypatch.setattr(auto, "measure_backends", lambda *a, **k: calls.append(a[1]) or measure(*a, **k))
    return tmp_path / "cache" / "lightseg" / "backend-auto.json", calls


@pytest.fixture(scope="module")
def model():
    return randomize(lightseg.create_model("mininet_95k", num_classes=2))


def test_auto_measures_once_per_model_and_size_then_reads_the_cache(cache, model):
    path, calls = cache
    rgb = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    first = lightseg.Segmenter(model, backend="auto", size=(64, 64))
    assert first.auto["cached"] is False and first.backend in FAST and len(calls) == 1
    assert set(first.auto["agreement"]) == set(FAST) and all(a >= 99.0 for a in first.auto["agreement"].values())
    assert first.backend == min(first.auto["latency_ms"], key=first.auto["latency_ms"].get)
    stored = json.loads(path.read_text())
    assert len(stored) == 1 and next(iter(stored.values()))["backend"] == first.backend
    again = lightseg.Segmenter(model, backend="auto", size=(64, 64))
    assert again.auto["cached"] is True and again.backend == first.backend and len(calls) == 1  # not measured again
    eager = lightseg.Segmenter(model, size=(64, 64))
    assert (again(rgb) == eager(rgb)).mean() >= 0.99
    lightseg.Segmenter(model, backend="auto", size=(64, 96))  # another input size is another measurement
    assert calls == [(1, 3, 64, 64), (1, 3, 64, 96)] and len(json.loads(path.read_text())) == 2


def test_a_path_that_disagrees_or_fails_is_never_chosen(cache, model, monkeypatch):
    runtime = auto.Runtime

    class Broken(runtime):
        def __call__(self, images):
            return -super().__call__(images)  # every argmax moves: 0% agreement with PyTorch

    def fake_runtime(net, backend, **kw):
        if backend == "ncnn":
            raise RuntimeError("cannot convert this model")
        return (Broken if backend == "onnxruntime" else runtime)(net, backend=backend, **kw)

    monkeypatch.setattr(auto, "Runtime", fake_runtime)
    # the broken path would be the fastest: the clock is not what keeps it out
    monkeypatch.setattr(auto, "time_interleaved", lambda fns, est, **kw: {b: [1.0 if b == "onnxruntime" else 9.0] * 3 for b in fns})
    choice = auto.choose_backend(model, (64, 64), device="cpu", candidates=("onnxruntime", "ncnn", "eager"))
    assert choice["backend"] == "eager" and choice["latency_ms"] == {"eager": 9.0}
    assert choice["agreement"]["onnxruntime"] < 99.0 and "agreement" in choice["skipped"]["onnxruntime"]
    assert "cannot convert" in choice["skipped"]["ncnn"]


def test_the_cache_is_never_written_through_a_link(cache, model, tmp_path):
    path, calls = cache
    target = tmp_path / "elsewhere.json"
    target.write_text("{}")
    path.parent.mkdir(parents=True)
    os.symlink(target, path)
    assert auto.choose_backend(model, (64, 64), device="cpu", candidates=("eager",))["cached"] is False
    assert path.is_symlink() and target.read_text() == "{}"  # the link and its target left alone
    assert auto.choose_backend(model, (64, 64), device="cpu", candidates=("eager",))["cached"] is False
    assert len(calls) == 2  # nothing was cached: measured again


def test_auto_on_an_exported_file_is_its_own_backend(tmp_path):
    from lightseg.deploy.runtime import file_backend

    assert file_backend(tmp_path / "m.xml", "auto") == "openvino" and file_backend(tmp_path / "m.onnx", "auto") == "onnxruntime"
    with pytest.raises(lightseg.LightsegError, match="--backend openvino"):
        file_backend(tmp_path / "m.xml", "ncnn")


def test_precision_goes_only_where_it_applies(model):
    with pytest.raises(lightseg.LightsegError, match="does not go with --backend auto"):
        lightseg.Segmenter(model, backend="auto", size=(64, 64), precision="bf16")
    with pytest.raises(lightseg.LightsegError, match="drop --precision fp16"):
        lightseg.Segmenter(model, backend="executorch", size=(64, 64), precision="fp16")

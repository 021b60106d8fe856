"""Benchmark timing, MAC/FLOP labelling, memory and the `lightseg bench` command."""
import json
import sys

import pytest
import torch
import torch.nn as nn

import lightseg
from lightseg.cli import main
from lightseg.deploy import bench
from lightseg.deploy.bench import benchmark, format_table, time_callable
from lightseg.deploy.quantize import choose_int8_mode

SLEEP_S = 0.020


class FakeClock:
    """``time.perf_counter`` that only moves when a timed call says so: timing logic tested without real time
    (which a shared CPU stretches unpredictably)."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(bench.time, "perf_counter", fake)
    return fake


class Sleeper(nn.Module):
    """A known latency (20 ms on the fake clock) and a known MAC count (one 1x1 conv 3->4: H*W*4*3)."""

    def __init__(self, clock):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1, bias=False)
        self.tick = lambda: clock.advance(SLEEP_S)  # a function: the runtime's deepcopy keeps the one clock

    def forward(self, x):
        self.tick()
        return self.conv(x)


def test_time_callable_fixed_counts(clock):
    calls = []
    lat, warm = time_callable(lambda: (calls.append(1), clock.advance(SLEEP_S)), warmup=2, runs=5)
    assert len(lat) == 5 and warm == 2 and len(calls) == 7
    assert lat == pytest.approx([SLEEP_S * 1000] * 5)


def test_time_callable_adaptive_counts_follow_budget(clock):
    script = iter([0.030, 0.020, 0.0205] + [SLEEP_S] * 100)  # a slow first call, then steady
    lat, warm = time_callable(lambda: clock.advance(next(script)), budget_s=0.2)
    # warm-up until two consecutive calls agree within 10% (30 vs 20 ms do not, 20 vs 20.5 do),
    # then 0.2 s / 20 ms = 10 timed runs
    assert warm == 3 and len(lat) == 10
    lat, _ = time_callable(lambda: clock.advance(SLEEP_S), budget_s=0.001)
    assert len(lat) == 3  # never fewer than 3 timed runs


def test_benchmark_record_latency_and_mac_labels(clock):
    r = benchmark(Sleeper(clock), size=(64, 96), batch=2, backend="eager_nchw", warmup=1, runs=5)
    macs = 2 * 64 * 96 * 4 * 3
    assert r["macs"] == macs and r["flops"] == 2 * macs and r["params"] == 12
    assert r["latency_ms_median"] == pytest.approx(SLEEP_S * 1000)
    assert r["latency_ms_p90"] >= r["latency_ms_median"] >= r["latency_ms_min"]
    assert r["fps"] == pytest.approx(2 * 1000 / r["latency_ms_median"], rel=1e-3)  # batch * 1000 / median
    assert r["achieved_gflops"] == pytest.approx(2 * macs / (r["latency_ms_median"] / 1000) / 1e9, rel=1e-2)
    assert (r["model"], r["backend"], r["size"], r["batch"], r["runs"]) == ("Sleeper", "eager_nchw", [64, 96], 2, 5)


def test_peak_memory_sees_an_allocation():
    # In a fresh process: in this long-lived one, memory freed by earlier tests stays resident and is
    # reused, so a new 64 MiB array need not raise RSS at all (PeakMemory counts growth only, by design).
    import subprocess
    import sys

    code = ("import numpy as np\nfrom lightseg.deploy.bench import PeakMemory\n"
            "with PeakMemory('cpu') as mem:\n    a = np.ones(64 * 2**20 // 8)\n    del a\nprint(mem.mb)")
    mb = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert 56 <= mb <= 200  # 64 MiB, touched


CEILING = {"fp32_gflops": 200.0, "copy_gb_s": 10.0, "best_kernel": "a conv", "threads": 2}


ALL_ROWS = ["eager_nchw", "eager", "compile", "onnxruntime", "onnxruntime_int8", "openvino", "executorch", "ncnn",
            "peer_ort", "peer_openvino"]


@pytest.mark.slow  # builds ten paths, among them the ExecuTorch and ncnn exports
def test_backends_timed_together_with_plain_baseline_and_roofline(monkeypatch, capsys):
    for package in ("openvino", "executorch", "ncnn", "pnnx"):
        pytest.importorskip(package)
    monkeypatch.setattr(bench, "measure_peak", lambda device="cpu": dict(CEILING))
    assert main(["bench", "--model", "rdsnet", "--size", "64", "64", "--backend", "all", "--warmup", "0", "--runs", "3",
                 "--roofline", "--json"]) == 0
    out = capsys.readouterr().out
    records = [json.loads(line) for line in out.splitlines()]  # nothing but JSON Lines on stdout
    assert [r["backend"] for r in records] == ALL_ROWS  # every row, lightseg's paths and the peers
    plain = records[ALL_ROWS.index("peer_ort")]
    # one row marked: the fastest of those whose argmax agrees with fp32 PyTorch on >= 99% of the random input
    marked = [r for r in records if r["fastest"]]
    agreeing = [r for r in records if r["argmax_agreement"] >= 99.0]
    assert len(marked) == 1 and marked[0] is min(agreeing, key=lambda r: r["latency_ms_median"])
    assert records[0]["argmax_agreement"] == 100.0 and all(r["agreement_min"] == 99.0 for r in records)
    from lightseg.deploy.format_openvino import default_precision

    assert records[ALL_ROWS.index("openvino")]["precision"] == default_precision()
    # the peer's precision is OpenVINO's own choice on this CPU, named as lightseg names precisions
    assert records[ALL_ROWS.index("peer_openvino")]["precision"] in ("f32", "bf16", "f16")
    for r in records:
        for key in ["model", "backend", "size", "params", "macs", "latency_ms_median", "latency_ms_p90", "fps"]:
            assert key in r
        assert r["runs"] == 3  # one call of each backend per round
        assert r["share_of_peak"] == pytest.approx(r["achieved_gflops"] / 200.0, rel=1e-3)  # both rounded to 4 digits
        assert r["speedup_vs_eager_nchw"] == pytest.approx(records[0]["latency_ms_median"] / r["latency_ms_median"], rel=0.01)
        assert r["macs"] == records[0]["macs"] and r["paper_hardware"] == lightseg.model_info("rdsnet").paper_hardware
        # the machine travels with every figure
        assert r["machine"]["cpu"] and isinstance(r["machine"]["isa"], list) and r["machine"]["onnxruntime"]
        # roofline: compute bound = FLOPs / ceiling, memory bound = bytes / bandwidth, efficiency = bound / latency
        assert r["bound_compute_ms"] == pytest.approx(r["flops"] / 200e9 * 1000, rel=1e-3)
        assert r["bound_memory_ms"] == pytest.approx(r["min_bytes"] / 10e9 * 1000, rel=1e-3)
        assert r["bound_ms"] == max(r["bound_compute_ms"], r["bound_memory_ms"])
        assert r["roofline_efficiency"] == pytest.approx(r["bound_ms"] / r["latency_ms_median"], rel=0.01)
        assert r["min_bytes"] > r["weight_bytes"] > 4 * r["params"] * 0.9  # fp32 weights, plus activations
        assert r["vs_plain"] > 0 and r["model_summary"] == records[0]["model_summary"]
    assert plain["vs_plain"] == 1.0
    # the faster peer is the one every row is compared with, and it is 1.00x itself
    peers = [r for r in records if r["backend"] in ("peer_ort", "peer_openvino")]
    best_peer = min(peers, key=lambda r: r["latency_ms_median"])
    assert all(r["best_peer"] == best_peer["backend"] for r in records) and best_peer["vs_best_peer"] == 1.0
    # end to end: an HD JPEG frame to its label map, for every path
    assert all(r["e2e_source"] == [720, 1280] and r["e2e_ms_median"] > 0 for r in records)
    int8 = records[4]
    assert int8["int8_mode"] == choose_int8_mode()[0] and 0 <= int8["int8_argmax_agreement"] <= 100 and int8["int8_rel_error"] >= 0
    summary = records[0]["model_summary"]
    fp32 = [r for r in records if r["backend"] not in ("onnxruntime_int8", "peer_ort", "peer_openvino")]
    assert summary["best_fp32"]["backend"] == min(fp32, key=lambda r: r["latency_ms_median"])["backend"]
    table = format_table(records, zoo=True)
    assert "x peer" in table and "e2e ms" in table and "720x1280 JPEG frame" in table
    assert "FLOPs = 2 x MACs" in table and "not comparable" in table and "1.00x" in table and "x plain" in table
    assert f"{marked[0]['backend']} *" in table and ">= 99% of the pixels" in table
    assert "onnxruntime_int8: int8 static quantisation, mode " + int8["int8_mode"] in table  # a different model, labelled
    roof = bench.format_roofline(records, CEILING)
    assert "200.0 GFLOP/s" in roof and "rdsnet" in roof and summary["best_fp32"]["backend"] in roof


def test_end_to_end_call_gives_the_segmenters_labels_at_the_frames_size():
    import cv2
    import numpy as np

    from lightseg.data.synthetic import render_scene

    seg = lightseg.Segmenter(lightseg.create_model("mininet_95k", num_classes=11), size=(64, 96), device="cpu")
    labels = bench.end_to_end_call(seg.runtime, (64, 96), "cpu", source=(72, 128))()
    # by hand: the same frame through JPEG at quality 90, decoded to RGB, then the Segmenter
    rgb, _ = render_scene(np.random.default_rng(0), (72, 128))
    _, jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    frame = cv2.cvtColor(cv2.imdecode(jpeg, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert tuple(labels.shape) == (1, 72, 128)
    assert np.array_equal(labels[0].numpy(), seg(frame))


def _record(backend, ms, agree):
    return {"model": "m", "backend": backend, "size": [64, 64], "params": 1, "macs": 1, "flops": 2, "latency_ms_median": ms,
            "latency_ms_p90": ms, "fps": 1000 / ms, "achieved_gflops": 0.0, "argmax_agreement": agree}


def test_fastest_mark_skips_paths_that_disagree_with_pytorch():
    records = [_record("eager", 10.0, 100.0), _record("onnxruntime_int8", 2.0, 98.9), _record("openvino", 4.0, 99.5),
               _record("ncnn", 3.0, 97.0)]
    assert bench.mark_fastest(records)["backend"] == "openvino"  # int8 and ncnn are faster but below 99%
    assert [r["fastest"] for r in records] == [False, False, True, False]
    lines = format_table(records).splitlines()
    assert [line.split()[1:3] for line in lines[2:6]] == [["eager", "64x64"], ["onnxruntime_int8", "64x64"],
                                                        ["openvino", "*"], ["ncnn", "64x64"]]
    assert any(">= 99% of the pixels" in line for line in lines)
    assert bench.mark_fastest([_record("a", 1.0, 50.0)]) is None  # none agrees: none is marked


def test_a_backend_without_its_extra_is_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed: find_spec None, import fails
    assert main(["bench", "--model", "mininet_95k", "--size", "64", "64", "--backend", "openvino"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install 'lightseg[openvino]'" in err and "Traceback" not in err, err
    seen = []
    monkeypatch.setattr(bench, "benchmark_backends", lambda name, backends, size, **kw: seen.extend(backends) or [
        _record(b, 1.0, 100.0) for b in backends])
    assert main(["bench", "--model", "mininet_95k", "--size", "64", "64", "--backend", "all"]) == 0
    err = capsys.readouterr().err
    installed = [b for b in ALL_ROWS if bench.missing_extra_line(b) is None]
    assert seen == installed and "openvino" not in seen and "peer_openvino" not in seen
    skipped = [line for line in err.splitlines() if line.startswith("skipped")]
    assert len(skipped) == len(ALL_ROWS) - len(installed)
    assert [line for line in skipped if "openvino" in line.split(":")[0]] == [
        f"skipped {b}: needs openvino, which is not installed: pip install 'lightseg[openvino]'" for b in ("openvino", "peer_openvino")]
    assert main(["bench", "--model", "mininet_95k", "--size", "64", "64", "--backend", "onnxruntime_plain"]) == 0
    assert seen[-1] == "peer_ort"  # the earlier name of the peer still works


def test_time_interleaved_alternates_and_follows_budget(clock):
    order = []

    def call(name, ms):
        return lambda: (order.append(name), clock.advance(ms / 1000))

    fns = {"a": call("a", 10), "b": call("b", 30)}
    lat = bench.time_interleaved(fns, {"a": 10, "b": 30}, budget_s=0.2)
    # 2 backends x 0.2 s / (10 + 30 ms per round) = 10 rounds, each backend once per round, order reversed every other
    assert len(lat["a"]) == len(lat["b"]) == 10 and lat["a"] == pytest.approx([10] * 10) and lat["b"] == pytest.approx([30] * 10)
    assert order[:6] == ["a", "b", "b", "a", "a", "b"]
    assert len(bench.time_interleaved(fns, {"a": 10, "b": 30}, runs=4)["a"]) == 4


def test_plain_baseline_is_the_model_as_written():
    model = lightseg.create_model("rdsnet", num_classes=3).eval()
    plain = bench.PlainOnnxRuntime(model)
    x = torch.randn(1, 3, 64, 96)
    plain.prepare(tuple(x.shape))
    assert plain.num_threads == torch.get_num_threads()  # the same cores as lightseg's sessions
    with torch.no_grad():
        torch.testing.assert_close(plain(x), model(x), atol=1e-4, rtol=1e-4)


def test_machine_header_names_cpu_isa_threads_and_versions():
    info = bench.machine_info()
    line = bench.format_machine(info)
    for word in [info["cpu"], "torch " + info["torch"], "onnxruntime " + info["onnxruntime"], "threads", "OMP_WAIT_POLICY"]:
        assert word in line
    assert all(f in line for f in info["isa"])


def test_bench_errors_exit_2(capsys):
    assert main(["bench", "--model", "mininet_96k", "--size", "64", "64"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'mininet_96k'" in err and "mininet_95k" in err and "Traceback" not in err
    assert main(["bench"]) == 2
    assert "--all-models" in capsys.readouterr().err
    assert main(["bench", "--model", "rdsnet", "--backend", "onnxruntime", "--dtype", "bfloat16"]) == 2
    assert "float32 only" in capsys.readouterr().err
    for flag, value in (("--runs", "1000000"), ("--runs", "0"), ("--warmup", "-1")):
        with pytest.raises(SystemExit) as exit_:  # argparse's refusal: usage and the message, exit 2
            main(["bench", "--model", "rdsnet", flag, value])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert flag in err and value in err and "10000" in err and "Traceback" not in err


def test_all_models_uses_paper_sizes(monkeypatch, capsys):
    seen = []

    def fake(name, backends, size, **kw):
        info = lightseg.model_info(name)
        seen.extend((name, tuple(size), b) for b in backends)
        return [{"model": name, "backend": b, "size": list(size), "params": 1, "macs": 1, "flops": 2,
                 "latency_ms_median": 10.0, "latency_ms_p90": 11.0, "fps": 100.0, "achieved_gflops": 0.0,
                 "paper_fps": info.paper_fps, "paper_hardware": info.paper_hardware} for b in backends]

    monkeypatch.setattr(bench, "benchmark_backends", fake)
    assert main(["bench", "--all-models", "--backend", "all"]) == 0
    names = lightseg.list_models()
    # the zoo table compares eager NCHW with the two ONNX Runtime paths, each model at its paper's resolution
    assert seen == [(n, tuple(lightseg.model_info(n).paper_size), b) for n in names
                    for b in ("eager_nchw", "onnxruntime", "onnxruntime_int8")]
    out = capsys.readouterr().out
    assert "paper FPS" in out and "not comparable" in out and "adaptive" in out


def test_graph_traffic_hand_counted():
    """conv 3->4 (3x3) -> relu -> conv 4->2 (1x1) -> pool -> concat with twice itself, at 64x64: bytes by hand."""
    from lightseg.deploy.export import export_to_bytes
    from lightseg.deploy.roofline import graph_traffic, roofline

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3, padding=1)
            self.b = nn.Conv2d(4, 2, 1)
            self.pool = nn.MaxPool2d(2)

        def forward(self, x):
            p = self.pool(self.b(torch.relu(self.a(x))))
            return torch.cat([p, p * 2], 1)

    t = graph_traffic(export_to_bytes(Net().eval(), (64, 64), fuse=False))
    px = 64 * 64
    assert t["weight_bytes"] >= 4 * (4 * 3 * 9 + 4 + 2 * 4 + 2)
    assert t["weight_bytes"] < 4 * (4 * 3 * 9 + 4 + 2 * 4 + 2) + 64  # plus a few scalars (the 2) at most
    # conv a reads the input and its output stays in registers (relu fused); relu writes 4 channels; conv b reads
    # them and writes 2; the pool reads those and writes a quarter; the multiply reads that and writes as much;
    # the concat moves nothing (its inputs are written in place)
    expected = 4 * (3 * px + 4 * px + 4 * px + 2 * px + 2 * px + 2 * px // 4 + 2 * px // 4 + 2 * px // 4)
    assert t["activation_bytes"] == expected and t["bytes"] == t["weight_bytes"] + expected
    assert t["unknown_shapes"] == 0
    r = roofline(flops=2e9, bytes_moved=1e8, ceiling={"fp32_gflops": 100.0, "copy_gb_s": 20.0})
    assert r == {"bound_compute_ms": 20.0, "bound_memory_ms": 5.0, "bound_ms": 20.0, "bound_by": "compute"}


def test_bench_json_streams_one_record_per_line_and_progress_on_stderr(monkeypatch, capsys):
    stdout_before, err = [], []  # what stdout held when each model's timing began; stderr all along
    real = bench.benchmark_backends

    def spy(name, *args, **kwargs):
        captured = capsys.readouterr()
        stdout_before.append(captured.out)
        err.append(captured.err)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(bench, "benchmark_backends", spy)
    assert main(["bench", "--model", "mininet_95k", "--model", "mininet_211k", "--size", "64", "64", "--backend",
                 "eager_nchw", "--warmup", "0", "--runs", "1", "--json"]) == 0
    captured = capsys.readouterr()
    assert stdout_before[0] == ""  # nothing before the first model is done ...
    first = stdout_before[1].splitlines()  # ... whose record is out before the second model starts
    assert len(first) == 1 and json.loads(first[0])["model"] == "mininet_95k"
    lines = captured.out.splitlines()
    assert len(lines) == 1
    last = json.loads(lines[0])
    assert last["model"] == "mininet_211k" and last["backend"] == "eager_nchw" and last["runs"] == 1
    assert last["size"] == [64, 64]
    err = "".join(err) + captured.err
    for words in ("[1/2] mininet_95k", "[2/2] mininet_211k", "mininet_211k: [1/1] building and warming up eager_nchw",
                  "mininet_211k: eager_nchw ready in", "mininet_211k: timing eager_nchw"):
        assert words in err, (words, err)


def test_bench_peak_json_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(bench, "measure_peak", lambda device="cpu": dict(CEILING))
    assert main(["bench", "--peak", "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["peak"] == CEILING

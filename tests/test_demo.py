"""`make demo` end to end on a tiny budget: every stage runs and writes what it promises."""
import json

from lightseg.demo import run_demo


def test_demo_pipeline_writes_everything(tmp_path, capsys):
    out = tmp_path / "demo"
    summary = run_demo(out=out, iters=4, size=(96, 128), n_train=8, n_val=2, n_predict=2)
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["miou"] <= 1.0 and set(metrics["iou"]) >= {"Sky", "Road", "Car"}
    bench = json.loads((out / "bench.json").read_text())
    assert [r["backend"] for r in bench] == ["eager", "onnxruntime"] and all(r["fps"] > 0 for r in bench)
    overlays = sorted((out / "predictions").glob("*_overlay.png"))
    assert len(overlays) == 2
    assert (out / "curves.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "val mIoU" in printed and str(out / "predictions") in printed
    assert summary["miou"] == metrics["miou"]

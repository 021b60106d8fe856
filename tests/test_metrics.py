import json
import math
import socket

import numpy as np
import pytest
import torch

from lightseg.metrics import ConfusionMatrix, format_table

# 4 classes; class 3 is in neither ground truth nor prediction -> NaN, left out of the means.
TARGET = np.array([[0, 0, 1, 1, 255],
                   [2, 2, 2, 0, 255]])
PRED = np.array([[0, 1, 1, 1, 2],
                 [2, 2, 0, 0, 3]])
# Counted pixels (target != 255), rows = truth, columns = prediction:
#   truth 0: (0,0) (0,1) (1,3) -> pred 0, 1, 0
#   truth 1: (0,2) (0,3)       -> pred 1, 1
#   truth 2: (1,0) (1,1) (1,2) -> pred 2, 2, 0
HAND_MATRIX = [[2, 1, 0, 0],
               [0, 2, 0, 0],
               [1, 0, 2, 0],
               [0, 0, 0, 0]]
# IoU: class 0: TP 2, FN 1, FP 1 -> 2/4; class 1: TP 2, FN 0, FP 1 -> 2/3; class 2: TP 2, FN 1, FP 0 -> 2/3
HAND_IOU = [0.5, 2 / 3, 2 / 3]


def test_confusion_matrix_and_iou_by_hand():
    cm = ConfusionMatrix(4)
    cm.update(PRED, TARGET)
    assert cm.matrix.tolist() == HAND_MATRIX
    iou = cm.iou()
    assert iou[:3].tolist() == pytest.approx(HAND_IOU)
    assert math.isnan(iou[3])
    assert cm.miou == pytest.approx(sum(HAND_IOU) / 3)
    assert cm.pixel_acc == pytest.approx(6 / 8)
    assert cm.class_acc()[:3].tolist() == pytest.approx([2 / 3, 1.0, 2 / 3]) and math.isnan(cm.class_acc()[3])
    assert cm.mean_acc == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)


def test_update_accepts_tensors_and_accumulates():
    a = ConfusionMatrix(4)
    a.update(torch.from_numpy(PRED), torch.from_numpy(TARGET).to(torch.uint8))
    a.update(PRED[:, :2], TARGET[:, :2])  # a second batch adds up
    b = ConfusionMatrix(4)
    b.update(PRED, TARGET)
    b.update(PRED[:, :2], TARGET[:, :2])
    assert a.matrix.tolist() == b.matrix.tolist()
    assert a.matrix.sum().item() == 8 + 4
    with pytest.raises(ValueError, match="differ"):
        a.update(PRED[:, :2], TARGET)


def test_ignored_and_out_of_range_pixels():
    cm = ConfusionMatrix(3)
    # ground truth 255 and 7 (out of range) are not counted, whatever is predicted
    cm.update(np.array([0, 1, 2, 0]), np.array([0, 255, 7, 1]))
    assert cm.matrix.sum().item() == 2
    # a prediction outside the classes (a "void" PNG value) is a miss of the true class: FN, nobody's FP
    cm.reset()
    cm.update(np.array([0, 255, 1]), np.array([0, 0, 1]))
    assert cm.pred_outside.tolist() == [1, 0, 0]
    assert cm.iou()[:2].tolist() == pytest.approx([1 / 2, 1.0])
    assert cm.pixel_acc == pytest.approx(2 / 3)


def test_category_iou_by_hand():
    cm = ConfusionMatrix(4)
    cm.update(PRED, TARGET)
    cats = {"A": ["c0", "c1"], "B": [2], "C": [3]}
    got = cm.category_iou(cats, ["c0", "c1", "c2", "c3"])
    # A = {0,1}: TP = 2+1+0+2 = 5; FN = rows 0,1 total (5) - 5 = 0; FP = rows 2,3 in cols 0,1 = 1 -> 5/6
    # B = {2}: TP 2, FN 1 (truth 2 -> pred 0), FP 0 -> 2/3; C = {3}: nothing -> NaN
    assert got["A"] == pytest.approx(5 / 6) and got["B"] == pytest.approx(2 / 3) and math.isnan(got["C"])
    report = cm.report(["c0", "c1", "c2", "c3"], categories=cats)
    assert report["category_iou"] == {"A": pytest.approx(5 / 6), "B": pytest.approx(2 / 3), "C": None}
    assert report["category_miou"] == pytest.approx((5 / 6 + 2 / 3) / 2)


def test_report_is_json_and_table():
    cm = ConfusionMatrix(4)
    cm.update(PRED, TARGET)
    report = cm.report(["road", "car", "sky", "boat"])
    assert set(report) >= {"miou", "pixel_acc", "mean_acc", "iou", "confusion_matrix"}
    assert report["iou"]["boat"] is None and report["iou"]["road"] == pytest.approx(0.5)
    assert report["confusion_matrix"] == HAND_MATRIX
    assert json.loads(json.dumps(report, allow_nan=False))["miou"] == pytest.approx(sum(HAND_IOU) / 3)
    table = format_table(report)
    assert "road" in table and "50.00" in table and "n/a" in table and f"{100 * sum(HAND_IOU) / 3:6.2f}" in table
    with pytest.raises(ValueError, match="3 class names"):
        cm.report(["a", "b", "c"])


def _ddp_worker(rank, port, results):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    cm = ConfusionMatrix(4)
    cm.update(PRED[rank], TARGET[rank])  # each rank sees one row
    cm.all_reduce()
    results[rank] = cm.matrix.tolist()
    dist.destroy_process_group()


def test_all_reduce_sums_over_processes():
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("fork")
    results = ctx.Manager().dict()
    procs = [ctx.Process(target=_ddp_worker, args=(r, port, results)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert results[0] == HAND_MATRIX and results[1] == HAND_MATRIX
    # without an initialised process group it is a no-op
    cm = ConfusionMatrix(4)
    cm.update(PRED, TARGET)
    assert cm.all_reduce().matrix.tolist() == HAND_MATRIX

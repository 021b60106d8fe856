"""Optional TensorBoard logging for ``lightseg train`` (``train.tensorboard: true`` or ``--tensorboard``).

Writes event files to ``RUN_DIR/tensorboard``: the loss and each of its terms (main output, each
auxiliary head), the learning rate, validation mIoU and pixel accuracy, per-class IoU, and a few
validation images with the prediction blended over them. ``log.jsonl`` stays the record that
``lightseg plot`` and exact resume read; these files are a view for TensorBoard users.

Needs the ``tensorboard`` package: ``pip install 'lightseg[tensorboard]'``.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError

INSTALL_HINT = "pip install 'lightseg[tensorboard]' (or pip install tensorboard)"
NUM_OVERLAYS = 3  # validation images shown per evaluation: enough to see progress, small event files


def summary_writer_class():
    """``torch.utils.tensorboard.SummaryWriter``, or a clear error saying how to install TensorBoard."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(f"train.tensorboard is on but TensorBoard is not installed; {INSTALL_HINT}, "
                          "or drop --tensorboard (log.jsonl and lightseg plot work without it)") from None
    return SummaryWriter


class TensorBoardLogger:
    """Scalars and images of one run. ``purge_step``: a resumed run redoes the iterations after its
    checkpoint, so TensorBoard drops the events an interrupted run wrote past it."""

    def __init__(self, log_dir, purge_step=None):
        self.writer = summary_writer_class()(log_dir=str(log_dir), purge_step=purge_step)

    def train(self, iteration: int, loss: float, lr: float, parts: dict | None = None, images_per_s=None):
        w = self.writer
        w.add_scalar("train/loss", loss, iteration)
        w.add_scalar("train/lr", lr, iteration)
        for name, value in (parts or {}).items():
            w.add_scalar(f"train/loss_{name}", value, iteration)
        if images_per_s:
            w.add_scalar("train/images_per_s", images_per_s, iteration)

    def val(self, iteration: int, report: dict, overlays=()):
        w = self.writer
        if report.get("miou") is not None:
            w.add_scalar("val/mIoU", float(report["miou"]), iteration)
        if report.get("pixel_acc") is not None:
            w.add_scalar("val/pixel_acc", float(report["pixel_acc"]), iteration)
        for name, iou in dict(report.get("iou", {})).items():
            if iou is not None:
                w.add_scalar(f"val_iou/{name}", float(iou), iteration)
        for k, image in enumerate(overlays):
            w.add_image(f"val_overlay/{k}", np.ascontiguousarray(image), iteration, dataformats="HWC")
        w.flush()

    def close(self):
        self.writer.close()


def validation_overlays(model, dataset, device, palette, count: int = NUM_OVERLAYS, max_side: int = 480) -> list:
    """Prediction overlays (RGB uint8) of the first ``count`` validation images, at most ``max_side`` wide."""
    from ..inference import predict_labels
    from ..viz import overlay

    out = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for i in range(min(count, len(dataset))):
                rgb = dataset.load_image(i)
                x = dataset.to_tensor(rgb)[None].to(device)
                label = predict_labels(model, x, rgb.shape[:2])[0].cpu().numpy()
                picture = overlay(rgb, label.astype(np.uint8), palette)
                if picture.shape[1] > max_side:
                    import cv2

                    h = round(picture.shape[0] * max_side / picture.shape[1])
                    picture = cv2.resize(picture, (max_side, h), interpolation=cv2.INTER_AREA)
                out.append(picture)
    finally:
        model.train(was_training)
    return out

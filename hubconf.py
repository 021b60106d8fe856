"""torch.hub entry points: one per registered lightseg model (``lightseg models`` lists them).

    import torch
    model = torch.hub.load("path/to/lightseg", "rdsnet", weights="camvid", source="local")   # trained, eval mode
    model = torch.hub.load("path/to/lightseg", "mininet_211k", weights="runs/x/best.pt", source="local")
    model = torch.hub.load("path/to/lightseg", "atonet_r18", num_classes=19, source="local")  # untrained

Nothing is downloaded: ``weights`` is the name of weights shipped in lightseg/weights (checked against
their sha256) or the path of a lightseg checkpoint (loaded weights-only). A trained model carries
``classes``, ``palette`` and ``normalize``, which ``lightseg.Segmenter(model)`` uses. Other keyword
arguments go to ``lightseg.create_model``.
"""
import os as _os

dependencies = ["torch", "numpy", "yaml", "cv2"]


def _is_checkpoint_path(weights) -> bool:
    """A file path rather than the name of shipped weights (those are plain names such as "camvid")."""
    text = _os.fspath(weights)
    return _os.path.exists(text) or _os.sep in text or "/" in text or text.endswith((".pt", ".pth"))


def _load(name, weights=None, **kwargs):
    import lightseg

    if weights is None or not _is_checkpoint_path(weights):
        return lightseg.create_model(name, weights=weights, **kwargs)
    from lightseg.deploy.runtime import checkpoint_normalization, load_model
    from lightseg.errors import LightsegError

    num_classes = kwargs.pop("num_classes", None)
    if kwargs:
        raise LightsegError(f"{', '.join(sorted(kwargs))}: a checkpoint's own recipe sets the model's options; "
                            f"drop them when loading {weights}")
    model, ckpt = load_model(name, checkpoint=weights, num_classes=num_classes)
    if ckpt.get("classes"):
        model.classes = list(ckpt["classes"])
    if ckpt.get("palette"):
        model.palette = [tuple(int(v) for v in c) for c in ckpt["palette"]]
    model.normalize = checkpoint_normalization(ckpt)
    return model


def _entry_point(name):
    def entry(weights=None, **kwargs):
        return _load(name, weights, **kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = (f"lightseg's {name}: ``weights`` = the name of shipped weights (e.g. \"camvid\") or a checkpoint's "
                     "path, None for an untrained network; other keyword arguments go to lightseg.create_model.")
    return entry


def _register_all():
    import lightseg

    for name in lightseg.list_models():
        globals()[name] = _entry_point(name)


_register_all()

"""Imports every model file so that its @register_model decorators run."""
import importlib

# One module per paper. A missing module (work in progress) must not break the others.
for _mod in ("mininet", "atonet", "dual_aspp", "shufflenet_dpc", "rdsnet"):
    try:
        importlib.import_module(f"{__package__}.{_mod}")
    except ModuleNotFoundError as e:  # pragma: no cover - only while a file is absent
        if e.name != f"{__package__}.{_mod}":
            raise

"""Imports every model file so that its @register_model decorators run."""
from . import atonet, dual_aspp, mininet, rdsnet, shufflenet_dpc  # noqa: F401  (one module per paper)

from .base import SegmentationModel, check_input, resize_to
from .registry import create_model, list_models, model_info, register_model

__all__ = ["SegmentationModel", "check_input", "resize_to", "create_model", "list_models", "model_info", "register_model"]

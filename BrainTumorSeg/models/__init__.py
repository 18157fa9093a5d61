"""Network architectures (one file each) and the model-card registry."""

from .registry import ARCHITECTURES, ModelCard, available_models, get_model, save_weights

__all__ = ["ARCHITECTURES", "ModelCard", "available_models", "get_model", "save_weights"]

"""Model families, one file each; `create_model(name, ...)` is the only way in, `model_info(name)`
says what the family registered with it (paper defaults, input shape)."""

from . import lenet, resnet, vgg  # noqa: F401  (register the entrypoints)
from .registry import ModelInfo, create_model, list_models, model_info, register_model

__all__ = ["create_model", "list_models", "register_model", "model_info", "ModelInfo"]

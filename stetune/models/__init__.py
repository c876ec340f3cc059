"""Model families, one file each; `create_model(name, ...)` is the only way in."""

from . import lenet, resnet, vgg  # noqa: F401  (register the entrypoints)
from .registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]

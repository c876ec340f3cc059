"""stetune: sweeps for activation-quantized nets trained with straight-through estimators."""

__version__ = "0.1.0"
__all__ = ["__version__"]

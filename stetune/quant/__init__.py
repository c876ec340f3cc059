"""Activation quantization: the paper's uniform quantizer, Lloyd-Max resolution, STEs."""

from .act import (ActQuantConfig, QuantAct, make_activation, parse_bits, quantize_activations_,
                  set_ste_)
from .lloyd import MAX_BITS, lloyd_alpha
from .ste import QuantSTE, get_ste, list_stes, quantize, register_ste

__all__ = ["ActQuantConfig", "QuantAct", "make_activation", "quantize_activations_", "set_ste_",
           "parse_bits", "lloyd_alpha", "MAX_BITS", "QuantSTE", "quantize", "register_ste",
           "get_ste", "list_stes"]

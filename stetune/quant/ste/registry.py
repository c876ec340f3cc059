"""Name -> STE registry. Extend it with one decorator:

    @register_ste("my_ste")
    class MySTE(QuantSTE):
        @staticmethod
        def setup_context(ctx, inputs, output): ...
        @staticmethod
        def backward(ctx, grad): ...   # return (grad_x, None, None)
"""

from __future__ import annotations

from ...registry import Registry
from .base import QuantSTE

__all__ = ["register_ste", "get_ste", "list_stes"]

_REGISTRY: Registry[type[QuantSTE]] = Registry("ste")


def register_ste(name: str):
    def wrap(cls: type[QuantSTE]) -> type[QuantSTE]:
        if not (isinstance(cls, type) and issubclass(cls, QuantSTE)):
            raise TypeError(f"an STE must subclass QuantSTE, but got {cls=}")
        _REGISTRY.add(name, cls)
        cls.name = name
        return cls

    return wrap


def get_ste(name: str) -> type[QuantSTE]:
    return _REGISTRY.get(name)


def list_stes() -> tuple[str, ...]:
    return _REGISTRY.names()

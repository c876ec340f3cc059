"""Name -> STE registry. Extend it with one decorator:

    @register_ste("my_ste")
    class MySTE(QuantSTE):
        @staticmethod
        def setup_context(ctx, inputs, output): ...
        @staticmethod
        def backward(ctx, grad): ...   # return (grad_x, None, None)
"""

from __future__ import annotations

from .base import QuantSTE

__all__ = ["register_ste", "get_ste", "list_stes"]

_REGISTRY: dict[str, type[QuantSTE]] = {}


def register_ste(name: str):
    def wrap(cls: type[QuantSTE]) -> type[QuantSTE]:
        if not (isinstance(cls, type) and issubclass(cls, QuantSTE)):
            raise TypeError(f"an STE must subclass QuantSTE, but got {cls=}")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"STE names must be unique, but {name=} is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def get_ste(name: str) -> type[QuantSTE]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"ste must be one of {list_stes()}, but got ste={name!r}") from None


def list_stes() -> tuple[str, ...]:
    return tuple(_REGISTRY)

"""The one registry shape behind models, datasets, STEs and sweep kinds: names in registration
order, each with its entry; registering the same object again is a no-op, another object under a
taken name an error, and an unknown name a one-line error naming the field and the choices."""

from __future__ import annotations

from typing import Generic, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, field: str):
        self.field = field  # how a spec names an entry: 'model', 'dataset', 'ste', 'kind'
        self._entries: dict[str, T] = {}
        self._sources: dict[str, object] = {}

    def add(self, name: str, entry: T, source: object | None = None) -> T:
        """Register `entry` under `name`; `source` (default: the entry) is what makes a second
        registration the same one (a re-imported module's function is another object)."""
        source = entry if source is None else source
        if name in self._sources and self._sources[name] is not source:
            raise ValueError(f"{self.field} names must be unique, but {name!r} is already "
                             f"registered")
        self._entries[name], self._sources[name] = entry, source
        return entry

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except (KeyError, TypeError):  # TypeError: an unhashable name from a spec
            raise ValueError(f"{self.field} must be one of {self.names()}, but got "
                             f"{self.field}={name!r}") from None

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def pop(self, name: str) -> T:
        """Unregister (tests that add toy entries clean up with this)."""
        self._sources.pop(name)
        return self._entries.pop(name)

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._entries
        except TypeError:
            return False

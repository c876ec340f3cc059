"""Sweep kinds, one module each, in one table: `get_kind(spec.kind)` is how the runner, the CLI,
analysis, report and export learn what a kind does. A new kind is one module exposing a
`SweepKind` passed to `register_kind`."""

from . import network, repulsion, theory  # noqa: F401  (register the built-in kinds)
from .base import SweepKind, get_kind, list_kinds, register_kind

__all__ = ["SweepKind", "register_kind", "get_kind", "list_kinds"]

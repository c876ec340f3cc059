"""Loading a sweep spec: YAML file -> `--set` overrides -> SweepSpec.from_dict (validation)."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Iterable

import yaml

from . import _check as c
from .run import SpecError
from .sweep import TRAIN_FIELDS, SweepSpec

__all__ = ["load_sweep_spec", "apply_overrides"]


def apply_overrides(d: dict, sets: Iterable[str]) -> dict:
    """A copy of `d` with each 'dotted.key=value' set (value read as YAML). A bare key that is
    not a top-level key is a train field: `epochs=2` sets train.epochs."""
    top = [f.name for f in dataclasses.fields(SweepSpec)]
    out = copy.deepcopy(d)
    for item in sets:
        key, sep, raw = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise SpecError(f"--set must be key=value (e.g. epochs=2), but got --set {item!r}")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise SpecError(f"--set {key}: the value must be YAML, but got {raw!r} ({e})") from None
        parts = key.split(".")
        if parts[0] not in top:
            if len(parts) == 1 and parts[0] in TRAIN_FIELDS:
                parts = ["train", parts[0]]
            else:
                hint = c.suggest_key(parts[0], top + list(TRAIN_FIELDS))
                raise SpecError(f"unknown --set key {key!r}{hint}; allowed: top-level keys {top}, "
                                f"dotted paths into them, or train fields {list(TRAIN_FIELDS)}")
        node = out
        for i, part in enumerate(parts[:-1]):
            if node.get(part) is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                c.fail(".".join(parts[:i + 1]), f"a mapping to --set {key}", node[part])
            node = node[part]
        node[parts[-1]] = value
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        keys = [self.construct_object(k, deep=True) for k, _ in node.value]
        for k in keys:
            if keys.count(k) > 1:
                raise SpecError(f"key {k!r} is given twice in one mapping "
                                f"(line {node.start_mark.line + 1})")
        return super().construct_mapping(node, deep)


def load_sweep_spec(path: str | Path, sets: Iterable[str] = ()) -> SweepSpec:
    """Read a sweep YAML, apply `--set` overrides, validate. Every problem is a SpecError."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise SpecError(f"sweep spec {str(path)!r} cannot be read: {e.strerror or e}") from None
    try:
        d = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except (yaml.YAMLError, SpecError) as e:
        raise SpecError(f"{path}: not a valid sweep YAML file: {e}") from None
    if not isinstance(d, dict):
        what = "empty" if d is None else f"a {type(d).__name__}"
        raise SpecError(f"{path}: a sweep spec must be a mapping at the top level, "
                        f"but the file is {what}")
    try:
        return SweepSpec.from_dict(apply_overrides(d, sets))
    except SpecError as e:
        raise SpecError(f"{path}: {e}") from None

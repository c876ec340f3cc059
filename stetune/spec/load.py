"""Loading a sweep spec: YAML file -> `--set` overrides -> validation by its kind's from_dict
(`kind: network`, the default, is a SweepSpec; `kind: theory` a TheorySweepSpec; `kind:
repulsion` a RepulsionSpec)."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Iterable

import yaml

from . import _check as c
from .run import SpecError
from .sweep import TRAIN_FIELDS, SweepSpec
from .repulsion import RepulsionSpec
from .theory import TheorySweepSpec

__all__ = ["load_sweep_spec", "apply_overrides", "spec_from_dict", "KINDS"]

KINDS = {"network": SweepSpec, "theory": TheorySweepSpec, "repulsion": RepulsionSpec}


def spec_class(d: dict) -> type:
    """The spec class for d's `kind` (absent: network)."""
    kind = d.get("kind", "network")
    if not (isinstance(kind, str) and kind in KINDS):
        close = c.suggest_key(kind, KINDS) if isinstance(kind, str) else ""
        raise SpecError(f"kind must be one of {list(KINDS)}, but got kind={kind!r}{close}")
    return KINDS[kind]


def spec_from_dict(d: dict) -> SweepSpec | TheorySweepSpec | RepulsionSpec:
    """Validate a spec dict (a loaded YAML, or a saved spec.json) as the class its kind names."""
    cls = spec_class(d)
    if cls is SweepSpec:  # SweepSpec has no kind field: an explicit `kind: network` is dropped
        d = {k: v for k, v in d.items() if k != "kind"}
    return cls.from_dict(d)


def apply_overrides(d: dict, sets: Iterable[str]) -> dict:
    """A copy of `d` with each 'dotted.key=value' set (value read as YAML). In a network spec a
    bare key that is not a top-level key is a train field: `epochs=2` sets train.epochs."""
    cls = spec_class(d)
    network = cls is SweepSpec
    top = ["kind", *(f.name for f in dataclasses.fields(cls))]
    bare = TRAIN_FIELDS if network else ()
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
            if len(parts) == 1 and parts[0] in bare:
                parts = ["train", parts[0]]
            else:
                hint = c.suggest_key(parts[0], top + list(bare))
                rest = (f"dotted paths into them, or train fields {list(bare)}" if bare
                        else "or dotted paths into them")
                raise SpecError(f"unknown --set key {key!r}{hint}; allowed: top-level keys {top}, "
                                f"{rest}")
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


def load_sweep_spec(path: str | Path, sets: Iterable[str] = ()) -> (
        SweepSpec | TheorySweepSpec | RepulsionSpec):
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
        return spec_from_dict(apply_overrides(d, sets))
    except SpecError as e:
        raise SpecError(f"{path}: {e}") from None

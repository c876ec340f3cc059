"""Loading a sweep spec: YAML file -> `--set` overrides -> validation by its kind's from_dict
(`kind: network`, the default, is a SweepSpec; `kind: theory` a TheorySweepSpec; `kind:
repulsion` a RepulsionSpec; a new kind's class registers itself with `register_spec_kind`)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Iterable

import yaml

from .base import DEFAULT_KIND, Placement
from .errors import SpecError, fail, suggest_key
from .fields import spec_fields
from .repulsion import RepulsionSpec
from .sweep import SweepSpec
from .theory import TheorySweepSpec

__all__ = ["load_sweep_spec", "apply_overrides", "spec_from_dict", "spec_class",
           "register_spec_kind", "SPEC_KINDS"]

MAX_SPEC_BYTES = 1 << 20     # a spec is a few KB: a bigger file is a mistake or an attack
MAX_SPEC_VALUES = 100_000    # values after expanding YAML aliases: stops "billion laughs" specs
SPEC_KINDS: dict[str, type] = {}  # kind -> spec class: what `kind:` in a spec file selects


def register_spec_kind(cls: type) -> type:
    """Make `kind: <cls.kind>` load as cls (a Placement subclass); registering it again is a
    no-op, another class under the same kind an error."""
    kind = getattr(cls, "kind", None)
    if not (isinstance(kind, str) and kind and isinstance(cls, type) and issubclass(cls, Placement)):
        raise ValueError(f"a spec kind must be a Placement subclass with a kind name, but got "
                         f"{cls!r} with kind={kind!r}")
    if SPEC_KINDS.get(kind, cls) is not cls:
        raise ValueError(f"spec kinds must be unique, but {kind!r} is already "
                         f"{SPEC_KINDS[kind].__qualname__}, not {cls.__qualname__}")
    SPEC_KINDS[kind] = cls
    return cls


for _cls in (SweepSpec, TheorySweepSpec, RepulsionSpec):
    register_spec_kind(_cls)


def spec_class(d: dict) -> type:
    """The spec class for d's `kind` (absent: network)."""
    kind = d.get("kind", DEFAULT_KIND) if isinstance(d, dict) else DEFAULT_KIND
    if not (isinstance(kind, str) and kind in SPEC_KINDS):
        close = suggest_key(kind, SPEC_KINDS) if isinstance(kind, str) else ""
        raise SpecError(f"kind must be one of {list(SPEC_KINDS)}, but got kind={kind!r}{close}")
    return SPEC_KINDS[kind]


def spec_from_dict(d: dict) -> Placement:
    """Validate a spec dict (a loaded YAML, or a saved spec.json) as the class its kind names."""
    return spec_class(d).from_dict(d)


def apply_overrides(d: dict, sets: Iterable[str]) -> dict:
    """A copy of `d` with each 'dotted.key=value' set (value read as YAML). A bare key that is
    not a top-level key is a key of the kind's `bare_section`, if it declares one: in a network
    spec `epochs=2` sets train.epochs."""
    cls = spec_class(d)
    fields = {f.name: f for f in spec_fields(cls)}
    top = ["kind", *fields]
    section = cls.bare_section
    bare = list(fields[section].metadata["rule"].keys()) if section else []
    out = copy.deepcopy(d)
    for item in sets:
        key, sep, raw = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise SpecError(f"--set must be key=value (e.g. epochs=2), but got --set {item!r}")
        try:
            value = _parse_yaml(raw)  # the same limits as a spec file (aliases, nesting)
        except (yaml.YAMLError, SpecError) as e:
            raise SpecError(f"--set {key}: the value must be YAML, but got {raw[:200]!r} "
                            f"({e})") from None
        parts = key.split(".")
        if parts[0] not in top:
            if len(parts) == 1 and parts[0] in bare:
                parts = [section, parts[0]]
            else:
                hint = suggest_key(parts[0], top + bare)
                rest = (f"dotted paths into them, or {section} fields {bare}" if bare
                        else "or dotted paths into them")
                raise SpecError(f"unknown --set key {key!r}{hint}; allowed: top-level keys {top}, "
                                f"{rest}")
        node = out
        for i, part in enumerate(parts[:-1]):
            if node.get(part) is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                fail(".".join(parts[:i + 1]), f"a mapping to --set {key}", node[part])
            node = node[part]
        node[parts[-1]] = value
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for k, _ in node.value:
            key = self.construct_object(k, deep=True)
            try:
                if key in seen:
                    raise SpecError(f"key {key!r} is given twice in one mapping "
                                    f"(line {node.start_mark.line + 1})")
                seen.add(key)
            except TypeError:  # an unhashable key: PyYAML's own error follows
                pass
        return super().construct_mapping(node, deep)


def _expanded_size(node, memo: dict) -> int:
    """Values in the document once YAML aliases are expanded (what a consumer walking it, or
    writing it as JSON, would meet); memoised, so a billion-laughs document costs little here."""
    if id(node) not in memo:
        if isinstance(node, yaml.MappingNode):
            kids = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            kids = node.value
        else:
            kids = []
        memo[id(node)] = 1 + sum(_expanded_size(k, memo) for k in kids)
    return memo[id(node)]


def _parse_yaml(text: str):
    loader = _UniqueKeyLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node, {})
        if size > MAX_SPEC_VALUES:
            raise SpecError(f"it expands to {size} values (YAML aliases included), more than "
                            f"a sweep spec may hold ({MAX_SPEC_VALUES})")
        return loader.construct_document(node)
    except RecursionError:  # PyYAML and the size count recurse per level of nesting
        raise SpecError("it nests too deeply") from None
    finally:
        loader.dispose()


def load_sweep_spec(path: str | Path, sets: Iterable[str] = ()) -> Placement:
    """Read a sweep YAML, apply `--set` overrides, validate. Every problem is a SpecError."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_SPEC_BYTES:
            raise SpecError(f"sweep spec {str(path)!r} must be at most {MAX_SPEC_BYTES} bytes "
                            f"(a spec is a few KB), but it has {size}")
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise SpecError(f"sweep spec {str(path)!r} cannot be read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise SpecError(f"sweep spec {str(path)!r} must be UTF-8 text (YAML), but it is "
                        f"not text") from None
    try:
        d = _parse_yaml(text)
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

"""Typed field checks for nested specs: each names the field by its dotted path, the rule and
the value, e.g. "max_concurrent must be an int >= 1, but got max_concurrent=0"."""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from typing import Any, Iterable

from .run import SpecError

MISSING = object()  # a key absent from its mapping (distinct from an explicit null)


def fail(path: str, rule: str, value: Any) -> None:
    raise SpecError(f"{path} must be {rule}, but got {path}={value!r}{_hint(value)}")


def _hint(value: Any) -> str:
    # PyYAML reads 1e-3 as a string (YAML 1.1 wants a dot: 1.0e-3); say so rather than puzzle.
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return ""
        return " (a string: YAML reads numbers like 1e-3 as text; write 1.0e-3, or drop the quotes)"
    return ""


def join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def suggest_key(key: Any, allowed: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(key), list(allowed), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_keys(d: dict, allowed: Iterable[str], path: str) -> None:
    """Unknown keys are errors, with a did-you-mean suggestion and the allowed list."""
    allowed = list(allowed)
    for key in d:
        if key not in allowed:
            where = f"in {path}" if path else "at the top level"
            raise SpecError(f"unknown key {key!r} {where}{suggest_key(key, allowed)}; "
                            f"allowed: {sorted(allowed)}")


def mapping(value: Any, path: str, *, none_ok: bool = True) -> dict:
    """A section: a mapping; null (a section with every line commented out) means empty."""
    if value is None and none_ok:
        return {}
    if not isinstance(value, dict):
        fail(path, "a mapping (key: value lines)", value)
    return value


def section(d: dict, key: str, cls, **checks):
    """The dataclass `cls` from the optional sub-mapping d[key], each field through its check."""
    sub = mapping(d.get(key), key)
    check_keys(sub, checks, key)
    return cls(**{k: checks[k](v, f"{key}.{k}") for k, v in sub.items()})


def kind_mapping(d: Any, cls, kind: str) -> dict:
    """The top level of a `kind: <kind>` spec: a mapping of cls's fields (plus `kind`)."""
    if not isinstance(d, dict):
        raise SpecError(f"a sweep spec must be a mapping at the top level, but got {d!r}")
    check_keys(d, ["kind", *(f.name for f in dataclasses.fields(cls))], "")
    if d.get("kind", kind) != kind:
        raise SpecError(f"kind must be {kind!r} for a {kind} spec, but got kind={d['kind']!r}")
    return d


def require(d: dict, key: str, path: str, example: str) -> Any:
    if key not in d:
        raise SpecError(f"{join(path, key)} is required (e.g. {example})")
    return d[key]


def is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def int_field(value: Any, path: str, low: int, high: int | None = None) -> int:
    ok = is_int(value) and value >= low and (high is None or value <= high)
    if not ok:
        fail(path, f"an int >= {low}" + (f" and <= {high}" if high is not None else ""), value)
    return value


def number_field(value: Any, path: str, rule: str, test) -> float | int:
    if not (is_number(value) and test(value)):
        fail(path, rule, value)
    return value


def ints(low: int):
    """A checker (value, path) for an int >= low."""
    return lambda value, path: int_field(value, path, low)


def numbers(rule: str, test):
    """A checker (value, path) for a finite number passing `test`."""
    return lambda value, path: number_field(value, path, rule, test)


def bool_field(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        fail(path, "true or false", value)
    return value


def str_field(value: Any, path: str, *, none_ok: bool = False, pattern: str | None = None,
              rule: str = "a non-empty string") -> str | None:
    if value is None and none_ok:
        return None
    if not (isinstance(value, str) and value and (pattern is None or re.fullmatch(pattern, value))):
        fail(path, rule + (" or null" if none_ok else ""), value)
    return value


def choice_field(value: Any, path: str, options: Iterable[str]) -> str:
    options = list(options)
    if not (isinstance(value, str) and value in options):
        close = suggest_key(value, options) if isinstance(value, str) else ""
        raise SpecError(f"{path} must be one of {options}, but got {path}={value!r}{close}")
    return value


def list_field(value: Any, path: str, *, nonempty: bool) -> list:
    if not isinstance(value, list) or (nonempty and not value):
        fail(path, "a non-empty list" if nonempty else "a list", value)
    return value


def unique(items: list, path: str) -> None:
    seen: list = []
    for i, item in enumerate(items):
        if item in seen:
            raise SpecError(f"{path} must have no duplicates, but got {path}[{i}]={item!r} "
                            f"again (in {path}={items!r})")
        seen.append(item)


def reroute(err: SpecError, paths: dict[str, str]) -> SpecError:
    """Re-address a RunSpec error ('lr must be > 0, but got lr=0.0') to the spec path the value
    came from ('train.lr must be > 0, but got train.lr=0.0'). Fields missing from `paths` keep
    their bare names. Only the subject and `name=` are field names: the rule's words stay."""
    msg = str(err)
    for name, path in paths.items():
        msg = re.sub(rf"^{re.escape(name)}(?= )|(?<![\w.\[]){re.escape(name)}(?==)", path, msg)
    return SpecError(msg)


def opt_str(value: Any, path: str) -> str | None:
    return str_field(value, path, none_ok=True)


def unique_ints(low: int):
    """A checker (value, path) for a list of unique ints >= low (may be empty) -> tuple."""
    def check(value: Any, path: str) -> tuple[int, ...]:
        items = list_field(value, path, nonempty=False)
        for i, item in enumerate(items):
            int_field(item, f"{path}[{i}]", low)
        unique(items, path)
        return tuple(items)
    return check


def gpus(value: Any, path: str) -> float:
    # Ray: a fraction of one GPU, or whole GPUs
    return number_field(value, path, "a number >= 0, fractional only below 1 (e.g. 0.25)",
                        lambda x: x >= 0 and (x <= 1 or x == int(x)))


def runspec_types(d: dict, path: str) -> None:
    """Types RunSpec would trip over with a TypeError rather than a SpecError."""
    if "device" in d:
        str_field(d["device"], f"{path}.device")
    if "data_dir" in d:
        str_field(d["data_dir"], f"{path}.data_dir", none_ok=True)
    if "extra" in d:
        mapping(d["extra"], f"{path}.extra", none_ok=False)
    if d.get("milestones") is not None:
        ms = list_field(d["milestones"], f"{path}.milestones", nonempty=False)
        for i, m in enumerate(ms):
            int_field(m, f"{path}.milestones[{i}]", 1)

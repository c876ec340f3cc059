"""Spec errors: each names the field by its dotted path, the rule and the value, e.g.
"max_concurrent must be an int >= 1, but got max_concurrent=0", with a did-you-mean for an
unknown key and a hint for a YAML number read as text."""

from __future__ import annotations

import difflib
import math
import re
from typing import Any, Iterable, NoReturn

from ..naming import redact

__all__ = ["SpecError", "fail", "reroute", "check_keys", "unique", "join", "suggest_key",
           "is_int", "is_number", "MAPPING_WORDS"]

MAPPING_WORDS = "a mapping (key: value lines)"


class SpecError(ValueError):
    """A spec field breaks a rule; the message names the field, the rule and the value."""


# -- messages ---------------------------------------------------------------------------------
def fail(path: str, rule: str, value: Any, note: str = "") -> NoReturn:
    # a value may be a URI with a password: never echo it
    raise SpecError(f"{path} must be {rule}, but got {path}={redact(value)!r}{note or _hint(value)}")


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


def unique(items: list, path: str) -> None:
    """No item twice (== equality, so 1 and 1.0 are the same); linear for hashable items."""
    hashed: set = set()
    other: list = []
    for i, item in enumerate(items):
        try:
            dup = item in hashed
            hashed.add(item)
        except TypeError:  # an unhashable item (a list): compared one by one
            dup = item in other
            other.append(item)
        if dup:
            listed = repr(items)
            listed = listed if len(listed) <= 200 else listed[:200] + "...]"
            raise SpecError(f"{path} must have no duplicates, but got {path}[{i}]={item!r} "
                            f"again (in {path}={listed})")


def reroute(err: SpecError, paths: dict[str, str]) -> SpecError:
    """Re-address a RunSpec error ('lr must be > 0, but got lr=0.0') to the spec path the value
    came from ('train.lr must be > 0, but got train.lr=0.0'). Fields missing from `paths` keep
    their bare names. Only the subject and `name=` are field names: the rule's words stay."""
    msg = str(err)
    for name, path in paths.items():
        msg = re.sub(rf"^{re.escape(name)}(?=[ \[])|(?<![\w.\[]){re.escape(name)}(?=[=\[])",
                     path, msg)
    return SpecError(msg)


def is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def is_number(x: Any) -> bool:
    """A finite int or float: bools are not numbers, and inf / nan are no value to train with."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

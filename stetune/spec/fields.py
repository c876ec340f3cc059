"""Spec fields: each dataclass field declares its rule beside it with `fld(rule, help, ...)`;
one recursive parser (`parse`) checks a mapping against a dataclass's fields, `dump` turns a
spec back into plain data, and each rule gives its JSON Schema (`object_schema`). Every error
(errors.py) names the field by its dotted path, the rule and the value, e.g. "max_concurrent
must be an int >= 1, but got max_concurrent=0".

    @dataclass(frozen=True)
    class Probe:
        epochs: int = fld(Int(ge=1), "paper: 20 epochs ...", default=20)
        lr: float = fld(Num(gt=0), "... at lr 1e-5, constant", default=1e-5)

A field without a default is required (`example=` completes its message); `derive=` computes an
absent field from the fields before it; `tail=True` moves a field to the end of a spec's dict.
A class's cross-field rules live in its `_check(path)` method, run by `parse` after the fields."""

from __future__ import annotations

import copy
import dataclasses
import math
import operator
import re
import sys
from typing import Any, Callable, Iterable

from .errors import (MAPPING_WORDS, SpecError, check_keys, fail, is_int, is_number, join,
                     suggest_key, unique)

__all__ = ["Rule", "Int", "Num", "Bool", "Str", "Choice", "Opt", "ListOf", "Tuple", "Mapping",
           "Section", "FieldsOf", "fld", "parse", "dump", "spec_fields", "rule_of", "object_schema"]

MISSING = dataclasses.MISSING


# -- rules ------------------------------------------------------------------------------------
class Rule:
    """A field's rule: parse(value, path) returns the value (normalised) or raises a SpecError
    naming path; schema() is the JSON Schema of the values it accepts."""

    def parse(self, value: Any, path: str) -> Any:
        raise NotImplementedError

    def schema(self) -> dict:
        return {}

    def keys(self) -> tuple[str, ...]:
        """A section's keys (what `--set` may name inside it); () for a plain value."""
        return ()


class Int(Rule):
    """An int (not a bool) in ge..le (ge=None: no lower bound); `words` replaces the wording
    of the lower rule ('an int >= 1'), which is what most mistakes break."""

    def __init__(self, ge: int | None = 0, le: int | None = None, words: str | None = None):
        self.ge, self.le, self.words = ge, le, words

    def parse(self, value, path):
        if not (is_int(value) and (self.ge is None or value >= self.ge)):
            fail(path, self.words or ("an int" if self.ge is None else f"an int >= {self.ge}"), value)
        if self.le is not None and value > self.le:
            fail(path, f"an int <= {self.le}", value)
        return value

    def schema(self):
        return {"type": "integer", **({"minimum": self.ge} if self.ge is not None else {}),
                **({"maximum": self.le} if self.le is not None else {})}


class Num(Rule):
    """A finite number (int or float, not a bool; never inf or nan) within the given bounds,
    worded '<noun> > 0', '<noun> in [0, 1)'; `test` adds a rule the bounds cannot say (then
    `words` says it, and `extra` is its JSON Schema)."""

    def __init__(self, *, gt=None, ge=None, lt=None, le=None, noun: str = "a number",
                 words: str | None = None, test: Callable[[Any], bool] | None = None,
                 extra: dict | None = None):
        bounds = [(operator.gt, gt, ">", "(", "exclusiveMinimum"),
                  (operator.ge, ge, ">=", "[", "minimum"),
                  (operator.lt, lt, "<", ")", "exclusiveMaximum"),
                  (operator.le, le, "<=", "]", "maximum")]
        self.bounds = [b for b in bounds if b[1] is not None]
        self.test, self.extra = test, extra or {}
        if len(self.bounds) == 2:  # a low and a high bound: an interval
            (_, low, _, left, _), (_, high, _, right, _) = self.bounds
            span = f"in {left}{low}, {high}{right}"
        else:
            span = " ".join(f"{sign} {limit}" for _, limit, sign, _, _ in self.bounds)
        self.words = words or " ".join(w for w in (noun, span) if w)

    def parse(self, value, path):
        ok = is_number(value) and all(op(value, limit) for op, limit, *_ in self.bounds)
        if not (ok and (self.test is None or self.test(value))):
            infinite = isinstance(value, float) and not math.isfinite(value)
            fail(path, self.words, value, " (a finite number is needed: inf and nan are refused)"
                 if infinite else "")
        return value

    def schema(self):
        # finite limits where none are given: validators take YAML's .inf for a number otherwise
        finite = {"minimum": -sys.float_info.max, "maximum": sys.float_info.max}
        for _, limit, _, _, key in self.bounds:
            finite.pop(key.replace("exclusiveM", "m"), None)
        return {"type": "number", **finite, **{key: limit for _, limit, _, _, key in self.bounds},
                **self.extra}


class Bool(Rule):
    def parse(self, value, path):
        if not isinstance(value, bool):
            fail(path, "true or false", value)
        return value

    def schema(self):
        return {"type": "boolean"}


class Str(Rule):
    """A non-empty string (or null, with null=True), at most max_len characters, matching each
    (words, regex) check in turn: the first it fails is the rule the message names."""

    def __init__(self, *checks: tuple[str, str], words: str = "a non-empty string",
                 null: bool = False, max_len: int | None = None):
        self.checks, self.words, self.null, self.max_len = checks, words, null, max_len

    def parse(self, value, path):
        if value is None and self.null:
            return None
        if not (isinstance(value, str) and value):
            fail(path, self.words + (" or null" if self.null else ""), value)
        if self.max_len is not None and len(value) > self.max_len:
            fail(path, f"at most {self.max_len} characters long", value)
        for words, regex in self.checks:
            if not re.fullmatch(regex, value):
                fail(path, words, value)
        return value

    def schema(self):
        s: dict = {"type": ["string", "null"] if self.null else "string", "minLength": 1}
        if self.max_len is not None:
            s["maxLength"] = self.max_len
        if self.checks:
            s["allOf"] = [{"pattern": f"^(?:{regex})$"} for _, regex in self.checks]
        return s


class Choice(Rule):
    """One of `options`: a sequence, or a callable returning one (a registry, read when used,
    so STEs, models and datasets registered later count)."""

    def __init__(self, options: Iterable[str] | Callable[[], Iterable[str]]):
        self.options = options

    def names(self) -> list[str]:
        return list(self.options() if callable(self.options) else self.options)

    def parse(self, value, path):
        options = self.names()
        if not (isinstance(value, str) and value in options):
            close = suggest_key(value, options) if isinstance(value, str) else ""
            raise SpecError(f"{path} must be one of {options}, but got {path}={value!r}{close}")
        return value

    def schema(self):
        return {"enum": self.names()}


class Opt(Rule):
    """null, or a value of `inner` (null meaning a default chosen later, e.g. the model's)."""

    def __init__(self, inner: Rule):
        self.inner = inner

    def parse(self, value, path):
        return None if value is None else self.inner.parse(value, path)

    def schema(self):
        s = dict(self.inner.schema())
        if isinstance(s.get("type"), str):  # type-specific keywords ignore a null
            return s | {"type": [s["type"], "null"]}
        if "enum" in s:
            return s | {"enum": [*s["enum"], None]}
        return {"anyOf": [s, {"type": "null"}]}


class ListOf(Rule):
    """A list of `item` values (checked as path[i]), returned as `to` (tuple: hashable);
    `increasing` words the rule that the items rise strictly (e.g. "increasing epochs >= 1")."""

    def __init__(self, item: Rule, *, nonempty: bool = False, unique: bool = False,
                 increasing: str | None = None, to: type = tuple):
        self.item, self.nonempty, self.unique, self.increasing = item, nonempty, unique, increasing
        self.to = to

    def parse(self, value, path):
        if not isinstance(value, (list, tuple)) or (self.nonempty and not value):
            fail(path, "a non-empty list" if self.nonempty else "a list", value)
        out = [self.item.parse(x, f"{path}[{i}]") for i, x in enumerate(value)]
        if self.unique:
            unique(out, path)
        if self.increasing and out != sorted(set(out)):
            fail(path, self.increasing, value)
        return self.to(out)

    def schema(self):
        return {"type": "array", "items": self.item.schema(),
                **({"minItems": 1} if self.nonempty else {}),
                **({"uniqueItems": True} if self.unique or self.increasing else {})}


class Tuple(Rule):
    """A fixed-length list, one rule per position, returned as a tuple."""

    def __init__(self, *items: Rule, words: str):
        self.items, self.words = items, words

    def parse(self, value, path):
        if not (isinstance(value, (list, tuple)) and len(value) == len(self.items)):
            fail(path, self.words, value)
        return tuple(r.parse(v, f"{path}[{i}]") for i, (r, v) in enumerate(zip(self.items, value)))

    def schema(self):
        n = len(self.items)
        return {"type": "array", "prefixItems": [r.schema() for r in self.items],
                "items": False, "minItems": n, "maxItems": n}


class Mapping(Rule):
    """A free-form mapping (no rule for its keys)."""

    def parse(self, value, path):
        if not isinstance(value, dict):
            fail(path, MAPPING_WORDS, value)
        return value

    def schema(self):
        return {"type": "object"}


class Section(Rule):
    """A nested dataclass `cls`, parsed field by field; null (a section with every line
    commented out) means every default, unless null=False."""

    def __init__(self, cls: type, *, null: bool = True):
        self.cls, self.null = cls, null

    def parse(self, value, path):
        if value is None and self.null:
            value = {}
        if not isinstance(value, dict):
            fail(path, MAPPING_WORDS, value)
        return parse(self.cls, value, path)

    def schema(self):
        s = object_schema(self.cls)
        return s | {"type": ["object", "null"]} if self.null else s

    def keys(self):
        return tuple(f.name for f in spec_fields(self.cls))


class FieldsOf(Rule):
    """A mapping of some of `cls`'s fields (e.g. RunSpec's), each value through that field's
    rule, kept as a dict (a copy); null means empty."""

    def __init__(self, cls: type, names: Iterable[str]):
        self.cls, self.names = cls, tuple(names)

    def parse(self, value, path):
        value = {} if value is None else value
        if not isinstance(value, dict):
            fail(path, MAPPING_WORDS, value)
        check_keys(value, self.names, path)
        return {k: rule_of(self.cls, k).parse(copy.deepcopy(v), join(path, k))
                for k, v in value.items()}

    def schema(self):
        s = object_schema(self.cls, self.names)
        s.pop("required")
        return s | {"type": ["object", "null"]}

    def keys(self):
        return self.names


# -- declaring, parsing and dumping fields ------------------------------------------------------
def fld(rule: Rule, help: str = "", *, default: Any = MISSING, default_factory: Any = MISSING,
        example: str | None = None, derive: Callable[[dict], Any] | None = None,
        tail: bool = False):
    """A dataclass field with its rule and a one-line help (the JSON Schema's description).
    No default: required ("X is required (e.g. <example>)"). derive(kw): the value of an absent
    field from those before it. tail: placed after the other fields in a spec's dict."""
    meta = {"rule": rule, "help": help, "example": example, "derive": derive, "tail": tail}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=meta)


def spec_fields(cls: type, names: Iterable[str] | None = None) -> list[dataclasses.Field]:
    """cls's fields in spec order (tail fields last), or just `names` (in that order)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if names is not None:
        return [fields[n] for n in names]
    return sorted(fields.values(), key=lambda f: bool(f.metadata.get("tail")))


def rule_of(cls: type, name: str) -> Rule:
    return {f.name: f for f in dataclasses.fields(cls)}[name].metadata["rule"]


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not MISSING else f.default


def parse(cls: type, d: dict, path: str = "", extra_keys: Iterable[str] = ()) -> Any:
    """The dataclass `cls` from mapping d: unknown keys, then required keys, then each field
    through its rule, then the class's cross-field `_check(path)`. d is not modified."""
    fields = spec_fields(cls)
    check_keys(d, [*extra_keys, *(f.name for f in fields)], path)
    for f in fields:
        if f.name not in d and _default(f) is MISSING:
            example = f.metadata.get("example")
            raise SpecError(f"{join(path, f.name)} is required"
                            + (f" (e.g. {example})" if example else ""))
    kw: dict[str, Any] = {}
    for f in fields:
        if f.name in d:
            kw[f.name] = f.metadata["rule"].parse(d[f.name], join(path, f.name))
        elif f.metadata.get("derive"):
            kw[f.name] = f.metadata["derive"](kw)
        else:
            kw[f.name] = _default(f)
    obj = cls(**kw)
    if hasattr(obj, "_check"):
        obj._check(path)
    return obj


def dump(value: Any) -> Any:
    """Plain data (dicts, lists, scalars) of a spec value: what YAML and JSON round-trip."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if hasattr(value, "to_dict"):
            return value.to_dict()
        return {f.name: dump(getattr(value, f.name)) for f in spec_fields(type(value))}
    if isinstance(value, (list, tuple)):
        return [dump(v) for v in value]
    if isinstance(value, dict):
        return {k: dump(v) for k, v in value.items()}
    return copy.deepcopy(value)


def object_schema(cls: type, names: Iterable[str] | None = None) -> dict:
    """The JSON Schema of cls's fields (or just `names`): rules, required keys, help, defaults."""
    props, required = {}, []
    for f in spec_fields(cls, names):
        s = dict(f.metadata["rule"].schema())
        if f.metadata.get("help"):
            s["description"] = f.metadata["help"]
        default = _default(f)
        if default is MISSING:
            required.append(f.name)
        elif not f.metadata.get("derive"):
            s["default"] = dump(default)
        props[f.name] = s
    return {"type": "object", "properties": props, "required": required,
            "additionalProperties": False}

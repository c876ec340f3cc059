"""A network sweep's search space: `search:` maps tunable RunSpec fields to Optuna distributions
(`Param`, or a bare list of values: a choice), each checked where it is declared, beside the
reserved keys `method` (how each cell's study samples) and `storage` (where the studies live);
`suggest` samples it. No Optuna import here."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

from .base import NO_PASSWORD
from .errors import MAPPING_WORDS, SpecError, check_keys, fail, is_number, join
from .fields import (Bool, Choice, Int, ListOf, Num, Opt, Rule, Str, fld, object_schema, parse,
                     rule_of, spec_fields)
from .run import RunSpec

__all__ = ["Param", "Search", "SearchSpace", "Sampling", "suggest", "TUNABLE", "INT_TUNABLE",
           "DISTS", "METHODS", "RESERVED"]

TUNABLE = ("lr", "momentum", "weight_decay", "batch_size", "gamma", "alpha_scale")
INT_TUNABLE = ("batch_size",)  # sampled with dist int or choice only
DISTS = {"loguniform": ("low", "high"), "uniform": ("low", "high"),
         "int": ("low", "high", "log", "step"), "choice": ("values",)}
EXAMPLES = {"dist": "dist: loguniform", "low": "low: 0.001", "high": "high: 0.1",
            "values": "values: [0.0, 1.0e-4]"}
METHODS = ("tpe", "random", "grid")
RESERVED = ("method", "storage")  # `search:` keys that are not tunable fields
LIST_WORDS = f"{MAPPING_WORDS} or a list of values"


class Scalar(Rule):
    """A choice candidate: what YAML holds (RunSpec then checks it as the field it sets)."""

    def parse(self, value, path):
        if not (value is None or isinstance(value, (str, bool)) or is_number(value)):
            fail(path, "a number, string, bool or null", value)
        return value


@dataclass(frozen=True)
class Param:
    """One search dimension (Optuna distribution); which keys it takes depends on `dist`."""
    dist: str = fld(Choice(DISTS), "loguniform | uniform | int | choice")
    low: float | int | None = fld(Num(), "loguniform: 0 < low < high; uniform: low < high; int: "
                                  "low <= high", default=None)
    high: float | int | None = fld(Num(), "the upper end (included)", default=None)
    log: bool = fld(Bool(), "int only: sample on a log scale (needs low >= 1)", default=False)
    step: int | None = fld(Opt(Int(ge=1)), "int only: None means 1", default=None)
    values: tuple = fld(ListOf(Scalar(), nonempty=True, unique=True), "choice only: the "
                        "candidates", default=())

    def to_dict(self) -> dict:
        d = {"dist": self.dist, "low": self.low, "high": self.high, "log": self.log,
             "step": self.step, "values": list(self.values)}
        return {k: d[k] for k in ("dist", *DISTS[self.dist]) if not (k == "step" and d[k] is None)}

    def endpoints(self) -> list[tuple[str, Any]]:
        """(sub-path, value) pairs a trial can reach at the extremes: what RunSpec must accept;
        the sub-path as written ('.values[1]', or '[1]' for a bare list, '.low')."""
        if self.dist == "choice":
            at = "" if getattr(self, "_listed", False) else ".values"
            return [(f"{at}[{i}]", v) for i, v in enumerate(self.values)]
        return [(".low", self.low), (".high", self.high)]

    @classmethod
    def parse(cls, name: str, d: Any, path: str) -> "Param":
        """The Param of `search.<name>`: its dist's keys, each through its field's rule; a bare
        list is a choice over its values."""
        if isinstance(d, list):
            p = cls("choice", values=rule_of(cls, "values").parse(d, path))
            object.__setattr__(p, "_listed", True)  # so later errors name search.lr[1], as written
            return p
        if not isinstance(d, dict):
            fail(path, LIST_WORDS, d)
        if "dist" not in d:
            raise SpecError(f"{path}.dist is required (e.g. {EXAMPLES['dist']})")
        dist = rule_of(cls, "dist").parse(d["dist"], f"{path}.dist")
        if name in INT_TUNABLE and dist not in ("int", "choice"):
            fail(f"{path}.dist", f"'int' or 'choice' for the int field {name}", dist)
        check_keys(d, ("dist", *DISTS[dist]), f"{path} (dist {dist})")
        for key in DISTS[dist]:
            if key in EXAMPLES and key not in d:
                raise SpecError(f"{path}.{key} is required (e.g. {EXAMPLES[key]})")
        kw = {k: cls._rule(k, dist).parse(v, f"{path}.{k}") for k, v in d.items() if k != "dist"}
        p = cls(dist, **kw)
        if dist == "loguniform" and p.low <= 0:
            fail(f"{path}.low", "> 0 for loguniform", p.low)
        if dist != "choice" and ((p.high <= p.low) if dist != "int" else (p.high < p.low)):
            fail(f"{path}.high", f"{'>=' if dist == 'int' else '>'} {path}.low={p.low!r} for {dist}",
                 p.high)
        if p.log and p.low < 1:
            fail(f"{path}.low", ">= 1 for int with log: true", p.low)
        if p.log and p.step not in (None, 1):
            fail(f"{path}.step", "1 (or absent) with log: true (Optuna)", p.step)
        return p

    @classmethod
    def _rule(cls, key: str, dist: str) -> Rule:
        return Int(ge=None) if dist == "int" and key in ("low", "high") \
            else rule_of(cls, key)

    @classmethod
    def schema(cls, name: str) -> dict:
        """JSON Schema of `search.<name>`: per dist its keys; endpoints and candidates also
        within the RunSpec field's own rule."""
        field = rule_of(RunSpec, name)
        value = field.inner.schema() if isinstance(field, Opt) else field.schema()
        help = {f.name: f.metadata["help"] for f in spec_fields(cls)}
        branches = []
        for dist, keys in DISTS.items():
            if name in INT_TUNABLE and dist not in ("int", "choice"):
                continue
            props = {"dist": {"const": dist}}
            for key in keys:
                s = cls._rule(key, dist).schema()
                if key in ("low", "high"):
                    s = {"allOf": [{"type": "integer"} if dist == "int" else s, value]}
                elif key == "values":
                    s["items"] = field.schema()
                props[key] = s | {"description": help[key]}
            branches.append({"if": {"properties": {"dist": {"const": dist}}},
                             "then": {"properties": props, "additionalProperties": False,
                                      "required": [k for k in keys if k in EXAMPLES]}})
        dists = [b["if"]["properties"]["dist"]["const"] for b in branches]
        listed = rule_of(cls, "values").schema() | {"items": field.schema()}
        # if/then/else, not anyOf: a validator then reports the mapping's own errors
        return {"description": "a distribution (dist: ...), or a list of values: a choice",
                "if": {"type": "array"}, "then": listed,
                "else": {"type": "object", "required": ["dist"], "allOf": branches,
                         "properties": {"dist": {"enum": dists, "description": help["dist"]}}}}


# the same rule as mlflow.tracking_uri's refusal, in an Optuna user's words
STORAGE = Str(("an SQLAlchemy database URL (e.g. postgresql+psycopg2://user@host/db or "
               "sqlite:////abs/optuna.db)", r"[A-Za-z][\w+.-]*://.+"),
              ("a URL without a password (it would be saved with the sweep; give it to the "
               "database driver instead: PGPASSWORD or ~/.pgpass for postgresql)", NO_PASSWORD[1]),
              null=True)


@dataclass(frozen=True)
class Sampling:
    """The reserved `search:` keys: how each cell's Optuna study samples, and where it lives."""
    method: str = fld(Choice(METHODS), "tpe: Bayesian, learns from the cell's trials; random: a "
                      "seeded baseline; grid: each cell runs every combination of the value "
                      "lists once", default="tpe")
    storage: str | None = fld(STORAGE, "Optuna RDB URL (SQLAlchemy) shared by the cells' "
                              "studies; None: sqlite:///<storage>/<name>/optuna.db",
                              default=None)


class SearchSpace(dict):
    """`spec.search`: tunable field -> Param (what `suggest` and the sweep iterate), with the
    reserved keys as attributes, so a space stays a plain mapping of distributions."""

    def __init__(self, params: dict | None = None, method: str = "tpe",
                 storage: str | None = None):
        super().__init__(params or {})
        self.method, self.storage = method, storage

    def __eq__(self, other):  # dict's == would ignore method and storage
        return (dict.__eq__(self, other) is True
                and (self.method, self.storage) == (getattr(other, "method", "tpe"),
                                                    getattr(other, "storage", None)))

    def __ne__(self, other):  # dict defines its own !=
        return not self == other

    __hash__ = None  # mutable, as a dict

    def grid(self) -> dict[str, list]:
        """{field: its values}: the grid whose product each cell runs (choice Params only)."""
        return {name: list(p.values) for name, p in self.items()}

    def grid_size(self) -> int:
        return math.prod(len(p.values) for p in self.values())

    def to_dict(self) -> dict:
        """Plain data: method and storage first, then each Param's mapping."""
        return {"method": self.method, "storage": self.storage,
                **{name: p.to_dict() for name, p in self.items()}}


class Search(Rule):
    """`search:` tunable RunSpec field -> Param, plus `method` and `storage` (Sampling), as a
    SearchSpace; `fixed` are the RunSpec fields that are set elsewhere (train, the cell), named
    as such when given here."""

    def __init__(self, fixed: Iterable[str]):
        self.fixed = tuple(fixed)

    def parse(self, value, path):
        d = {} if value is None else value
        if not isinstance(d, dict):
            fail(path, MAPPING_WORDS, d)
        for key in d:  # a RunSpec field that is not tunable gets its own message below
            if key not in self.fixed:
                check_keys({key: None}, (*RESERVED, *TUNABLE), path)
        how = parse(Sampling, {k: d[k] for k in RESERVED if k in d}, path)
        out = SearchSpace(method=how.method, storage=how.storage)
        for name, entry in d.items():
            if name in RESERVED:
                continue
            if name not in TUNABLE:
                raise SpecError(f"{join(path, name)} is not tunable: search keys must be in "
                                f"{list(TUNABLE)}, but got {join(path, name)} (fix it in "
                                f"train.{name}, or as a cell)")
            out[name] = p = Param.parse(name, entry, join(path, name))
            if how.method == "grid" and p.dist != "choice":
                fail(f"{join(path, name)}.dist", f"'choice' for {join(path, 'method')} grid",
                     p.dist, f" (list the values: {name}: [a, b, c])")
        return out

    def schema(self):
        grid = {name: {"if": {"type": "object"}, "then": {"properties": {"dist": {
            "const": "choice", "description": "grid: a choice (or a bare list)"}}}}
            for name in TUNABLE}
        return {"type": "object", "additionalProperties": False,
                "properties": object_schema(Sampling)["properties"]
                | {name: Param.schema(name) for name in TUNABLE},
                "if": {"required": ["method"], "properties": {"method": {"const": "grid"}}},
                "then": {"properties": grid}}


def suggest(trial, search: dict) -> dict:
    """Optuna define-by-run space: one suggest_* call per search entry (Param or its dict, the
    reserved keys of a dumped space skipped), in order; returns the params. Module-level, so
    functools.partial(suggest, search=...) pickles."""
    params = {}
    for name, p in search.items():
        if name in RESERVED:
            continue
        p = p.to_dict() if isinstance(p, Param) else p
        if p["dist"] in ("loguniform", "uniform"):
            params[name] = trial.suggest_float(name, float(p["low"]), float(p["high"]),
                                               log=p["dist"] == "loguniform")
        elif p["dist"] == "int":
            params[name] = trial.suggest_int(name, p["low"], p["high"], step=p.get("step") or 1,
                                             log=bool(p.get("log", False)))
        elif p["dist"] == "choice":
            params[name] = trial.suggest_categorical(name, list(p["values"]))
        else:
            raise SpecError(f"search.{name}.dist must be one of {list(DISTS)}, but got {p['dist']!r}")
    return params

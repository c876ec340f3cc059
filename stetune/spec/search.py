"""A network sweep's search space: `search:` maps tunable RunSpec fields to Optuna distributions
(`Param`), each checked where it is declared; `suggest` samples it. No Optuna import here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from .errors import MAPPING_WORDS, SpecError, check_keys, fail, is_number, join
from .fields import Bool, Choice, Int, ListOf, Num, Opt, Rule, fld, rule_of, spec_fields
from .run import RunSpec

__all__ = ["Param", "Search", "suggest", "TUNABLE", "INT_TUNABLE", "DISTS"]

TUNABLE = ("lr", "momentum", "weight_decay", "batch_size", "gamma", "alpha_scale")
INT_TUNABLE = ("batch_size",)  # sampled with dist int or choice only
DISTS = {"loguniform": ("low", "high"), "uniform": ("low", "high"),
         "int": ("low", "high", "log", "step"), "choice": ("values",)}
EXAMPLES = {"dist": "dist: loguniform", "low": "low: 0.001", "high": "high: 0.1",
            "values": "values: [0.0, 1.0e-4]"}


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
        """(sub-path, value) pairs a trial can reach at the extremes: what RunSpec must accept."""
        if self.dist == "choice":
            return [(f"values[{i}]", v) for i, v in enumerate(self.values)]
        return [("low", self.low), ("high", self.high)]

    @classmethod
    def parse(cls, name: str, d: Any, path: str) -> "Param":
        """The Param of `search.<name>`: its dist's keys, each through its field's rule."""
        if not isinstance(d, dict):
            fail(path, MAPPING_WORDS, d)
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
        return {"type": "object", "required": ["dist"], "allOf": branches,
                "properties": {"dist": {"enum": dists, "description": help["dist"]}}}


class Search(Rule):
    """`search:` tunable RunSpec field -> Param; `fixed` are the RunSpec fields that are set
    elsewhere (train, the cell), named as such when given here."""

    def __init__(self, fixed: Iterable[str]):
        self.fixed = tuple(fixed)

    def parse(self, value, path):
        d = {} if value is None else value
        if not isinstance(d, dict):
            fail(path, MAPPING_WORDS, d)
        for key in d:  # a RunSpec field that is not tunable gets its own message below
            if key not in self.fixed:
                check_keys({key: None}, TUNABLE, path)
        out = {}
        for name, entry in d.items():
            if name not in TUNABLE:
                raise SpecError(f"{join(path, name)} is not tunable: search keys must be in "
                                f"{list(TUNABLE)}, but got {join(path, name)} (fix it in "
                                f"train.{name}, or as a cell)")
            out[name] = Param.parse(name, entry, join(path, name))
        return out

    def schema(self):
        return {"type": "object", "additionalProperties": False,
                "properties": {name: Param.schema(name) for name in TUNABLE}}


def suggest(trial, search: dict) -> dict:
    """Optuna define-by-run space: one suggest_* call per search entry (Param or its dict), in
    order; returns the params. Module-level, so functools.partial(suggest, search=...) pickles."""
    params = {}
    for name, p in search.items():
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

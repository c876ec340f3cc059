"""Spec field machinery (stetune/spec/fields.py): every float field rejects inf and nan, int
fields have upper bounds, the JSON Schema generated from the same rules accepts every preset and
rejects invalid files, and a new kind's spec class reuses all of it from its field declarations."""

from __future__ import annotations

import argparse
import copy
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import jsonschema
import pytest
import yaml

from stetune.spec import (Placement, RepulsionSpec, RunSpec, SpecError, SweepSpec,
                          TheorySweepSpec, json_schema, load_sweep_spec, register_spec_kind,
                          spec_from_dict)
from stetune.spec.errors import is_number
from stetune.spec.fields import (Choice, FieldsOf, Int, ListOf, Num, Opt, Section, Tuple, fld,
                                 spec_fields)
from stetune.spec.load import SPEC_KINDS
from stetune.spec.search import DISTS, RESERVED, Param, Scalar, Search
from test_sweep_spec import BASE as NETWORK

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted((ROOT / "sweeps").glob("*.yaml"))
THEORY = {"kind": "theory", "name": "tiny", "stes": ["relu"], "lrs": [0.1], "sizes": [[5, 8]]}
REPULSION = {"kind": "repulsion", "name": "tiny-rep", "model": "lenet5", "dataset": "digits",
             "bits": 2, "start": {"ste": "clipped_relu", "train": {"epochs": 2, "lr": 0.05}},
             "stes": ["identity"], "probe": {"epochs": 2, "lr": 0.01},
             "train": {"limit": 400, "batch_size": 64}}
BASES = [(SweepSpec, NETWORK), (TheorySweepSpec, THEORY), (RepulsionSpec, REPULSION)]


# -- paths of float fields, from the field metadata ------------------------------------------------
def float_paths(cls: type, base: dict, names=None, prefix: str = "") -> list[str]:
    """Every path of `base` (a valid spec dict of cls) where a float goes, found by walking the
    fields' rules: a new float field is covered without touching this test."""
    out = []
    for f in spec_fields(cls, names):
        path = f"{prefix}.{f.name}" if prefix else f.name
        out += _walk(f.metadata["rule"], path, base.get(f.name))
    return out


def _walk(rule, path: str, value) -> list[str]:
    if isinstance(rule, Opt):
        return _walk(rule.inner, path, value)
    if isinstance(rule, (Num, Scalar)):  # Scalar: a choice candidate, a number among others
        return [path]
    if isinstance(rule, ListOf):
        return _walk(rule.item, f"{path}[0]", None)
    if isinstance(rule, Tuple):
        return [p for i, r in enumerate(rule.items) for p in _walk(r, f"{path}[{i}]", None)]
    if isinstance(rule, Section):
        return float_paths(rule.cls, value or {}, prefix=path)
    if isinstance(rule, FieldsOf):
        return float_paths(rule.cls, value or {}, rule.names, prefix=path)
    if isinstance(rule, Search):  # each entry of the base's search space: its dist's keys
        return [p for name, entry in (value or {}).items() if name not in RESERVED
                for p in float_paths(Param, entry, DISTS[entry["dist"]], prefix=f"{path}.{name}")]
    return []


def _set(d: dict, path: str, value) -> None:
    keys = [int(i) if i else k for k, i in re.findall(r"(\w+)|\[(\d+)\]", path)]
    for key in keys[:-1]:
        if isinstance(d, dict) and d.get(key) is None:
            d[key] = {}
        d = d[key]
    d[keys[-1]] = value


NON_FINITE = [math.inf, -math.inf, math.nan]
KNOWN = {  # floats each class must have: the enumeration cannot pass by finding none
    SweepSpec: {"train.lr", "train.momentum", "train.weight_decay", "train.gamma", "train.alpha",
                "train.alpha_scale", "pretrain.lr", "asha.reduction_factor",
                "resources.cpus_per_trial", "resources.gpus_per_trial", "search.lr.low",
                "search.lr.high", "search.momentum.high", "search.weight_decay.values[0]"},
    TheorySweepSpec: {"lrs[0]", "eps", "radius", "tol"},
    RepulsionSpec: {"probe.lr", "schedule.lr", "repelled_factor", "start.train.lr",
                    "start.train.momentum", "train.alpha_scale", "resources.gpus_per_trial"},
}
CASES = [(cls, base, path) for cls, base in BASES for path in float_paths(cls, base)]


def test_float_fields_are_found_from_the_metadata():
    for cls, base in BASES:
        found = set(float_paths(cls, base))
        assert KNOWN[cls] <= found, KNOWN[cls] - found
    assert set(float_paths(RunSpec, {})) == {"lr", "momentum", "weight_decay", "gamma", "alpha",
                                             "alpha_scale"}


@pytest.mark.parametrize("cls, base, path", CASES, ids=[f"{c.__name__}:{p}" for c, _, p in CASES])
def test_every_float_field_rejects_inf_and_nan(cls, base, path):
    for value in NON_FINITE:
        d = copy.deepcopy(base)
        _set(d, path, value)
        with pytest.raises(SpecError) as e:
            cls.from_dict(d)
        assert f"{path} must be " in str(e.value) and f"{path}={value!r}" in str(e.value), str(e.value)


@pytest.mark.parametrize("name", float_paths(RunSpec, {}))
def test_every_run_spec_float_rejects_inf_and_nan(name):
    for value in NON_FINITE:
        with pytest.raises(SpecError, match=rf"^{name} must be .*, but got {name}={value!r}"):
            RunSpec(**{name: value})


def test_is_number():
    assert is_number(1) and is_number(-2.5)
    assert not any(is_number(x) for x in (True, False, math.inf, -math.inf, math.nan, "1", None))


def test_theory_cli_options_use_the_spec_rules():
    from stetune.theory.cli import validate

    ok = dict(m=5, n=8, lr=0.1, steps=10, batch=None, eps=0.0, tol=1e-6, seed=0)
    assert validate(argparse.Namespace(**ok)) is None
    for key, value, message in [("m", 0, "m must be an int >= 1 (m: hidden units), but got m=0"),
                                ("n", 1, "n must be an int >= 2"), ("lr", math.inf, "lr=inf"),
                                ("eps", math.nan, "eps=nan"), ("tol", -1.0, "tol must be"),
                                ("steps", 10**20, "steps must be an int <= ")]:
        assert message in validate(argparse.Namespace(**(ok | {key: value})))


# -- bounds on ints and names -------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    ({"epochs": 10**20}, "epochs must be an int <= 100000, but got epochs=100000000000000000000"),
    ({"batch_size": 10**10}, "batch_size must be an int <= 1000000"),
    ({"milestones": [10**9]}, "milestones[0] must be an int <= 100000"),
    ({"seed": 2**64}, "seed must be an int <= 4294967295"),
])
def test_huge_run_spec_ints_are_rejected(kwargs, message):
    with pytest.raises(SpecError) as e:
        RunSpec(**kwargs)
    assert message in str(e.value)


@pytest.mark.parametrize("path, value, message", [
    ("train.epochs", 10**20, "train.epochs must be an int <= 100000"),
    ("train.batch_size", 10**10, "train.batch_size must be an int <= 1000000"),
    ("budget.trials_per_cell", 10**20, "budget.trials_per_cell must be an int <= 100000"),
    ("replicates.seeds", [2**40], "replicates.seeds[0] must be an int <= 4294967295"),
    ("name", "a" * 101, "name must be at most 100 characters long"),
    ("name", "-rf", "name must be a name not starting with '-'"),
])
def test_huge_ints_and_bad_names_are_rejected(path, value, message):
    d = copy.deepcopy(NETWORK)
    _set(d, path, value)
    with pytest.raises(SpecError) as e:
        SweepSpec.from_dict(d)
    assert message in str(e.value)
    assert SweepSpec.from_dict(NETWORK | {"name": "a" * 100}).name == "a" * 100


def test_huge_theory_and_repulsion_ints_are_rejected():
    with pytest.raises(SpecError, match="steps must be an int <= 10000000"):
        TheorySweepSpec.from_dict(THEORY | {"steps": 10**20})
    with pytest.raises(SpecError, match=re.escape("sizes[0][0] must be an int <= 10000")):
        TheorySweepSpec.from_dict(THEORY | {"sizes": [[10**20, 8]]})
    with pytest.raises(SpecError, match="probe.epochs must be an int <= 100000"):
        RepulsionSpec.from_dict(REPULSION | {"probe": {"epochs": 10**20}})


# -- the JSON Schema ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def validator():
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_schema_accepts_every_preset(validator, path):
    errors = [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
    assert not errors


def _without(d: dict, key: str) -> dict:
    return {k: v for k, v in d.items() if k != key}


QUICK = yaml.safe_load((ROOT / "sweeps" / "quickstart.yaml").read_text())
INVALID_FILES = [
    (QUICK | {"nmae": "x"}, "'nmae' was unexpected"),
    (QUICK | {"budget": {"trials_per_cell": 0}}, "0 is less than the minimum of 1"),
    (QUICK | {"cells": {"ste": ["nope"], "bits": [2]}}, "'nope' is not one of"),
    (QUICK | {"cells": {"ste": ["relu"], "bits": [9]}}, "9"),
    (QUICK | {"max_concurrent": "2"}, "'2' is not of type 'integer'"),
    (QUICK | {"train": {"epochs": 10**20}}, "is greater than the maximum of 100000"),
    (QUICK | {"search": {"lr": {"dist": "loguniform", "low": 0.1}}}, "'high' is a required property"),
    (QUICK | {"search": {"epochs": {"dist": "int", "low": 1, "high": 3}}}, "'epochs' was unexpected"),
    (QUICK | {"search": {"method": "gird", "lr": [0.1]}}, "'gird' is not one of ['tpe', 'random', 'grid']"),
    (QUICK | {"search": {"method": "grid", "lr": QUICK["search"]["lr"]}}, "'choice' was expected"),
    (QUICK | {"search": {"storage": "postgresql://u:pw@db/optuna", "lr": [0.1]}}, "does not match"),
    (QUICK | {"search": {"storage": "optuna.db", "lr": [0.1]}}, "does not match"),
    (QUICK | {"search": {"lr": []}}, "[] should be non-empty"),
    (QUICK | {"search": {"lr": [0.1, -1]}}, "-1 is less than or equal to the minimum of 0"),
    (QUICK | {"search": {"lr": 0.1}}, "0.1 is not of type 'object'"),
    (QUICK | {"kind": "nope"}, "'nope' is not one of"),
    (THEORY | {"lrs": [-1]}, "-1 is less than or equal to the minimum of 0"),
    (THEORY | {"train": {}}, "'train' was unexpected"),
    (_without(REPULSION, "start"), "'start' is a required property"),
    (REPULSION | {"bits": "float"}, "'float' is not of type 'integer'"),
]


@pytest.mark.parametrize("d, fragment", INVALID_FILES, ids=[f for _, f in INVALID_FILES])
def test_schema_rejects_invalid_files(validator, d, fragment):
    errors = [e.message for e in validator.iter_errors(d)]
    assert any(fragment in m for m in errors), errors
    with pytest.raises(SpecError):  # and the loader agrees
        spec_from_dict(d)


def test_schema_describes_fields_and_lists_the_registries(validator):
    net = json_schema()["$defs"]["network"]
    assert net["required"] == ["name", "model", "dataset", "cells"]
    assert net["properties"]["max_concurrent"]["description"].startswith("two trials at once")
    assert "lenet5" in net["properties"]["model"]["enum"]
    budget = net["properties"]["budget"]["properties"]["trials_per_cell"]
    assert budget["default"] is None and "the grid size for search.method grid" in budget["description"]
    search = net["properties"]["search"]["properties"]
    assert search["method"]["enum"] == ["tpe", "random", "grid"] and search["method"]["default"] == "tpe"
    assert "grid: each cell runs every combination" in search["method"]["description"]
    assert search["storage"]["default"] is None and "SQLAlchemy" in search["storage"]["description"]
    assert search["lr"]["then"]["type"] == "array" and "a list of values" in search["lr"]["description"]


def test_schema_accepts_the_search_methods_and_list_shorthand(validator):
    for search in ({"method": "grid", "lr": [0.01, 0.1], "weight_decay": {"dist": "choice", "values": [0.0]}},
                   {"method": "random", "storage": "postgresql+psycopg2://me@db/optuna", "lr": [0.1]},
                   {"method": "tpe", "storage": None, "lr": QUICK["search"]["lr"]}):
        d = QUICK | {"search": search, "budget": None}
        assert not [e.message for e in validator.iter_errors(d)], search
        spec_from_dict(d)  # and the loader agrees


# -- a new kind: its spec class is only its fields ------------------------------------------------
@dataclass(frozen=True)
class Knob:
    size: int = fld(Int(ge=1, le=10), "how big", default=1)


@dataclass(frozen=True, kw_only=True)
class ToySpec(Placement):
    """A toy kind for the tests."""
    kind: ClassVar[str] = "toy"

    rate: float = fld(Num(gt=0), "a rate", example="rate: 0.5")
    colors: tuple[str, ...] = fld(ListOf(Choice(["red", "blue"]), nonempty=True, unique=True),
                                  "colors to try", default=("red",))
    knob: Knob = fld(Section(Knob), "a nested section", default=Knob())


TOY = {"kind": "toy", "name": "toy-1", "rate": 0.5, "colors": ["blue", "red"], "knob": {"size": 3}}


@pytest.fixture
def toy_kind():
    register_spec_kind(ToySpec)
    yield ToySpec
    SPEC_KINDS.pop("toy")


def test_toy_spec_parses_rejects_and_round_trips():
    spec = ToySpec.from_dict(TOY)
    assert (spec.rate, spec.colors, spec.knob.size, spec.storage) == (0.5, ("blue", "red"), 3, "runs")
    assert spec.to_dict() == {"kind": "toy", "name": "toy-1", "rate": 0.5, "colors": ["blue", "red"],
                              "knob": {"size": 3}, "storage": "runs",
                              "mlflow": {"tracking_uri": None, "experiment": None}}
    assert ToySpec.from_dict(yaml.safe_load(yaml.safe_dump(spec.to_dict()))) == spec
    assert spec.resolved_experiment() == "toy-1"
    for change, message in [
            ({"rate": -1}, "rate must be a number > 0, but got rate=-1"),
            ({"rate": math.nan}, "rate must be a number > 0, but got rate=nan"),
            ({"rate": "1e-3"}, "rate must be a number > 0, but got rate='1e-3' (a string: YAML"),
            ({"knob": {"size": 11}}, "knob.size must be an int <= 10, but got knob.size=11"),
            ({"knob": {"sise": 2}}, "unknown key 'sise' in knob (did you mean 'size'?)"),
            ({"colors": ["blue", "bleu"]}, "colors[1] must be one of ['red', 'blue'], but got "
                                          "colors[1]='bleu' (did you mean 'blue'?)"),
            ({"colour": ["red"]}, "unknown key 'colour' at the top level (did you mean 'colors'?)"),
            ({"kind": "theory"}, "kind must be 'toy' for a toy spec"),
            ({"name": "a b"}, "name must be a name of characters [A-Za-z0-9_.-]")]:
        with pytest.raises(SpecError) as e:
            ToySpec.from_dict(TOY | change)
        assert message in str(e.value)
    with pytest.raises(SpecError, match=re.escape("rate is required (e.g. rate: 0.5)")):
        ToySpec.from_dict(_without(TOY, "rate"))


def test_toy_kind_registers_and_loads_by_kind(toy_kind, tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(TOY))
    spec = load_sweep_spec(path, ["knob.size=5", "rate=0.25"])
    assert isinstance(spec, ToySpec) and spec.knob.size == 5 and spec.rate == 0.25
    with pytest.raises(SpecError, match="toy.yaml: knob.size must be an int <= 10"):
        load_sweep_spec(path, ["knob.size=50"])
    register_spec_kind(ToySpec)  # again: a no-op

    @dataclass(frozen=True, kw_only=True)
    class Other(Placement):
        kind: ClassVar[str] = "toy"

    with pytest.raises(ValueError, match="spec kinds must be unique"):
        register_spec_kind(Other)
    schema = json_schema()
    assert "toy" in schema["$defs"]
    validator = jsonschema.Draft202012Validator(schema)
    assert not list(validator.iter_errors(TOY))
    assert list(validator.iter_errors(TOY | {"knob": {"size": 11}}))
    assert list(validator.iter_errors(_without(TOY, "rate")))

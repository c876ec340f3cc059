"""Sweep spec (stetune/spec/sweep.py): presets, round trip, overrides, error messages, suggest()."""

from __future__ import annotations

import copy
import dataclasses
import functools
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stetune.models import list_models
from stetune.quant import list_stes, parse_bits
from stetune.spec import (RunSpec, SpecError, SweepSpec, apply_overrides, load_sweep_spec,
                          suggest)

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted(p for p in (ROOT / "sweeps").glob("*.yaml")  # network kind; theory: test_theory_sweep
                 if yaml.safe_load(p.read_text()).get("kind", "network") == "network")

# A valid spec using every section and every distribution: the base the invalid cases mutate.
BASE = {
    "name": "prop-test", "model": "lenet5", "dataset": "digits",
    "cells": {"ste": ["relu", "clipped_relu"], "bits": [2, "float"]},
    "search": {
        "lr": {"dist": "loguniform", "low": 0.01, "high": 0.3},
        "momentum": {"dist": "uniform", "low": 0.8, "high": 0.95},
        "batch_size": {"dist": "int", "low": 32, "high": 128, "log": True},
        "weight_decay": {"dist": "choice", "values": [0.0, 1.0e-4, 5.0e-4]},
    },
    "train": {"epochs": 3, "batch_size": 64, "limit": 100, "milestones": [2]},
    "budget": {"trials_per_cell": 2},
    "replicates": {"seeds": [1, 2]},
    "pretrain": {"epochs": 2, "lr": 0.1},
    "asha": {"enabled": True, "grace_period": 1, "reduction_factor": 2},
    "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0.25},
    "max_concurrent": 2, "max_failures": 2, "metric": "val_acc", "mode": "max", "seed": 0,
    "storage": "runs", "mlflow": {"tracking_uri": None, "experiment": None},
}


def _set(d: dict, path: str, value) -> dict:
    *parents, last = path.split(".")
    for p in parents:
        d = d[p]
    d[last] = value
    return d


# -- presets ------------------------------------------------------------------------------------
def test_presets_exist():
    names = {p.name for p in PRESETS}
    assert {"quickstart.yaml", "fashion-mnist-lenet5.yaml", "table1-mnist-lenet5.yaml",
            "table1-cifar10-vgg11.yaml", "table1-cifar10-resnet20.yaml"} <= names


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_loads_and_validates(path):
    spec = load_sweep_spec(path)
    assert spec.name == path.stem
    assert path.read_text().startswith("#"), "each preset starts with a comment header"
    assert spec.cells() and spec.search
    for ste, bits in spec.cells():
        assert isinstance(spec.run_spec(ste, bits, 1), RunSpec)
    assert SweepSpec.from_dict(yaml.safe_load(yaml.safe_dump(spec.to_dict()))) == spec


def test_quickstart_is_small():
    spec = load_sweep_spec(ROOT / "sweeps" / "quickstart.yaml")
    assert len(spec.cells()) == 6
    assert spec.cells()[0] == ("identity", 2)
    assert spec.budget.trials_per_cell == 2 and spec.replicates.seeds == (1,)
    assert spec.epochs == 3 and spec.train["batch_size"] == 64 and spec.pretrain is None
    assert spec.asha.enabled and spec.asha.grace_period == 1
    assert spec.max_concurrent == 2 and spec.resources.cpus_per_trial == 1


def test_table1_presets_follow_the_paper():
    lenet = load_sweep_spec(ROOT / "sweeps" / "table1-mnist-lenet5.yaml")
    assert (lenet.epochs, lenet.train["batch_size"], lenet.train["milestones"]) == (50, 64, [20, 40])
    assert lenet.search["lr"].low < 0.1 < lenet.search["lr"].high
    pre = lenet.pretrain_spec()
    assert pre.bits == "float" and pre.epochs == 50
    for net in ("vgg11", "resnet20"):
        spec = load_sweep_spec(ROOT / "sweeps" / f"table1-cifar10-{net}.yaml")
        run = spec.run_spec("clipped_relu", 2, 1).resolved()
        assert (run.epochs, run.batch_size, run.lr, run.milestones, run.weight_decay) == (
            200, 128, 0.01, [80, 140], 1e-4)
        assert spec.search["lr"].low < 0.01 < spec.search["lr"].high
        assert 0 < spec.resources.gpus_per_trial < 1 and spec.resources.cpus_per_trial == 2
        assert spec.pretrain_spec().bits == "float" and set(spec.cells.bits) == {2, 4}


# -- API --------------------------------------------------------------------------------------------
def test_round_trip_and_defaults():
    d = copy.deepcopy(BASE)
    spec = SweepSpec.from_dict(d)
    assert d == BASE, "from_dict does not modify its input"
    assert SweepSpec.from_dict(spec.to_dict()) == spec
    assert yaml.safe_load(yaml.safe_dump(spec.to_dict())) == spec.to_dict()
    minimal = {k: BASE[k] for k in ("name", "model", "dataset", "cells")} | {
        "search": {"lr": BASE["search"]["lr"]}}
    m = SweepSpec.from_dict(minimal)
    assert (m.budget.trials_per_cell, m.replicates.seeds, m.max_concurrent, m.max_failures) == (4, (1, 2, 3), 2, 2)
    assert (m.asha.enabled, m.metric, m.mode, m.seed, m.storage, m.pretrain) == (True, "val_acc", "max", 0, "runs", None)
    assert SweepSpec.from_dict(minimal | {"metric": "val_loss"}).mode == "min"  # mode from the metric
    assert SweepSpec.from_dict(m.to_dict()) == m


def test_run_spec_and_pretrain_spec():
    spec = SweepSpec.from_dict(BASE)
    run = spec.run_spec("relu", 2, 7, {"lr": 0.05, "batch_size": 32}, init_from="ckpt.pt")
    assert (run.ste, run.bits, run.seed, run.lr, run.batch_size, run.epochs, run.limit, run.init_from) == (
        "relu", 2, 7, 0.05, 32, 3, 100, "ckpt.pt")
    run.milestones.append(99)
    assert spec.train["milestones"] == [2], "run specs must not share mutable train values"
    with pytest.raises(SpecError, match="params must be tunable"):
        spec.run_spec("relu", 2, 0, {"epochs": 1})
    pre = spec.pretrain_spec(seed=3)
    assert (pre.bits, pre.epochs, pre.lr, pre.limit, pre.seed) == ("float", 2, 0.1, 100, 3)


def test_resolved_mlflow(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = SweepSpec.from_dict(BASE)
    assert spec.resolved_tracking_uri() == f"sqlite:///{tmp_path.resolve()}/runs/prop-test/mlflow.db"
    assert spec.resolved_experiment() == "prop-test"
    other = SweepSpec.from_dict(BASE | {"mlflow": {"tracking_uri": "http://x:5000", "experiment": "e"}})
    assert (other.resolved_tracking_uri(), other.resolved_experiment()) == ("http://x:5000", "e")


def test_overrides():
    d = yaml.safe_load((ROOT / "sweeps" / "quickstart.yaml").read_text())
    out = apply_overrides(d, ["epochs=2", "budget.trials_per_cell=1", "cells.ste=[relu]",
                              "seed=5", "lr=0.05", "search.lr.high=0.5", "pretrain.epochs=1"])
    assert d["train"]["epochs"] == 3, "the input is not modified"
    assert out["train"]["epochs"] == 2 and out["train"]["lr"] == 0.05 and out["seed"] == 5
    spec = load_sweep_spec(ROOT / "sweeps" / "quickstart.yaml",
                           ["epochs=2", "budget.trials_per_cell=1", "cells.ste=[relu]"])
    assert spec.epochs == 2 and spec.budget.trials_per_cell == 1 and spec.cells() == [("relu", 2), ("relu", 4)]
    assert SweepSpec.from_dict(out).search["lr"].high == 0.5


@pytest.mark.parametrize("sets, fragment", [
    (["epoch=2"], "unknown --set key 'epoch' (did you mean 'epochs'?)"),
    (["nmae=x"], "unknown --set key 'nmae' (did you mean 'name'?)"),
    (["epochs"], "--set must be key=value"),
    (["budget.trails_per_cell=1"], "unknown key 'trails_per_cell' in budget (did you mean 'trials_per_cell'?)"),
    (["name.x=1"], "name must be a mapping to --set name.x"),
    (["epochs=[1"], "--set epochs: the value must be YAML"),
])
def test_bad_overrides(sets, fragment):
    with pytest.raises(SpecError) as e:
        load_sweep_spec(ROOT / "sweeps" / "quickstart.yaml", sets)
    assert fragment in str(e.value)


@pytest.mark.parametrize("text, fragment", [
    ("", "a sweep spec must be a mapping at the top level, but the file is empty"),
    ("name: [unclosed\n", "not a valid sweep YAML file"),
    ("- a\n- b\n", "but the file is a list"),
    ("name: a\nname: b\n", "key 'name' is given twice"),
])
def test_bad_files(tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as e:
        load_sweep_spec(path)
    assert fragment in str(e.value) and str(path) in str(e.value)
    with pytest.raises(SpecError, match="cannot be read"):
        load_sweep_spec(tmp_path / "missing.yaml")


# -- hand-written invalid specs ----------------------------------------------------------------
def _drop(path):
    def f(d):
        *parents, last = path.split(".")
        for p in parents:
            d = d[p]
        del d[last]
    return f


INVALID = [
    (lambda d: _set(d, "budget", {"trails_per_cell": 1}),
     "unknown key 'trails_per_cell' in budget (did you mean 'trials_per_cell'?); allowed: ['trials_per_cell']"),
    (lambda d: _set(d, "nmae", "x"), "unknown key 'nmae' at the top level (did you mean 'name'?)"),
    (lambda d: _set(d, "search.lr.lw", 0.1), "unknown key 'lw' in search.lr (dist loguniform) (did you mean 'low'?)"),
    (lambda d: _set(d, "search.lr.low", 0.0), "search.lr.low must be > 0 for loguniform, but got search.lr.low=0.0"),
    (lambda d: _set(d, "search.lr.high", 0.001), "search.lr.high must be > search.lr.low=0.01 for loguniform, but got search.lr.high=0.001"),
    (lambda d: _set(d, "search.momentum.high", 0.5), "search.momentum.high must be > search.momentum.low=0.8 for uniform"),
    (lambda d: _set(d, "search.momentum.high", 1.5), "search.momentum.high must be in [0, 1), but got search.momentum.high=1.5"),
    (lambda d: _set(d, "search.batch_size.low", 0), "search.batch_size.low must be >= 1 for int with log: true"),
    (lambda d: _set(d, "search.batch_size.step", 0), "search.batch_size.step must be an int >= 1, but got search.batch_size.step=0"),
    (lambda d: _set(d, "search.batch_size.low", 32.5), "search.batch_size.low must be an int, but got search.batch_size.low=32.5"),
    (lambda d: _set(d, "search.batch_size.dist", "uniform"), "search.batch_size.dist must be 'int' or 'choice' for the int field batch_size"),
    (lambda d: _set(d, "search.weight_decay.values", []), "search.weight_decay.values must be a non-empty list"),
    (lambda d: _set(d, "search.weight_decay.values", [0.0, -1.0]), "search.weight_decay.values[1] must be >= 0, but got search.weight_decay.values[1]=-1.0"),
    (lambda d: _set(d, "search.lr.dist", "normal"), "search.lr.dist must be one of ['loguniform', 'uniform', 'int', 'choice'], but got search.lr.dist='normal'"),
    (_drop("search.lr.dist"), "search.lr.dist is required"),
    (lambda d: _set(d, "search.epochs", {"dist": "int", "low": 1, "high": 3}), "search.epochs is not tunable"),
    (lambda d: _set(d, "search.lrr", {"dist": "int", "low": 1, "high": 3}), "unknown key 'lrr' in search (did you mean 'lr'?)"),
    (lambda d: _set(d, "search", {}), "budget.trials_per_cell must be 1 when search is empty"),
    (lambda d: _set(d, "search.lr", "0.1"), "search.lr must be a mapping (key: value lines) or a list of values, but got search.lr='0.1'"),
    (lambda d: _set(d, "search.lr", [0.1, 0.0]), "search.lr[1] must be > 0, but got search.lr[1]=0.0"),
    (lambda d: _set(d, "search.lr", []), "search.lr must be a non-empty list, but got search.lr=[]"),
    (lambda d: _set(d, "search.lr", [0.1, 0.1]), "search.lr must have no duplicates, but got search.lr[1]=0.1"),
    (lambda d: _set(d, "search.weight_decay", [{"a": 1}]), "search.weight_decay[0] must be a number, string, bool or null"),
    (lambda d: _set(d, "search.method", "gird"), "search.method must be one of ['tpe', 'random', 'grid'], but got search.method='gird' (did you mean 'grid'?)"),
    (lambda d: _set(d, "search.methd", "grid"), "unknown key 'methd' in search (did you mean 'method'?)"),
    (lambda d: _set(d, "search.method", "grid"), "search.lr.dist must be 'choice' for search.method grid, but got search.lr.dist='loguniform'"),
    (lambda d: _set(d, "search.storage", "postgresql+psycopg2://u:secret@db/optuna"), "search.storage must be a URL without a password (it would be saved with the sweep; give it to the database driver instead: PGPASSWORD"),
    (lambda d: _set(d, "search.storage", "optuna.db"), "search.storage must be an SQLAlchemy database URL"),
    (lambda d: _set(d, "search.storage", ""), "search.storage must be a non-empty string or null"),
    (lambda d: _set(d, "search.lr.low", "1e-3"), "search.lr.low must be a number, but got search.lr.low='1e-3' (a string: YAML reads"),
    (lambda d: _set(d, "cells.bits", [2, 9]), "cells.bits[1] must be in 1..8 or 'float', but got cells.bits[1]=9"),
    (lambda d: _set(d, "cells.bits", [2, "2"]), "cells.bits must have no duplicates, but got cells.bits[1]=2"),
    (lambda d: _set(d, "cells.ste", []), "cells.ste must be a non-empty list, but got cells.ste=[]"),
    (lambda d: _set(d, "cells.ste", ["relu", "relu"]), "cells.ste must have no duplicates, but got cells.ste[1]='relu'"),
    (lambda d: _set(d, "cells.ste", ["rleu"]), "cells.ste[0] must be one of"),
    (lambda d: _set(d, "cells.ste", "relu"), "cells.ste must be a non-empty list, but got cells.ste='relu'"),
    (_drop("cells.bits"), "cells.bits is required"),
    (lambda d: _set(d, "mode", "min"), "mode must be 'max' for metric='val_acc' (its sense), but got mode='min'"),
    (lambda d: _set(d, "metric", "val_loss"), "mode must be 'min' for metric='val_loss'"),
    (lambda d: _set(d, "metric", "accuracy"), "metric must be one of ['val_acc', 'val_loss', 'train_loss', 'train_acc']"),
    (lambda d: _set(d, "max_concurrent", 0), "max_concurrent must be an int >= 1, but got max_concurrent=0"),
    (lambda d: _set(d, "max_concurrent", True), "max_concurrent must be an int >= 1, but got max_concurrent=True"),
    (lambda d: _set(d, "max_failures", "2"), "max_failures must be an int >= 0, but got max_failures='2'"),
    (lambda d: _set(d, "train.epochs", 0), "train.epochs must be an int >= 1, but got train.epochs=0"),
    (lambda d: _set(d, "train.lr", -1.0), "train.lr must be > 0, but got train.lr=-1.0"),
    (lambda d: _set(d, "train.milestones", [2, 1]), "train.milestones must be increasing epochs >= 1"),
    (lambda d: _set(d, "train.device", 0), "train.device must be a non-empty string, but got train.device=0"),
    (lambda d: _set(d, "train.seed", 1), "unknown key 'seed' in train"),
    (lambda d: _set(d, "train", [1]), "train must be a mapping (key: value lines), but got train=[1]"),
    (lambda d: _set(d, "pretrain.epochs", 0), "pretrain.epochs must be an int >= 1, but got pretrain.epochs=0"),
    (lambda d: _set(d, "pretrain.ste", "relu"), "unknown key 'ste' in pretrain"),
    (lambda d: _set(d, "asha.grace_period", 4), "asha.grace_period must be <= the epochs of a trial (3), but got asha.grace_period=4"),
    (lambda d: _set(d, "asha.reduction_factor", 1), "asha.reduction_factor must be a number > 1"),
    (lambda d: _set(d, "asha.enabled", "yes"), "asha.enabled must be true or false, but got asha.enabled='yes'"),
    (lambda d: _set(d, "resources.cpus_per_trial", 0), "resources.cpus_per_trial must be a number > 0"),
    (lambda d: _set(d, "resources.gpus_per_trial", 1.5), "resources.gpus_per_trial must be a number >= 0, fractional only below 1"),
    (lambda d: _set(d, "replicates.seeds", [1, 1]), "replicates.seeds must have no duplicates"),
    (lambda d: _set(d, "replicates.seeds", [-1]), "replicates.seeds[0] must be an int >= 0, but got replicates.seeds[0]=-1"),
    (lambda d: _set(d, "name", "my sweep"), "name must be a name of characters [A-Za-z0-9_.-], but got name='my sweep'"),
    (lambda d: _set(d, "name", ".."), "name must be a name of characters"),
    (lambda d: _set(d, "model", "lenet6"), "model must be one of"),
    (_drop("dataset"), "dataset is required"),
    (lambda d: _set(d, "mlflow.experiment", 3), "mlflow.experiment must be a non-empty string or null"),
]


@pytest.mark.parametrize("mutate, fragment", INVALID, ids=[f for _, f in INVALID])
def test_invalid_specs(mutate, fragment):
    d = copy.deepcopy(BASE)
    mutate(d)
    with pytest.raises(SpecError) as e:
        SweepSpec.from_dict(d)
    assert fragment in str(e.value)


def test_top_level_not_a_mapping():
    with pytest.raises(SpecError, match="must be a mapping at the top level"):
        SweepSpec.from_dict([BASE])


# -- property: every mutation of a valid spec is a SpecError naming its field --------------------
NAME_OK = re.compile(r"[A-Za-z0-9_.-]+")
junk = st.one_of(st.text(max_size=4), st.lists(st.integers(), max_size=2),
                 st.dictionaries(st.text(max_size=2), st.integers(), max_size=1))
not_bool = st.one_of(junk, st.integers(), st.floats(), st.none())
floats = st.floats(allow_nan=True)


def bad_int(low: int, none_ok: bool = False):
    """Values that are not an int >= low (floats are never ints here, nor are bools)."""
    s = st.one_of(st.integers(max_value=low - 1), floats, st.booleans(), junk)
    return s if none_ok else st.one_of(s, st.none())


def bad_num(test, none_ok: bool = False):
    s = st.one_of(st.floats().filter(lambda x: not test(x)), st.booleans(), junk,
                  st.just(float("nan")))
    return s if none_ok else st.one_of(s, st.none())


def bad_str(ok=lambda s: True, none_ok: bool = False):
    s = st.one_of(st.text(max_size=8).filter(lambda s: not ok(s)), st.integers(), st.booleans(),
                  st.lists(st.text(max_size=2), max_size=2))
    return s if none_ok else st.one_of(s, st.none())


def _bits_bad(b) -> bool:
    try:
        parse_bits(b)
    except Exception:  # ValueError, or OverflowError for inf
        return True
    return False


non_str = st.one_of(st.integers(), st.booleans(), st.lists(st.text(max_size=2), max_size=2))
not_a_list = st.one_of(st.text(max_size=4), st.integers(), st.dictionaries(st.text(max_size=2), st.integers()))
not_a_mapping = st.one_of(st.text(max_size=4), st.integers(), st.lists(st.integers(), max_size=2))
LEAVES = {
    "name": bad_str(lambda s: bool(NAME_OK.fullmatch(s)) and set(s) != {"."}),
    "model": bad_str(lambda s: s in list_models()),
    "dataset": bad_str(lambda s: s in ("mnist", "fashion-mnist", "cifar10", "digits", "synthetic")),
    "cells": st.one_of(not_a_mapping, st.none()),
    "cells.ste": st.one_of(not_a_list, st.just([]), st.just(["relu", "relu"]),
                           st.lists(st.text(max_size=5).filter(lambda s: s not in list_stes()),
                                    min_size=1, max_size=2)),
    "cells.bits": st.one_of(not_a_list, st.just([]), st.just([4, 4]),
                            st.lists(st.one_of(st.integers(), st.floats(), st.text(max_size=3)).filter(_bits_bad),
                                     min_size=1, max_size=2)),
    "search": not_a_mapping,
    "search.lr": st.one_of(st.text(max_size=4), st.integers(), st.none(), st.just([]),
                           st.just([0.1, 0.1]), st.lists(st.floats(max_value=0), min_size=1, max_size=2)),
    "search.method": bad_str(lambda s: s in ("tpe", "random", "grid")),
    "search.storage": st.one_of(st.just(""), non_str, st.text(max_size=6).filter(lambda s: "://" not in s),
                                st.just("postgresql://u:pw@h/db")),
    "search.lr.dist": bad_str(lambda s: s in ("loguniform", "uniform", "int", "choice")),
    "search.lr.low": st.one_of(bad_num(lambda x: x > 0), st.floats(min_value=0.3)),
    "search.lr.high": st.one_of(bad_num(lambda x: x > 0.01), st.floats(max_value=0.01)),
    "search.momentum.low": st.one_of(bad_num(lambda x: 0 <= x < 1), st.floats(min_value=0.95, max_value=0.99)),
    "search.momentum.high": st.one_of(bad_num(lambda x: 0 <= x < 1), st.floats(max_value=0.8)),
    "search.batch_size.low": st.one_of(bad_int(1), st.integers(min_value=129)),
    "search.batch_size.high": st.one_of(bad_int(32), st.floats(min_value=32)),
    "search.batch_size.log": not_bool,
    "search.batch_size.step": st.one_of(bad_int(1, none_ok=True), st.integers(min_value=2)),
    "search.weight_decay.values": st.one_of(not_a_list, st.just([]), st.just([0.0, 0.0]),
                                           st.lists(st.one_of(st.floats(max_value=-1e-9), st.text(max_size=2), st.none()),
                                                    min_size=1, max_size=2)),
    "train": not_a_mapping,
    "train.epochs": bad_int(1, none_ok=True),
    "train.lr": bad_num(lambda x: x > 0, none_ok=True),
    "train.momentum": bad_num(lambda x: 0 <= x < 1),
    "train.limit": bad_int(1, none_ok=True),
    "train.milestones": st.one_of(st.text(max_size=3), st.integers(), st.just([0]), st.just([2, 2]), st.just([True])),
    "train.device": st.one_of(st.integers(), st.booleans(), st.lists(st.integers(), max_size=1), st.none()),
    "budget": not_a_mapping,
    "budget.trials_per_cell": bad_int(1),
    "replicates.seeds": st.one_of(not_a_list, st.just([1, 1]), st.lists(bad_int(0), min_size=1, max_size=2)),
    "pretrain": not_a_mapping,
    "pretrain.epochs": bad_int(1, none_ok=True),
    "pretrain.lr": bad_num(lambda x: x > 0, none_ok=True),
    "asha": not_a_mapping,
    "asha.enabled": not_bool,
    "asha.grace_period": st.one_of(bad_int(1), st.integers(min_value=4)),
    "asha.reduction_factor": bad_num(lambda x: x > 1),
    "resources.cpus_per_trial": bad_num(lambda x: x > 0),
    "resources.gpus_per_trial": st.one_of(bad_num(lambda x: x >= 0),
                                          st.floats(min_value=1.01, max_value=50).filter(lambda x: x != int(x))),
    "max_concurrent": bad_int(1),
    "max_failures": bad_int(0),
    "seed": bad_int(0),
    "metric": bad_str(lambda s: s in ("val_acc", "val_loss", "train_loss", "train_acc")),
    "mode": st.one_of(bad_str(lambda s: s in ("max", "min")), st.just("min")),
    "storage": st.one_of(st.just(""), non_str, st.none()),
    "mlflow": not_a_mapping,
    "mlflow.tracking_uri": st.one_of(st.just(""), non_str),
    "mlflow.experiment": st.one_of(st.just(""), non_str),
}
SECTIONS = {"": list(BASE), "cells": ["ste", "bits"], "search": ["lr", "momentum", "batch_size", "weight_decay", "gamma", "alpha_scale", "method", "storage"],
            "search.lr": ["dist", "low", "high"], "search.batch_size": ["dist", "low", "high", "log", "step"],
            "train": [f.name for f in dataclasses.fields(RunSpec)
                      if f.name not in ("model", "dataset", "ste", "bits", "seed", "init_from", "switch_ste", "switch_ste_at")],
            "budget": ["trials_per_cell"], "replicates": ["seeds"], "pretrain": ["epochs", "lr", "batch_size", "momentum", "weight_decay", "milestones", "gamma"],
            "asha": ["enabled", "grace_period", "reduction_factor"], "resources": ["cpus_per_trial", "gpus_per_trial"],
            "mlflow": ["tracking_uri", "experiment"]}
REQUIRED = ["name", "model", "dataset", "cells", "cells.ste", "cells.bits", "search.lr.dist", "search.lr.low",
            "search.lr.high", "search.batch_size.low", "search.weight_decay.values"]


@st.composite
def invalid_specs(draw):
    """(spec dict, what the message must name)."""
    kind = draw(st.sampled_from(["value", "value", "value", "unknown", "delete"]))
    d = copy.deepcopy(BASE)
    if kind == "value":
        path = draw(st.sampled_from(sorted(LEAVES)))
        _set(d, path, draw(LEAVES[path]))
        return d, path
    if kind == "unknown":
        section = draw(st.sampled_from(sorted(SECTIONS)))
        key = draw(st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=10)
                   .filter(lambda k: k not in SECTIONS[section]))
        _set(d, f"{section}.{key}" if section else key, draw(st.integers()))
        return d, key
    path = draw(st.sampled_from(REQUIRED))
    _drop(path)(d)
    return d, path


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(invalid_specs())
def test_property_invalid_specs_raise_spec_error_naming_the_field(case):
    before = set(sys.modules)
    d, named = case
    with pytest.raises(SpecError) as e:
        SweepSpec.from_dict(d)
    assert named in str(e.value)
    new = set(sys.modules) - before
    assert not any(m == "ray" or m.startswith("ray.") for m in new)
    if "ray" not in before:
        assert "ray" not in sys.modules


def test_spec_imports_no_ray_mlflow_optuna():
    code = ("import sys; from stetune.spec import load_sweep_spec; load_sweep_spec('sweeps/quickstart.yaml'); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('ray', 'mlflow', 'optuna')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


# -- suggest(): the Optuna define-by-run space ----------------------------------------------------
def test_suggest_with_fixed_trial():
    from optuna.trial import FixedTrial

    spec = SweepSpec.from_dict(BASE)
    fixed = {"lr": 0.05, "momentum": 0.9, "batch_size": 64, "weight_decay": 1e-4}
    assert suggest(FixedTrial(fixed), spec.search) == fixed
    assert suggest(FixedTrial(fixed), spec.to_dict()["search"]) == fixed


def test_suggest_with_tpe_study():
    import optuna
    from optuna.samplers import TPESampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = SweepSpec.from_dict(BASE)
    space = functools.partial(suggest, search=spec.to_dict()["search"])
    space = pickle.loads(pickle.dumps(space))  # Ray ships it to workers
    study = optuna.create_study(direction="maximize", sampler=TPESampler(seed=0))
    for i in range(15):  # past TPE's 10 random start-up trials
        trial = study.ask()
        p = space(trial)
        assert 0.01 <= p["lr"] <= 0.3 and 0.8 <= p["momentum"] <= 0.95
        assert isinstance(p["batch_size"], int) and 32 <= p["batch_size"] <= 128
        assert p["weight_decay"] in (0.0, 1e-4, 5e-4)
        assert isinstance(spec.run_spec("relu", 2, 0, p), RunSpec)
        study.tell(trial, p["lr"])
    step = {"batch_size": {"dist": "int", "low": 32, "high": 128, "step": 32}}
    assert suggest(optuna.create_study().ask(), step)["batch_size"] in (32, 64, 96, 128)


# -- input limits: nothing a spec file holds can exhaust memory or time ---------------------------
def test_yaml_alias_bombs_oversized_and_binary_files_are_refused(tmp_path):
    import time

    base = (ROOT / "sweeps" / "quickstart.yaml").read_text()
    bomb = tmp_path / "bomb.yaml"
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"] + [
        f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    bomb.write_text(base + "\n".join(levels).replace("a0:", "train:\n  extra:\n    a0:", 1)
                    .replace("\na", "\n    a") + "\n")
    t0 = time.monotonic()
    with pytest.raises(SpecError, match=r"expands to \d+ values .* more than a sweep spec may hold"):
        load_sweep_spec(bomb)
    assert time.monotonic() - t0 < 5
    big = tmp_path / "big.yaml"
    big.write_text(base + "# " + "x" * (1 << 20) + "\n")
    with pytest.raises(SpecError, match="must be at most 1048576 bytes"):
        load_sweep_spec(big)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\x80\x81\xfe\xff" * 100)
    with pytest.raises(SpecError, match="must be UTF-8 text"):
        load_sweep_spec(binary)
    deep = tmp_path / "deep.yaml"
    deep.write_text(base + "extra_deep: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(SpecError):
        load_sweep_spec(deep)


def test_validation_is_linear_in_a_long_choice_list():
    import time

    d = copy.deepcopy(BASE)
    values = [i * 1e-6 for i in range(50_000)]
    d["search"]["weight_decay"] = {"dist": "choice", "values": values}
    t0 = time.monotonic()
    assert len(SweepSpec.from_dict(d).search["weight_decay"].values) == 50_000
    d["search"]["weight_decay"]["values"] = values + [0.0]
    with pytest.raises(SpecError, match=r"no duplicates, but got search.weight_decay.values\[50000\]=0.0"):
        SweepSpec.from_dict(d)
    assert time.monotonic() - t0 < 10  # a quadratic check took minutes

"""search.method (tpe | random | grid) and search.storage: the spec rules, the Optuna sampler
behind each method, per-cell fairness (each cell its own seeded sampler, the same budget), and a
real grid sweep whose MLflow runs show every grid point run exactly once per cell."""

from __future__ import annotations

import copy
import itertools
import pickle

import optuna
import pytest
import yaml
from ray.tune.search import Searcher

from service_helpers import stop_session
from stetune.spec import SpecError, SweepSpec, load_sweep_spec, suggest
from stetune.spec.search import METHODS, Param
from stetune.sweep.cells import CellSearcher
from stetune.sweep.samplers import make_sampler
from sweep_helpers import ROOT, check_one_run_per_trial, cli, sweep_runs
from test_sweep_spec import BASE

optuna.logging.set_verbosity(optuna.logging.WARNING)
QUICK = ROOT / "sweeps" / "quickstart.yaml"
GRID = {"method": "grid", "lr": [0.01, 0.03, 0.1],
        "momentum": {"dist": "choice", "values": [0.0, 0.9]}}
POINTS = set(itertools.product([0.01, 0.03, 0.1], [0.0, 0.9]))  # (lr, momentum)
CELLS = [("relu", 2), ("clipped_relu", 4)]


def spec_of(search: dict, **top) -> SweepSpec:
    d = {k: v for k, v in copy.deepcopy(BASE).items() if k != "budget"}
    return SweepSpec.from_dict(d | {"search": search} | top)


def _error(search: dict, **top) -> str:
    with pytest.raises(SpecError) as e:
        spec_of(search, **top)
    return str(e.value)


# -- the spec ----------------------------------------------------------------------------------
def test_method_and_storage_defaults_and_round_trip(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = SweepSpec.from_dict(BASE)
    assert spec.search_method == "tpe" and spec.search.storage is None
    assert spec.resolved_optuna_storage() == f"sqlite:///{tmp_path.resolve()}/runs/prop-test/optuna.db"
    url = "postgresql+psycopg2://me@db.example:5432/optuna"
    other = spec_of(BASE["search"] | {"method": "random", "storage": url})
    assert (other.search_method, other.resolved_optuna_storage()) == ("random", url)
    d = other.to_dict()
    assert (d["search"]["method"], d["search"]["storage"]) == ("random", url)
    assert SweepSpec.from_dict(yaml.safe_load(yaml.safe_dump(d))) == other
    assert pickle.loads(pickle.dumps(other)) == other and copy.deepcopy(other) == other
    # equality sees method and storage, so the round trips above could fail
    assert other != spec_of(BASE["search"] | {"storage": url})
    assert other != spec_of(BASE["search"] | {"method": "random"})
    # spec.search stays a mapping of tunable field -> Param (what suggest() and the sweep iterate)
    assert isinstance(other.search, dict) and list(other.search) == ["lr", "momentum", "batch_size",
                                                                     "weight_decay"]
    assert all(isinstance(p, Param) for p in other.search.values())
    fixed = {"lr": 0.05, "momentum": 0.9, "batch_size": 64, "weight_decay": 1e-4}
    assert suggest(optuna.trial.FixedTrial(fixed), d["search"]) == fixed  # dumped form too


def test_grid_budget_is_the_grid_size():
    spec = spec_of(GRID)
    assert spec.search_method == "grid" and spec.budget.trials_per_cell == 6
    assert spec.search.grid() == {"lr": [0.01, 0.03, 0.1], "momentum": [0.0, 0.9]}
    assert spec_of(GRID, budget={"trials_per_cell": 6}) == spec
    assert SweepSpec.from_dict(spec.to_dict()) == spec
    assert _error(GRID, budget={"trials_per_cell": 4}) == (
        "budget.trials_per_cell must equal the grid size 6 (lr 3 x momentum 2) for search.method "
        "grid, but got budget.trials_per_cell=4 (leave it out: it defaults to the grid size)")
    # the other defaults: 4 per cell for tpe and random, 1 with nothing to tune
    assert spec_of(GRID | {"method": "random"}).budget.trials_per_cell == 4
    assert spec_of({}).budget.trials_per_cell == 1 and spec_of({"method": "grid"}).budget.trials_per_cell == 1


@pytest.mark.parametrize("entry, dist", [
    ({"dist": "loguniform", "low": 0.01, "high": 0.1}, "loguniform"),
    ({"dist": "uniform", "low": 0.01, "high": 0.1}, "uniform"),
])
def test_grid_needs_value_lists(entry, dist):
    assert _error(GRID | {"lr": entry}) == (
        f"search.lr.dist must be 'choice' for search.method grid, but got search.lr.dist={dist!r} "
        f"(list the values: lr: [a, b, c])")
    assert "search.batch_size.dist must be 'choice' for search.method grid, but got " \
           "search.batch_size.dist='int'" in _error(
               GRID | {"batch_size": {"dist": "int", "low": 32, "high": 64}})


def test_grid_size_is_bounded():
    many = {"method": "grid", "lr": [i / 1000 + 0.001 for i in range(400)],
            "momentum": [i / 1000 for i in range(400)]}
    assert _error(many).startswith("search must have a grid of at most 100000 points for "
                                   "search.method grid, but got 160000 (lr 400 x momentum 400)")


@pytest.mark.parametrize("method", METHODS)
def test_list_shorthand_is_a_choice_for_every_method(method):
    spec = spec_of({"method": method, "lr": [0.01, 0.1], "batch_size": [32, 64]})
    assert spec.search["lr"] == Param("choice", values=(0.01, 0.1))
    assert spec.to_dict()["search"]["batch_size"] == {"dist": "choice", "values": [32, 64]}
    assert "search.batch_size[1] must be an int >= 1, but got search.batch_size[1]=0.5" in _error(
        {"method": method, "batch_size": [32, 0.5]})


def test_storage_refuses_a_password_without_echoing_it():
    msg = _error(BASE["search"] | {"storage": "postgresql+psycopg2://me:hunter2@db/optuna"})
    assert msg.startswith("search.storage must be a URL without a password") and "PGPASSWORD" in msg
    assert "hunter2" not in msg and "\n" not in msg
    assert spec_of(BASE["search"] | {"storage": "sqlite:////abs/optuna.db"}).search.storage


def test_set_overrides_method_storage_and_lists():
    sets = ["search.method=grid", "search.lr=[0.01,0.05,0.1]", "search.storage=sqlite:////x/o.db"]
    spec = load_sweep_spec(QUICK, sets + ["budget.trials_per_cell=null"])
    assert (spec.search_method, spec.search.grid(), spec.budget.trials_per_cell) == (
        "grid", {"lr": [0.01, 0.05, 0.1]}, 3)
    assert spec.resolved_optuna_storage() == "sqlite:////x/o.db"
    assert load_sweep_spec(QUICK, sets + ["budget.trials_per_cell=3"]) == spec
    with pytest.raises(SpecError, match=r"must equal the grid size 3 \(lr 3\) for search.method grid, "
                                        r"but got budget.trials_per_cell=2"):
        load_sweep_spec(QUICK, sets)  # quickstart sets 2
    with pytest.raises(SpecError, match=r"search.method must be one of \['tpe', 'random', 'grid'\], "
                                        r"but got search.method='gird' \(did you mean 'grid'\?\)"):
        load_sweep_spec(QUICK, ["search.method=gird"])


# -- the samplers --------------------------------------------------------------------------------
def test_make_sampler_types():
    space = spec_of(GRID).search
    assert type(make_sampler("tpe", space, 3)) is optuna.samplers.TPESampler
    assert type(make_sampler("random", space, 3)) is optuna.samplers.RandomSampler
    grid = make_sampler("grid", space, 3)
    assert isinstance(grid, optuna.samplers.GridSampler)
    assert grid._search_space == {"lr": [0.01, 0.03, 0.1], "momentum": [0.0, 0.9]}
    with pytest.raises(ValueError, match="search.method must be one of"):
        make_sampler("sobol", space, 3)


def _ask_all_then_tell(sampler) -> set:
    """Every grid point asked at once (all running, as under Tune's concurrency), then told."""
    study = optuna.create_study(direction="maximize", sampler=sampler)
    trials = [study.ask() for _ in range(6)]
    points = [tuple(suggest(t, spec_of(GRID).search).values()) for t in trials]
    for t in trials:
        study.tell(t, 0.5)
    return points


def test_grid_sampler_covers_the_grid_and_survives_ask_and_tell():
    points = _ask_all_then_tell(make_sampler("grid", spec_of(GRID).search, 0))
    assert len(points) == 6 and set(points) == POINTS
    # why CellGridSampler: Optuna's own stops the study after the last point, which raises
    # outside study.optimize (Ray's OptunaSearch would log that error at every grid's end)
    with pytest.raises(RuntimeError, match="Study.stop"):
        _ask_all_then_tell(optuna.samplers.GridSampler(spec_of(GRID).search.grid(), seed=0))


def _drain(searcher: CellSearcher, concurrent: int = 2) -> list[dict]:
    """Tune's pattern: `concurrent` trials running; each ends before the next is asked for."""
    configs, running, i = [], [], 0
    while True:
        while len(running) < concurrent:
            cfg = searcher.suggest(f"t{i}")
            if cfg == Searcher.FINISHED:
                break
            configs.append(cfg["cfg"])
            running.append(f"t{i}")
            i += 1
        if not running:
            return configs
        searcher.on_trial_complete(running.pop(0), {"val_acc": 0.5, "training_iteration": 1})


def _per_cell(configs: list[dict], names=("lr", "momentum")) -> dict[str, list]:
    out: dict[str, list] = {}
    for c in configs:
        out.setdefault(c["cell"], []).append(tuple(c["params"][n] for n in names))
    return out


@pytest.mark.parametrize("concurrent", [1, 2, 5])
def test_grid_cell_searcher_runs_each_point_once_per_cell(concurrent):
    spec = spec_of(GRID)
    searcher = CellSearcher(CELLS, spec.search, spec.budget.trials_per_cell, "val_acc", "max",
                            seed=0, method="grid")
    cells = _per_cell(_drain(searcher, concurrent))
    assert sorted(cells) == ["clipped_relu/4", "relu/2"]
    for points in cells.values():
        assert sorted(points) == sorted(POINTS)  # each of the 6 exactly once
    assert cells["relu/2"] != cells["clipped_relu/4"], "each cell shuffles with its own seed"
    pickle.dumps(searcher)  # Tune saves it with the experiment state


def test_grid_resume_reissues_the_lost_points(tmp_path):
    """A driver killed after Tune's last snapshot: the trials issued since are lost (their
    studies' trials ended FAIL, as the resume does); the restored searcher re-issues them, and
    they must get the lost grid points, not repeat a running one."""
    spec = spec_of(GRID)
    searcher = CellSearcher(CELLS[:1], spec.search, 6, "val_acc", "max", seed=0, method="grid",
                            storage=f"sqlite:///{tmp_path}/optuna.db", sweep="s")
    point = lambda cfg: (cfg["cfg"]["params"]["lr"], cfg["cfg"]["params"]["momentum"])  # noqa: E731
    kept = [point(searcher.suggest(f"t{i}")) for i in range(3)]
    searcher.on_trial_complete("t0", {"val_acc": 0.5, "training_iteration": 1})
    searcher.save(str(tmp_path / "snapshot.pkl"))  # t1, t2 still running
    lost = [point(searcher.suggest(f"t{i}")) for i in range(3, 5)]
    study = optuna.load_study(study_name="s/relu/2", storage=f"sqlite:///{tmp_path}/optuna.db")
    for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,))[-2:]:
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    restored = CellSearcher([("x", 1)], {}, 1, "val_acc", "max")
    restored.restore(str(tmp_path / "snapshot.pkl"))
    again = [point(restored.suggest(f"t{i}")) for i in range(3, 6)]
    assert again[:2] == lost and restored.suggest("t6") == Searcher.FINISHED
    assert sorted(kept + again) == sorted(POINTS)


def test_random_cells_are_seeded_per_cell_and_reproducible():
    space = {"lr": Param("loguniform", 0.001, 0.1), "momentum": Param("uniform", 0.0, 0.99)}

    def run(seed):
        s = CellSearcher(CELLS, space, 4, "val_acc", "max", seed=seed, method="random")
        assert all(type(sub._sampler) is optuna.samplers.RandomSampler for sub in s.subs)
        return _per_cell(_drain(s))

    a = run(seed=5)
    assert a == run(seed=5) and a != run(seed=6)
    assert a["relu/2"] != a["clipped_relu/4"]
    # cell i draws exactly what RandomSampler(seed + i) draws: its own seeded sampler
    for i, cell in enumerate(["relu/2", "clipped_relu/4"]):
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=5 + i))
        assert a[cell] == [tuple(suggest(study.ask(), space).values()) for _ in range(4)]


# -- a real grid sweep -----------------------------------------------------------------------------
@pytest.mark.slow
def test_grid_sweep_runs_every_point_once_per_cell(tmp_path):
    sets = [f"storage={tmp_path}", "train.epochs=1", "train.limit=400", "cells.ste=[relu]",
            "cells.bits=[2, 4]", "search.method=grid", "search.lr=[0.01,0.05,0.1]",
            "budget.trials_per_cell=null", "asha.enabled=false", "replicates.seeds=[]"]
    driver = cli("sweep", str(QUICK), *[a for s in sets for a in ("--set", s)], "--quiet")
    try:
        out, err = driver.communicate(timeout=600)
    finally:
        stop_session(driver)
    assert driver.returncode == 0, err[-4000:]
    assert "Study.stop" not in out + err
    spec = load_sweep_spec(QUICK, sets)
    children = check_one_run_per_trial(spec, n_search=6, n_replicate=0, statuses=("finished",))
    lrs: dict[str, list] = {}
    for c in children:
        assert c.data.tags["stetune.phase"] == "search"
        lrs.setdefault(c.data.tags["stetune.cell"], []).append(float(c.data.params["lr"]))
    assert {cell: sorted(v) for cell, v in lrs.items()} == {
        "relu/2": [0.01, 0.05, 0.1], "relu/4": [0.01, 0.05, 0.1]}
    # the cells' studies in the default storage: one grid point per trial, all complete
    storage = spec.resolved_optuna_storage()
    assert storage == f"sqlite:///{tmp_path.resolve()}/quickstart/optuna.db"
    for cell in ("relu/2", "relu/4"):
        study = optuna.load_study(study_name=f"quickstart/{cell}", storage=storage)
        assert sorted(t.system_attrs["grid_id"] for t in study.trials) == [0, 1, 2]
        assert {t.state for t in study.trials} == {optuna.trial.TrialState.COMPLETE}
    _, parents, _ = sweep_runs(spec)
    assert len(parents) == 1

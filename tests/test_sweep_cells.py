"""CellSearcher: every cell gets exactly its budget, each from its own seeded TPE. CellASHA:
each cell's trials are stopped by comparison with the same cell's trials only."""

import pickle

from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import Searcher

from stetune.spec.sweep import Param
from stetune.sweep.callbacks import SchedulerState
from stetune.sweep.cells import CellASHA, CellSearcher
from stetune.sweep.kinds.base import cell_key

GO, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP

CELLS = [("identity", 2), ("relu", 2), ("clipped_relu", 4)]
SEARCH = {"lr": Param("loguniform", 0.01, 0.1)}


def _drain(searcher: CellSearcher, start: int = 0) -> list[dict]:
    configs = []
    for i in range(start, 100):
        cfg = searcher.suggest(f"t{i}")
        if cfg == Searcher.FINISHED:
            break
        cfg = cfg["cfg"]  # a trial config {cell, phase, params, tags}
        configs.append(cfg)
        # the cell TPEs learn from completed trials; a bad cell must not lose its budget
        value = 0.9 if cfg["params"]["ste"] == "clipped_relu" else 0.1
        searcher.on_trial_complete(f"t{i}", {"val_acc": value, "training_iteration": 1})
    return configs


def test_equal_budget_per_cell_round_robin():
    configs = _drain(CellSearcher(CELLS, SEARCH, 4, "val_acc", "max", seed=0))
    keys = [c["cell"] for c in configs]
    assert len(keys) == 12 and all(keys.count(cell_key(s, b)) == 4 for s, b in CELLS)
    assert all(c["phase"] == "search" and c["tags"]["stetune.ste"] == c["params"]["ste"]
               for c in configs)
    assert keys[:3] == ["identity/2", "relu/2", "clipped_relu/4"]  # interleaved, not cell by cell
    assert all(0.01 <= c["params"]["lr"] <= 0.1 for c in configs)


def test_seeded_and_restorable(tmp_path):
    a = _drain(CellSearcher(CELLS, SEARCH, 3, "val_acc", "max", seed=7))
    b = _drain(CellSearcher(CELLS, SEARCH, 3, "val_acc", "max", seed=7))
    assert a == b
    # save mid-way, restore into a fresh object: the rest of the budget, no more, no less
    s = CellSearcher(CELLS, SEARCH, 3, "val_acc", "max", seed=7)
    first = [s.suggest(f"t{i}") for i in range(4)]
    for i in range(4):
        s.on_trial_complete(f"t{i}", {"val_acc": 0.5, "training_iteration": 1})
    s.save(str(tmp_path / "state.pkl"))
    restored = CellSearcher([("x", 1)], {}, 1, "val_acc", "max")
    restored.restore(str(tmp_path / "state.pkl"))
    rest = _drain(restored, start=4)
    assert len(first) + len(rest) == 9
    pickle.dumps(restored)  # Tune pickles it with the experiment state


def _trials(cell: str, n: int) -> list[Trial]:
    # Tune's own Trial objects, as the controller hands them to the scheduler (stub: no Ray)
    return [Trial("trial_fn", config={"cfg": {"cell": cell}}, trial_id=f"{cell}-{i}", stub=True)
            for i in range(n)]


def test_cell_asha_stops_a_trial_only_against_its_own_cell(tmp_path):
    """ASHA's rule (reduction factor 2): at a rung, a trial stops when it is below the median of
    the values trials reached that rung with before it. Interleaved results of a strong cell
    (val_acc ~0.8) and a weak one (~0.2): each cell is judged against itself."""
    s = CellASHA("val_acc", "max", max_t=4, grace_period=1, reduction_factor=2)
    tuner_pkl = pickle.dumps((s, SchedulerState(s)))  # Tune's tuner.pkl, written at the start
    good, bad = _trials("relu/4", 3), _trials("relu/1", 3)
    for t in good + bad:
        s.on_trial_add(None, t)

    def step(t, it, v):  # the scheduler `s` is now, restored ones included
        return s.on_trial_result(None, t, {"training_iteration": it, "val_acc": v})

    assert step(good[0], 1, 0.90) == GO
    assert step(good[1], 1, 0.80) == STOP  # below its cell's 0.90
    # the weak cell's first result at the rung is far below the strong cell's, but the first of
    # its cell: a shared ASHA (cutoff 0.85) would stop it
    assert step(bad[0], 1, 0.20) == GO
    assert step(bad[1], 1, 0.30) == GO  # above its cell's 0.20
    assert step(bad[2], 1, 0.10) == STOP  # below its cell's median 0.25
    # the weak cell's values do not lower the strong cell's bar: 0.82 is below 0.85 (the median
    # of 0.90 and 0.80), though above the median of all five results so far (0.30)
    assert step(good[2], 1, 0.82) == STOP
    # saved with each experiment snapshot (SchedulerState's callback state) and restored into the
    # scheduler Tune unpickles from tuner.pkl (saved at the start, with the callback): each
    # cell's rungs go on where they were
    snapshot = pickle.dumps(SchedulerState(s).get_state())
    s, cb = pickle.loads(tuner_pkl)
    assert cb.scheduler is s and s.cells == {}  # as new: it has seen nothing
    cb.set_state(pickle.loads(snapshot))
    assert step(good[0], 2, 0.95) == GO
    assert step(bad[0], 2, 0.40) == GO  # first of its cell at rung 2, whatever 0.95 is
    assert step(bad[1], 2, 0.35) == STOP  # below its cell's 0.40
    assert step(good[0], 4, 0.97) == STOP  # max_t: done
    assert "relu/1 stopped" in s.debug_string() and "relu/4 stopped" in s.debug_string()


def test_cell_asha_mode_min_stops_the_higher_loss_within_a_cell():
    s = CellASHA("val_loss", "min", max_t=3, grace_period=1, reduction_factor=2)
    low, high = _trials("relu/4", 2), _trials("relu/1", 2)
    for t in low + high:
        s.on_trial_add(None, t)

    def step(t, v):
        return s.on_trial_result(None, t, {"training_iteration": 1, "val_loss": v})

    assert step(low[0], 0.5) == GO
    assert step(high[0], 2.0) == GO  # four times the other cell's loss: first of its own
    assert step(high[1], 1.9) == GO  # lower than its cell's 2.0
    assert step(low[1], 0.6) == STOP  # higher than its cell's 0.5


def test_optuna_hears_of_an_end_once_tunes_snapshot_holds_it(tmp_path):
    """A driver killed between an end and Tune's next snapshot reruns (or re-issues) that trial,
    and Optuna cannot change an ended trial: so the study is told at the snapshot (`save`), by
    the restored searcher if the driver died after it, and at once for the search's last end.
    A trial the study holds as ended keeps that verdict in the resumed ASHA."""
    import optuna

    from stetune.sweep.cells import _PickledState

    url = f"sqlite:///{tmp_path}/optuna.db"

    def searcher() -> CellSearcher:
        return CellSearcher([("relu", 2)], SEARCH, 3, "val_acc", "max", storage=url, sweep="sw",
                            epochs=4)

    def states() -> list[str]:
        study = optuna.load_study(study_name="sw/relu/2", storage=url)
        return [t.state.name for t in study.trials]

    def done(epoch: int, value: float = 0.5) -> dict:
        return {"val_acc": value, "epoch": epoch, "training_iteration": epoch}

    s = searcher()
    for i in range(3):
        s.suggest(f"t{i}")
    s.on_trial_complete("t0", done(4))
    assert states() == ["RUNNING"] * 3  # not yet: no snapshot holds the end
    s.save(str(tmp_path / "snap1.pkl"))
    assert states() == ["COMPLETE", "RUNNING", "RUNNING"]
    s.on_trial_complete("t1", done(2))  # stopped at epoch 2 of 4: pruned
    _PickledState.save(s, str(tmp_path / "snap2.pkl"))  # the snapshot, then the driver dies
    assert states() == ["COMPLETE", "RUNNING", "RUNNING"]
    restored = searcher()
    restored.restore(str(tmp_path / "snap2.pkl"))  # the resume tells what the snapshot held
    assert states() == ["COMPLETE", "PRUNED", "RUNNING"]
    again = searcher()
    again.restore(str(tmp_path / "snap1.pkl"))  # told twice (an older snapshot): no error
    restored.on_trial_complete("t2", done(4, 0.7))  # the search's last end: told at once
    assert states() == ["COMPLETE", "PRUNED", "COMPLETE"]

    # the resumed ASHA keeps the study's verdicts, whatever its brackets would say
    asha = CellASHA("val_acc", "max", max_t=4, grace_period=1, reduction_factor=2,
                    studies=(url, ["sw/relu/2"]))
    asha.on_restore()
    t0, t1, t2 = (Trial("trial_fn", config={"cfg": {"cell": "relu/2"}}, trial_id=f"t{i}", stub=True)
                  for i in range(3))
    for t in (t0, t1, t2):
        asha.on_trial_add(None, t)
    assert asha.on_trial_result(None, t2, {"training_iteration": 1, "val_acc": 0.9}) == GO
    assert asha.on_trial_result(None, t0, {"training_iteration": 1, "val_acc": 0.1}) == GO  # COMPLETE
    assert asha.on_trial_result(None, t1, {"training_iteration": 1, "val_acc": 0.95}) == STOP  # PRUNED


def test_a_trial_that_failed_before_its_first_report_keeps_its_config():
    """Tune's Result takes the config from the last result: a trial whose every attempt failed
    before it reported (placed on a node that had died but was not yet declared dead) has none
    there. The driver takes it from the trial, and the trial counts as failed, not a crash."""
    from types import SimpleNamespace as NS

    from stetune.sweep.kinds.base import trial_status
    from stetune.sweep.phase import _outcomes, _with_configs

    cfg = {"cell": "relu/2", "phase": "search", "params": {}}
    never = NS(config=None, metrics={}, error=RuntimeError("node died"), checkpoint=None,
               path="/s/search/de1f0e84")
    results = type("ResultGrid", (list,), {})([never])  # iterates its Results, in trial order
    results._experiment_analysis = NS(trials=[NS(config={"cfg": cfg})])
    ((r, got),) = _with_configs(results)
    assert got == cfg
    (out,) = _outcomes(r, got, lambda last, errored: trial_status(last, errored=errored, epochs=3))
    assert (out.cfg, out.status, out.last) == (cfg, "failed", {})

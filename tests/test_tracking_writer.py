"""The per-epoch writer: batched off the caller's thread, in order, flushed where it must be, and a
store failure raised on the driver (a real sqlite store; the fault is the store's own refusal)."""

from __future__ import annotations

import time

import pytest
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from stetune.tracking import SweepTracker
from stetune.tracking_writer import EpochWriter


class Counting(MlflowClient):
    """A real client that counts its log_batch calls."""

    def __init__(self, uri):
        super().__init__(uri)
        self.batches = []

    def log_batch(self, run_id, metrics=(), **kw):
        self.batches.append((run_id, len(metrics)))
        return super().log_batch(run_id, metrics=metrics, **kw)


def _steps(client, run_id, key="val_acc"):
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_epochs_go_in_batches_off_the_callers_thread_and_flush_writes_them_all(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = SweepTracker(uri, "exp", "sweep")
    tracker.start_sweep({"name": "sweep"})
    client = Counting(uri)
    tracker._epochs = EpochWriter(client, interval=3600)  # only flushes write: countable
    for trial in ("a", "b"):
        tracker.trial_run(trial, params={"lr": 0.1}, tags={})
    t0 = time.perf_counter()
    for epoch in range(1, 21):  # two trials reporting in turn, as Tune hands their results
        for trial in ("a", "b"):
            tracker.log_epoch(trial, {"epoch": epoch, "val_acc": epoch / 100, "loss": 1.0}, epoch)
    assert time.perf_counter() - t0 < 0.5  # no store round trip per epoch on this thread
    assert client.batches == []  # nothing written yet: the interval has not passed
    tracker.end_trial("a", "finished")  # a run's epochs are written before it ends
    assert sorted(client.batches) == sorted([(tracker._trial(t).run_id, 40) for t in "ab"])
    for trial in "ab":
        assert _steps(tracker.client, tracker._trial(trial).run_id) == list(range(1, 21))
    # a re-reported epoch (a retry from an older checkpoint) is not logged twice
    tracker.log_epoch("b", {"val_acc": 0.5}, 20)
    tracker.log_epoch("b", {"val_acc": 0.21}, 21)
    tracker.end_trial("b", "finished")
    assert _steps(tracker.client, tracker._trial("b").run_id) == list(range(1, 22))


def test_the_writer_thread_writes_on_its_interval():
    class Recording:
        def __init__(self):
            self.calls = []

        def log_batch(self, run_id, metrics):
            self.calls.append((run_id, [m.step for m in metrics]))

    client = Recording()
    writer = EpochWriter(client, interval=0.05)
    writer.put("r1", [Metric("x", 1.0, 0, 1)])
    writer.put("r2", [Metric("x", 1.0, 0, 1)])
    writer.put("r1", [Metric("x", 2.0, 0, 2)])
    deadline = time.monotonic() + 5
    while len(client.calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(client.calls) == [("r1", [1, 2]), ("r2", [1])]  # one call per run, in order
    writer.close()


def test_a_store_refusal_in_the_writer_is_raised_on_the_driver(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = SweepTracker(uri, "exp", "sweep")
    tracker.start_sweep({"name": "sweep"})
    tracker._epochs = EpochWriter(tracker.client, interval=0.05)
    tracker.trial_run("a", params={}, tags={})
    tracker.log_epoch("a", {"val_acc": 0.1}, 1)
    tracker.flush()
    # the run disappears under the sweep (deleted in the store): MLflow refuses further writes
    tracker.client.delete_run(tracker._trial("a").run_id)
    tracker.log_epoch("a", {"val_acc": 0.2}, 2)
    deadline = time.monotonic() + 10
    while tracker._epochs._error is None and time.monotonic() < deadline:
        time.sleep(0.02)
    with pytest.raises(MlflowException):  # the next call on the driver says so
        tracker.log_epoch("a", {"val_acc": 0.3}, 3)
    with pytest.raises(MlflowException):
        tracker.end_trial("a", "finished")


def test_epochs_the_store_does_not_hold_yet_travel_with_tunes_snapshot_to_the_resume(tmp_path):
    """A resume re-reports only what its snapshot has not seen, so the snapshot keeps the epochs
    the writer holds, written by nobody at snapshot time (no store call on the event loop), and
    kept even when the store then fails; the resumed driver writes them and logs none twice."""
    import pickle

    from stetune.sweep.callbacks import TrackingCallback, register_tracker

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = SweepTracker(uri, "exp", "sweep")
    tracker.start_sweep({"name": "sweep"})
    client = Counting(uri)
    tracker._epochs = EpochWriter(client, interval=3600)
    register_tracker(tracker, uri, "exp", "sweep")
    cb = TrackingCallback(uri, "exp", "sweep", "search", status=None)
    for trial in "ab":
        tracker.trial_run(trial, params={}, tags={})
    run_a, run_b = (tracker._trial(t).run_id for t in "ab")
    assert cb.get_state() is None  # nothing pending: the snapshot needs nothing of ours
    for epoch in (1, 2):
        for trial in "ba":  # b's batch goes first
            tracker.log_epoch(trial, {"val_acc": epoch / 10}, epoch)
    state = cb.get_state()
    assert client.batches == []  # the snapshot wrote nothing
    assert {run: sorted({m[3] for m in ms}) for run, ms in state["unwritten"].items()} == \
        {run_a: [1, 2], run_b: [1, 2]}
    tracker.client.delete_run(run_a)  # then the store refuses a's writes: the driver hears of it
    with pytest.raises(MlflowException):
        tracker.flush()
    assert set(tracker.unwritten()) == {run_a}  # b's went in after the snapshot; a's are kept
    assert _steps(tracker.client, run_b) == [1, 2]

    tracker.client.restore_run(run_a)  # the store works again: a resume, in a new driver
    resumed = SweepTracker(uri, "exp", "sweep")
    resumed.start_sweep({"name": "sweep"}, resume=True)
    register_tracker(resumed, uri, "exp", "sweep")
    restored = pickle.loads(pickle.dumps(cb))  # Tune's copy of the callback
    restored.set_state(pickle.loads(pickle.dumps(state)))
    restored.tracker.log_epoch("a", {"val_acc": 0.2}, 2)  # re-reported (an older checkpoint)
    restored.tracker.log_epoch("a", {"val_acc": 0.3}, 3)
    restored.tracker.flush()  # b's epochs again too: the store drops exact duplicates
    for trial, steps in (("a", [1, 2, 3]), ("b", [1, 2])):
        assert _steps(resumed.client, resumed._trial(trial).run_id) == steps

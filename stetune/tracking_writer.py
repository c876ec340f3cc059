"""Per-epoch metrics to MLflow in batches, from a thread of their own, so the driver's event loop
(which every trial's results pass through) never waits on the store.

MLflow's own async logging (`log_batch(synchronous=False)`) merges only consecutive batches of
one run, so with trials reporting in turn it still writes once per epoch, and it logs a failure
to stderr before the caller hears of it. Here every run's pending epochs go in one `log_batch`
per interval, and a failure (a full disk, a dead server) is raised on the driver's next call:
the sweep then stops with its usual one-line message, and what was not written stays pending.
Each Tune snapshot keeps what the store may not hold yet (`unwritten`), which a resume from it
writes again (the store drops exact duplicates), so a driver killed at any point loses no epoch
that Tune will not re-report. `flush` writes everything pending before a run ends and at the
sweep's end."""

from __future__ import annotations

import threading

from mlflow.entities import Metric

__all__ = ["EpochWriter"]

INTERVAL_S = 5.0        # how far the MLflow UI may lag a trial; 10 epochs a call cost a third of 1
MAX_PENDING = 20_000    # metrics; past this the writer goes at once (a burst of short trials)
MAX_PER_CALL = 1000     # MLflow's log_batch limit on metrics


class EpochWriter:
    def __init__(self, client, interval: float = INTERVAL_S):
        self.client, self.interval = client, interval
        self._cv = threading.Condition()
        self._write = threading.Lock()  # one writer at a time, in order: thread or flush
        self._pending: dict[str, list[Metric]] = {}
        self._inflight: dict[str, list[Metric]] = {}  # taken by the write going on now
        self._count = 0
        self._error: BaseException | None = None
        self._closed = False
        self._thread: threading.Thread | None = None

    def put(self, run_id: str, metrics: list[Metric]) -> None:
        self.check()
        with self._cv:
            self._pending.setdefault(run_id, []).extend(metrics)
            self._count += len(metrics)
            if self._count >= MAX_PENDING:
                self._cv.notify()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="stetune-mlflow-writer",
                                            daemon=True)
            self._thread.start()

    def check(self) -> None:
        """Raise the writer thread's failure here, on the driver."""
        if self._error is not None:
            raise self._error

    def flush(self) -> None:
        """Write everything pending now, on the calling thread (after any write in flight)."""
        self.check()
        self._drain()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join()
        self.flush()

    def unwritten(self) -> dict[str, list[Metric]]:
        """What the store may not hold yet: the write going on now, and what is pending (after
        a failed write, what it could not write)."""
        with self._cv:
            out = {run_id: list(ms) for run_id, ms in self._inflight.items()}
            for run_id, ms in self._pending.items():
                out.setdefault(run_id, []).extend(ms)
            return out

    def _requeue(self, metrics: dict[str, list[Metric]]) -> None:
        with self._cv:  # in front of anything put since: a later flush writes them in order
            for run_id, ms in self._pending.items():
                metrics.setdefault(run_id, []).extend(ms)
            self._pending = metrics
            self._count = sum(map(len, metrics.values()))

    def _drain(self) -> None:
        with self._write:
            with self._cv:
                pending, self._pending, self._count = self._pending, {}, 0
                self._inflight = pending
            left = dict(pending)
            try:
                for run_id, metrics in pending.items():
                    for i in range(0, len(metrics), MAX_PER_CALL):
                        self.client.log_batch(run_id, metrics=metrics[i:i + MAX_PER_CALL])
                        left[run_id] = metrics[i + MAX_PER_CALL:]
                    del left[run_id]
            except BaseException:
                self._requeue({k: v for k, v in left.items() if v})  # kept, not lost
                raise
            finally:
                with self._cv:
                    self._inflight = {}

    def _run(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._closed or self._count >= MAX_PENDING,
                                  timeout=self.interval)
                if self._closed:
                    return
            try:
                self._drain()
            except BaseException as e:  # noqa: BLE001 (raised on the driver by check())
                self._error = e
                return

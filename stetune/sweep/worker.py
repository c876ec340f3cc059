"""The trial's side of Tune, on its worker: a scratch folder whose checkpoint travels through Tune
(no shared disk), and a reporter that keeps training off the driver's clock.

Tune's function API blocks the training thread in every `report` until the driver has handled
the result (MLflow, searcher, scheduler, progress) and asked for the next: a round trip paid per
epoch. Here a reporter thread makes those calls while training goes on; training waits for the
driver's answer only at the epochs where the driver may stop the trial (`decides`: ASHA's rungs)
and at the end, so a stopped trial never runs past its rung and no result is lost."""

from __future__ import annotations

import os
import queue
import shutil
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import ray
from ray import tune

__all__ = ["Workspace", "trial_workspace", "TrialStopped"]


class TrialStopped(SystemExit):
    """Tune stopped this trial (ASHA, the end of the sweep): ends the trial function quietly,
    as Tune's own report would (it raises SystemExit in the thread that reports)."""


def _numeric(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) and v is not None}


class _Reporter(threading.Thread):
    """Hands results to Tune in order, one blocking `tune.report` at a time."""

    def __init__(self):
        super().__init__(name="stetune-reporter", daemon=True)
        self.queue: queue.Queue = queue.Queue()
        self.stopped = False               # Tune said stop: the trial must end
        self.error: BaseException | None = None  # e.g. persisting a checkpoint failed

    def run(self) -> None:
        while (item := self.queue.get()) is not None:
            metrics, snapshot, done = item
            try:
                if not (self.stopped or self.error):
                    ckpt = tune.Checkpoint.from_directory(snapshot) if snapshot else None
                    tune.report(metrics, checkpoint=ckpt)
            except SystemExit:  # Tune's stop, raised in the reporting thread
                self.stopped = True
            except BaseException as e:  # noqa: BLE001 (re-raised in the training thread)
                self.error = e
            finally:
                if snapshot:
                    shutil.rmtree(snapshot, ignore_errors=True)
                done.set()

    def check(self) -> None:
        if self.error is not None:
            raise self.error
        if self.stopped:
            raise TrialStopped(0)

    def put(self, metrics: dict, snapshot: str | None, wait: bool) -> None:
        self.check()
        done = threading.Event()
        self.queue.put((metrics, snapshot, done))
        if wait:
            done.wait()
            self.check()

    def drain(self) -> None:
        """Every queued result handed to Tune (the trial's end)."""
        self.queue.put(None)
        self.join()


@dataclass
class Workspace:
    """A trial's scratch folder on its worker; `ckpt` holds the checkpoint Tune persists."""
    root: Path
    ckpt: Path
    node_id: str
    decides: Callable[[int], bool] = lambda epoch: False  # epochs the driver may stop it after
    _reporter: _Reporter = field(default_factory=_Reporter)
    _seen: dict = field(default_factory=dict)  # the checkpoint files as last reported
    _snapshots: int = 0

    def write(self, name: str, data: bytes) -> str:
        path = self.root / name
        path.write_bytes(data)
        return str(path)

    def report(self, metrics: dict, *, checkpoint: bool = True, wait: bool | None = None) -> None:
        """Send one result (numbers and strings, plus the node) to Tune, with the checkpoint
        folder if the trainer saved a new one since the last result (it saves on an interval),
        so a retried trial resumes from there. `wait`: return only once the driver has handled
        it (default: at the epochs `decides` names)."""
        snapshot = self._snapshot() if checkpoint else None
        if wait is None:
            epoch = metrics.get("epoch")
            wait = isinstance(epoch, int) and self.decides(epoch)
        self._reporter.put(_numeric(metrics) | {"node_id": self.node_id}, snapshot, wait)

    def report_checkpoint(self, always: bool = False) -> None:
        """The trainer's last checkpoint, if Tune has not had it yet (a pack saves after its
        members' reports), as a result of its own (`always`: even without a new one)."""
        snapshot = self._snapshot()
        if snapshot or always:
            self._reporter.put({"checkpoint_only": 1, "node_id": self.node_id}, snapshot, False)

    def _snapshot(self) -> str | None:
        """Hard links to the checkpoint's files as they are now, in a folder of their own: the
        trainer replaces its files (os.replace) while the reporter is still persisting them."""
        files = {p: (s.st_ino, s.st_mtime_ns, s.st_size) for p in self.ckpt.rglob("*")
                 if p.is_file() and not p.name.endswith(".tmp") and (s := p.stat())}
        if not files or files == self._seen:
            return None
        self._seen = files
        self._snapshots += 1
        snap = self.root / f"report-{self._snapshots}"
        for path in files:
            dest = snap / path.relative_to(self.ckpt)
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, dest)
            except OSError:  # a file system without hard links
                shutil.copy2(path, dest)
        return str(snap)

    def finish(self) -> None:
        """Wait until every queued result has reached Tune (skipped once Tune said stop)."""
        if self._reporter.is_alive():
            self._reporter.drain()


@contextmanager
def trial_workspace(prefix: str = "stetune-trial-", decides: Callable[[int], bool] | None = None
                    ) -> Iterator[Workspace]:
    """Everything travels through Tune (no shared disk): the last reported checkpoint, if this
    is a retry, is restored into `ckpt` before the trial body runs. On a normal exit every
    result has reached Tune before the trial function returns."""
    from .. import load_plugins

    load_plugins()  # a plugin's model, dataset or STE must exist on this worker too
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        ws = Workspace(Path(tmp), Path(tmp) / "ckpt", ray.get_runtime_context().get_node_id())
        if decides is not None:
            ws.decides = decides
        ws.ckpt.mkdir()
        if (checkpoint := tune.get_checkpoint()) is not None:
            checkpoint.to_directory(str(ws.ckpt))
        ws._seen = {p: (s.st_ino, s.st_mtime_ns, s.st_size) for p in ws.ckpt.rglob("*")
                    if p.is_file() and (s := p.stat())}  # restored: nothing new to report
        ws._reporter.start()
        try:
            yield ws
        finally:  # after an error too: the epochs before it still reach Tune, in order
            ws.finish()
        ws._reporter.check()

"""A requested stop (Ctrl-C, SIGTERM) lets running trials checkpoint first.

Trials checkpoint every `resources.checkpoint_s` seconds, so a stop would cost each running trial
up to that much work on resume. On the first SIGINT (SIGTERM comes as one: session.py) the driver
asks every worker of the phase, through Ray's key-value store, to checkpoint after its current
epoch, and hands the signal to Tune (a graceful stop) once each running trial has reported a
checkpoint, or after GRACE_S. A second Ctrl-C stops at once."""

from __future__ import annotations

import signal
import sys
import threading
import time

from ray.tune import Callback

__all__ = ["SaveBeforeStop", "save_requested", "GRACE_S"]

GRACE_S = 10.0  # how long a stop waits for trials to checkpoint: an epoch of the usual models
POLL_S = 1.0    # how often a worker looks (one key-value read; a stop is rare)
_NAMESPACE = "stetune"


def _key(channel: str) -> bytes:
    return f"{channel}/save-now".encode()


def save_requested(channel: str):
    """On the worker: a `save_now()` for the trainer, true once the driver asked for a checkpoint
    (read at most every POLL_S)."""
    from ray.experimental.internal_kv import _internal_kv_get

    seen = {"at": -POLL_S, "yes": False}

    def save_now() -> bool:
        if not seen["yes"] and time.monotonic() - seen["at"] >= POLL_S:
            seen["at"] = time.monotonic()
            seen["yes"] = _internal_kv_get(_key(channel), namespace=_NAMESPACE) is not None
        return seen["yes"]

    return save_now


class SaveBeforeStop(Callback):
    """Driver side: holds the stop Tune would make on SIGINT until the running trials have
    checkpointed (or GRACE_S has passed), then passes the signal on to Tune's own handler."""

    def __init__(self, channel: str, grace: float = GRACE_S):
        self.channel, self.grace = channel, grace
        self._tune_handler = None
        self._asked: float | None = None
        self._saved: set[str] = set()

    def __getstate__(self):  # pickled with the experiment: no handler, no pending stop
        return {"channel": self.channel, "grace": self.grace, "_tune_handler": None,
                "_asked": None, "_saved": set()}

    def setup(self, **info):
        from ray.experimental.internal_kv import _internal_kv_del

        _internal_kv_del(_key(self.channel), namespace=_NAMESPACE)  # a resumed phase's old ask
        if threading.current_thread() is threading.main_thread():
            self._tune_handler = signal.getsignal(signal.SIGINT)  # Tune's (tune.run sets it first)
            signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        if self._asked is not None:  # again: stop now
            return self._stop(signum, frame)
        from ray.experimental.internal_kv import _internal_kv_put

        self._asked = time.monotonic()
        _internal_kv_put(_key(self.channel), b"1", namespace=_NAMESPACE)
        print(f"stetune: stopping; running trials checkpoint first (at most {self.grace:.0f} s; "
              f"Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    def _stop(self, signum=signal.SIGINT, frame=None) -> None:
        handler, self._tune_handler = self._tune_handler, None
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if callable(handler):
            handler(signum, frame)  # Tune: stop gracefully, then put back the sweep's handler

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        if self._asked is not None:
            self._saved.add(trial.trial_id)

    def on_step_end(self, iteration, trials, **info):
        if self._asked is None or self._tune_handler is None:
            return
        running = {t.trial_id for t in trials if t.status == "RUNNING"}
        if running <= self._saved or time.monotonic() - self._asked >= self.grace:
            self._stop()

"""Trial packs on the driver: one Tune trial trains K members of one cell (stetune.pack), and
every member is still a trial of its own everywhere a user looks: its own MLflow child run, its
own Optuna trial, its own ASHA decision, its own line in the progress display.

A pack's config is {"cell", "phase", "params": {}, "tags": {}, "members": [member cfg, ...]}; its
worker sends one Tune result per member and epoch ({"member": i, ...}) and, when ASHA stops a
member, a last one {"member": i, "member_end": "pruned"}. `PackDemux` turns the pack's events
into member events for the callbacks it wraps (TrackingCallback, PhaseProgress), which then
need nothing pack-specific. `PackASHA` decides per member on the driver; the worker, which
waits for the driver at rung epochs, reads the decision from Ray's key-value store."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ray.tune import Callback

__all__ = ["is_pack", "member_id", "pack_config", "PackDemux", "stop_requested", "put_stop",
           "MEMBER_END"]

MEMBER_END = "member_end"  # a member's last message: how it left the pack (e.g. "pruned")
_KV_NAMESPACE = "stetune-packs"


def is_pack(cfg: dict) -> bool:
    return "members" in cfg


def member_id(trial_id: str, i: int) -> str:
    return f"{trial_id}-{i}"


def pack_config(members: list[dict]) -> dict:
    """A pack of member cfgs, all of one cell and phase."""
    cell, phase = members[0]["cell"], members[0]["phase"]
    if any(m["cell"] != cell or m["phase"] != phase for m in members):
        raise ValueError(f"pack members must share one cell and phase, but got "
                         f"{sorted({(m['cell'], m['phase']) for m in members})}")
    return {"cell": cell, "phase": phase, "params": {}, "tags": {}, "members": list(members)}


# -- ASHA decisions: made on the driver, read by the worker --------------------------------------
def _key(channel: str, member: str) -> bytes:
    return f"{channel}/{member}".encode()


def put_stop(channel: str, member: str) -> None:
    from ray.experimental.internal_kv import _internal_kv_put

    _internal_kv_put(_key(channel, member), b"stop", namespace=_KV_NAMESPACE)


def stop_requested(channel: str, member: str) -> bool:
    """On the worker, after the driver has handled the member's rung result."""
    from ray.experimental.internal_kv import _internal_kv_get

    return _internal_kv_get(_key(channel, member), namespace=_KV_NAMESPACE) is not None


# -- member events for the wrapped callbacks -----------------------------------------------------
@dataclass
class _Member:
    """What the wrapped callbacks read of a trial, for one member of a pack."""
    trial_id: str
    config: dict
    member: int
    pack: Any = None                  # the pack's Tune trial (checkpoint, retries)
    last_result: dict = field(default_factory=dict)
    ended: bool = False

    @property
    def checkpoint(self):
        return self.pack.checkpoint if self.pack is not None else None

    @property
    def num_failures(self) -> int:
        return self.pack.num_failures if self.pack is not None else 0


class PackDemux(Callback):
    """Forwards a plain trial's events unchanged, and a pack's as its members' events."""

    def __init__(self, callbacks: list):
        self.callbacks = list(callbacks)
        self._members: dict[str, list[_Member]] = {}

    def __getstate__(self):
        return {"callbacks": self.callbacks, "_members": {}}  # members: get_state/set_state

    def _all(self, event: str, *args, **kw) -> None:
        for cb in self.callbacks:
            getattr(cb, event)(*args, **kw)

    def members(self, trial) -> list[_Member] | None:
        cfg = trial.config["cfg"]
        if not is_pack(cfg):
            return None
        if trial.trial_id not in self._members:
            saved = getattr(self, "_restored", {}).get(trial.trial_id) or []
            self._members[trial.trial_id] = [
                _Member(member_id(trial.trial_id, i),  # its run says which pack trained it
                        {"cfg": {**m, "tags": {**m.get("tags", {}), "stetune.pack": trial.trial_id}}},
                        i, trial)
                for i, m in enumerate(cfg["members"])]
            for m, (ended, last) in zip(self._members[trial.trial_id], saved):
                m.ended, m.last_result = ended, dict(last)
        for m in self._members[trial.trial_id]:
            m.pack = trial  # a restored experiment hands over new Trial objects
        return self._members[trial.trial_id]

    def setup(self, **info):
        self._all("setup", **info)

    def get_state(self):
        """Which members have ended, and their last results, with each experiment snapshot and the
        wrapped callbacks' own (TrackingCallback flushes MLflow here)."""
        return {"members": {tid: [(m.ended, m.last_result) for m in ms]
                            for tid, ms in self._members.items()},
                "callbacks": [cb.get_state() for cb in self.callbacks]}

    def set_state(self, state: dict) -> None:
        self._restored = state.get("members", {})
        for cb, saved in zip(self.callbacks, state.get("callbacks", [])):
            if saved:
                cb.set_state(saved)

    def on_trial_start(self, iteration, trials, trial, **info):
        members = self.members(trial)
        for t in members if members is not None else [trial]:
            if not getattr(t, "ended", False):
                self._all("on_trial_start", iteration, trials, t, **info)

    def on_trial_recover(self, iteration, trials, trial, **info):
        members = self.members(trial)
        for t in members if members is not None else [trial]:
            if not getattr(t, "ended", False):
                self._all("on_trial_recover", iteration, trials, t, **info)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        members = self.members(trial)
        if members is None:
            return self._all("on_trial_result", iteration, trials, trial, result, **info)
        if not isinstance(result.get("member"), int):  # a checkpoint-only result
            return None
        m = members[result["member"]]
        if m.ended:
            return None
        if MEMBER_END in result:  # pruned: its last epoch's result stays its last result
            m.ended = True
            return self._all("on_trial_complete", iteration, trials, m, **info)
        m.last_result = {k: v for k, v in result.items() if k != "member"}
        self._all("on_trial_result", iteration, trials, m, m.last_result, **info)
        return None

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        members = self.members(trial)
        for t in members if members is not None else [trial]:
            if not getattr(t, "ended", False):
                self._all("on_checkpoint", iteration, trials, t, checkpoint, **info)

    def _end(self, event: str, iteration, trials, trial, **info):
        members = self.members(trial)
        for t in members if members is not None else [trial]:
            if not getattr(t, "ended", False):
                if members is not None:
                    t.ended = True
                self._all(event, iteration, trials, t, **info)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end("on_trial_complete", iteration, trials, trial, **info)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end("on_trial_error", iteration, trials, trial, **info)

    def on_experiment_end(self, trials, **info):
        self._all("on_experiment_end", trials, **info)

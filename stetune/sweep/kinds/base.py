"""What a sweep kind is, and the one table of kinds every caller consults (runner, CLI, analysis,
report, export). Ray-free: a kind's Ray work is imported when it runs, so reading the table
(`stetune analyze`, `stetune resume`'s refusal) costs no Ray import."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ...registry import Registry
from ...spec import register_spec_kind

__all__ = ["SweepKind", "register_kind", "get_kind", "list_kinds", "trial_status", "FINAL_KEYS",
           "ANALYSES", "cell_key", "cell_config", "tuned"]

# what `stetune analyze` / `export` can make of a kind's runs: "cells" is the per-(STE, bits)
# stability analysis and Table 1 (runs tagged stetune.cell/ste/bits, per-epoch val_acc and
# train_loss); "repulsion" the repulsion experiment's loss ratios; None: the summary in
# sweep.json and MLflow is all there is
ANALYSES = ("cells", "repulsion", None)
# last-result keys a trial run logs as final/<key> when it ends: none for training runs, whose
# per-epoch metrics already end at the final values (MLflow's runs table shows the latest)
FINAL_KEYS: tuple[str, ...] = ()


@dataclass(frozen=True)
class SweepKind:
    """One sweep kind: `kind: <name>` in a spec selects it."""
    name: str
    spec: type                       # its spec class (stetune.spec), with ClassVar kind == name
    run: Callable[[Any], None]       # run(session): the kind's phases; fills session.state
    phases: tuple[str, ...]          # values of its trials' stetune.phase tag
    summary: Callable[[Any, dict], str]  # summary(spec, state) -> the table printed at the end
    resumable: bool = False          # `stetune resume` continues it (else: rerun under a new name)
    analysis: str | None = None      # one of ANALYSES
    description: str = ""            # one line for help texts
    headline: Callable[[Any, dict], dict] | None = None  # headline(spec, state): parent metrics
    preflight: Callable[..., None] | None = None  # preflight(spec, local=): fail before any run

    def __post_init__(self):
        if getattr(self.spec, "kind", None) != self.name:
            raise ValueError(f"a kind's spec class must declare kind = {self.name!r}, but got "
                             f"{self.spec.__name__}.kind={getattr(self.spec, 'kind', None)!r}")
        if self.analysis not in ANALYSES:
            raise ValueError(f"analysis must be one of {ANALYSES}, but got {self.analysis=}")
        if not self.phases:
            raise ValueError(f"a kind declares its phases, but got {self.phases=}")


_KINDS: Registry[SweepKind] = Registry("kind")


def register_kind(kind: SweepKind) -> SweepKind:
    """Add a kind to the table (and its spec class to the spec loader's)."""
    register_spec_kind(kind.spec)
    return _KINDS.add(kind.name, kind)


def get_kind(name: str) -> SweepKind:
    return _KINDS.get(name)


def list_kinds() -> tuple[str, ...]:
    return _KINDS.names()


def trial_status(last: dict | None, epochs: int, errored: bool = False) -> str:
    """finished | diverged | pruned (ended before `epochs`: stopped early) | failed."""
    if errored or not last:
        return "failed"
    if last.get("status") == "diverged":
        return "diverged"
    return "finished" if last.get("epoch", 0) >= epochs else "pruned"


def cell_key(ste: str, bits) -> str:
    """The cell a network or repulsion trial belongs to: 'relu/2', 'clipped_relu/float'."""
    return f"{ste}/{bits}"


def cell_config(ste: str, bits, phase: str, params: dict, seed: int) -> dict:
    """A trial config {cell, phase, params, tags} of an (STE, bits) cell: params are what its
    MLflow run logs (the cell, the seed and the tuned values), tags what analysis groups by."""
    return {"cell": cell_key(ste, bits), "phase": phase,
            "params": {"ste": ste, "bits": bits, "seed": seed, **params},
            "tags": {"stetune.ste": ste, "stetune.bits": str(bits)}}


CELL_PARAMS = ("ste", "bits", "seed")  # cell_config's own params; the rest were tuned


def tuned(params: dict) -> dict:
    return {k: v for k, v in params.items() if k not in CELL_PARAMS}

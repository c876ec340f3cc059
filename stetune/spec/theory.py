"""Theory sweep spec (`kind: theory`): a grid of coarse-gradient-descent runs on the paper's
two-linear-layer model (STE x lr x (m, n) x init x seed), each a Tune trial and an MLflow run.
Validated before any work starts, with the same messages as SweepSpec; no Ray or MLflow here."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

from ..theory.descent import INITS
from ..theory.model import STES
from . import _check as c
from .sweep import NAME_RULE, Mlflow, Placement

__all__ = ["TheorySweepSpec", "KIND"]

KIND = "theory"
TRIAL_KEYS = ("ste", "init", "m", "n", "lr", "seed")  # what varies over the grid


@dataclass(frozen=True)
class TheorySweepSpec(Placement):
    name: str                            # required; [A-Za-z0-9_.-]+
    stes: tuple[str, ...]                # required: STEs compared (stetune.theory STES)
    lrs: tuple[float, ...]               # required: step sizes eta, each > 0
    sizes: tuple[tuple[int, int], ...]   # required: (m hidden units >= 1, n input dim >= 2)
    inits: tuple[str, ...] = INITS       # random and the spurious minimum: the paper's contrast
    seeds: tuple[int, ...] = (0,)        # teacher, init and mini-batch seed of a trial
    steps: int = 500                     # descent iterations of a trial
    report_every: int = 10               # one Tune report (MLflow step) every this many iterations
    eps: float = 0.0                     # perturbation of the spurious init; 0 starts exactly on it
    batch: int | None = None             # None: exact expectations; else mini-batch size
    radius: float = 1e-3                 # distance from the spurious point that counts as "left"
    tol: float = 1e-6                    # final loss below which a trial counts as converged
    max_concurrent: int = 2              # two trials at once: fits a 2-core laptop
    storage: str = "runs"                # Ray Tune results, relative to the cwd
    mlflow: Mlflow = Mlflow()

    kind = KIND  # class constant (not a field): what load_sweep_spec dispatches on

    # -- views ---------------------------------------------------------------------------------
    def trials(self) -> list[dict]:
        """The grid, one self-contained run config per trial; ste, init, size, lr, seed order."""
        fixed = {"steps": self.steps, "eps": self.eps, "batch": self.batch, "radius": self.radius,
                 "tol": self.tol, "report_every": self.report_every}
        return [{"ste": ste, "init": init, "m": m, "n": n, "lr": lr, "seed": seed, **fixed}
                for ste in self.stes for init in self.inits for m, n in self.sizes
                for lr in self.lrs for seed in self.seeds]

    # -- dict round trip -----------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = {"kind": KIND, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}}
        d["sizes"] = [list(s) for s in self.sizes]
        for key in ("stes", "lrs", "inits", "seeds"):
            d[key] = list(d[key])
        d["mlflow"] = dataclasses.asdict(self.mlflow)
        return copy.deepcopy(d)

    @classmethod
    def from_dict(cls, d: Any) -> "TheorySweepSpec":
        d = c.kind_mapping(d, cls, KIND)
        kw: dict[str, Any] = {
            "name": c.str_field(c.require(d, "name", "", "name: theory"), "name", pattern=NAME_RULE,
                                rule="a name of characters [A-Za-z0-9_.-]"),
            "stes": _list(c.require(d, "stes", "", "stes: [identity, relu]"), "stes",
                          lambda v, p: c.choice_field(v, p, STES)),
            "lrs": _list(c.require(d, "lrs", "", "lrs: [0.1]"), "lrs",
                         c.numbers("a number > 0", lambda x: x > 0)),
            "sizes": _list(c.require(d, "sizes", "", "sizes: [[5, 8]]"), "sizes", _size)}
        checks = {
            "inits": lambda v, p: _list(v, p, lambda x, q: c.choice_field(x, q, INITS)),
            "seeds": lambda v, p: _list(v, p, c.ints(0)),
            "steps": c.ints(1), "report_every": c.ints(1), "max_concurrent": c.ints(1),
            "eps": c.numbers("a number >= 0", lambda x: x >= 0),
            "batch": lambda v, p: None if v is None else c.int_field(v, p, 1),
            "radius": c.numbers("a number > 0", lambda x: x > 0),
            "tol": c.numbers("a number > 0", lambda x: x > 0), "storage": c.str_field}
        for key, check in checks.items():
            if key in d:
                kw[key] = check(d[key], key)
        kw["mlflow"] = c.section(d, "mlflow", Mlflow, tracking_uri=c.opt_str, experiment=c.opt_str)
        return cls(**kw)


def _list(value: Any, path: str, check) -> tuple:
    """A non-empty list without duplicates, each item through check(item, 'path[i]')."""
    items = c.list_field(value, path, nonempty=True)
    out = tuple(check(item, f"{path}[{i}]") for i, item in enumerate(items))
    c.unique(list(out), path)
    return out


def _size(value: Any, path: str) -> tuple[int, int]:
    if not (isinstance(value, (list, tuple)) and len(value) == 2):
        c.fail(path, "a pair [m, n] (hidden units, input dimension)", value)
    m, n = value
    if not (c.is_int(m) and m >= 1):
        c.fail(f"{path}[0]", "an int >= 1 (m: hidden units)", m)
    if not (c.is_int(n) and n >= 2):
        c.fail(f"{path}[1]", "an int >= 2 (n: input dimension)", n)
    return (m, n)

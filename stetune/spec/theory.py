"""Theory sweep spec (`kind: theory`): a grid of coarse-gradient-descent runs on the paper's
two-linear-layer model (STE x lr x (m, n) x init x seed), each a Tune trial and an MLflow run.
Validated before any work starts, with the same messages as SweepSpec; no Ray or MLflow here.
`stetune theory` (one run) checks its options with the same rules (HIDDEN, INPUT_DIM, fields)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..theory.descent import INITS
from ..theory.model import STES
from .base import Placement
from .errors import SpecError, join
from .fields import Choice, Int, ListOf, Num, Opt, Tuple, fld
from .run import MAX_BATCH_SIZE, MAX_SEED

__all__ = ["TheorySweepSpec", "HIDDEN", "INPUT_DIM", "MAX_STEPS"]

TRIAL_KEYS = ("ste", "init", "m", "n", "lr", "seed")  # what varies over the grid
MAX_SIZE = 10_000       # m, n: a 10^4 x 10^4 matrix of doubles is 800 MB; past that nothing fits
MAX_STEPS = 10_000_000  # descent iterations: weeks of exact steps; more is a typo, not a plan
HIDDEN = Int(ge=1, le=MAX_SIZE, words="an int >= 1 (m: hidden units)")
INPUT_DIM = Int(ge=2, le=MAX_SIZE, words="an int >= 2 (n: input dimension)")


@dataclass(frozen=True, kw_only=True)
class TheorySweepSpec(Placement):
    """A theory sweep: coarse gradient descent on the two-linear-layer model, over a grid."""
    kind: ClassVar[str] = "theory"

    stes: tuple[str, ...] = fld(ListOf(Choice(STES), nonempty=True, unique=True),
                                "STEs compared (stetune.theory STES)",
                                example="stes: [identity, relu]")
    lrs: tuple[float, ...] = fld(ListOf(Num(gt=0), nonempty=True, unique=True),
                                 "step sizes eta, each > 0", example="lrs: [0.1]")
    sizes: tuple[tuple[int, int], ...] = fld(
        ListOf(Tuple(HIDDEN, INPUT_DIM, words="a pair [m, n] (hidden units, input dimension)"),
               nonempty=True, unique=True),
        "(m hidden units >= 1, n input dim >= 2) pairs", example="sizes: [[5, 8]]")
    inits: tuple[str, ...] = fld(ListOf(Choice(INITS), nonempty=True, unique=True),
                                 "random and the spurious minimum: the paper's contrast",
                                 default=INITS)
    seeds: tuple[int, ...] = fld(ListOf(Int(ge=0, le=MAX_SEED), nonempty=True, unique=True),
                                 "teacher, init and mini-batch seed of a trial", default=(0,))
    steps: int = fld(Int(ge=1, le=MAX_STEPS), "descent iterations of a trial", default=500)
    report_every: int = fld(Int(ge=1), "one Tune report (MLflow step) every this many "
                            "iterations", default=10)
    eps: float = fld(Num(ge=0), "perturbation of the spurious init; 0 starts exactly on it",
                     default=0.0)
    batch: int | None = fld(Opt(Int(ge=1, le=MAX_BATCH_SIZE)), "None: exact expectations; else "
                            "mini-batch size", default=None)
    radius: float = fld(Num(gt=0), "distance from the spurious point that counts as \"left\"",
                        default=1e-3)
    tol: float = fld(Num(gt=0), "final loss below which a trial counts as converged",
                     default=1e-6)
    max_concurrent: int = fld(Int(ge=1), "two trials at once: fits a 2-core laptop", default=2)

    def _check(self, path: str) -> None:
        if self.report_every > self.steps:  # no report before the end: nothing to plot or stop on
            raise SpecError(f"{join(path, 'report_every')} must be <= steps ({self.steps}), but "
                            f"got {join(path, 'report_every')}={self.report_every}")

    # -- views ---------------------------------------------------------------------------------
    def trials(self) -> list[dict]:
        """The grid, one self-contained run config per trial; ste, init, size, lr, seed order."""
        fixed = {"steps": self.steps, "eps": self.eps, "batch": self.batch, "radius": self.radius,
                 "tol": self.tol, "report_every": self.report_every}
        return [{"ste": ste, "init": init, "m": m, "n": n, "lr": lr, "seed": seed, **fixed}
                for ste in self.stes for init in self.inits for m, n in self.sizes
                for lr in self.lrs for seed in self.seeds]

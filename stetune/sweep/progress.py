"""What the terminal shows while a sweep runs: one progress display per phase (trials ended of
the phase's total, running, ETA, the best value so far) and one line per cell as it completes.
On a terminal it is a tqdm bar; in a log (a job's, CI's) plain lines, one per ended trial.
`set_display(verbose)` chooses, also for callbacks that Tune restored from an older driver."""

from __future__ import annotations

import math
import sys
import time
from collections import defaultdict

from ray.tune import Callback
from tqdm import tqdm

__all__ = ["PhaseProgress", "set_display"]

# 0: nothing (--quiet: the summary only); 1: this display; 2+: this display and Ray's own tables
_DISPLAY = {"verbose": 1}


def set_display(verbose: int) -> None:
    _DISPLAY["verbose"] = verbose


def _cell(trial) -> str:
    return trial.config["cfg"]["cell"]


class PhaseProgress(Callback):
    """Counts the phase's trials as they start and end. Picklable (Tune saves it with the
    experiment), so a resumed phase goes on counting from where it stopped."""

    def __init__(self, phase: str, metric: str, mode: str, status, per_cell: int, total: int):
        self.phase, self.metric, self.mode, self.status = phase, metric, mode, status
        self.per_cell, self.total = per_cell, total
        self.ended: dict[str, list] = defaultdict(list)  # cell -> [(status, value)]
        self._running: set[str] = set()
        self._bar = None
        self._t0 = self._n0 = None

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_bar"} | {
            "_bar": None, "_running": set(), "_t0": None, "_n0": None}

    # -- Tune events ---------------------------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info):
        self._running.add(trial.trial_id)
        self._show()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial, self.status(trial.last_result, errored=False))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, "failed")

    def on_experiment_end(self, trials, **info):
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    # -- what is shown -------------------------------------------------------------------------
    def _end(self, trial, status: str) -> None:
        self._running.discard(trial.trial_id)
        value = (trial.last_result or {}).get(self.metric, math.nan)
        self.ended[_cell(trial)].append((status, value))
        self._show(ended=_cell(trial))

    def _best(self, cell: str | None = None) -> tuple[float, str | None]:
        """The best value of trials that ran every epoch (pruned ones stopped short of it)."""
        pick = max if self.mode == "max" else min
        vals = [(v, c) for c, rows in self.ended.items() if cell in (None, c)
                for s, v in rows if s == "finished" and isinstance(v, float) and math.isfinite(v)]
        return pick(vals) if vals else (math.nan, None)

    def _cell(self, cell: str) -> str:
        """'relu/4: 2/3, best val_acc 0.9889 (1 pruned)': the cell's trials so far."""
        rows = self.ended[cell]
        others = [f"{n} {s}" for s in ("pruned", "diverged", "skipped", "failed")
                  if (n := sum(t == s for t, _ in rows))]
        best = self._best(cell)[0]
        return (f"{cell}: {len(rows)}/{self.per_cell}"
                + (f", best {self.metric} {best:.4f}" if math.isfinite(best) else "")
                + (f" ({', '.join(others)})" if others else ""))

    def _show(self, ended: str | None = None) -> None:
        if _DISPLAY["verbose"] < 1:
            return
        done = sum(map(len, self.ended.values()))
        if self._t0 is None:
            self._t0, self._n0 = time.monotonic(), done
        if not sys.stderr.isatty():  # a log: one line per ended trial, no carriage returns
            if ended is not None:
                print(f"[{self.phase}] {done}/{self.total} trials ended, {len(self._running)} "
                      f"running{self._eta(done)} · {self._cell(ended)}", file=sys.stderr,
                      flush=True)
            return
        if self._bar is None:
            self._bar = tqdm(total=self.total, initial=done, desc=self.phase, unit="trial",
                             file=sys.stderr, dynamic_ncols=True, leave=True,
                             bar_format="{desc}: {n_fmt}/{total_fmt} trials |{bar}| "
                                        "[{elapsed}<{remaining}] {postfix}")
        if ended is not None:  # each cell's best so far, above the bar
            self._bar.write(f"[{self.phase}] {self._cell(ended)}", file=sys.stderr)
        value, cell = self._best()
        self._bar.n = done
        self._bar.set_postfix_str(f"{len(self._running)} running"
                                  + (f" · best {self.metric} {value:.4f} ({cell})" if cell else ""),
                                  refresh=True)

    def _eta(self, done: int) -> str:
        new = done - (self._n0 or 0)
        if new <= 0 or done >= self.total:
            return ""
        left = (time.monotonic() - self._t0) / new * (self.total - done)
        return f", about {int(left // 60)}:{int(left % 60):02d} left"

"""`kind: theory`: a grid of coarse-gradient-descent runs on the paper's two-linear-layer model,
one trial (and one MLflow child run) per (ste, init, size, lr, seed), in one `grid` phase.

The descent takes well under a second; Tune is used for the same tracking, parallelism and
cluster story as network sweeps, not for search (a plain grid, no scheduler)."""

from __future__ import annotations

import math
import statistics
from functools import partial

import numpy as np

from ...spec import TheorySweepSpec
from .base import SweepKind, register_kind, trial_status

__all__ = ["KIND", "theory_trial", "theory_rows", "format_rows", "SUMMARY_KEYS"]

PHASE = "grid"
SUMMARY_KEYS = ("final_loss", "converged", "min_cosine", "left_spurious", "dist_from_spurious",
                "spurious_exists")
TRACE = {"loss": "f", "cos": "cos", "theta": "theta", "w_norm": "w_norm",
         "dist_start": "dist_start"}  # reported name -> DescentResult array
GRID = ("ste", "init", "m", "n", "lr", "seed")  # what varies over the grid (state["trials"])


# -- the trial: runs on a worker -------------------------------------------------------------
def _finite(d: dict) -> dict:
    # nan cosines (a vanishing gradient, e.g. exactly at a critical point) and None summaries
    # (no spurious minimum) carry no value: leave them out rather than log NaN to MLflow
    out = {}
    for k, v in d.items():
        if isinstance(v, (bool, np.bool_)):
            out[k] = int(v)  # MLflow metrics are numbers: 0/1
        elif v is not None and not (isinstance(v, float) and not math.isfinite(v)):
            out[k] = float(v) if isinstance(v, (float, np.floating)) else v
    return out


def theory_trial(config: dict, fixed: dict) -> None:
    """One descent run; reports the trajectory every `report_every` iterations (epoch = the
    iteration index) and the summary with the last iterate (epoch = steps)."""
    from ...theory import coarse_gradient_descent, make_problem, spurious_exists
    from ..phase import trial_workspace

    p = config["cfg"]["params"]
    with trial_workspace("stetune-theory-") as ws:
        report = partial(ws.report, checkpoint=False)  # a rerun takes under a second
        prob = make_problem(p["m"], p["n"], p["seed"])
        exists = spurious_exists(prob)
        if p["init"] == "spurious" and not exists:
            # nothing to start from: a per-trial outcome of this seed, not an error of the sweep
            report({"epoch": p["steps"], "spurious_exists": 0, "skipped": 1,
                    "note": "no spurious minimum"})
            return
        try:
            res = coarse_gradient_descent(prob, p["ste"], p["lr"], p["steps"], init=p["init"],
                                          eps=p["eps"], batch=p["batch"], seed=p["seed"],
                                          tol=fixed["tol"], radius=fixed["radius"])
        except FloatingPointError:  # lr too large for this problem: w blew up
            report({"epoch": 0, "status": "diverged", "spurious_exists": int(exists)})
            return
        steps = p["steps"]
        for k in range(0, steps, fixed["report_every"]):
            report(_finite({"epoch": k, **{n: getattr(res, a)[k] for n, a in TRACE.items()}}))
        summary = {k: res.summary.get(k) for k in SUMMARY_KEYS} | {"spurious_exists": exists}
        last = {n: getattr(res, a)[steps] for n, a in TRACE.items()}
        report(_finite({"epoch": steps, **last, **summary}))


def _status(last: dict | None, errored: bool = False, *, steps: int) -> str:
    # no early stopping here: a trial that ended short of `steps` failed rather than was pruned
    if last and last.get("skipped") and not errored:
        return "skipped"
    status = trial_status(last, steps, errored)
    return "failed" if status == "pruned" else status


# -- driver ------------------------------------------------------------------------------------
def _config(t: dict) -> dict:
    """A grid point as a trial config; its cell is the STE on one problem size."""
    params = {k: t[k] for k in (*GRID, "eps", "steps", "batch")}
    return {"cell": f"{t['ste']}/{t['m']}x{t['n']}", "phase": PHASE, "params": params,
            "tags": {"stetune.ste": t["ste"]}}


def run(session) -> None:
    from ..phase import Phase, run_phase

    spec = session.spec
    fixed = {k: getattr(spec, k) for k in ("radius", "tol", "report_every")}
    trials = spec.trials()
    phase = Phase(PHASE, theory_trial, {"fixed": fixed}, spec.steps,
                  per_cell=len(spec.lrs) * len(spec.inits) * len(spec.seeds),  # cell: ste x size
                  configs=[_config(t) for t in trials], metric="loss", mode="min",
                  status=partial(_status, steps=spec.steps), fixed=fixed,
                  final_keys=SUMMARY_KEYS, max_failures=0)
    results = {}
    for out in run_phase(session, phase):
        results[tuple(out.cfg["params"][k] for k in GRID)] = {
            "status": out.status, **{k: out.last[k] for k in SUMMARY_KEYS if k in out.last}}
    session.state["trials"] = [{**{k: t[k] for k in GRID},
                                **results.get(tuple(t[k] for k in GRID), {"status": "failed"})}
                               for t in trials]
    session.state["rows"] = theory_rows(session.state["trials"])


def theory_rows(trials: list[dict]) -> list[dict]:
    """Per (ste, init, size, lr), in grid order: counts, converged share, mean final loss,
    min cosine and the share that left the spurious neighbourhood (over finished trials)."""
    groups: dict[tuple, list[dict]] = {}
    for t in trials:
        groups.setdefault((t["ste"], t["init"], f"{t['m']}x{t['n']}", t["lr"]), []).append(t)
    rows = []
    for (ste, init, size, lr), ts in groups.items():
        done = [t for t in ts if t["status"] == "finished"]
        losses = [t["final_loss"] for t in done if "final_loss" in t]
        cosines = [t["min_cosine"] for t in done if "min_cosine" in t]
        left = [t["left_spurious"] for t in done if "left_spurious" in t]
        rows.append({
            "ste": ste, "init": init, "size": size, "lr": lr, "trials": len(ts),
            "finished": len(done), "skipped": sum(t["status"] == "skipped" for t in ts),
            "converged": statistics.fmean(t.get("converged", 0) for t in done) if done else None,
            "final_loss": statistics.fmean(losses) if losses else None,
            "min_cosine": min(cosines) if cosines else None,
            "left_spurious": statistics.fmean(left) if left else None})
    return rows


def format_rows(rows: list[dict]) -> str:
    """The rows as an aligned text table; '-' where no finished trial gives a value."""
    def num(v, fmt):
        return "-" if v is None else format(v, fmt)

    head = (f"{'ste':<13} {'init':<9} {'m x n':<7} {'lr':>7} {'trials':>6} {'done':>4} "
            f"{'converged':>9} {'final loss':>11} {'min cos':>9} {'left spurious':>13}")
    lines = [head]
    for r in rows:
        lines.append(f"{r['ste']:<13} {r['init']:<9} {r['size']:<7} {r['lr']:>7g} "
                     f"{r['trials']:>6} {r['finished']:>4} {num(r['converged'], '.0%'):>9} "
                     f"{num(r['final_loss'], '.3e'):>11} {num(r['min_cosine'], '.4f'):>9} "
                     f"{num(r['left_spurious'], '.0%'):>13}")
    return "\n".join(lines)


KIND = register_kind(SweepKind(
    "theory", TheorySweepSpec, run, (PHASE,), lambda spec, state: format_rows(state["rows"]),
    description="a grid of coarse-gradient-descent runs on the paper's two-layer model"))

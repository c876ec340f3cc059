"""Run a theory sweep on Ray Tune: a grid of coarse-gradient-descent runs on the paper's
two-linear-layer model, one trial (and one MLflow child run) per (ste, init, size, lr, seed).

The descent itself takes well under a second; Tune is used for the same tracking, parallelism
and cluster story as network sweeps, not for search (a plain grid, no scheduler)."""

from __future__ import annotations

import math
import statistics

import numpy as np
import ray
from ray import tune

from ..spec import TheorySweepSpec
from ..theory import coarse_gradient_descent, make_problem, spurious_exists
from .callbacks import CellProgress, TrackingCallback, trial_status
from .runner import _dirname
from .session import sweep_session

__all__ = ["run_theory_sweep", "theory_trial", "theory_rows", "format_rows", "SUMMARY_KEYS"]

PHASE = "search"  # the tracker knows search/replicate/pretrain; a grid is a (trivial) search
SUMMARY_KEYS = ("final_loss", "converged", "min_cosine", "left_spurious", "dist_from_spurious",
                "spurious_exists")
TRACE = {"loss": "f", "cos": "cos", "theta": "theta", "w_norm": "w_norm",
         "dist_start": "dist_start"}  # reported name -> DescentResult array


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
    cfg = config["cfg"]
    p, seed = cfg["params"], cfg["seed"]
    node = {"node_id": ray.get_runtime_context().get_node_id()}
    prob = make_problem(p["m"], p["n"], seed)
    exists = spurious_exists(prob)
    if p["init"] == "spurious" and not exists:
        # nothing to start from: a per-trial outcome of this seed, not an error of the sweep
        tune.report({"epoch": p["steps"], "spurious_exists": 0, "skipped": 1, **node})
        return
    try:
        res = coarse_gradient_descent(prob, cfg["ste"], p["lr"], p["steps"], init=p["init"],
                                      eps=p["eps"], batch=p["batch"], seed=seed,
                                      tol=fixed["tol"], radius=fixed["radius"])
    except FloatingPointError:  # lr too large for this problem: w blew up
        tune.report({"epoch": 0, "status": "diverged", "spurious_exists": int(exists), **node})
        return
    steps = p["steps"]
    for k in range(0, steps, fixed["report_every"]):
        tune.report(_finite({"epoch": k, **{n: getattr(res, a)[k] for n, a in TRACE.items()}})
                    | node)
    summary = {k: res.summary.get(k) for k in SUMMARY_KEYS} | {"spurious_exists": exists}
    last = {n: getattr(res, a)[steps] for n, a in TRACE.items()}
    tune.report(_finite({"epoch": steps, **last, **summary}) | node)


class TheoryTracking(TrackingCallback):
    """TrackingCallback logging the descent summary as final/<key>, and tagging skipped trials."""

    final_keys = (*SUMMARY_KEYS, "epoch")

    def on_trial_complete(self, iteration, trials, trial, **info):
        if (trial.last_result or {}).get("skipped"):
            self.tracker.tag_trial(self.key(trial), {"stetune.note": "no spurious minimum"})
        super().on_trial_complete(iteration, trials, trial, **info)


# -- driver ------------------------------------------------------------------------------------
def _cfg(t: dict) -> dict:
    """A trial in the shape TrackingCallback reads; bits names the problem size (the cell tag)."""
    params = {k: t[k] for k in ("lr", "m", "n", "init", "eps", "steps", "batch")}
    return {"ste": t["ste"], "bits": f"m{t['m']}n{t['n']}", "params": params, "seed": t["seed"]}


def _status(last: dict, steps: int, errored: bool) -> str:
    # no early stopping here: a trial that ended short of `steps` failed rather than was pruned
    if last and last.get("skipped") and not errored:
        return "skipped"
    status = trial_status(last, steps, errored)
    return "failed" if status == "pruned" else status


def run_theory_sweep(spec: TheorySweepSpec, *, address: str | None = None,
                     verbose: int = 1) -> dict:
    """Run the grid to the end; returns the state (sweep.json): per-trial summaries and `rows`."""
    fixed = {k: getattr(spec, k) for k in ("radius", "tol", "report_every")}
    trials = spec.trials()
    with sweep_session(spec, address=address, resume=False, verbose=verbose,
                       resumable=False) as state:
        trainable = tune.with_resources(tune.with_parameters(theory_trial, fixed=fixed), {"cpu": 1})
        per_cell = len(spec.lrs) * len(spec.inits) * len(spec.seeds)  # cell: ste x size
        callbacks = [TheoryTracking(spec.resolved_tracking_uri(), spec.resolved_experiment(),
                                    spec.name, PHASE, spec.steps, fixed=fixed),
                     CellProgress(PHASE, "loss", "min", spec.steps, per_cell)]
        tuner = tune.Tuner(
            trainable, param_space={"cfg": tune.grid_search([_cfg(t) for t in trials])},
            # reuse_actors: a trial takes well under a second, a fresh worker process several
            tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=spec.max_concurrent,
                                        trial_dirname_creator=_dirname, reuse_actors=True),
            run_config=tune.RunConfig(name=PHASE, storage_path=str(spec.sweep_dir()),
                                      callbacks=callbacks, verbose=verbose))
        results = {}
        for result in tuner.fit():
            cfg, last = result.config["cfg"], result.metrics or {}
            key = (cfg["ste"], cfg["params"]["init"], cfg["params"]["m"], cfg["params"]["n"],
                   cfg["params"]["lr"], cfg["seed"])
            results[key] = {"status": _status(last, spec.steps, result.error is not None),
                            **{k: last[k] for k in SUMMARY_KEYS if k in last}}
        state["trials"] = [{**{k: t[k] for k in ("ste", "init", "m", "n", "lr", "seed")},
                            **results.get(tuple(t[k] for k in ("ste", "init", "m", "n", "lr",
                                                                "seed")), {"status": "failed"})}
                           for t in trials]
        state["rows"] = theory_rows(state["trials"])
    return state


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

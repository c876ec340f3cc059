"""`kind: network` (the default): the paper's Table-1 sweep. Optional float pre-training, then the
search phase (every (STE, bits) cell gets exactly `trials_per_cell` trials from its own seeded
TPE, early-stopped by its own ASHA), then the replicate phase (each cell's best fully trained
config once per seed). sweep.json records what the finished phases produced, so `resume`
restores the interrupted phase (trials, searcher state, checkpoints) and skips finished ones."""

from __future__ import annotations

import math
import statistics
from dataclasses import replace

from ...spec import RunSpec, SweepSpec
from ...train import train
from .base import SweepKind, cell_config, register_kind, tuned

__all__ = ["KIND", "trial_fn", "summary_rows"]

PHASES = ("pretrain", "search", "replicate")
WEIGHTS_PHASES = ("pretrain", "replicate")  # few runs, each one worth starting from


# -- the trial: runs on a worker, anywhere in the cluster ------------------------------------------
def trial_fn(config: dict, spec: dict, init_state: bytes | None = None) -> None:
    """Train one trial; report each epoch with a checkpoint, so a retried trial resumes from
    its last epoch rather than from zero."""
    from ..phase import trial_workspace

    cfg = config["cfg"]
    with trial_workspace() as ws:
        run = _run_spec(SweepSpec.from_dict(spec), cfg)
        if init_state is not None and cfg["phase"] != "pretrain":
            run = replace(run, init_from=ws.write("init.pt", init_state))
        train(run, ws.report, checkpoint_dir=ws.ckpt)


def _run_spec(spec: SweepSpec, cfg: dict) -> RunSpec:
    if cfg["phase"] == "pretrain":
        return spec.pretrain_spec()
    p = cfg["params"]
    return spec.run_spec(p["ste"], p["bits"], p["seed"], tuned(p))


# -- phases (driver) -------------------------------------------------------------------------------
def _phase(session, name: str, epochs: int, per_cell: int, init: bytes | None, **kw):
    from ..phase import Phase

    spec = session.spec
    return Phase(name, trial_fn, {"spec": spec.to_dict(), "init_state": init}, epochs, per_cell,
                 resources={"cpu": spec.resources.cpus_per_trial,
                            "gpu": spec.resources.gpus_per_trial},
                 metric=spec.metric, mode=spec.mode, fixed=spec.train,
                 log_weights=name in WEIGHTS_PHASES, max_failures=spec.max_failures, **kw)


def _pretrain(session) -> bytes:
    from ..phase import run_one

    spec, state = session.spec, session.state
    path = spec.sweep_dir() / "pretrain.pt"
    if "pretrain" not in state:
        cfg = cell_config(spec.cells()[0][0], "float", "pretrain", {}, seed=0)
        epochs = spec.pretrain_spec().resolved().epochs
        out = run_one(session, _phase(session, "pretrain", epochs, 1, None, configs=[cfg]), path,
                      "float pre-training")
        state["pretrain"] = {"val_acc": out.last.get("val_acc")}
        session.save()
    return path.read_bytes()


def _search(session, init: bytes | None) -> None:
    from ..cells import CellASHA, CellSearcher
    from ..phase import run_phase

    spec, state = session.spec, session.state
    if "search" in state:
        return
    cells, epochs, n = spec.cells(), spec.epochs, spec.budget.trials_per_cell
    searcher = CellSearcher(cells, spec.search, n, spec.metric, spec.mode, spec.seed)
    scheduler = (CellASHA(spec.metric, spec.mode, epochs, spec.asha.grace_period,
                          spec.asha.reduction_factor) if spec.asha.enabled else None)
    outcomes = run_phase(session, _phase(session, "search", epochs, n, init, searcher=searcher,
                                         scheduler=scheduler, num_samples=n * len(cells)))
    state["search"] = _best_per_cell(spec, outcomes)
    session.save()


def _best_per_cell(spec: SweepSpec, outcomes) -> dict:
    """Per cell: the best fully trained, non-diverged trial by the metric at its last epoch."""
    sign = 1 if spec.mode == "max" else -1
    cells: dict[str, dict] = {}
    for out in outcomes:
        p = out.cfg["params"]
        entry = cells.setdefault(out.cfg["cell"], {
            "ste": p["ste"], "bits": p["bits"], "trials": 0, "diverged": 0, "pruned": 0,
            "failed": 0, "best": None})
        entry["trials"] += 1
        if out.status != "finished":
            entry[out.status] += 1
            continue
        value = out.last.get(spec.metric)
        if isinstance(value, float) and math.isfinite(value):
            if entry["best"] is None or sign * value > sign * entry["best"]["value"]:
                entry["best"] = {"value": value, "params": tuned(p)}
    return cells


def _replicate(session, init: bytes | None) -> None:
    from ..phase import run_phase

    spec, state = session.spec, session.state
    if "replicate" in state or not spec.replicates.seeds:
        return
    configs = [cell_config(c["ste"], c["bits"], "replicate", c["best"]["params"], seed)
               for c in state["search"].values() if c["best"] for seed in spec.replicates.seeds]
    if not configs:
        state["replicate"] = {}
        return
    reps: dict[str, list] = {}
    for out in run_phase(session, _phase(session, "replicate", spec.epochs,
                                         len(spec.replicates.seeds), init, configs=configs)):
        reps.setdefault(out.cfg["cell"], []).append(
            {"seed": out.cfg["params"]["seed"], "status": out.status,
             "val_acc": out.last.get("val_acc"), "train_loss": out.last.get("train_loss")})
    state["replicate"] = reps
    session.save()


def run(session) -> None:
    init = _pretrain(session) if session.spec.pretrain is not None else None
    _search(session, init)
    _replicate(session, init)
    session.state["summary"] = summary_rows(session.spec, session.state)


# -- summary ---------------------------------------------------------------------------------------
def summary_rows(spec: SweepSpec, state: dict) -> list[dict]:
    """Per cell: the search's trials by status, its best value and params, and the replicates'
    mean and std over the finished ones only (failed and diverged ones are counted, not averaged)."""
    rows = []
    for key, cell in state.get("search", {}).items():
        reps = state.get("replicate", {}).get(key, [])
        accs = [r["val_acc"] for r in reps
                if r.get("status") == "finished" and isinstance(r.get("val_acc"), float)]
        ended = cell["diverged"] + cell["pruned"] + cell["failed"]
        rows.append({
            "cell": key, "trials": cell["trials"], "finished": cell["trials"] - ended,
            "pruned": cell["pruned"], "diverged": cell["diverged"], "failed": cell["failed"],
            f"best_{spec.metric}": cell["best"]["value"] if cell["best"] else None,
            "params": cell["best"]["params"] if cell["best"] else None,
            "replicate_val_acc_mean": statistics.fmean(accs) if accs else None,
            "replicate_val_acc_std": statistics.stdev(accs) if len(accs) > 1 else None,
            "replicates": len(accs),
            "replicates_failed": sum(r.get("status") == "failed" for r in reps),
            "replicates_diverged": sum(r.get("status") == "diverged" for r in reps)})
    return rows


def summary(spec: SweepSpec, state: dict) -> str:
    metric = f"best_{spec.metric}"
    lines = [f"{'cell':<18} {'trials':>6} {'done':>4} {'pruned':>6} {'div':>4} {'failed':>6} "
             f"{metric:>14} {'replicates val_acc':>26}  best params"]
    for r in summary_rows(spec, state):
        std = r["replicate_val_acc_std"]
        bad = ", ".join(f"{r[f'replicates_{s}']} {s}" for s in ("failed", "diverged")
                        if r[f"replicates_{s}"])
        rep = ((f"{r['replicate_val_acc_mean']:.4f}" + (f" ± {std:.4f}" if std is not None else "")
                + f" (n={r['replicates']})") if r["replicates"] else "-") + (f" +{bad}" if bad else "")
        best = f"{r[metric]:.4f}" if r[metric] is not None else "-"
        lines.append(f"{r['cell']:<18} {r['trials']:>6} {r['finished']:>4} {r['pruned']:>6} "
                     f"{r['diverged']:>4} {r['failed']:>6} {best:>14} {rep:>26}  {r['params']}")
    lines.append("(done = ran every epoch; replicates: mean ± std of the finished replicates' "
                 "last-epoch val_acc, n of them)")
    return "\n".join(lines)


KIND = register_kind(SweepKind(
    "network", SweepSpec, run, PHASES, summary, resumable=True, analysis="cells",
    description="tune every (STE, bits) cell equally, then replicate each cell's best config"))

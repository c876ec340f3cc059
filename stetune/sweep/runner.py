"""Run a sweep on Ray Tune: optional float pre-training, the per-cell search, then replicates.

Each phase is one Tune experiment under <storage>/<name>/<phase>; sweep.json records what the
finished phases produced, so `resume` restores the interrupted phase (trials, searcher state and
checkpoints) and skips the finished ones."""

from __future__ import annotations

import math
import os
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

import ray
from ray import tune
from ray.tune.schedulers import FIFOScheduler

from ..spec import RepulsionSpec, RunSpec, SweepSpec, TheorySweepSpec
from ..train import train
from .callbacks import CellProgress, TrackingCallback, get_tracker, trial_status
from .cells import CellASHA, CellSearcher, cell_key
from .session import save_state, sweep_session

__all__ = ["run_sweep", "summary_rows", "trial_fn"]

PHASES = ("pretrain", "search", "replicate")
# every trial checkpoints each epoch by design (resume from the last epoch); Tune's warning about
# frequent snapshots would fire for every short trial
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
# the MLflow client prints a "View run" URL for every run it ends over HTTP
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


# a new worker process per trial re-imports torch and re-initialises (seconds each); train()
# seeds and builds everything per trial, so a reused worker gives the same results
REUSE_ACTORS = True


# -- the trial: runs on a worker, anywhere in the cluster ------------------------------------------
def _numeric(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) and v is not None}


def trial_fn(config: dict, sweep: dict, init_state: bytes | None = None) -> None:
    """Train one trial; report each epoch with a checkpoint, so a retried trial resumes from
    its last epoch rather than from zero. Everything travels through Tune: no shared disk."""
    cfg = config.get("cfg", config)
    spec = SweepSpec.from_dict(sweep)
    with tempfile.TemporaryDirectory(prefix="stetune-trial-") as tmp:
        tmp = Path(tmp)
        run = _run_spec(spec, cfg)
        if init_state is not None and cfg["phase"] != "pretrain":
            (tmp / "init.pt").write_bytes(init_state)
            run = replace(run, init_from=str(tmp / "init.pt"))
        ckpt_dir = tmp / "ckpt"
        ckpt_dir.mkdir()
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            checkpoint.to_directory(str(ckpt_dir))

        node_id = ray.get_runtime_context().get_node_id()  # tells nodes apart on one host too

        def report(metrics: dict) -> None:
            tune.report(_numeric(metrics) | {"node_id": node_id},
                        checkpoint=tune.Checkpoint.from_directory(str(ckpt_dir)))

        train(run, report, checkpoint_dir=ckpt_dir)


def _run_spec(spec: SweepSpec, cfg: dict) -> RunSpec:
    if cfg["phase"] == "pretrain":
        return spec.pretrain_spec()
    return spec.run_spec(cfg["ste"], cfg["bits"], cfg.get("seed", 0), cfg.get("params", {}))


def _dirname(trial) -> str:
    return trial.trial_id  # default names embed every parameter and overflow path limits


# -- phases ----------------------------------------------------------------------------------------
def _run_phase(spec: SweepSpec, phase: str, param_space: dict, tune_config: tune.TuneConfig,
               init_state: bytes | None, resume: bool, epochs: int, per_cell: int, verbose: int):
    root = spec.sweep_dir()
    trainable = tune.with_resources(
        tune.with_parameters(trial_fn, sweep=spec.to_dict(), init_state=init_state),
        {"cpu": spec.resources.cpus_per_trial, "gpu": spec.resources.gpus_per_trial})
    path = root / phase
    if resume and tune.Tuner.can_restore(str(path)):
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)
    else:
        callbacks = [TrackingCallback(spec.resolved_tracking_uri(), spec.resolved_experiment(),
                                      spec.name, phase, epochs, fixed=spec.train),
                     CellProgress(phase, spec.metric, spec.mode, epochs, per_cell)]
        run_config = tune.RunConfig(
            name=phase, storage_path=str(root), callbacks=callbacks, verbose=verbose,
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1))
        tuner = tune.Tuner(trainable, param_space=param_space, tune_config=tune_config,
                           run_config=run_config)
    grid = tuner.fit()
    if resume:  # runs of trials the killed driver never snapshotted would be duplicates
        keep = {f"{phase}-{r.metrics.get('trial_id') or Path(r.path).name}" for r in grid}
        get_tracker(spec.resolved_tracking_uri(), spec.resolved_experiment(), spec.name).prune_orphans(phase, keep)
    return grid


def _pretrain(spec: SweepSpec, state: dict, resume: bool, verbose: int) -> bytes:
    root = spec.sweep_dir()
    if "pretrain" not in state:
        cfg = {"ste": spec.cells()[0][0], "bits": "float", "phase": "pretrain", "seed": 0}
        grid = _run_phase(spec, "pretrain", {"cfg": tune.grid_search([cfg])},
                          tune.TuneConfig(num_samples=1, trial_dirname_creator=_dirname),
                          None, resume, spec.pretrain_spec().resolved().epochs, 1, verbose)
        result = grid[0]
        if result.error or result.checkpoint is None:
            raise RuntimeError(f"float pre-training failed: {result.error}")
        with tempfile.TemporaryDirectory() as tmp:
            result.checkpoint.to_directory(tmp)
            (root / "pretrain.pt").write_bytes((Path(tmp) / "checkpoint.pt").read_bytes())
        state["pretrain"] = {"val_acc": result.metrics.get("val_acc")}
        save_state(spec, state)
    return (root / "pretrain.pt").read_bytes()


def _search(spec: SweepSpec, state: dict, init: bytes | None, resume: bool, verbose: int) -> None:
    if "search" in state:
        return
    cells, epochs = spec.cells(), spec.epochs
    n = spec.budget.trials_per_cell
    searcher = CellSearcher(cells, spec.search, n, spec.metric, spec.mode, spec.seed)
    scheduler = (CellASHA(spec.metric, spec.mode, epochs, spec.asha.grace_period,
                          spec.asha.reduction_factor)
                 if spec.asha.enabled else FIFOScheduler())
    tc = tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=n * len(cells),
                         max_concurrent_trials=spec.max_concurrent, trial_dirname_creator=_dirname,
                         reuse_actors=REUSE_ACTORS)
    grid = _run_phase(spec, "search", {}, tc, init, resume, epochs, n, verbose)
    state["search"] = _best_per_cell(spec, grid, epochs)
    save_state(spec, state)


def _best_per_cell(spec: SweepSpec, grid, epochs: int) -> dict:
    """Per cell: the best fully trained, non-diverged trial by the metric at its last epoch."""
    sign = 1 if spec.mode == "max" else -1
    cells: dict[str, dict] = {}
    for result in grid:
        cfg, last = result.config, result.metrics or {}
        key = cell_key(cfg)
        entry = cells.setdefault(key, {"ste": cfg["ste"], "bits": cfg["bits"], "trials": 0,
                                       "diverged": 0, "pruned": 0, "failed": 0, "best": None})
        entry["trials"] += 1
        status = trial_status(last, epochs, errored=result.error is not None)
        if status != "finished":
            entry[status] += 1
            continue
        value = last.get(spec.metric)
        if isinstance(value, float) and math.isfinite(value):
            if entry["best"] is None or sign * value > sign * entry["best"]["value"]:
                entry["best"] = {"value": value, "params": cfg.get("params", {})}
    return cells


def _replicate(spec: SweepSpec, state: dict, init: bytes | None, resume: bool, verbose: int) -> None:
    if "replicate" in state or not spec.replicates.seeds:
        return
    configs = [{"ste": c["ste"], "bits": c["bits"], "params": c["best"]["params"], "seed": seed,
                "phase": "replicate"}
               for c in state["search"].values() if c["best"] for seed in spec.replicates.seeds]
    if not configs:
        state["replicate"] = {}
        return
    tc = tune.TuneConfig(num_samples=1, max_concurrent_trials=spec.max_concurrent,
                         trial_dirname_creator=_dirname, reuse_actors=REUSE_ACTORS)
    grid = _run_phase(spec, "replicate", {"cfg": tune.grid_search(configs)}, tc, init, resume,
                      spec.epochs, len(spec.replicates.seeds), verbose)
    reps: dict[str, list] = {}
    for result in grid:
        cfg = result.config["cfg"]
        last = result.metrics or {}
        reps.setdefault(cell_key(cfg), []).append(
            {"seed": cfg["seed"], "status": trial_status(last, spec.epochs, result.error is not None),
             "val_acc": last.get("val_acc"), "train_loss": last.get("train_loss")})
    state["replicate"] = reps
    save_state(spec, state)


# -- driver ----------------------------------------------------------------------------------------
def summary_rows(spec: SweepSpec, state: dict) -> list[dict]:
    rows = []
    for key, cell in state.get("search", {}).items():
        reps = [r for r in state.get("replicate", {}).get(key, []) if isinstance(r.get("val_acc"), float)]
        accs = [r["val_acc"] for r in reps]
        rows.append({
            "cell": key, "trials": cell["trials"], "diverged": cell["diverged"], "pruned": cell["pruned"],
            "failed": cell["failed"], f"best_{spec.metric}": cell["best"]["value"] if cell["best"] else None,
            "params": cell["best"]["params"] if cell["best"] else None,
            "replicate_val_acc_mean": statistics.fmean(accs) if accs else None,
            "replicate_val_acc_std": statistics.stdev(accs) if len(accs) > 1 else None,
            "replicates": len(accs)})
    return rows


def run_sweep(spec: SweepSpec, *, address: str | None = None, resume: bool = False,
              verbose: int = 1) -> dict:
    """Run (or resume) the sweep to the end; returns sweep.json's content plus summary rows.
    A TheorySweepSpec runs as a theory grid (run_theory_sweep), a RepulsionSpec as the repulsion
    experiment (run_repulsion); neither resumes."""
    if isinstance(spec, RepulsionSpec):
        from .repulsion import run_repulsion  # lazy: it imports this module

        if resume:
            raise ValueError("repulsion experiments cannot be resumed; run the spec again under "
                             "another name")
        return run_repulsion(spec, address=address, verbose=verbose)
    if isinstance(spec, TheorySweepSpec):
        from .theory import run_theory_sweep  # lazy: it imports this module

        if resume:
            raise ValueError("theory sweeps cannot be resumed; run the spec under another name")
        return run_theory_sweep(spec, address=address, verbose=verbose)
    with sweep_session(spec, address=address, resume=resume, verbose=verbose) as state:
        init = _pretrain(spec, state, resume, verbose) if spec.pretrain is not None else None
        _search(spec, state, init, resume, verbose)
        _replicate(spec, state, init, resume, verbose)
        state["summary"] = summary_rows(spec, state)
    return state

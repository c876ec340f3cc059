"""Run the repulsion experiment on Ray Tune (paper Fig. 2/4): get the start minimum (a file, an
MLflow run's weights, or train it here as a `pretrain` trial), then one `repulsion` trial per
(STE, seed) continues it: epoch 0 measures the start, the probe trains at a small constant lr,
the optional schedule follows. Every trial is an MLflow child run like any sweep's."""

from __future__ import annotations

import tempfile
from pathlib import Path

import ray
from ray import tune

from ..checkpoint import CHECKPOINT_FILE
from ..spec import RepulsionSpec
from ..stability import loss_ratios, repulsion_rows
from ..tracking import download_weights
from ..train import train
from .callbacks import CellProgress, TrackingCallback, trial_status
from .runner import REUSE_ACTORS, _dirname, _numeric
from .session import save_state, sweep_session

__all__ = ["run_repulsion", "repulsion_trial", "format_repulsion"]


# -- trials: run on workers ------------------------------------------------------------------------
def repulsion_trial(config: dict, spec: dict, init_state: bytes | None = None) -> None:
    """Phase `pretrain`: train the start minimum. Phase `repulsion`: probe (epoch 0 + probe epochs), then the
    schedule, numbered on (probe.epochs + 1, ...); each stage checkpoints in its own folder of
    the Tune checkpoint, so a retried trial resumes inside the stage it was in."""
    cfg = config["cfg"]
    spec_ = RepulsionSpec.from_dict(spec)
    node_id = ray.get_runtime_context().get_node_id()
    with tempfile.TemporaryDirectory(prefix="stetune-repulsion-") as tmp:
        root = Path(tmp) / "ckpt"
        root.mkdir()
        if (checkpoint := tune.get_checkpoint()) is not None:
            checkpoint.to_directory(str(root))

        def reporter(offset: int):
            def report(metrics: dict) -> None:
                m = dict(metrics, epoch=metrics["epoch"] + offset if metrics["epoch"] else 0)
                tune.report(_numeric(m) | {"node_id": node_id},
                            checkpoint=tune.Checkpoint.from_directory(str(root)))
            return report

        if cfg["phase"] == "pretrain":
            train(spec_.start_spec(), reporter(0), checkpoint_dir=root)
            return
        init = Path(tmp) / "start.pt"
        init.write_bytes(init_state)
        probe = spec_.probe_spec(cfg["ste"], cfg["seed"], str(init))
        result = train(probe, reporter(0), checkpoint_dir=root / "probe")
        after = spec_.schedule_spec(cfg["ste"], cfg["seed"], str(root / "probe" / CHECKPOINT_FILE))
        if after is not None and result.status == "finished":
            train(after, reporter(spec_.probe.epochs), checkpoint_dir=root / "schedule")


# -- driver ----------------------------------------------------------------------------------------
def _tuner(spec: RepulsionSpec, phase: str, configs: list[dict], init: bytes | None, epochs: int,
           verbose: int, fixed: dict) -> tune.Tuner:
    trainable = tune.with_resources(
        tune.with_parameters(repulsion_trial, spec=spec.to_dict(), init_state=init),
        {"cpu": spec.resources.cpus_per_trial, "gpu": spec.resources.gpus_per_trial})
    callbacks = [TrackingCallback(spec.resolved_tracking_uri(), spec.resolved_experiment(),
                                  spec.name, phase, epochs, fixed=fixed),
                 CellProgress(phase, "train_loss", "min", epochs, per_cell=len(configs) if
                              phase == "pretrain" else len(spec.seeds))]
    return tune.Tuner(
        trainable, param_space={"cfg": tune.grid_search(configs)},
        tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=spec.max_concurrent,
                                    trial_dirname_creator=_dirname, reuse_actors=REUSE_ACTORS),
        run_config=tune.RunConfig(name=phase, storage_path=str(spec.sweep_dir()),
                                  callbacks=callbacks, verbose=verbose,
                                  failure_config=tune.FailureConfig(max_failures=2),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))


def _start_weights(spec: RepulsionSpec, state: dict, verbose: int) -> bytes:
    """The start minimum's weights, also kept as <sweep dir>/start.pt."""
    path = spec.sweep_dir() / "start.pt"
    if spec.start.checkpoint:
        source = Path(spec.start.checkpoint).expanduser()
        if not source.is_file():
            raise FileNotFoundError(f"start.checkpoint must be an existing file, but got "
                                    f"start.checkpoint='{source}'")
        path.write_bytes(source.read_bytes())
    elif spec.start.run:
        with tempfile.TemporaryDirectory() as tmp:
            uri = spec.start.tracking_uri or spec.resolved_tracking_uri()
            path.write_bytes(download_weights(uri, spec.start.run, tmp).read_bytes())
    else:
        run = spec.start_spec().resolved()
        cfg = {"phase": "pretrain", "ste": run.ste, "bits": run.bits, "seed": run.seed}
        # its MLflow params: how the start was trained (start.train over the shared fields)
        fixed = {**spec.train, **spec.start.train}
        result = _tuner(spec, "pretrain", [cfg], None, run.epochs, verbose, fixed).fit()[0]
        last = result.metrics or {}
        if result.error or result.checkpoint is None or last.get("status") == "diverged":
            raise RuntimeError(f"training the start minimum ended {last.get('status', 'failed')}"
                               f": {result.error or 'see its MLflow run'}")
        with tempfile.TemporaryDirectory() as tmp:
            result.checkpoint.to_directory(tmp)
            path.write_bytes((Path(tmp) / CHECKPOINT_FILE).read_bytes())
        state["start"] = {k: last.get(k) for k in ("train_loss", "val_acc", "epoch")}
    save_state(spec, state)
    return path.read_bytes()


def run_repulsion(spec: RepulsionSpec, *, address: str | None = None, verbose: int = 1) -> dict:
    """Get the start, run the continuation trials, return the state (sweep.json) with `rows`."""
    with sweep_session(spec, address=address, resume=False, verbose=verbose,
                       resumable=False) as state:
        init = _start_weights(spec, state, verbose)
        configs = [{"phase": "repulsion", "ste": ste, "bits": spec.bits, "seed": seed}
                   for ste in spec.continued_stes() for seed in spec.seeds]
        trials = []
        fixed = {**spec.train, "probe.epochs": spec.probe.epochs, "probe.lr": spec.probe.lr,
                 "schedule.epochs": spec.schedule.epochs}
        for result in _tuner(spec, "repulsion", configs, init, spec.epochs, verbose, fixed).fit():
            cfg = result.config["cfg"]
            history = result.metrics_dataframe
            rows = [] if history is None else history.sort_values("epoch").to_dict("records")
            trials.append({"ste": cfg["ste"], "seed": cfg["seed"],
                           "status": trial_status(result.metrics or {}, spec.epochs,
                                                  result.error is not None),
                           **loss_ratios(rows, spec.probe.epochs)})
        state["trials"] = trials
        state["rows"] = repulsion_rows(trials, spec.repelled_factor)
    return state


def format_repulsion(rows: list[dict], factor: float) -> str:
    lines = [f"{'ste':<13} {'seeds':>5} {'start loss':>10} {'after probe':>11} {'ratio':>7} "
             f"{'start acc':>9} {'probe acc':>9} {'final acc':>9}  verdict (repelled: ratio >= {factor:g})"]
    for r in rows:
        lines.append(f"{r['ste']:<13} {r['seeds']:>5} {r['start_loss']:>10.4f} "
                     f"{r['probe_loss']:>11.4f} {r['ratio']:>7.3f} {r['start_acc']:>9.4f} "
                     f"{r['probe_acc']:>9.4f} {r['final_acc']:>9.4f}  {r['verdict']}")
    return "\n".join(lines)

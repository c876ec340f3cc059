"""`kind: repulsion` (paper Fig. 2/4): get the start minimum (a file, an MLflow run's weights, or
train it here as a one-trial `pretrain` phase), then one `repulsion` trial per (STE, seed)
continues it: epoch 0 measures the start, the probe trains at a small constant lr, the optional
schedule follows. Every trial is an MLflow child run like any sweep's."""

from __future__ import annotations

import tempfile
from pathlib import Path

from ...checkpoint import CHECKPOINT_FILE, safe_load
from ...spec import RepulsionSpec
from ...stability import loss_ratios, repulsion_rows
from ...train import train
from .base import SweepKind, cell_config, register_kind

__all__ = ["KIND", "repulsion_trial", "format_repulsion"]

PHASES = ("pretrain", "repulsion")


# -- trials: run on workers ------------------------------------------------------------------------
def repulsion_trial(config: dict, spec: dict, init_state: bytes | None = None) -> None:
    """Phase `pretrain`: train the start minimum. Phase `repulsion`: probe (epoch 0 + probe
    epochs), then the schedule, numbered on (probe.epochs + 1, ...); each stage checkpoints in its
    own folder of the trial's checkpoint, so a retried trial resumes inside the stage it was in."""
    from ..phase import trial_workspace

    cfg = config["cfg"]
    with trial_workspace("stetune-repulsion-") as ws:
        spec_ = RepulsionSpec.from_dict(spec)

        def reporter(offset: int):
            def report(metrics: dict) -> None:
                ws.report(dict(metrics, epoch=metrics["epoch"] + offset if metrics["epoch"] else 0))
            return report

        if cfg["phase"] == "pretrain":
            train(spec_.start_spec(), reporter(0), checkpoint_dir=ws.ckpt)
            return
        ste, seed = cfg["params"]["ste"], cfg["params"]["seed"]
        init = ws.write("start.pt", init_state)
        result = train(spec_.probe_spec(ste, seed, init), reporter(0),
                       checkpoint_dir=ws.ckpt / "probe")
        after = spec_.schedule_spec(ste, seed, str(ws.ckpt / "probe" / CHECKPOINT_FILE))
        if after is not None and result.status == "finished":
            train(after, reporter(spec_.probe.epochs), checkpoint_dir=ws.ckpt / "schedule")


# -- driver ----------------------------------------------------------------------------------------
def _phase(session, name: str, configs: list[dict], init: bytes | None, epochs: int, fixed: dict):
    from ..phase import Phase

    spec = session.spec
    return Phase(name, repulsion_trial, {"spec": spec.to_dict(), "init_state": init}, epochs,
                 per_cell=len(configs) if name == "pretrain" else len(spec.seeds),
                 configs=configs, resources={"cpu": spec.resources.cpus_per_trial,
                                             "gpu": spec.resources.gpus_per_trial},
                 metric="train_loss", mode="min", fixed=fixed, log_weights=name == "pretrain")


def _start_weights(session) -> bytes:
    """The start minimum's weights, also kept as <sweep dir>/start.pt."""
    spec, state = session.spec, session.state
    path = spec.sweep_dir() / "start.pt"
    if spec.start.checkpoint:
        source = Path(spec.start.checkpoint).expanduser()
        if not source.is_file():
            raise FileNotFoundError(f"start.checkpoint must be an existing file, but got "
                                    f"start.checkpoint='{source}'")
        path.write_bytes(source.read_bytes())
    elif spec.start.run:
        from ...tracking import download_weights

        with tempfile.TemporaryDirectory() as tmp:
            uri = spec.start.tracking_uri or spec.resolved_tracking_uri()
            path.write_bytes(download_weights(uri, spec.start.run, tmp).read_bytes())
    else:
        from ..phase import run_one

        run = spec.start_spec().resolved()
        cfg = cell_config(run.ste, run.bits, "pretrain", {}, run.seed)
        # its MLflow params: how the start was trained (start.train over the shared fields)
        fixed = {**spec.train, **spec.start.train}
        out = run_one(session, _phase(session, "pretrain", [cfg], None, run.epochs, fixed), path,
                      "training the start minimum")
        state["start"] = {k: out.last.get(k) for k in ("train_loss", "val_acc", "epoch")}
    safe_load(path, map_location="cpu", what="the start weights")  # refused here, not on workers
    session.save()
    return path.read_bytes()


def run(session) -> None:
    """Get the start, run the continuation trials; the state gets `trials` and `rows`."""
    from ..phase import run_phase

    spec = session.spec
    init = _start_weights(session)
    configs = [cell_config(ste, spec.bits, "repulsion", {}, seed)
               for ste in spec.continued_stes() for seed in spec.seeds]
    fixed = {**spec.train, "probe.epochs": spec.probe.epochs, "probe.lr": spec.probe.lr,
             "schedule.epochs": spec.schedule.epochs}
    trials = [{"ste": out.cfg["params"]["ste"], "seed": out.cfg["params"]["seed"],
               "status": out.status, **loss_ratios(out.history(), spec.probe.epochs)}
              for out in run_phase(session, _phase(session, "repulsion", configs, init,
                                                   spec.epochs, fixed))]
    session.state["trials"] = trials
    session.state["rows"] = repulsion_rows(trials, spec.repelled_factor)


def format_repulsion(rows: list[dict], factor: float) -> str:
    lines = [f"{'ste':<13} {'seeds':>5} {'start loss':>10} {'after probe':>11} {'ratio':>7} "
             f"{'start acc':>9} {'probe acc':>9} {'final acc':>9}  verdict (repelled: ratio >= {factor:g})"]
    for r in rows:
        lines.append(f"{r['ste']:<13} {r['seeds']:>5} {r['start_loss']:>10.4f} "
                     f"{r['probe_loss']:>11.4f} {r['ratio']:>7.3f} {r['start_acc']:>9.4f} "
                     f"{r['probe_acc']:>9.4f} {r['final_acc']:>9.4f}  {r['verdict']}")
    return "\n".join(lines)


def preflight(spec: RepulsionSpec, local: bool) -> None:
    from ..phase import check_dataset

    check_dataset(spec.dataset, spec.train.get("data_dir"), local)


KIND = register_kind(SweepKind(
    "repulsion", RepulsionSpec, run, PHASES,
    lambda spec, state: format_repulsion(state["rows"], spec.repelled_factor),
    analysis="repulsion", preflight=preflight,
    description="continue a trained minimum with other STEs at a small lr (paper Fig. 2/4)"))

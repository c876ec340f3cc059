"""`kind: network` (the default): the paper's Table-1 sweep. Optional float pre-training, then the
search phase (every (STE, bits) cell gets exactly `trials_per_cell` trials from its own seeded
TPE, early-stopped by its own ASHA), then the replicate phase (each cell's best fully trained
config once per seed). sweep.json records what the finished phases produced, so `resume`
restores the interrupted phase (trials, searcher state, checkpoints) and skips finished ones."""

from __future__ import annotations

import math
import numbers
import statistics
import textwrap
from dataclasses import replace

from ...spec import RunSpec, SweepSpec
from ...train import train
from .base import SweepKind, cell_config, cell_key, register_kind, tuned

__all__ = ["KIND", "trial_fn", "summary_rows"]

PHASES = ("pretrain", "search", "replicate")
WEIGHTS_PHASES = ("pretrain", "replicate")  # few runs, each one worth starting from


# -- the trial: runs on a worker, anywhere in the cluster ------------------------------------------
def trial_fn(config: dict, spec: dict, init_state: bytes | None = None,
             rungs: tuple[int, ...] = (), channel: str = "") -> None:
    """Train one trial; report each epoch, with a checkpoint every `resources.checkpoint_s`
    seconds, at the end and when the sweep is stopping, so a retried or resumed trial goes on
    from a recent epoch rather than from zero. `rungs`: the epochs after which the scheduler
    may stop it."""
    from ..phase import trial_workspace
    from ..stopping import save_requested

    cfg = config["cfg"]
    with trial_workspace(decides=frozenset(rungs).__contains__) as ws:
        sweep = SweepSpec.from_dict(spec)  # in the workspace: after the plugins it may name
        run = _run_spec(sweep, cfg)
        if init_state is not None and cfg["phase"] != "pretrain":
            run = replace(run, init_from=ws.write("init.pt", init_state))
        train(run, ws.report, checkpoint_dir=ws.ckpt, save_now=save_requested(channel),
              checkpoint_every=sweep.resources.checkpoint_s)


def pack_fn(config: dict, spec: dict, init_state: bytes | None = None,
            rungs: tuple[int, ...] = (), channel: str = "") -> None:
    """Train a pack of one cell's trials as one vectorised model (stetune.pack): one Tune
    result per member and epoch; at a rung, wait for the driver and drop the members its ASHA
    stopped (packs.py). Checkpoints as trial_fn's, holding the whole pack."""
    from ray import tune

    from ...pack import train_pack
    from ..packs import MEMBER_END, member_id, stop_requested
    from ..phase import trial_workspace
    from ..stopping import save_requested

    cfg, pack_id = config["cfg"], tune.get_context().get_trial_id()
    with trial_workspace() as ws:
        sweep = SweepSpec.from_dict(spec)
        runs = [_run_spec(sweep, m) for m in cfg["members"]]
        if init_state is not None:
            init = ws.write("init.pt", init_state)
            runs = [replace(r, init_from=init) for r in runs]

        def report(i: int, metrics: dict) -> bool:
            epoch, alive = metrics["epoch"], metrics.get("status") != "diverged"
            decide = alive and epoch in rungs
            ws.report(metrics | {"member": i}, wait=decide)
            if decide and stop_requested(channel, member_id(pack_id, i)):
                ws.report({"member": i, "epoch": epoch, MEMBER_END: "pruned"}, checkpoint=False)
                return True
            return False

        train_pack(runs, report, checkpoint_dir=ws.ckpt, save_now=save_requested(channel),
                   checkpoint_every=sweep.resources.checkpoint_s)
        # always one last result: a pack restored after all its members ended (its driver
        # killed before Tune's snapshot saw it end) reports nothing else, which Tune takes
        # for an error
        ws.report_checkpoint(always=True)


class RunParams:
    """params(cfg): a trial's run spec as its MLflow run logs it, every default resolved (model,
    dataset, momentum, milestones, ...), so a child run says all that made it."""

    def __init__(self, spec: dict):
        self.spec = spec

    def __call__(self, cfg: dict) -> dict:
        if cfg["phase"] == "pretrain":
            return {**self.spec["pretrain"], "bits": "float"}
        run = _run_spec(SweepSpec.from_dict(self.spec), cfg).resolved().to_dict()
        return {**{k: v for k, v in run.items() if v is not None and k != "init_from"},
                **cfg["params"]}


def _run_spec(spec: SweepSpec, cfg: dict) -> RunSpec:
    if cfg["phase"] == "pretrain":
        return spec.pretrain_spec()
    p = cfg["params"]
    return spec.run_spec(p["ste"], p["bits"], p["seed"], tuned(p))


# -- phases (driver) -------------------------------------------------------------------------------
def _phase(session, name: str, epochs: int, per_cell: int, init: bytes | None,
           rungs: tuple[int, ...] = (), pack: int = 1, **kw):
    from ..phase import Phase

    spec = session.spec
    channel = _channel(spec, name)
    kwargs = {"spec": spec.to_dict(), "init_state": init, "rungs": rungs, "channel": channel}
    return Phase(name, pack_fn if pack > 1 else trial_fn, kwargs, epochs, per_cell, channel=channel,
                 resources={"cpu": spec.resources.cpus_per_trial,
                            "gpu": spec.resources.gpus_per_trial},
                 metric=spec.metric, mode=spec.mode, params=RunParams(spec.to_dict()),
                 log_weights=name in WEIGHTS_PHASES, max_failures=spec.max_failures, **kw)


def _channel(spec: SweepSpec, phase: str) -> str:
    return f"{spec.storage}/{spec.name}/{phase}"  # ASHA's decisions for packs, a stop's request


AUTO_PACK_CPU = 8  # on a CPU, larger packs gain little per member (stetune.bench_pack)


def _pack_size(spec: SweepSpec, per_cell: int) -> int:
    """resources.pack as a number: 'auto' is AUTO_PACK_CPU on CPUs, and on a GPU what one
    trial's share of its memory holds (measured on a GPU node: pack_auto); never more members
    than a cell has trials."""
    k = spec.resources.pack
    if k == "auto":
        if not spec.resources.gpus_per_trial:
            k = AUTO_PACK_CPU
        else:
            import ray

            from ...pack_auto import auto_pack_size

            probe = ray.remote(num_gpus=spec.resources.gpus_per_trial)(auto_pack_size)
            k = ray.get(probe.remote(spec.run_spec(*spec.cells()[0], 0, {}).to_dict(),
                                     spec.resources.gpus_per_trial))
    return max(1, min(k, per_cell))


def _grouped(configs: list[dict], k: int) -> list[dict]:
    """The phase's trial configs in packs of up to k per cell (k = 1: as they are)."""
    if k == 1:
        return configs
    from ..packs import pack_config

    cells: dict[str, list[dict]] = {}
    for c in configs:
        cells.setdefault(c["cell"], []).append(c)
    return [pack_config(cs[i:i + k]) for cs in cells.values() for i in range(0, len(cs), k)]


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
    from ..cells import CellASHA, CellSearcher, PackASHA
    from ..samplers import check_new_studies, drop_studies, end_stale_trials, study_name
    from ..phase import run_phase

    spec, state = session.spec, session.state
    if "search" in state:
        return
    cells, epochs, n = spec.cells(), spec.epochs, spec.budget.trials_per_cell
    k = _phase_pack(session, "search", n)
    storage = spec.resolved_optuna_storage()
    studies = [study_name(spec.name, cell_key(*c)) for c in cells]
    asha_args = (spec.metric, spec.mode, epochs, spec.asha.grace_period, spec.asha.reduction_factor)
    asha = None if not spec.asha.enabled else (
        PackASHA(*asha_args, _channel(spec, "search"), studies=(storage, studies)) if k > 1
        else CellASHA(*asha_args, studies=(storage, studies)))
    searcher = scheduler = None  # a resumed phase brings back its own (Tune's saved state)
    if not (session.resume and (spec.sweep_dir() / "search").exists()):
        # before CellSearcher creates them: a new sweep's must be new; a resumed sweep restarting
        # the phase drops the ones its killed driver began (run_phase drops their MLflow runs)
        (drop_studies if session.resume else check_new_studies)(storage, studies)
        searcher = CellSearcher(cells, spec.search, n, spec.metric, spec.mode, spec.seed,
                                method=spec.search_method, storage=storage, sweep=spec.name,
                                epochs=epochs, pack=k)
        scheduler = asha
    session.tracker.tag_sweep({"stetune.optuna_storage": storage})  # for analyze, dashboards
    outcomes = run_phase(session, _phase(session, "search", epochs, n, init, searcher=searcher,
                                         scheduler=scheduler, num_samples=-(-n // k) * len(cells),
                                         members=n * len(cells), pack=k,
                                         rungs=asha.rungs() if asha else ()))
    end_stale_trials(storage, studies)  # every trial Tune ran has ended: the rest are orphans
    state["search"] = _best_per_cell(spec, outcomes)
    session.save()


def _phase_pack(session, phase: str, per_cell: int) -> int:
    """The phase's pack size, decided once and kept in sweep.json (a resume must group its
    trials as the interrupted driver did, even if 'auto' would measure another size now)."""
    packs = session.state.setdefault("packs", {})
    if phase not in packs:
        packs[phase] = _pack_size(session.spec, per_cell)
        session.save()
    return packs[phase]


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
    k = _phase_pack(session, "replicate", len(spec.replicates.seeds))
    for out in run_phase(session, _phase(session, "replicate", spec.epochs,
                                         len(spec.replicates.seeds), init, pack=k,
                                         configs=_grouped(configs, k))):
        reps.setdefault(out.cfg["cell"], []).append(
            {"seed": out.cfg["params"]["seed"], "status": out.status,
             "val_acc": out.last.get("val_acc"), "train_loss": out.last.get("train_loss"),
             **_at_best_epoch(out.history())})
    state["replicate"] = reps
    session.save()


def _finite(x) -> bool:
    return isinstance(x, numbers.Real) and math.isfinite(x)  # history values are numpy's


def _at_best_epoch(history: list[dict]) -> dict:
    """The epoch (>= 1; the first of ties) with the highest val_acc and the training loss there:
    what Table 1 reports per replicate (analysis._run_stats), so the summary reads the same."""
    epochs = [h for h in history if _finite(h.get("epoch")) and h["epoch"] >= 1
              and _finite(h.get("val_acc"))]
    if not epochs:
        return {}
    best = max(epochs, key=lambda h: h["val_acc"])
    loss = best.get("train_loss")
    return {"best_epoch": int(best["epoch"]), "best_val_acc": float(best["val_acc"]),
            "train_loss_at_best": float(loss) if _finite(loss) else None}


def run(session) -> None:
    init = _pretrain(session) if session.spec.pretrain is not None else None
    _search(session, init)
    _replicate(session, init)
    session.state["summary"] = summary_rows(session.spec, session.state)


# -- summary ---------------------------------------------------------------------------------------
def _replicate_values(rep: dict) -> tuple[float, float | None, str] | None:
    """(val_acc, train_loss, basis) of a finished replicate: at its best epoch; a sweep.json
    written before best epochs were recorded has only the last epoch's."""
    if rep.get("status") != "finished":
        return None
    if _finite(rep.get("best_val_acc")):
        return rep["best_val_acc"], rep.get("train_loss_at_best"), "best epoch"
    if _finite(rep.get("val_acc")):
        return rep["val_acc"], rep.get("train_loss"), "last epoch"
    return None


def _mean_std(xs: list[float]) -> tuple[float | None, float | None]:
    return (statistics.fmean(xs) if xs else None), (statistics.stdev(xs) if len(xs) > 1 else None)


def summary_rows(spec: SweepSpec, state: dict) -> list[dict]:
    """Per cell: the search's trials by status, its best value and params, and the replicates'
    val_acc and train_loss at each one's best epoch (Table 1's basis), mean and std over the
    finished ones only (failed and diverged ones are counted, not averaged)."""
    rows = []
    for key, cell in state.get("search", {}).items():
        reps = state.get("replicate", {}).get(key, [])
        values = [v for v in map(_replicate_values, reps) if v is not None]
        acc_mean, acc_std = _mean_std([acc for acc, _, _ in values])
        losses = [loss for _, loss, _ in values if _finite(loss)]
        loss_mean, loss_std = _mean_std(losses if len(losses) == len(values) else [])
        ended = cell["diverged"] + cell["pruned"] + cell["failed"]
        rows.append({
            "cell": key, "search_trials": cell["trials"], "finished": cell["trials"] - ended,
            "pruned": cell["pruned"], "diverged": cell["diverged"], "failed": cell["failed"],
            f"best_{spec.metric}": cell["best"]["value"] if cell["best"] else None,
            "params": cell["best"]["params"] if cell["best"] else None,
            "replicate_val_acc_mean": acc_mean, "replicate_val_acc_std": acc_std,
            "replicate_train_loss_mean": loss_mean, "replicate_train_loss_std": loss_std,
            # "last epoch" if any replicate has only that (max: "best..." < "last...")
            "replicate_basis": max((b for _, _, b in values), default=None),
            "replicates": len(values),
            "replicates_failed": sum(r.get("status") == "failed" for r in reps),
            "replicates_diverged": sum(r.get("status") == "diverged" for r in reps)})
    return rows


def _pm(mean: float | None, std: float | None, fmt: str, std_fmt: str,
        scale: float = 1.0) -> str:
    if mean is None:
        return "-"
    return f"{scale * mean:{fmt}}" + (f" ± {scale * std:{std_fmt}}" if std is not None else "")


def summary(spec: SweepSpec, state: dict) -> str:
    # accuracies in percent throughout, as Table 1 prints them
    pct = spec.metric.endswith("_acc")
    metric, best_head = f"best_{spec.metric}", f"best {spec.metric}{' %' if pct else ''}"
    rows, table = summary_rows(spec, state), []
    for r in rows:
        bad = ", ".join(f"{r[f'replicates_{s}']} {s}" for s in ("failed", "diverged")
                        if r[f"replicates_{s}"])
        best = ("-" if r[metric] is None else f"{100 * r[metric]:.2f}" if pct
                else f"{r[metric]:.4g}")
        table.append((f"{r['cell']:<18} {r['search_trials']:>6} {r['finished']:>8} "
                      f"{r['pruned']:>6} {r['diverged']:>8} {r['failed']:>6} {best:>14}",
                      _pm(r["replicate_val_acc_mean"], r["replicate_val_acc_std"], ".2f", ".2f",
                          100)
                      + f" (n={r['replicates']}{', +' + bad if bad else ''})",
                      _pm(r["replicate_train_loss_mean"], r["replicate_train_loss_std"], ".3g",
                          ".2g"),
                      ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                for k, v in (r["params"] or {}).items()) or "-"))
    search = (f"{'cell':<18} {'trials':>6} {'finished':>8} {'pruned':>6} {'diverged':>8} "
              f"{'failed':>6} {best_head:>14}")
    w_acc = max([len("val_acc %"), *(len(t[1]) for t in table)])
    w_loss = max([len("train loss"), *(len(t[2]) for t in table)])
    lines = [f"{'':<19}{'search trials ':─<{len(search) - 19}}   "
             f"{'replicates ':─<{w_acc + 1 + w_loss}}",
             f"{search}   {'val_acc %':<{w_acc}} {'train loss':<{w_loss}} best params",
             *(f"{s}   {a:<{w_acc}} {lo:<{w_loss}} {p}" for s, a, lo, p in table)]
    old = any(r["replicate_basis"] == "last epoch" for r in rows)
    basis = ("val_acc at each one's LAST epoch (this sweep.json predates best-epoch records; "
             "Table 1 uses the best epoch)" if old else
             "val_acc at each one's best epoch and the training loss at that epoch, as in "
             "Table 1 (stetune analyze/export, whose trial counts also include the replicates)")
    lines += textwrap.wrap(
        f"(search trials: how each cell's trials ended, finished = ran every epoch; {best_head}: "
        f"the best finished trial's last epoch, which chose the config. replicates: {basis}; "
        f"mean ± std over the n finished replicates)", 100)
    return "\n".join(lines)


def headline(spec: SweepSpec, state: dict) -> dict:
    """The parent run's metrics: per cell the search's best value and the replicates' mean."""
    out = {}
    for r in state.get("summary") or summary_rows(spec, state):
        out[f"best_{spec.metric}/{r['cell']}"] = r.get(f"best_{spec.metric}")
        out[f"replicate_val_acc/{r['cell']}"] = r.get("replicate_val_acc_mean")
    return {k: v for k, v in out.items() if isinstance(v, (int, float))}


def preflight(spec: SweepSpec, local: bool) -> None:
    from ..phase import check_dataset

    check_dataset(spec.dataset, spec.train.get("data_dir"), local)


KIND = register_kind(SweepKind(
    "network", SweepSpec, run, PHASES, summary, resumable=True, analysis="cells",
    headline=headline, preflight=preflight,
    description="tune every (STE, bits) cell equally, then replicate each cell's best config"))

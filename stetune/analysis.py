"""Stability analysis of a sweep, read from MLflow (any tracking URI; this module never writes).

`load_sweep` turns a sweep's MLflow runs into tidy DataFrames (one row per trial, one row per
trial-epoch); `cell_table` summarises each (model, dataset, bits, STE) cell: replicate mean ± std,
tuned hyper-parameters, divergence rate, loss spikes, final-minus-best gap and a verdict whose
rule (`StabilityRule`) is stated in words by `StabilityRule.describe`."""

from __future__ import annotations

import json
import math
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from .naming import quote, redact
from .store import StoreUnusable, check_sqlite_store
from .stability import count_spikes, loss_ratios, repulsion_rows
from .sweep.kinds import SweepKind, get_kind, list_kinds

__all__ = ["SweepData", "StabilityRule", "AnalysisError", "load_sweep", "cell_table",
           "repulsion_table", "HISTORY_KEYS", "CELL_KEYS", "CELL_COLUMNS"]

HISTORY_KEYS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr")  # per-epoch curves kept
CELL_KEYS = ["model", "dataset", "bits", "ste"]  # what identifies a cell across sweeps
_HUGE = 1e300  # MLflow's sqlite store keeps +-inf as +-1.797e308: treat as the infinity it was
_PAGE = 1000   # runs per search request (an mlflow server caps max_results at 50000)


class AnalysisError(ValueError):
    """The sweep cannot be analysed: unknown name, no trials yet, or the wrong kind."""


@dataclass(frozen=True)
class StabilityRule:
    spike_factor: float = 1.5    # an epoch's training loss above 1.5x the running minimum is a spike
    gap_tol: float = 0.01        # final val acc more than 1 point below the run's best: it drifted
    max_divergence: float = 0.5  # more than half of a cell's trials diverging is not a tuning accident

    def describe(self) -> str:
        return (f"A *loss spike* is an epoch whose training loss exceeds {self.spike_factor:g}x "
                f"the lowest training loss of the epochs before it. A cell is **unstable** when a "
                f"replicate run diverged or more than {self.max_divergence:.0%} of all its trials "
                f"(search and replicates) diverged; **marginal** when it is not unstable but a "
                f"replicate had a loss spike, the replicates' mean final-minus-best validation "
                f"accuracy gap is below -{self.gap_tol * 100:g} points, or any search trial "
                f"diverged; **stable** otherwise; **no data** when no run of the cell finished. "
                f"Table statistics use the finished replicates (a sweep without replicates: the "
                f"cell's best finished search trial, which then stands in for the replicates).")


@dataclass
class SweepData:
    name: str
    tracking_uri: str
    experiment: str
    parent_run_id: str
    status: str               # the parent run's MLflow status: RUNNING while the sweep is going
    spec: dict                # the parent run's params (the flattened, redacted spec)
    runs: pd.DataFrame        # one row per trial run
    history: pd.DataFrame     # one row per (trial run, epoch)
    tags: dict = field(default_factory=dict)  # the parent run's tags (e.g. the Optuna storage)

    @property
    def running(self) -> bool:
        return self.status == "RUNNING"

    @property
    def incomplete(self) -> bool:
        """The driver stopped before the end: KILLED (interrupted) or FAILED."""
        return self.status in ("KILLED", "FAILED")

    @property
    def kind(self) -> str:
        return self.spec.get("kind", "network")

    @property
    def analysis(self) -> str | None:
        """What the sweep's kind can be analysed as (SweepKind.analysis): cells or repulsion."""
        return get_kind(self.kind).analysis

    @property
    def tuned(self) -> list[str]:
        """Names of the hyper-parameters the sweep searched over (spec `search` keys)."""
        return sorted({k.split(".")[1] for k in self.spec if k.startswith("search.")})


# -- loading ---------------------------------------------------------------------------------------
def _search_all(client: MlflowClient, exp_id: str, filter_string: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([exp_id], filter_string, ViewType.ACTIVE_ONLY, _PAGE,
                                  page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _finite(x: float) -> float:
    return math.copysign(math.inf, x) if abs(x) >= _HUGE else x


# the per-epoch lr is logged as schedule/lr (the param `lr` is the initial one); older sweeps: lr
_LOGGED_AS = {"lr": ("schedule/lr", "lr")}


def _history(client: MlflowClient, run_id: str) -> list[dict]:
    rows: dict[int, dict] = {}
    for key in HISTORY_KEYS:
        names = _LOGGED_AS.get(key, (key,))
        points = next((h for n in names if (h := client.get_metric_history(run_id, n))), [])
        for m in points:
            rows.setdefault(int(m.step), {"run_id": run_id, "epoch": int(m.step)})[key] = _finite(m.value)
    return [rows[s] for s in sorted(rows)]


def _check_sqlite(uri: str) -> None:
    """Analysis never writes: a sqlite store must exist and be complete (checked read-only)."""
    try:
        check_sqlite_store(uri, must_exist=True)
    except StoreUnusable as e:
        raise AnalysisError(f"{e}; analysis reads only, so it does not create one") from None


def load_sweep(name: str, tracking_uri: str, experiment: str | None = None) -> SweepData:
    """Every trial run of sweep `name` (experiment defaults to the sweep name, as in the spec)."""
    experiment = experiment or name
    _check_sqlite(tracking_uri)
    where = redact(tracking_uri)  # messages may be logged: no user:password@ in them
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise AnalysisError(f"no experiment {experiment!r} at {where} (experiments there: "
                            f"{names}); pass the sweep's experiment")
    parents = _search_all(client, exp.experiment_id, f"tags.`stetune.kind` = 'sweep' and "
                                                     f"tags.`stetune.sweep` = {quote(name)}")
    if not parents:
        known = sorted({r.data.tags.get("stetune.sweep", "?") for r in _search_all(
            client, exp.experiment_id, "tags.`stetune.kind` = 'sweep'")})
        raise AnalysisError(f"no sweep named {name!r} in experiment {experiment!r} at "
                            f"{where}; sweeps there: {known}")
    parent = max(parents, key=lambda r: r.info.start_time)
    params = dict(parent.data.params)
    kind = _kind(name, params.get("kind", "network"))
    if kind.analysis is None:
        able = [k for k in list_kinds() if get_kind(k).analysis]
        raise AnalysisError(f"sweep {name!r} is a {kind.name} sweep; stability analysis needs a "
                            f"sweep of kind {' or '.join(able)} (its summary is in sweep.json and "
                            f"MLflow)")
    trials = _search_all(client, exp.experiment_id,
                         f"tags.`mlflow.parentRunId` = {quote(parent.info.run_id)}")
    if not trials:
        state = "still running" if parent.info.status == "RUNNING" else parent.info.status.lower()
        raise AnalysisError(f"sweep {name!r} has no trial runs yet (the sweep is {state})")
    with ThreadPoolExecutor(8) as pool:  # one request per metric and run: overlap them over HTTP
        histories = list(pool.map(lambda r: _history(client, r.info.run_id), trials))

    rows, hist = [], []
    for run, h in zip(trials, histories):
        row = _run_row(run, params)
        row.update(_run_stats(h))
        rows.append(row)
        hist.extend({**e, **{k: row[k] for k in ("phase", "ste", "bits", "seed", "cell", "status")}}
                    for e in h)
    runs = pd.DataFrame(rows)
    history = pd.DataFrame(hist, columns=["run_id", "epoch", *HISTORY_KEYS, "phase", "ste", "bits",
                                          "seed", "cell", "status"])
    data = SweepData(name, tracking_uri, experiment, parent.info.run_id, parent.info.status, params,
                     runs, history, dict(parent.data.tags))
    if data.running:
        done = int((runs["status"] != "running").sum())
        warnings.warn(f"sweep {name!r} is still running: analysing the {done} of {len(runs)} "
                      f"trials that have finished", stacklevel=2)
    elif data.incomplete:
        done = int(runs["status"].isin(["finished", "pruned", "diverged"]).sum())
        warnings.warn(f"sweep {name!r} ended {data.status} (interrupted or failed) before its "
                      f"budget was done: analysing the {done} trials that ran to a result; "
                      f"`stetune resume {name}` completes it", stacklevel=2)
    return data


def _kind(name: str, kind: str) -> SweepKind:
    try:
        return get_kind(kind)
    except ValueError:  # a kind registered where the sweep ran, not here
        raise AnalysisError(f"sweep {name!r} is of kind {kind!r}, which this stetune does not "
                            f"know (kinds: {list_kinds()})") from None


def _run_row(run, spec: dict) -> dict:
    t, p = run.data.tags, run.data.params
    status = t.get("stetune.status") or ("running" if run.info.status == "RUNNING" else "failed")
    bits = t.get("stetune.bits", p.get("bits"))
    row = {"run_id": run.info.run_id, "trial_id": t.get("stetune.trial_id"),
           "phase": t.get("stetune.phase"), "cell": t.get("stetune.cell"),
           "model": spec.get("model"), "dataset": spec.get("dataset"),
           "bits": int(bits) if str(bits).isdigit() else bits, "ste": t.get("stetune.ste", p.get("ste")),
           "seed": int(p["seed"]) if str(p.get("seed", "")).isdigit() else None,
           "status": status, "node": t.get("stetune.node")}
    row.update({f"param.{k}": _number(v) for k, v in p.items() if k not in ("ste", "bits", "seed")})
    return row


def _number(v: str):
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f


# -- per-run and per-cell statistics ---------------------------------------------------------------
def _run_stats(history: list[dict], rule: StabilityRule = StabilityRule()) -> dict:
    """Best validation accuracy, the training loss at that epoch, the final values, spikes."""
    epochs = [e for e in history if e["epoch"] >= 1]  # epoch 0: a start-point measurement
    acc = [e.get("val_acc", math.nan) for e in epochs]
    loss = [e.get("train_loss", math.nan) for e in epochs]
    finite = [i for i, a in enumerate(acc) if math.isfinite(a)]
    best = max(finite, key=lambda i: acc[i]) if finite else None
    return {"epochs_run": len(epochs),
            "best_val_acc": acc[best] if best is not None else math.nan,
            "best_epoch": epochs[best]["epoch"] if best is not None else None,
            "train_loss_at_best": loss[best] if best is not None else math.nan,
            "final_val_acc": acc[-1] if acc else math.nan,
            "final_train_loss": loss[-1] if loss else math.nan,
            "gap": (acc[-1] - acc[best]) if best is not None and math.isfinite(acc[-1]) else math.nan,
            "spikes": count_spikes(loss, rule.spike_factor)}


def _std(x: pd.Series) -> float:
    return float(x.std(ddof=1)) if len(x) > 1 else math.nan


CELL_COLUMNS = [*CELL_KEYS, "cell", "n", "source", "run_ids", "acc_mean", "acc_std", "loss_mean",
                "loss_std", "gap_mean", "trials", "diverged", "divergence_rate", "pruned", "failed",
                "spikes", "replicate_spikes", "params", "verdict", "reasons"]


def cell_table(data: SweepData, rule: StabilityRule = StabilityRule()) -> pd.DataFrame:
    """One row per (model, dataset, bits, STE) cell. Accuracy and loss statistics come from the
    cell's finished replicate runs (its tuned config under several seeds); without a replicate
    phase, from its best finished search trial (n=1; `source` says which, `run_ids` names them).
    Counts cover every ended search and replicate trial of the cell; running trials wait."""
    runs = data.runs.copy()
    if rule.spike_factor != StabilityRule().spike_factor:  # loaded with the default: recount
        hist = data.history[data.history["epoch"] >= 1].sort_values("epoch")
        loss = hist.groupby("run_id")["train_loss"]
        runs["spikes"] = runs["run_id"].map(lambda r: count_spikes(
            loss.get_group(r).tolist() if r in loss.groups else [], rule.spike_factor))
    done = runs[(runs["status"] != "running") & runs["phase"].isin(["search", "replicate"])]
    out = []
    for key, cell in done.groupby(CELL_KEYS, sort=True, dropna=False):
        reps = cell[(cell["phase"] == "replicate") & (cell["status"] != "failed")]
        stats, source = reps[reps["status"] == "finished"], "replicate"
        if reps.empty:
            fin = cell[(cell["phase"] == "search") & (cell["status"] == "finished")]
            reps = stats = fin.nlargest(1, "best_val_acc")
            source = "search"
        ok = stats[np.isfinite(stats["best_val_acc"].astype(float))]
        n_div = int((cell["status"] == "diverged").sum())
        row = dict(zip(CELL_KEYS, key))
        row.update({
            "cell": cell["cell"].iloc[0], "n": len(ok), "source": source if len(ok) else None,
            "run_ids": list(ok["run_id"]),
            "acc_mean": ok["best_val_acc"].mean() if len(ok) else math.nan,
            "acc_std": _std(ok["best_val_acc"]),
            "loss_mean": ok["train_loss_at_best"].mean() if len(ok) else math.nan,
            "loss_std": _std(ok["train_loss_at_best"]),
            "gap_mean": ok["gap"].mean() if len(ok) else math.nan,
            "trials": len(cell), "diverged": n_div, "divergence_rate": n_div / len(cell),
            "pruned": int((cell["status"] == "pruned").sum()),
            "failed": int((cell["status"] == "failed").sum()),
            "spikes": int(cell["spikes"].sum()), "replicate_spikes": int(reps["spikes"].sum()),
            "params": _tuned(reps, data.tuned)})
        row["verdict"], row["reasons"] = _verdict(row, reps, rule)
        out.append(row)
    return pd.DataFrame(out, columns=CELL_COLUMNS)


def _tuned(reps: pd.DataFrame, names: list[str]) -> dict:
    out = {}
    for k in names:
        col = f"param.{k}"
        if col in reps and len(reps):
            out[k] = reps[col].iloc[0]
    return out


def _verdict(row: dict, reps: pd.DataFrame, rule: StabilityRule) -> tuple[str, str]:
    hard, soft = [], []
    runs = "replicates" if row["source"] == "replicate" else "the best search trial"
    rep_div = int((reps["status"] == "diverged").sum()) if row["source"] == "replicate" else 0
    if rep_div:
        hard.append(f"{rep_div} replicate(s) diverged")
    if row["divergence_rate"] > rule.max_divergence:
        hard.append(f"{row['divergence_rate']:.0%} of trials diverged")
    if row["n"] == 0 and not hard:
        return "no data", "no finished run to judge"
    if row["replicate_spikes"]:
        soft.append(f"{row['replicate_spikes']} loss spike(s) in {runs}")
    if math.isfinite(row["gap_mean"]) and row["gap_mean"] < -rule.gap_tol:
        soft.append(f"final acc {row['gap_mean'] * 100:+.2f} points from best")
    if row["diverged"] and not hard:
        soft.append(f"{row['diverged']} of {row['trials']} trials diverged")
    verdict = "unstable" if hard else "marginal" if soft else "stable"
    return verdict, "; ".join(hard + soft) or "-"


def repulsion_table(data: SweepData) -> pd.DataFrame:
    """A repulsion sweep's verdict per STE: the training loss after the probe over the loss at
    the start (epoch 0), averaged over seeds; repelled when >= the spec's repelled_factor."""
    if data.analysis != "repulsion":
        raise AnalysisError(f"sweep {data.name!r} is a {data.kind} sweep, not a repulsion one")
    probe, factor = int(data.spec["probe.epochs"]), float(data.spec["repelled_factor"])
    trials = []
    ended = data.runs["status"].isin(["finished", "diverged"])  # running/failed: nothing to judge
    for run in data.runs[(data.runs["phase"] == "repulsion") & ended].itertuples():
        h = data.history[data.history["run_id"] == run.run_id].to_dict("records")
        trials.append({"ste": run.ste, "seed": run.seed, "status": run.status,
                       **loss_ratios(h, probe)})
    order = json.loads(data.spec.get("stes", "[]"))  # the spec's order, as the sweep printed it
    trials.sort(key=lambda t: order.index(t["ste"]) if t["ste"] in order else len(order))
    out = pd.DataFrame(repulsion_rows(trials, factor))
    out.attrs.update(factor=factor, probe_epochs=probe)
    return out

"""Helpers for the sweep integration tests: a small real spec and MLflow checks."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

import yaml
from mlflow.tracking import MlflowClient

from stetune.spec import SweepSpec
from stetune.spec.load import apply_overrides

ROOT = Path(__file__).resolve().parents[1]
RETRIES_TAG = "stetune.retries"  # set by the tracking callback when Tune restarts a crashed trial


def small_spec(tmp_path: Path, name: str, sets: list[str] = (), tracking_uri: str | None = None) -> SweepSpec:
    d = yaml.safe_load((ROOT / "sweeps" / "quickstart.yaml").read_text())
    d = apply_overrides(d, [f"name={name}", f"storage={tmp_path}", "train.epochs=2",
                            "train.limit=400", *sets])
    if tracking_uri:
        d["mlflow"] = {"tracking_uri": tracking_uri}
    return SweepSpec.from_dict(d)


def write_spec(spec: SweepSpec, path: Path) -> Path:
    path.write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
    return path


def sweep_runs(spec: SweepSpec):
    """(parent runs, child runs) of the sweep, active runs only."""
    client = MlflowClient(spec.resolved_tracking_uri())
    exp = client.get_experiment_by_name(spec.resolved_experiment())
    runs = client.search_runs([exp.experiment_id], max_results=10_000)
    parents = [r for r in runs if r.data.tags.get("stetune.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("stetune.kind") == "trial"]
    return client, parents, children


def check_one_run_per_trial(spec: SweepSpec, n_search: int, n_replicate: int,
                            statuses=("finished", "pruned", "diverged"),
                            retries: bool = False, driver_died: bool = False) -> list:
    """One finished parent; one finished child per trial, each with epochs 1..last exactly once;
    and no trial retried unless `retries`: max_failures would otherwise hide a crash that the
    retry happened to get past."""
    client, parents, children = sweep_runs(spec)
    assert len(parents) == 1, [p.info.run_name for p in parents]
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    ids = [c.data.tags["stetune.trial_id"] for c in children]
    assert len(ids) == len(set(ids)), f"a trial has two MLflow runs: {sorted(ids)}"
    phases = [c.data.tags["stetune.phase"] for c in children]
    assert (phases.count("search"), phases.count("replicate")) == (n_search, n_replicate)
    for c in children:
        name = c.data.tags["stetune.trial_id"]
        assert c.info.status == "FINISHED", (name, c.info.status)
        status = c.data.tags["stetune.status"]
        assert status in statuses, (name, status)
        last = max(m.step for m in client.get_metric_history(c.info.run_id, "val_acc"))
        if status == "finished":
            assert last == spec.epochs, (name, last)
        for key in ("val_acc", "train_loss", "schedule/lr"):
            steps = [m.step for m in client.get_metric_history(c.info.run_id, key)]
            assert sorted(steps) == list(range(1, last + 1)), (name, key, steps)  # no gap, no dup
        # the epoch is the step; the per-epoch lr must not share the param's name; no
        # single-point summary metrics
        assert not {"node_id", "epoch", "lr"} & set(c.data.metrics), (name, c.data.metrics)
        assert not [k for k in c.data.metrics if k.startswith("final/")], (name, c.data.metrics)
        check_run_reads_well(c, spec, status, last)
    if n_search:
        check_studies(spec, [c for c in children if c.data.tags["stetune.phase"] == "search"])
    # Tune's own count (its experiment state) must be what the run says, so a retry the tracker
    # failed to record is caught too. After `driver_died` (SIGKILL, a store that stopped
    # answering) the run may hold more: Tune's state saved after a retry the run recorded may
    # never have reached storage, and the resume restored the older one
    tagged = {c.data.tags["stetune.trial_id"]: int(c.data.tags.get(RETRIES_TAG, 0))
              for c in children}
    tune = tune_failures(spec)
    assert tagged.keys() == tune.keys(), (tagged, tune)
    assert all(tagged[k] >= tune[k] if driver_died else tagged[k] == tune[k] for k in tune), \
        (tagged, tune)
    if not retries:
        retried = {k: n for k, n in tagged.items() if n}
        assert not retried, f"trials retried after a crash (times): {retried}"
    return children


def check_run_reads_well(c, spec: SweepSpec, status: str, last: int) -> None:
    """A trial run says what it is: a name with its cell, tuned values and phase (and how it
    ended early), the full resolved run spec as params, MLflow's and stetune's context tags."""
    p, t, name = c.data.params, c.data.tags, c.info.run_name
    bits = f"{p['bits']}b" if p["bits"] != "float" else "float"
    if status in ("pruned", "diverged"):  # how it ended comes first: the name column is narrow
        assert name.startswith(f"{status}@{last} · "), (name, status, last)
        name = name.split(" · ", 1)[1]
    assert name.startswith(f"{p['ste']}/{bits} "), name
    assert f"· {t['stetune.phase']}" in name, name
    if t["stetune.phase"] == "replicate":
        assert f"seed {p['seed']}" in name, name
    for k in spec.search:
        assert f"{k}=" in name, (name, k)
    assert name.endswith(f" · {t['stetune.phase']}"), name
    assert {"model", "dataset", "ste", "bits", "seed", "epochs", "batch_size", "lr", "momentum",
            "weight_decay", "milestones", "gamma"} <= set(p), sorted(p)
    assert p["model"] == spec.model and p["dataset"] == spec.dataset
    assert int(p["epochs"]) == spec.epochs
    assert {"mlflow.user", "mlflow.source.name", "mlflow.source.type", "stetune.version",
            "host.hostname"} <= set(t), sorted(t)


def check_studies(spec: SweepSpec, search_runs: list) -> None:
    """Each cell's Optuna study (persisted beside the MLflow store) holds exactly the cell's
    search trials, one Optuna trial per MLflow run (linked by stetune.trial_id), in the state
    the run ended in (finished: COMPLETE with the run's last value; pruned: PRUNED); nothing is
    left RUNNING (a resumed search ends its orphans FAIL)."""
    import optuna

    from stetune.journal import open_study_storage

    storage = open_study_storage(spec.resolved_optuna_storage(), readonly=True)
    want = {"finished": "COMPLETE", "pruned": "PRUNED", "diverged": "COMPLETE", "failed": "FAIL"}
    for ste, bits in spec.cells():
        cell = f"{ste}/{bits}"
        study = optuna.load_study(study_name=f"{spec.name}/{cell}", storage=storage)
        trials = {t.user_attrs.get("stetune.trial_id"): t for t in study.trials
                  if t.state.name != "FAIL"}
        runs = {c.data.tags["stetune.trial_id"]: c for c in search_runs
                if c.data.tags["stetune.cell"] == cell}
        assert not [t for t in study.trials if t.state.name == "RUNNING"], cell
        assert set(trials) == {k for k, c in runs.items()
                               if c.data.tags["stetune.status"] != "failed"}, (cell, sorted(trials))
        for key, t in trials.items():
            run = runs[key]
            assert t.state.name == want[run.data.tags["stetune.status"]], (key, t.state)
            if t.state.name == "COMPLETE" and math.isfinite(run.data.metrics[spec.metric]):
                assert t.value == pytest.approx(run.data.metrics[spec.metric]), (key, t.value)
            for k in spec.search:
                assert run.data.params[k] == str(t.params[k]), (key, k, t.params)


def tune_failures(spec: SweepSpec) -> dict[str, int]:
    """{'<phase>-<trial id>': times Tune restarted the trial after a crash}, from each phase's
    newest experiment state: Tune's record, independent of what the tracker logged."""
    out = {}
    for phase_dir in (p for p in spec.sweep_dir().iterdir() if p.is_dir()):  # local or s3://
        states = sorted(phase_dir.glob("experiment_state-*.json"), key=lambda p: p.name)
        if not states:
            continue
        for trial_json, meta_json in json.loads(states[-1].read_text())["trial_data"]:
            trial = json.loads(trial_json)
            members = (trial.get("config") or {}).get("cfg", {}).get("members")
            ids = ([f"{trial['trial_id']}-{i}" for i in range(len(members))] if members
                   else [trial["trial_id"]])  # a pack's members: its retries are theirs
            for trial_id in ids:
                out[f"{phase_dir.name}-{trial_id}"] = json.loads(meta_json)["num_failures"]
    return out


def check_replicates_are_best(spec: SweepSpec) -> int:
    """Each cell's replicate runs (one per seed) carry exactly the params, all but the seed, of
    the cell's best search trial as the code defines it (kinds/network._best_per_cell): among
    the trials that ran every epoch (not pruned, diverged or failed), the best final
    <metric> by the spec's mode; a tie accepts any of the tied trials. Returns how many cells
    had a single best trial whose params differ from another search trial's: there, replicating
    any other trial fails this check."""
    _, _, children = sweep_runs(spec)
    sign, key = (1 if spec.mode == "max" else -1), spec.metric  # MLflow's latest: the last epoch
    tuned = lambda run: {k: v for k, v in run.data.params.items() if k != "seed"}  # noqa: E731
    discriminating = 0
    for cell in sorted({c.data.tags["stetune.cell"] for c in children}):
        mine = [c for c in children if c.data.tags["stetune.cell"] == cell]
        search = [c for c in mine if c.data.tags["stetune.phase"] == "search"]
        reps = [c for c in mine if c.data.tags["stetune.phase"] == "replicate"]
        done = [c for c in search if c.data.tags["stetune.status"] == "finished"
                and math.isfinite(c.data.metrics.get(key, math.nan))]
        if not done:  # nothing fully trained: nothing to replicate
            assert not reps, (cell, [tuned(r) for r in reps])
            continue
        best = max(sign * c.data.metrics[key] for c in done)
        want = [tuned(c) for c in done if sign * c.data.metrics[key] == best]
        seeds = sorted(int(r.data.params["seed"]) for r in reps)
        assert seeds == sorted(spec.replicates.seeds), (cell, seeds)
        for r in reps:
            assert tuned(r) in want, f"{cell}: replicated {tuned(r)}, but the best is {want}"
        if len(want) == 1 and any(tuned(c) != want[0] for c in search):
            discriminating += 1
    return discriminating


def cli(*args, env=None) -> subprocess.Popen:
    """`stetune ARGS` in its own session (stop_session ends it and its local Ray)."""
    return subprocess.Popen([sys.executable, "-m", "stetune.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, env=env)


def run_cli(*args, env=None, cwd=None, timeout: float = 600) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `stetune ARGS`, run to its end in its own session."""
    from service_helpers import stop_session

    proc = subprocess.Popen([sys.executable, "-m", "stetune.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, env=env,
                            cwd=cwd)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        stop_session(proc)
    return proc.returncode, out, err


def wait_for_runs(spec: SweepSpec, driver: subprocess.Popen, ready, timeout: float = 300) -> None:
    """Poll MLflow until ready(children) holds, the driver still running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.5)
        assert driver.poll() is None, driver.communicate()
        uri = spec.resolved_tracking_uri()
        if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
            continue
        try:
            _, _, children = sweep_runs(spec)
        except Exception:  # the store is still being created
            continue
        if ready(children):
            return
    pytest.fail("the sweep never reached the point to inject the fault")


def tune_results(phase_dir) -> dict[str, list[dict]]:
    """Tune's result.json of each trial of a phase (the trial's dir is its Tune trial id), in a
    local folder or an object store."""
    from stetune.storage import locate

    out = {}
    for f in (d / "result.json" for d in locate(phase_dir).iterdir()):
        if not f.is_file():
            continue
        rows = []
        for line in f.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:  # the line being written right now
                pass
        out[f.parent.name] = rows
    return out


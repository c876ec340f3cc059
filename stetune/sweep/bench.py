"""`stetune bench-sweep`: how much of the machine a sweep keeps busy, against the floor.

The same trials (LeNet-5 on digits, one lr each, no early stopping) run twice in one command:
first in a plain process pool (`train()` per trial, nothing else: the floor any orchestration
is measured against), then as a stetune sweep (Ray Tune, Optuna's grid, MLflow child runs,
checkpoints). utilisation = sum of the trials' training time (their epochs' own timings) /
(wall time x slots); everything else (start-up, scheduling, checkpoints, MLflow) is overhead,
reported per trial and, for the sweep's excess over the floor, per epoch."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from mlflow.tracking import MlflowClient

from ..spec import RunSpec, SweepSpec
from .runner import run_sweep

__all__ = ["sweep_utilisation", "pool_floor", "format_report"]

BATCH = 64


def _lrs(trials: int) -> list[float]:
    """Distinct learning rates, log-spaced over [0.01, 0.1]: trials differ, none diverges."""
    return [round(0.01 * 10 ** (i / max(1, trials - 1)), 6) for i in range(trials)]


def _one_trial(kwargs: dict) -> tuple[float, float, float]:
    import torch

    from ..train import train

    torch.set_num_threads(1)  # as a Ray trial with one CPU runs
    t0 = time.time()
    result = train(RunSpec(**kwargs))
    return sum(h["epoch_time"] for h in result.history), t0, time.time()


def pool_floor(trials: int, epochs: int, slots: int) -> dict:
    """The trials in a process pool of `slots` workers: no Ray, no MLflow, no checkpoints."""
    runs = [dict(model="lenet5", dataset="digits", ste="clipped_relu", bits=2, epochs=epochs,
                 batch_size=BATCH, lr=lr, seed=0, device="cpu") for lr in _lrs(trials)]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=slots) as pool:
        done = list(pool.map(_one_trial, runs))
    window = max(t for _, _, t in done) - min(t for _, t, _ in done)
    return _figures(trials, slots, time.perf_counter() - t0, sum(s for s, _, _ in done), window)


def _figures(trials: int, slots: int, wall: float, train_s: float, window: float) -> dict:
    """`window`: from the first trial's start to the last one's end, i.e. the wall time less the
    start-up (Ray, a pool's processes) and shut-down paid once per sweep, not per trial."""
    return {"trials": trials, "slots": slots, "wall_s": wall, "train_s": train_s,
            "train_s_per_trial": train_s / max(1, trials),
            "utilisation": train_s / (wall * slots),
            "overhead_s_per_trial": (wall * slots - train_s) / max(1, trials),
            "window_s": window, "window_utilisation": train_s / (window * slots),
            "startup_s": wall - window}


@contextlib.contextmanager
def _mlflow_server(folder: Path):
    """`mlflow server` on a free loopback port, with a sqlite store in `folder`."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(folder / "mlflow-server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
         "--default-artifact-root", str(folder / "server-artifacts"), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(OSError):
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start: see {log.name}")
            time.sleep(0.5)
        yield uri
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
        log.close()


def sweep_utilisation(trials: int = 8, epochs: int = 100, slots: int = 2,
                      storage: str | None = None, server: bool = False,
                      floor: bool = True, pack: int = 1) -> dict:
    """The floor (unless floor=False), then the sweep; both dicts of `_figures` plus ratios."""
    storage = storage or tempfile.mkdtemp(prefix="stetune-bench-")
    out = {"storage": storage, "epochs": epochs}
    if floor:
        out["floor"] = pool_floor(trials, epochs, slots)
    with (_mlflow_server(Path(storage)) if server else contextlib.nullcontext(None)) as uri:
        spec = SweepSpec.from_dict({
            "name": "bench-utilisation", "model": "lenet5", "dataset": "digits",
            "storage": storage, "cells": {"ste": ["clipped_relu"], "bits": [2]},
            # the floor's learning rates, each once; no trial stopped early: all run every epoch
            "search": {"method": "grid", "lr": _lrs(trials)},
            "train": {"epochs": epochs, "batch_size": BATCH, "device": "cpu"},
            "replicates": {"seeds": []}, "asha": {"enabled": False}, "max_concurrent": slots,
            "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0, "pack": pack},
            "mlflow": {"tracking_uri": uri} if uri else {}})
        t0 = time.perf_counter()
        run_sweep(spec, verbose=0)
        wall = time.perf_counter() - t0
        client = MlflowClient(spec.resolved_tracking_uri())
        exp = client.get_experiment_by_name(spec.resolved_experiment())
        runs = [r for r in client.search_runs([exp.experiment_id], max_results=50_000)
                if r.data.tags.get("stetune.kind") == "trial"]
        train_s = sum(m.value for r in runs
                      for m in client.get_metric_history(r.info.run_id, "epoch_time"))
        window = (max(r.info.end_time for r in runs) - min(r.info.start_time for r in runs)) / 1e3
    out["sweep"] = _figures(len(runs), slots, wall, train_s, window)
    out["tracking"] = "mlflow server (sqlite behind it)" if server else "sqlite file"
    out["pack"] = pack
    if floor:
        f, s = out["floor"], out["sweep"]
        out["utilisation_vs_floor"] = s["utilisation"] / f["utilisation"]
        out["excess_overhead_ms_per_epoch"] = 1e3 * max(
            0.0, s["overhead_s_per_trial"] - f["overhead_s_per_trial"]) / epochs
        # the same, less each one's once-per-run start-up: what the sweep adds per epoch
        per_epoch = lambda x: (x["window_s"] * slots - x["train_s"]) / (x["trials"] * epochs)  # noqa: E731
        out["in_trial_overhead_ms_per_epoch"] = 1e3 * (per_epoch(s) - per_epoch(f))
        out["wall_ratio"] = f["wall_s"] / s["wall_s"]  # the same work: floor time / sweep time
    return out


def format_report(r: dict) -> str:
    lines = [f"{'':<6} {'trials':>6} {'wall s':>7} {'start-up s':>10} {'train s/trial':>13} "
             f"{'utilisation':>11} {'in-window':>9} {'overhead s/trial':>16}"]
    for key in ("floor", "sweep"):
        if key in r:
            f = r[key]
            lines.append(f"{key:<6} {f['trials']:>6} {f['wall_s']:>7.1f} {f['startup_s']:>10.1f} "
                         f"{f['train_s_per_trial']:>13.2f} {f['utilisation']:>11.3f} "
                         f"{f['window_utilisation']:>9.3f} {f['overhead_s_per_trial']:>16.2f}")
    if "utilisation_vs_floor" in r:
        lines.append(f"sweep utilisation / floor: {r['utilisation_vs_floor']:.3f}; floor wall / "
                     f"sweep wall: {r['wall_ratio']:.3f}; the sweep's overhead beyond the floor: "
                     f"{r['excess_overhead_ms_per_epoch']:.1f} ms per epoch, "
                     f"{r['in_trial_overhead_ms_per_epoch']:.1f} ms without start-up "
                     f"({r['epochs']} epochs per trial, packs of {r.get('pack', 1)}, MLflow: "
                     f"{r['tracking']})")
    return "\n".join(lines)

"""`stetune bench-sweep`: how much of the machine a sweep keeps busy.

utilisation = sum of the trials' training time / (wall time x concurrent slots). Training time
is the sum of the epochs' own timings; everything else (Ray and Tune start-up, scheduling,
checkpoint persistence, MLflow logging, data loading) is overhead, reported per trial."""

from __future__ import annotations

import tempfile
import time

from mlflow.tracking import MlflowClient

from ..spec import SweepSpec
from .runner import run_sweep

__all__ = ["sweep_utilisation"]


def sweep_utilisation(trials: int = 8, epochs: int = 100, slots: int = 2, storage: str | None = None) -> dict:
    storage = storage or tempfile.mkdtemp(prefix="stetune-bench-")
    spec = SweepSpec.from_dict({
        "name": "bench-utilisation", "model": "lenet5", "dataset": "digits", "storage": storage,
        "cells": {"ste": ["clipped_relu"], "bits": [2]},
        # a wide lr range so trials differ, but none is stopped early: every trial runs all epochs
        "search": {"lr": {"dist": "loguniform", "low": 0.01, "high": 0.1}},
        "train": {"epochs": epochs, "batch_size": 64},
        "budget": {"trials_per_cell": trials}, "replicates": {"seeds": []},
        "asha": {"enabled": False}, "max_concurrent": slots,
        "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0}})
    t0 = time.perf_counter()
    run_sweep(spec, verbose=0)
    wall = time.perf_counter() - t0
    client = MlflowClient(spec.resolved_tracking_uri())
    exp = client.get_experiment_by_name(spec.resolved_experiment())
    runs = [r for r in client.search_runs([exp.experiment_id], max_results=1000)
            if r.data.tags.get("stetune.kind") == "trial"]
    train_s = sum(m.value for r in runs for m in client.get_metric_history(r.info.run_id, "epoch_time"))
    return {"trials": len(runs), "slots": slots, "wall_s": wall, "train_s": train_s,
            "train_s_per_trial": train_s / max(1, len(runs)),
            "utilisation": train_s / (wall * slots),
            "overhead_s_per_trial": (wall * slots - train_s) / max(1, len(runs)),
            "storage": storage}

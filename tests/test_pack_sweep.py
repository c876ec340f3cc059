"""Trial packs in a real sweep: every member is a trial of its own in MLflow, Optuna and ASHA, and
trains exactly as its separate train() run would (tests/test_pack.py proves the trainer alone)."""

from __future__ import annotations

import pytest
import torch

from sweep_helpers import check_one_run_per_trial, small_spec, sweep_runs

from stetune.checkpoint import safe_load
from stetune.data import load_dataset
from stetune.models import create_model
from stetune.sweep import run_sweep
from stetune.tracking import download_weights
from stetune.train import evaluate, train

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]


def test_a_pack_sweep_keeps_every_member_a_trial_of_its_own(tmp_path):
    # 3 search trials in one pack of 3 (ASHA may prune one at epoch 1), both replicates in one
    spec = small_spec(tmp_path, "packed", ["budget.trials_per_cell=3", "replicates.seeds=[1, 2]",
                                           "cells.ste=[relu]", "cells.bits=[2]",
                                           "train.epochs=3", "resources.pack=4"])
    state = run_sweep(spec, verbose=0)
    assert state["packs"] == {"search": 3, "replicate": 2}  # never more members than trials
    runs = check_one_run_per_trial(spec, n_search=3, n_replicate=2)  # + Optuna, names, epochs
    packs = {r.data.tags["stetune.phase"]: set() for r in runs}
    for r in runs:
        packs[r.data.tags["stetune.phase"]].add(r.data.tags["stetune.pack"])
    assert {k: len(v) for k, v in packs.items()} == {"search": 1, "replicate": 1}

    client, _, _ = sweep_runs(spec)
    reps = sorted((r for r in runs if r.data.tags["stetune.phase"] == "replicate"),
                  key=lambda r: int(r.data.params["seed"]))
    for rep, saved in zip(reps, sorted(state["replicate"]["relu/2"], key=lambda x: x["seed"])):
        history = sorted(client.get_metric_history(rep.info.run_id, "val_acc"),
                         key=lambda m: m.step)
        # the summary's best epoch comes from the member's own results
        best = max(history, key=lambda m: (m.value, -m.step))
        assert (saved["best_epoch"], saved["best_val_acc"]) == (best.step, best.value)
        # the member trained as its own train() run does (same seed, same tuned lr)
        run = spec.run_spec("relu", 2, int(rep.data.params["seed"]),
                            {"lr": float(rep.data.params["lr"])})
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as on the worker (one CPU): the same float sums
        try:
            alone = train(run)
        finally:
            torch.set_num_threads(threads)
        n_val = len(load_dataset(run.dataset, limit=run.limit, seed=run.seed).y_val)
        assert [round(h["val_acc"] * n_val) for h in alone.history] == pytest.approx(
            [round(m.value * n_val) for m in history], abs=1)  # one example (test_pack.py)
        # its weights, out of the pack's checkpoint, are its own
        path = download_weights(spec.resolved_tracking_uri(), rep.info.run_id, tmp_path / rep.info.run_id)
        model = create_model(run.model, bits=run.bits, ste=run.ste)
        model.load_state_dict(safe_load(path)["model"])
        data = load_dataset(run.dataset, limit=run.limit, seed=run.seed)
        assert evaluate(model, data.x_val, data.y_val)["val_acc"] == pytest.approx(history[-1].value)

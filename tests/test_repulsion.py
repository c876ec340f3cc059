"""The repulsion experiment: spec validation and the pure measures (fast), then a real tiny run on
local Ray with a sqlite MLflow store, started once from a minimum trained in the sweep and once
from that run's logged weights (slow)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from stetune.analysis import cell_table, load_sweep, repulsion_table
from stetune.cli import main
from stetune.export import repulsion_figure
from stetune.spec import RepulsionSpec, SpecError, load_sweep_spec
from stetune.stability import count_spikes, loss_ratios, repulsion_rows
from stetune.naming import WEIGHTS_ARTIFACT

ROOT = Path(__file__).resolve().parents[1]
TINY = {"kind": "repulsion", "name": "tiny-rep", "model": "lenet5", "dataset": "digits", "bits": 2,
        "start": {"ste": "clipped_relu", "train": {"epochs": 2, "lr": 0.05}},
        "stes": ["identity", "clipped_relu"], "probe": {"epochs": 2, "lr": 0.01},
        "train": {"limit": 400, "batch_size": 64}}


# -- fast: spec and measures -------------------------------------------------------------------
def test_presets_validate():
    for name in ("instability-resnet20.yaml", "repulsion-fashion-lenet5.yaml"):
        spec = load_sweep_spec(ROOT / "sweeps" / name)
        assert isinstance(spec, RepulsionSpec) and spec.start.ste == "clipped_relu"
        assert RepulsionSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize("change, message", [
    ({"bits": "float"}, "bits must be an int in 1..8"),
    ({"start": {"ste": "relu", "run": "abc"}}, "start must give exactly one of"),
    ({"start": {"checkpoint": "x.pt", "train": {"lr": 1}}}, "start.train applies only with start.ste"),
    ({"probe": {"lr": 0}}, "probe.lr must be a number > 0, but got probe.lr=0"),
    ({"start": {"ste": "relu", "train": {"lr": -1}}}, "start.train.lr must be > 0"),
    ({"schedule": {"epochs": 2, "milestones": [3]}}, "schedule.milestones must be epochs within"),
    ({"train": {"lr": 0.1}}, "unknown key 'lr' in train"),
    ({"stes": ["identity", "identity"]}, "stes"),
    ({"repelled_factor": 0.5}, "repelled_factor must be a number > 1"),
])
def test_invalid_specs_name_the_field(change, message):
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(".", r"\.")):
        RepulsionSpec.from_dict({**TINY, **change})


def test_spikes_ratios_and_verdicts():
    assert count_spikes([1.0, 0.5, 0.8, 0.4, math.nan, 0.61], 1.5) == 2  # 0.8 > 0.75, 0.61 > 0.6
    assert count_spikes([1.0, 0.9, 1.3], 1.5) == 0
    hist = [{"epoch": 0, "train_loss": 0.2, "val_acc": 0.9}, {"epoch": 1, "train_loss": 0.3},
            {"epoch": 2, "train_loss": 0.5, "val_acc": 0.7}, {"epoch": 3, "train_loss": 0.1,
                                                             "val_acc": 0.95}]
    r = loss_ratios(hist, probe_epochs=2)
    assert r["ratio"] == pytest.approx(2.5) and r["final_loss"] == 0.1 and r["probe_acc"] == 0.7
    rows = repulsion_rows([{"ste": "identity", "status": "finished", "ratio": 2.0},
                           {"ste": "identity", "status": "finished", "ratio": 1.2},
                           {"ste": "relu", "status": "finished", "ratio": 1.0},
                           {"ste": "clipped_relu", "status": "diverged", "ratio": math.nan}], 1.5)
    assert [(r["ste"], r["verdict"]) for r in rows] == [
        ("identity", "repelled"), ("relu", "held"), ("clipped_relu", "diverged")]
    assert rows[0]["ratio"] == pytest.approx(1.6) and rows[0]["seeds"] == 2


# -- slow: a real experiment (local_ray: conftest) ------------------------------------------------
@pytest.mark.slow
def test_repulsion_from_a_trained_start_and_from_its_mlflow_run(tmp_path, local_ray, monkeypatch):
    from stetune.sweep import run_sweep

    first = RepulsionSpec.from_dict({**TINY, "storage": str(tmp_path)})
    state = run_sweep(first, verbose=0)
    rows = {r["ste"]: r for r in state["rows"]}
    assert set(rows) == {"identity", "clipped_relu"}
    for r in rows.values():  # every STE starts from the same weights, measured the same way
        assert r["start_loss"] == pytest.approx(rows["identity"]["start_loss"], rel=1e-6)
        assert r["ratio"] == pytest.approx(r["probe_loss"] / r["start_loss"])
        assert r["verdict"] == ("repelled" if r["ratio"] >= first.repelled_factor else "held")

    # MLflow: the start is a pretrain run with its weights; one run per STE with epochs 0..2
    client = MlflowClient(first.resolved_tracking_uri())
    data = load_sweep(first.name, first.resolved_tracking_uri())
    assert sorted(data.runs["phase"]) == ["pretrain", "repulsion", "repulsion"]
    for run in data.runs.itertuples():
        steps = sorted(data.history.loc[data.history["run_id"] == run.run_id, "epoch"])
        assert steps == ([1, 2] if run.phase == "pretrain" else [0, 1, 2])
    start_run = data.runs.loc[data.runs["phase"] == "pretrain", "run_id"].item()
    assert cell_table(data).empty  # the start (a pretrain run) is no Table-1 cell
    assert WEIGHTS_ARTIFACT in {a.path for a in client.list_artifacts(start_run, "weights")}

    # the analysis recomputes the same verdicts from MLflow alone
    table = repulsion_table(data).set_index("ste")
    for ste, r in rows.items():
        assert table.loc[ste, "ratio"] == pytest.approx(r["ratio"])
        assert table.loc[ste, "verdict"] == r["verdict"]
    fig = repulsion_figure(data.history[data.history["phase"] == "repulsion"], probe_epochs=2)
    for ax in fig.axes:
        if ax.get_lines():
            assert len(ax.get_lines()) == 2
    out = tmp_path / "report"
    assert main(["analyze", first.name, "--storage", str(tmp_path), "--out", str(out)]) == 0
    assert "## Repulsion" in (out / "report.md").read_text()
    assert (out / "repulsion.png").read_bytes().startswith(b"\x89PNG")

    # second experiment, from the CLI with the default relative storage: start from the first
    # one's MLflow run (its logged weights)
    d = {**TINY, "name": "tiny-rep-2", "stes": ["relu"],
         "start": {"run": start_run, "tracking_uri": first.resolved_tracking_uri()}}
    spec_file = tmp_path / "second.yaml"
    spec_file.write_text(yaml.safe_dump(d))
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", str(spec_file), "--quiet"]) == 0
    second = load_sweep("tiny-rep-2", f"sqlite:///{tmp_path}/runs/tiny-rep-2/mlflow.db")
    assert sorted(second.runs["phase"]) == ["repulsion"]  # nothing trained: weights downloaded
    start_loss = second.history.loc[second.history["epoch"] == 0, "train_loss"].item()
    assert start_loss == pytest.approx(rows["identity"]["start_loss"], rel=1e-6)
    # analysed from another directory: spec.json's relative storage must not mislead it
    monkeypatch.chdir(tmp_path / "report")
    assert main(["analyze", "tiny-rep-2", "--storage", str(tmp_path / "runs"), "--no-log"]) == 0
    assert (tmp_path / "runs" / "tiny-rep-2" / "analysis" / "repulsion.png").exists()

"""Analysis and export of a real tiny sweep, logged to a real `mlflow server` over HTTP: the
DataFrames must agree with the MLflow runs, diverged trials must be counted, and every export
format and figure must come out."""

from __future__ import annotations

import math
import shutil
import statistics
import subprocess
import urllib.parse
import warnings

import pytest
import ray
from mlflow.tracking import MlflowClient

from stetune.analysis import AnalysisError, StabilityRule, cell_table, load_sweep
from stetune.cli import main
from stetune.export import curves_figure
from stetune.stability import count_spikes
from stetune.sweep import run_sweep
from stetune.tracking import SweepTracker
from service_helpers import free_ports
from sweep_helpers import check_one_run_per_trial, check_replicates_are_best, small_spec, sweep_runs

pytestmark = pytest.mark.slow

STES = ("identity", "clipped_relu")
# a password with '@', ':', '/' and '%' in it; in a URL, %-escaped (requests sends it as basic
# auth, which the test server ignores): no output may hold it in either form
SECRET = "p@ss:w/rd%"
ESCAPED = urllib.parse.quote(SECRET, safe="")


def with_password(url: str, password: str = ESCAPED) -> str:
    return url.replace("http://", f"http://alice:{password}@")


def assert_no_password(text: str, where: str) -> None:
    for form in (SECRET, ESCAPED, "ss:w/rd", "p%40ss"):
        assert form not in text, f"the password ({form!r}) is readable in {where}"


@pytest.fixture(scope="module")
def swept(tmp_path_factory, mlflow_server):
    """2 STEs x 2 bits; lr chosen from {0.05, 0.1, 1e20}: 1e20 makes the loss NaN within an
    epoch, so the (seeded) TPE's picks give diverged trials; 2 replicate seeds per cell."""
    url, _ = mlflow_server
    tmp = tmp_path_factory.mktemp("analysis")
    spec = small_spec(tmp, "tiny-analysis", [
        f"cells.ste={list(STES)}", "search={lr: {dist: choice, values: [0.05, 0.1, 1.0e+20]}}",
        "budget.trials_per_cell=3", "replicates.seeds=[1, 2]", "asha.enabled=false"],
        tracking_uri=url)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        run_sweep(spec, verbose=0)
    finally:
        ray.shutdown()
    return spec, load_sweep(spec.name, url)


def _best_val_acc(client, run_id):
    return max(m.value for m in client.get_metric_history(run_id, "val_acc"))


def test_cell_table_matches_the_mlflow_runs(swept):
    spec, data = swept
    check_one_run_per_trial(spec, n_search=4 * 3, n_replicate=4 * 2)  # and none retried
    client, _, children = sweep_runs(spec)
    assert len(data.runs) == len(children) == 4 * 3 + 4 * 2
    # mode max: each cell's replicates are its best finished search trial's lr (diverged ones
    # never count); where the cell's two finite lrs differ, replicating the other fails
    assert check_replicates_are_best(spec) >= 1
    cells = cell_table(data)
    assert sorted(cells["cell"]) == sorted(f"{s}/{b}" for s in STES for b in (2, 4))
    for row in cells.itertuples():
        mine = [c for c in children if c.data.tags["stetune.cell"] == row.cell]
        reps = [c for c in mine if c.data.tags["stetune.phase"] == "replicate"
                and c.data.tags["stetune.status"] == "finished"]
        diverged = sum(c.data.tags["stetune.status"] == "diverged" for c in mine)
        assert row.trials == len(mine) and row.diverged == diverged
        assert row.divergence_rate == pytest.approx(diverged / len(mine))
        if not reps:  # every search trial of the cell diverged: nothing to replicate
            assert row.n == 0 and row.verdict == "unstable"
            continue
        accs = [_best_val_acc(client, c.info.run_id) for c in reps]
        assert row.n == len(accs) == 2
        assert row.acc_mean == pytest.approx(statistics.fmean(accs))
        assert row.acc_std == pytest.approx(statistics.stdev(accs))
        losses = []
        for c in reps:  # the training loss at the best-accuracy epoch
            acc = {m.step: m.value for m in client.get_metric_history(c.info.run_id, "val_acc")}
            loss = {m.step: m.value for m in client.get_metric_history(c.info.run_id, "train_loss")}
            losses.append(loss[max(acc, key=acc.get)])
        assert row.loss_mean == pytest.approx(statistics.fmean(losses))
        assert row.loss_std == pytest.approx(statistics.stdev(losses))
        assert len(mine) == 3 + 2  # its search budget and its replicates
        assert row.params == {"lr": float(reps[0].data.params["lr"])}
        assert row.verdict in ("stable", "marginal", "unstable")
        if diverged:  # a search trial diverged, no replicate did: not stable, not unstable
            assert row.verdict == "marginal" and "diverged" in row.reasons
    assert cells["diverged"].sum() >= 1, "the lr=1e20 choice should have diverged somewhere"
    assert (data.runs.loc[data.runs["status"] == "diverged", "phase"] == "search").all()


def test_stability_rule_is_applied_and_recounted(swept):
    _, data = swept
    strict = cell_table(data, StabilityRule(spike_factor=1.0001, max_divergence=0.0))
    # any diverged trial is now over the (zero) divergence limit
    assert ((strict["diverged"] > 0) == (strict["verdict"] == "unstable")).all()
    # spikes recounted from the MLflow histories under the new factor: any rise over the minimum
    for row in strict.itertuples():
        runs = data.runs[(data.runs["cell"] == row.cell) & (data.runs["status"] != "running")]
        expected = sum(count_spikes(data.history.loc[data.history["run_id"] == r].sort_values(
            "epoch")["train_loss"].tolist(), 1.0001) for r in runs["run_id"])
        assert row.spikes == expected
    assert "1.5x" in StabilityRule().describe() and "unstable" in StabilityRule().describe()


def test_export_all_three_formats_through_the_cli(swept, tmp_path, capsys):
    spec, data = swept
    common = [spec.name, "--tracking-uri", data.tracking_uri]
    for fmt, ext in (("latex", "tex"), ("markdown", "md"), ("csv", "csv")):
        assert main(["export", *common, "--format", fmt, "--out", str(tmp_path / f"t.{ext}")]) == 0
    import pandas as pd

    csv = pd.read_csv(tmp_path / "t.csv")
    stats = ("n", "loss", "loss std", "acc %", "acc std %")
    assert list(csv.columns) == ["data", "network", "bits",
                                 *[f"{s} {k}" for s in ("identity", "clipped ReLU") for k in stats]]
    assert csv["bits"].tolist() == [2, 4] and csv["data"].tolist() == ["digits", "digits"]
    assert all(pd.api.types.is_numeric_dtype(csv[c]) for c in csv.columns[3:])  # plain numbers
    md = (tmp_path / "t.md").read_text()
    assert md.count("**") == 2 * 2  # one best per row
    tex = (tmp_path / "t.tex").read_text()
    assert r"\toprule" in tex and r"\bottomrule" in tex and r"\textbf" in tex
    if shutil.which("pdflatex") is None:
        pytest.skip("no pdflatex (CI installs texlive)")
    (tmp_path / "doc.tex").write_text("\\documentclass{article}\\usepackage{booktabs}"
                                      "\\begin{document}\\input{t.tex}\\end{document}\n")
    res = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-2000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 1000


def test_analyze_writes_the_report_and_logs_it_to_the_parent_run(swept, tmp_path, capsys):
    spec, data = swept
    out = tmp_path / "report"
    # the URI as a user may pass it, with their password: shown as alice:*** wherever it appears
    assert main(["analyze", spec.name, "--tracking-uri", with_password(data.tracking_uri),
                 "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    masked = data.tracking_uri.replace("http://", "http://alice:***@")
    assert f"- tracking: `{masked}`, experiment" in report
    printed = capsys.readouterr()
    for f in (p for p in out.rglob("*") if p.is_file()):
        assert_no_password(f.read_bytes().decode("latin1"), f.name)
    assert_no_password(printed.out + printed.err, "the command's output")
    assert "## Table 1" in report and "## Stability per cell" in report and "**Rule.**" in report
    assert "![curves](curves.png)" in report
    png = (out / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    for stem in ("curves", "curves-single"):   # both paper sizes, TrueType fonts
        pdf = (out / f"{stem}.pdf").read_bytes()
        assert pdf.startswith(b"%PDF") and b"/Subtype /Type3" not in pdf
    # cells.csv: plain values (the tuned lr a float column, run ids ';'-joined), no reprs
    import pandas as pd

    text = (out / "cells.csv").read_text()
    assert "np.float64" not in text and "{" not in text and "['" not in text
    cells = pd.read_csv(out / "cells.csv")
    assert cells["lr"].dtype == float and "params" not in cells.columns
    assert spec.name not in (out / "table1.tex").read_text().split("\\label")[0]  # caption
    fig = curves_figure(data.history[data.history["phase"] == "replicate"])
    for ax in fig.axes:
        if ax.get_lines():  # the legend axis carries none
            assert len(ax.get_lines()) == len(STES)
    client = MlflowClient(data.tracking_uri)
    logged = {a.path for a in client.list_artifacts(data.parent_run_id, "analysis")}
    assert {"analysis/report.md", "analysis/curves.png", "analysis/table1.tex"} <= logged
    copy = client.download_artifacts(data.parent_run_id, "analysis/report.md", str(tmp_path))
    assert open(copy).read() == report  # the logged report is the masked one


def test_an_analyze_error_naming_the_uri_masks_its_password(swept, tmp_path, capsys):
    _, data = swept
    assert main(["analyze", "nope", "--tracking-uri", with_password(data.tracking_uri),
                 "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    masked = data.tracking_uri.replace("http://", "http://alice:***@")
    assert f"no experiment 'nope' at {masked}" in err, err
    assert_no_password(err, "the error")


def test_an_unreachable_servers_error_masks_the_password(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail at once
    (port,) = free_ports(1)  # nothing listens there
    url = f"http://127.0.0.1:{port}"
    # escaped: a connection error; raw: a URL requests refuses. Either way MLflow's message
    # quotes the URL it was given
    for uri in (with_password(url), with_password(url, SECRET)):
        assert main(["analyze", "x", "--tracking-uri", uri, "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert f"MLflow at http://alice:***@127.0.0.1:{port}" in err, err
        assert_no_password(err, "the error")


def test_unknown_and_empty_sweeps_are_clear_errors(swept, tmp_path, capsys):
    _, data = swept
    with pytest.raises(AnalysisError, match="no experiment 'nope'"):
        load_sweep("nope", data.tracking_uri)
    with pytest.raises(AnalysisError, match=r"no sweep named 'other'.*tiny-analysis"):
        load_sweep("other", data.tracking_uri, experiment=data.experiment)
    SweepTracker(data.tracking_uri, "empty-exp", "empty").start_sweep({"name": "empty"})
    with pytest.raises(AnalysisError, match="has no trial runs yet"):
        load_sweep("empty", data.tracking_uri, experiment="empty-exp")
    missing = tmp_path / "none.db"
    with pytest.raises(AnalysisError, match="no MLflow store at"):
        load_sweep("x", f"sqlite:///{missing}")
    assert not missing.exists()  # analysis never creates a store
    for content, why in ((b"", "the file is empty"), (b"garbage" * 200, "not an MLflow store")):
        bad = tmp_path / "bad.db"
        bad.write_bytes(content)
        with pytest.raises(AnalysisError, match=why):
            load_sweep("x", f"sqlite:///{bad}")
        assert bad.read_bytes() == content  # never migrated (written)
    assert main(["export", "missing", "--storage", str(tmp_path), "--format", "csv", "--out", "-"]) == 2
    assert "no sweep named 'missing'" in capsys.readouterr().err


def test_a_running_sweep_is_analysed_from_what_has_finished(swept):
    """What MLflow shows mid-sweep: the parent RUNNING, a trial RUNNING with no status tag yet."""
    spec, data = swept
    tracker = SweepTracker(data.tracking_uri, "running-exp", "live")
    tracker.start_sweep({"name": "live", "model": "lenet5", "dataset": "digits"})
    tracker.trial_run("search-0", params={"ste": "relu", "bits": 2, "seed": 0, "lr": 0.1},
                      tags={"stetune.ste": "relu", "stetune.bits": "2", "stetune.cell": "relu/2",
                            "stetune.phase": "search"})
    for epoch, (loss, acc) in enumerate([(1.0, 0.5), (0.5, 0.8)], start=1):
        tracker.log_epoch("search-0", {"train_loss": loss, "val_acc": acc}, epoch)
    tracker.end_trial("search-0", "finished")
    tracker.trial_run("search-1", params={"ste": "relu", "bits": 2, "seed": 0, "lr": 0.2},
                      tags={"stetune.ste": "relu", "stetune.bits": "2", "stetune.cell": "relu/2",
                            "stetune.phase": "search"})
    tracker.log_epoch("search-1", {"train_loss": 2.0, "val_acc": 0.3}, 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        live = load_sweep("live", data.tracking_uri, experiment="running-exp")
    assert any("still running: analysing the 1 of 2 trials" in str(w.message) for w in caught)
    cells = cell_table(live)
    assert cells["trials"].tolist() == [1]  # the running trial is left out
    assert cells["source"].tolist() == ["search"] and cells["acc_mean"].tolist() == [0.8]
    assert math.isnan(cells["acc_std"].iloc[0])  # n=1: no std

    # nothing finished yet: an empty table with every column, and export says why
    tracker2 = SweepTracker(data.tracking_uri, "running-exp", "live2")
    tracker2.start_sweep({"name": "live2"})
    tracker2.trial_run("search-0", params={"ste": "relu", "bits": 2, "seed": 0},
                       tags={"stetune.ste": "relu", "stetune.bits": "2", "stetune.cell": "relu/2",
                             "stetune.phase": "search"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        empty = cell_table(load_sweep("live2", data.tracking_uri, experiment="running-exp"))
    assert empty.empty and {"acc_mean", "verdict", "run_ids"} <= set(empty.columns)
    assert main(["export", "live2", "--tracking-uri", data.tracking_uri, "--experiment",
                 "running-exp", "--format", "csv", "--out", "-"]) == 2

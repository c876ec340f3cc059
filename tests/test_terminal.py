"""What a user sees: a sweep's terminal output at the default verbosity (stetune's progress
display only: no Ray tables, library INFO lines or hints), how its MLflow runs read (names,
params, context tags, the parent's description and headline metrics), its per-cell Optuna
studies, and `stetune analyze`'s Optuna figures, read back from what the sweep left."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service_helpers import stop_session
from sweep_helpers import (check_one_run_per_trial, cli, small_spec, sweep_runs, write_spec)

pytestmark = pytest.mark.slow

# every line a sweep may print on stderr at the default verbosity, when stderr is not a terminal
ALLOWED = [r"\[(search|replicate)\] \d+/\d+ trials ended, \d+ running(, about \d+:\d\d left)?"
           r" · [\w/]+: \d+/\d+(, best val_acc \d\.\d{4})?( \((\d+ (pruned|diverged|failed)(, )?)+\))?"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("terminal")
    spec = small_spec(tmp, "look", ["cells.ste=[relu]", "cells.bits=[1, 4]",
                                    "budget.trials_per_cell=3", "replicates.seeds=[1]",
                                    "train.epochs=3", "asha.enabled=false",
                                    "search.momentum={dist: uniform, low: 0.5, high: 0.95}"])
    driver = cli("sweep", str(write_spec(spec, tmp / "look.yaml")))
    try:
        out, err = driver.communicate(timeout=900)
    finally:
        stop_session(driver)
    assert driver.returncode == 0, err[-4000:]
    return spec, out, err


def test_default_output_is_the_progress_display_and_the_summary(swept):
    spec, out, err = swept
    lines = err.strip().splitlines()
    strange = [ln for ln in lines if not any(re.fullmatch(p, ln) for p in ALLOWED)]
    assert not strange, strange  # no Ray box, INFO line, warning, TensorBoard hint, traceback
    ended = [ln for ln in lines if re.match(r"\[search\] \d+/6 trials ended", ln)]
    assert [int(re.match(r"\[search\] (\d+)/", ln)[1]) for ln in ended] == list(range(1, 7))
    # each cell's trials counted up to its budget, with its best so far
    for cell in ("relu/1", "relu/4"):
        counts = [int(m[1]) for ln in ended if (m := re.search(rf" · {cell}: (\d)/3", ln))]
        assert counts == [1, 2, 3], (cell, lines)
    assert any(ln.startswith("[replicate] 2/2 trials ended, 0 running") for ln in lines)
    assert "Trial status" not in out and "╭" not in out  # Ray's tables are -v only
    assert not out.lstrip().startswith("View")


def test_runs_read_well_and_the_parent_says_what_the_sweep_found(swept):
    spec, _, _ = swept
    # names, resolved params, context tags, no epoch/final metrics, one Optuna trial per run
    check_one_run_per_trial(spec, n_search=6, n_replicate=2, statuses=("finished", "diverged"))
    _, (parent,), children = sweep_runs(spec)
    note = parent.data.tags["mlflow.note.content"]
    assert "relu/1" in note and "relu/4" in note and "best val_acc" in note
    for cell in ("relu/1", "relu/4"):
        search = [c for c in children if c.data.tags["stetune.cell"] == cell
                  and c.data.tags["stetune.phase"] == "search"
                  and c.data.tags["stetune.status"] == "finished"]
        best = max(c.data.metrics["val_acc"] for c in search)
        assert parent.data.metrics[f"best_val_acc/{cell}"] == pytest.approx(best)
        assert f"replicate_val_acc/{cell}" in parent.data.metrics
    assert parent.data.tags["stetune.optuna_storage"] == spec.resolved_optuna_storage()
    assert {"mlflow.user", "mlflow.source.name", "stetune.git_commit"} <= set(parent.data.tags) \
        or "stetune.git_commit" not in children[0].data.tags  # outside a git checkout


def test_analyze_adds_optunas_views_per_cell_and_reads_only(swept, tmp_path):
    spec, _, _ = swept
    db = Path(spec.sweep_dir()) / "optuna.db"
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "stetune.cli", "analyze", spec.name,
                           "--storage", str(spec.storage), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before  # opened read-only
    report = (tmp_path / "report.md").read_text()
    assert "## Search (Optuna)" in report and f"optuna-dashboard sqlite:///{db}" in report
    import optuna

    from stetune.journal import open_study_storage

    views = set()
    for cell in ("relu/1", "relu/4"):  # two tuned parameters: all three views, given 2 trials
        study = optuna.load_study(study_name=f"look/{cell}", storage=open_study_storage(
            spec.resolved_optuna_storage(), readonly=True))
        complete = sum(t.state.name == "COMPLETE" for t in study.trials)
        stem = cell.replace("/", "-")
        for what in ("history", "importance", "parallel"):
            pdf = tmp_path / "optuna" / f"{stem}-{what}.pdf"
            if what != "history" and complete < 2:  # nothing to compare: not drawn
                assert not pdf.exists(), pdf
                continue
            views.add(what)
            assert pdf.exists() and pdf.with_suffix(".png").exists(), pdf
            assert b"/Type3" not in pdf.read_bytes(), pdf  # TrueType fonts only
            assert f"(optuna/{stem}-{what}.png)" in report
        assert f"### {cell}\n\n{len(study.trials)} trials (" in report
    assert views == {"history", "importance", "parallel"}  # no pruning here: 3 complete each
    # also on the parent run, in the same folders
    client, (parent,), _ = sweep_runs(spec)
    logged = [a.path for a in client.list_artifacts(parent.info.run_id, "analysis/optuna")]
    assert "analysis/optuna/relu-4-history.png" in logged, (logged, time.monotonic() - t0)


def test_optuna_dashboard_opens_the_sweeps_studies(swept):
    import json
    import shutil
    import urllib.request

    from conftest import free_port

    spec, _, _ = swept
    exe = shutil.which("optuna-dashboard") or str(Path(sys.executable).parent / "optuna-dashboard")
    port = free_port()
    server = subprocess.Popen([exe, spec.resolved_optuna_storage(), "--host", "127.0.0.1",
                               "--port", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    studies = json.load(r)["study_summaries"]
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "no dashboard"
                time.sleep(0.5)
    finally:
        stop_session(server)
    assert sorted(s["study_name"] for s in studies) == ["look/relu/1", "look/relu/4"]
    assert all(s["directions"] == ["maximize"] for s in studies), studies


class _Trial:
    def __init__(self, trial_id, cell, value, epoch):
        self.trial_id, self.config = trial_id, {"cfg": {"cell": cell}}
        self.last_result = {"val_acc": value, "epoch": epoch}


def _status(last, errored=False):
    return "failed" if errored else ("finished" if last["epoch"] >= 3 else "pruned")


def _play(progress):
    from stetune.sweep.progress import set_display

    set_display(1)
    trials = [_Trial("a", "relu/2", 0.91, 3), _Trial("b", "relu/4", 0.95, 3),
              _Trial("c", "relu/2", 0.50, 1), _Trial("d", "relu/4", 0.97, 3)]
    for t in trials[:2]:
        progress.on_trial_start(0, [], t)
    progress.on_trial_complete(0, [], trials[0])
    progress.on_trial_start(0, [], trials[2])
    progress.on_trial_complete(0, [], trials[1])
    progress.on_trial_complete(0, [], trials[2])
    progress.on_trial_start(0, [], trials[3])
    progress.on_trial_error(0, [], trials[3])
    progress.on_experiment_end([])


def test_progress_lines_in_a_log_count_each_cell_with_its_best_so_far(capsys):
    import pickle

    from stetune.sweep.progress import PhaseProgress

    progress = PhaseProgress("search", "val_acc", "max", _status, per_cell=2, total=4)
    _play(progress)
    lines = capsys.readouterr().err.strip().splitlines()
    assert [ln.split(", about")[0].split(" · ")[0] for ln in lines] == [
        "[search] 1/4 trials ended, 1 running", "[search] 2/4 trials ended, 1 running",
        "[search] 3/4 trials ended, 0 running", "[search] 4/4 trials ended, 0 running"]
    assert [ln.split(" · ")[1] for ln in lines] == [
        "relu/2: 1/2, best val_acc 0.9100", "relu/4: 1/2, best val_acc 0.9500",
        "relu/2: 2/2, best val_acc 0.9100 (1 pruned)",  # a pruned trial's value is not a best
        "relu/4: 2/2, best val_acc 0.9500 (1 failed)"]
    assert "left" in lines[0] and "left" not in lines[-1]
    restored = pickle.loads(pickle.dumps(progress))  # Tune saves it with the experiment
    assert sum(map(len, restored.ended.values())) == 4 and not restored._running


def test_progress_on_a_terminal_is_a_bar_with_lines_above(monkeypatch):
    import io
    import sys as _sys

    from stetune.sweep.progress import PhaseProgress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    err = Tty()
    monkeypatch.setattr(_sys, "stderr", err)
    _play(PhaseProgress("search", "val_acc", "max", _status, per_cell=2, total=4))
    text = err.getvalue()
    assert "\r" in text and "search: 4/4 trials |" in text  # tqdm's bar, redrawn in place
    assert "[search] relu/2: 2/2, best val_acc 0.9100 (1 pruned)" in text
    assert "best val_acc 0.9500 (relu/4)" in text  # the best so far, in the bar

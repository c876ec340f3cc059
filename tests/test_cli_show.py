"""The sweep's final summary (Table 1's basis), `--json`, `stetune list`/`show`, and `resume` of a
complete sweep: hand-made states first, then one real tiny sweep read back every way."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sweep_helpers import ROOT, run_cli

from stetune.cli import main
from stetune.cli_show import read_state, sweep_status
from stetune.spec import SweepSpec
from stetune.sweep.kinds.network import _at_best_epoch, summary, summary_rows

NAME = "shown"


def _spec(tmp_path, **kw) -> SweepSpec:
    return SweepSpec.from_dict({"name": "hand", "model": "lenet5", "dataset": "digits",
                                "cells": {"ste": ["relu"], "bits": [2]}, "storage": str(tmp_path),
                                "replicates": {"seeds": [1, 2, 3]}, **kw})


def _rep(seed, status="finished", last=0.90, best=None, loss_last=0.30, loss_best=None):
    r = {"seed": seed, "status": status, "val_acc": last, "train_loss": loss_last}
    if best is not None:
        r.update(best_epoch=2, best_val_acc=best, train_loss_at_best=loss_best)
    return r


def _state(reps) -> dict:
    return {"search": {"relu/2": {"ste": "relu", "bits": 2, "trials": 5, "diverged": 1,
                                  "pruned": 2, "failed": 1,
                                  "best": {"value": 0.91, "params": {"lr": 0.0123456}}}},
            "replicate": {"relu/2": reps}}


# -- the summary: hand-made states -----------------------------------------------------------------
def test_best_epoch_is_the_highest_val_acc_after_epoch_0_first_of_ties():
    history = [{"epoch": 0, "val_acc": 0.99, "train_loss": 9.0},  # the start: not an epoch
               {"epoch": 1, "val_acc": 0.5, "train_loss": 1.0},
               {"epoch": 2, "val_acc": 0.8, "train_loss": 0.6},
               {"epoch": 3, "val_acc": math.nan, "train_loss": 0.5},
               {"epoch": 4, "val_acc": 0.8, "train_loss": 0.4},
               {"epoch": 5, "val_acc": 0.7, "train_loss": 0.3}]
    assert _at_best_epoch(history) == {"best_epoch": 2, "best_val_acc": 0.8,
                                       "train_loss_at_best": 0.6}
    assert _at_best_epoch([]) == {} and _at_best_epoch(history[:1]) == {}


def test_summary_uses_each_replicates_best_epoch_and_says_so(tmp_path):
    spec = _spec(tmp_path)
    reps = [_rep(1, last=0.80, best=0.94, loss_best=0.10),
            _rep(2, last=0.70, best=0.92, loss_best=0.20),
            _rep(3, status="failed", last=None, loss_last=None),  # counted, not averaged
            _rep(4, status="diverged", last=0.1, best=0.99, loss_best=0.01)]
    (row,) = summary_rows(spec, _state(reps))
    assert row["replicate_val_acc_mean"] == pytest.approx(0.93)  # not the last epochs' 0.75
    assert row["replicate_val_acc_std"] == pytest.approx(statistics.stdev([0.94, 0.92]))
    assert row["replicate_train_loss_mean"] == pytest.approx(0.15)
    assert row["replicate_basis"] == "best epoch"
    assert (row["replicates"], row["replicates_failed"], row["replicates_diverged"]) == (2, 1, 1)
    assert (row["search_trials"], row["finished"], row["pruned"], row["diverged"],
            row["failed"]) == (5, 1, 2, 1, 1)

    text = summary(spec, _state(reps))
    head = next(ln for ln in text.splitlines() if ln.startswith("cell"))
    assert head.split()[:6] == ["cell", "trials", "finished", "pruned", "diverged", "failed"]
    assert "search trials" in text.splitlines()[0]  # the counts are labelled as the search's
    line = next(ln for ln in text.splitlines() if ln.startswith("relu/2"))
    assert line.split()[1:7] == ["5", "1", "2", "1", "1", "91.00"]  # accuracies in %, as Table 1
    assert "93.00 ± 1.41 (n=2, +1 failed, 1 diverged)" in line and "0.15 ± 0.071" in line
    assert "lr=0.0123" in line
    foot = " ".join(text.splitlines()[3:])
    assert "best epoch" in foot and "Table 1" in foot and "LAST" not in foot


def test_an_older_sweep_json_summarises_on_its_last_epochs_and_says_so(tmp_path):
    spec = _spec(tmp_path)
    reps = [_rep(1, last=0.80, loss_last=0.3), _rep(2, last=0.70, loss_last=0.5)]
    (row,) = summary_rows(spec, _state(reps))
    assert row["replicate_val_acc_mean"] == pytest.approx(0.75)
    assert row["replicate_train_loss_mean"] == pytest.approx(0.4)
    assert row["replicate_basis"] == "last epoch"
    assert "LAST epoch" in summary(spec, _state(reps))
    # no replicate phase, or nothing finished: a dash, no number made up
    (row,) = summary_rows(spec, {"search": _state([])["search"]})
    assert row["replicates"] == 0 and row["replicate_val_acc_mean"] is None
    assert "- (n=0)" in summary(spec, {"search": _state([])["search"]})


# -- status: hand-made sweep folders ---------------------------------------------------------------
def _folder(tmp_path, state: dict | None, lock: dict | None = None, age: float = 0) -> Path:
    d = tmp_path / "s"
    d.mkdir(exist_ok=True)
    if state is not None:
        (d / "sweep.json").write_text(json.dumps(state))
    if lock is not None:
        (d / "driver.lock").write_text(json.dumps(lock))
        os.utime(d / "driver.lock", (time.time() - age, time.time() - age))
    return d


@pytest.mark.parametrize("state, lock, age, want", [
    ({"search": {}, "summary": []}, None, 0, ("done", 0)),
    ({"summary": [], "failed": {"search": ["relu/2 (boom)"]}}, None, 0, ("failed trials", 3)),
    ({"search": {}, "interrupted": {"phase": "replicate", "signal": "SIGTERM"}}, None, 0,
     ("interrupted", 143)),
    ({"summary": [], "interrupted": {"phase": None, "signal": "SIGINT"}}, None, 0,
     ("interrupted", 130)),
    ({"search": {}}, None, 0, ("stopped", 1)),  # a fault, or a SIGKILLed driver
    ({}, {"host": socket.gethostname(), "pid": os.getpid()}, 0, ("running", None)),
    ({"search": {}}, {"host": socket.gethostname(), "pid": os.getpid()}, 120, ("stopped", 1)),
    ({"search": {}}, {"host": socket.gethostname(), "pid": 2 ** 22 + 7}, 0, ("stopped", 1)),
    ({"search": {}}, {"host": "elsewhere", "pid": 1}, 0, ("running", None)),  # its heartbeat
    (None, None, 0, ("not started", None)),
])
def test_status_of_a_sweep_folder(tmp_path, state, lock, age, want):
    d = _folder(tmp_path, state, lock, age)
    lock_before = (d / "driver.lock").read_bytes() if lock else None
    st = sweep_status(d, read_state(d))
    assert (st["status"], st["exit_code"]) == want, st
    if lock:  # read only: never taken over, removed or touched
        assert (d / "driver.lock").read_bytes() == lock_before


# -- one real tiny sweep ---------------------------------------------------------------------------
def _cli(*args, cwd=None, timeout=900):
    return run_cli(*args, cwd=cwd, timeout=timeout)


# runs `stetune ARGS` in a fresh interpreter and fails (99) if Ray or MLflow got imported
NO_RAY = ("import sys; from stetune.cli import main; rc = main(sys.argv[1:]); "
          "bad = [m for m in ('ray', 'mlflow') if m in sys.modules]; "
          "bad and print('imported:', bad, file=sys.stderr); sys.exit(99 if bad else rc)")


def _cli_without_ray(*args):
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", NO_RAY, *args], capture_output=True, text=True,
                         timeout=120)
    return out.returncode, out.stdout, out.stderr, time.monotonic() - t0


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A finished tiny sweep, run once with --json and -v (Tune's tables, which Tune prints on
    stdout): (storage, exit code, stdout, stderr)."""
    storage = tmp_path_factory.mktemp("show")
    rc, out, err = _cli("sweep", str(ROOT / "sweeps" / "quickstart.yaml"), "--json", "-v",
                        "--set", f"name={NAME}", "--set", f"storage={storage}",
                        "--set", "train.epochs=2", "--set", "train.limit=400",
                        "--set", "budget.trials_per_cell=1", "--set", "cells.bits=[2]",
                        "--set", "cells.ste=[relu, clipped_relu]",
                        "--set", "replicates.seeds=[1, 2]")
    assert rc == 0, err[-4000:]
    return storage, rc, out, err


@pytest.mark.slow
def test_sweep_json_is_stdout_alone_and_the_summary_is_table_1s(swept):
    storage, rc, out, err = swept
    doc = json.loads(out)  # the whole of stdout: Tune's tables went to stderr
    assert "Configuration for experiment" in err and "Configuration" not in out
    assert (doc["name"], doc["kind"], doc["status"], doc["exit_code"]) == (NAME, "network",
                                                                           "done", 0)
    assert doc["storage"] == str(storage) and doc["failed_trials"] == []
    assert doc["tracking_uri"] == f"sqlite:///{storage / NAME / 'mlflow.db'}"
    state = json.loads((storage / NAME / "sweep.json").read_text())
    assert doc["cells"] == json.loads(json.dumps(state["summary"]))
    assert all(r["replicate_basis"] == "best epoch" for r in doc["cells"])

    # the same numbers as Table 1 (stetune analyze / export), read back from MLflow
    from stetune.analysis import cell_table, load_sweep

    table = cell_table(load_sweep(NAME, doc["tracking_uri"])).set_index("cell")
    for r in doc["cells"]:
        t = table.loc[r["cell"]]
        assert (t["n"], t["source"]) == (r["replicates"], "replicate") == (2, "replicate")
        assert r["replicate_val_acc_mean"] == pytest.approx(t["acc_mean"], abs=1e-12)
        assert r["replicate_val_acc_std"] == pytest.approx(t["acc_std"], abs=1e-12)
        assert r["replicate_train_loss_mean"] == pytest.approx(t["loss_mean"], rel=1e-6)

    # the human summary (on stderr here) ends with what to run next
    assert "search trials" in err and "as in Table 1" in err
    for line in (f"mlflow ui --backend-store-uri {doc['tracking_uri']}",
                 f"stetune analyze {NAME} --storage {storage}",
                 f"stetune export {NAME} --storage {storage} --format latex"):
        assert line in err, err[-3000:]


@pytest.mark.slow
def test_list_and_show_read_the_folder_without_ray(swept, tmp_path):
    storage, *_ = swept
    # a second sweep, interrupted during its replicates, beside it (copied, then marked so)
    other = storage / "halted"
    shutil.copytree(storage / NAME, other, ignore=shutil.ignore_patterns("driver.lock"))
    spec = json.loads((other / "spec.json").read_text())
    (other / "spec.json").write_text(json.dumps({**spec, "name": "halted"}))
    state = read_state(other)
    del state["summary"]
    state["interrupted"] = {"phase": "replicate", "signal": "SIGINT"}
    (other / "sweep.json").write_text(json.dumps(state))
    try:
        rc, out, err, _ = _cli_without_ray("list", "--storage", str(storage))
        assert rc == 0, err
        lines = out.strip().splitlines()
        assert lines[0].split()[:6] == ["name", "kind", "status", "cells", "trials", "last"]
        assert lines[1].split()[:4] == ["halted", "network", "interrupted", "(replicate)"]
        assert lines[2].split()[:5] == [NAME, "network", "done", "2", "6"]  # 2 search + 4 reps

        rc, out, err, _ = _cli_without_ray("list", "--storage", str(storage), "--json")
        rows = {r["name"]: r for r in json.loads(out)["sweeps"]}
        assert rc == 0 and rows[NAME]["status"] == "done" and rows[NAME]["trials_ended"] == 6
        assert rows["halted"]["status"] == "interrupted (replicate)"

        rc, out, err, _ = _cli_without_ray("show", NAME, "--storage", str(storage))
        assert rc == 0, err
        assert out.startswith(f"sweep '{NAME}' (network): done")
        assert "trials finished pruned diverged failed" in out and "clipped_relu/2" in out
        assert f"stetune analyze {NAME} --storage {storage}" in out

        rc, out, err, _ = _cli_without_ray("show", "halted", "--storage", str(storage))
        assert rc == 0 and "interrupted (replicate), by SIGINT" in out
        assert f"continue it: stetune resume halted --storage {storage}" in out

        rc, out, err, _ = _cli_without_ray("show", NAME, "--storage", str(storage), "--json")
        doc = json.loads(out)
        assert rc == 0 and (doc["status"], doc["exit_code"]) == ("done", 0)
        assert [r["cell"] for r in doc["cells"]] == ["relu/2", "clipped_relu/2"]
        rc, out, err, _ = _cli_without_ray("show", "halted", "--storage", str(storage), "--json")
        assert (json.loads(out)["status"], json.loads(out)["exit_code"]) == ("interrupted", 130)

        rc, out, err, _ = _cli_without_ray("show", "nothere", "--storage", str(storage))
        assert rc == 2 and out == "" and err.strip().splitlines() == [
            f"stetune show: error: no sweep named 'nothere' in {storage} (sweeps there: halted, "
            f"{NAME})"]
    finally:
        shutil.rmtree(other)


@pytest.mark.slow
def test_resume_of_a_complete_sweep_starts_no_ray_and_touches_nothing(swept):
    storage, *_ = swept
    d = storage / NAME
    before = {f: (f.stat().st_mtime_ns, f.read_bytes()) for f in (d / "mlflow.db", d / "sweep.json")}
    rc, out, err, took = _cli_without_ray("resume", NAME, "--storage", str(storage))
    assert rc == 0, err[-3000:]
    assert out.startswith(f"sweep '{NAME}' is complete; nothing to resume\n")
    assert "trials finished pruned diverged failed" in out and "mlflow ui" in out
    assert took < 60, took  # Ray alone takes ~15 s to start; this is an import and a read
    after = {f: (f.stat().st_mtime_ns, f.read_bytes()) for f in before}
    assert after == before  # no MLflow run resumed, no state rewritten

    rc, out, err, _ = _cli_without_ray("resume", NAME, "--storage", str(storage), "--json")
    doc = json.loads(out)
    assert rc == 0 and (doc["status"], doc["exit_code"], doc["name"]) == ("done", 0, NAME)
    assert "is complete; nothing to resume" in err


def test_resume_goes_on_for_an_interrupted_sweep_or_a_spec_change(tmp_path, monkeypatch):
    """Only a complete sweep, resumed as it is, takes the Ray-free way; the rest reach _drive."""
    import stetune.cli_sweep as cli_sweep

    spec = _spec(tmp_path)
    d = Path(spec.sweep_dir())
    d.mkdir(parents=True)
    (d / "spec.json").write_text(json.dumps(spec.to_dict()))
    driven = []
    monkeypatch.setattr(cli_sweep, "_drive", lambda cmd, s, **kw: driven.append(kw) or 0)
    for state, sets, drives in (({"summary": [], "search": {}}, [], False),
                                ({"summary": [], "interrupted": {"phase": "replicate",
                                                                 "signal": "SIGINT"}}, [], True),
                                ({"search": {}}, [], True),
                                ({"summary": [], "search": {}}, ["--set", "train.epochs=1"], True)):
        (d / "sweep.json").write_text(json.dumps(state))
        driven.clear()
        assert main(["resume", "hand", "--storage", str(tmp_path), "--quiet", *sets]) == 0
        assert bool(driven) == drives, (state, sets)
        if drives:
            assert driven[0]["resume"] is True and driven[0]["verbose"] == 0


def test_next_commands_name_the_server_url_masked_and_only_what_the_kind_has(tmp_path):
    from stetune.cli_show import next_commands
    from stetune.spec import TheorySweepSpec

    spec = _spec(tmp_path, mlflow={"tracking_uri": "http://alice:s3cr@t@mlflow.example:5000"})
    text = "\n".join(next_commands(spec, spec.sweep_dir(), "runs"))
    assert "s3cr" not in text
    assert "browse:  open http://alice:***@mlflow.example:5000 in a browser" in text
    assert "stetune analyze hand --storage runs" in text
    assert "stetune export hand --storage runs --format latex" in text
    theory = TheorySweepSpec.from_dict({"kind": "theory", "name": "th", "storage": str(tmp_path),
                                        "stes": ["relu"], "lrs": [0.1], "sizes": [[5, 8]],
                                        "inits": ["random"], "seeds": [0]})
    text = "\n".join(next_commands(theory, theory.sweep_dir(), "runs"))
    assert "mlflow ui --backend-store-uri sqlite:///" in text and "stetune" not in text

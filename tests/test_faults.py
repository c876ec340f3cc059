"""Faults injected for real into sweeps on a real local Ray and MLflow; each test reads back what
MLflow holds, the exit code and the one-line message."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from sweep_helpers import run_cli, small_spec, sweep_runs, write_spec

pytestmark = pytest.mark.slow


_run = run_cli


BROKEN_STE = """
from stetune.quant.ste.base import QuantSTE
from stetune.quant.ste.registry import register_ste


@register_ste("broken")
class BrokenSTE(QuantSTE):
    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("broken STE: no gradient")
"""


def test_every_trial_failing_is_a_failed_command_naming_them(tmp_path):
    # an STE (a plugin, loaded by every worker) whose backward raises: every trial fails
    (tmp_path / "broken_ste.py").write_text(BROKEN_STE)
    env = {**os.environ, "STETUNE_PLUGINS": "broken_ste",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    spec = small_spec(tmp_path, "broken", ["cells.ste=[relu]", "cells.bits=[2, 4]",
                                           "budget.trials_per_cell=1", "search={}",
                                           "replicates.seeds=[1]", "max_failures=0"])
    d = spec.to_dict() | {"cells": {"ste": ["broken"], "bits": [2, 4]}}  # known to the CLI only
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(d, sort_keys=False))
    rc, out, err = _run("sweep", str(tmp_path / "s.yaml"), "--quiet", env=env)
    assert rc == 3, err[-3000:]
    lines = err.strip().splitlines()
    assert lines[-1].startswith("stetune: 2 trial(s) failed: search: broken/2 (") \
        and "broken/4" in lines[-1]
    assert "broken STE: no gradient" in lines[-1]  # why, from the trial's error
    assert len(lines) == 1, err  # --quiet: no tracebacks, no Ray or library lines
    header = next(ln for ln in out.splitlines() if ln.startswith("cell"))
    assert "failed" in header.split() and "finished" in header.split()
    row = next(ln for ln in out.splitlines() if ln.startswith("broken/2")).split()
    assert row[1:6] == ["1", "0", "0", "0", "1"]  # trials, finished, pruned, diverged, failed
    state = json.loads((Path(spec.sweep_dir()) / "sweep.json").read_text())
    assert set(state["failed"]) == {"search"} and len(state["failed"]["search"]) == 2
    _, parents, children = sweep_runs(spec)
    assert parents[0].info.status == "FINISHED"  # the sweep did its budget; its trials failed
    assert sorted((c.info.status, c.data.tags["stetune.status"]) for c in children) == \
        [("FAILED", "failed")] * 2
    assert all(c.info.run_name.startswith("failed · broken/") for c in children)


def test_a_missing_dataset_is_one_line_before_anything_starts(tmp_path):
    spec = small_spec(tmp_path, "nodata", ["dataset=fashion-mnist", "cells.ste=[relu]",
                                           "cells.bits=[2]", "budget.trials_per_cell=1",
                                           "search={}", f"train.data_dir={tmp_path / 'nothing'}"])
    env = {**os.environ, "STETUNE_OFFLINE": "1", "STETUNE_SYSTEM_DATASETS": str(tmp_path / "no")}
    rc, out, err = _run("sweep", str(write_spec(spec, tmp_path / "s.yaml")), env=env)
    assert rc == 1, err[-3000:]
    assert err.strip().splitlines() == [err.strip().splitlines()[-1]], err  # one line, no more
    assert err.startswith("stetune sweep: error: dataset 'fashion-mnist' not found") \
        and err.strip().endswith("nothing was started"), err
    assert not (Path(spec.sweep_dir()) / "sweep.json").exists()
    assert not (Path(spec.sweep_dir()) / "mlflow.db").exists()  # no MLflow store, no run


def test_resume_refuses_a_changed_spec_and_unrestorable_tune_state(tmp_path):
    spec = small_spec(tmp_path, "trunc", ["cells.ste=[relu]", "cells.bits=[2]", "search={}",
                                          "budget.trials_per_cell=1", "replicates.seeds=[]"])
    rc, out, err = _run("sweep", str(write_spec(spec, tmp_path / "s.yaml")), "--quiet")
    assert rc == 0, err[-3000:]
    client, _, before = sweep_runs(spec)

    # a changed spec: refused, listing the change, MLflow untouched ...
    rc, out, err = _run("resume", "trunc", "--storage", str(tmp_path), "--set", "train.epochs=1")
    assert rc == 2 and err.strip().splitlines()[-1] == (
        "stetune resume: error: sweep 'trunc' started with another spec: train.epochs: 2 -> 1; "
        "resume with the spec it started with, or pass --allow-spec-change"), err[-2000:]
    _, parents, _ = sweep_runs(spec)
    assert parents[0].info.status == "FINISHED" and "stetune.resumes" not in parents[0].data.tags
    # ... unless asked for, and then recorded on the parent run beside the first spec
    rc, out, err = _run("resume", "trunc", "--storage", str(tmp_path), "--set", "train.epochs=1",
                        "--allow-spec-change", "--quiet")
    assert rc == 0, err[-3000:]
    _, parents, _ = sweep_runs(spec)
    tags, run_id = parents[0].data.tags, parents[0].info.run_id
    assert tags["stetune.spec_changed.1"] == "train.epochs" and tags["stetune.resumes"] == "1"
    assert parents[0].data.params["train.epochs"] == "2"  # params keep the first values
    assert {"spec.yaml", "spec.resume1.yaml"} <= {a.path for a in client.list_artifacts(run_id)}
    # as if the driver had died mid-search with its Tune state damaged
    state_file = Path(spec.sweep_dir()) / "sweep.json"
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({k: v for k, v in state.items() if k not in ("search", "summary")}))
    for f in (Path(spec.sweep_dir()) / "search").glob("*.pkl"):
        f.write_bytes(f.read_bytes()[:10])
    rc, out, err = _run("resume", "trunc", "--storage", str(tmp_path), "--set", "train.epochs=1",
                        "--allow-spec-change", "--quiet")
    assert rc == 1, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"stetune resume: error: {Path(spec.sweep_dir()) / 'search'}: Tune's "
                           "experiment state") and "delete" in last and "Traceback" not in err
    _, parents, after = sweep_runs(spec)
    assert {c.info.run_id for c in after} == {c.info.run_id for c in before}  # nothing deleted
    assert "RUNNING" not in {r.info.status for r in [*parents, *after]}

    # its saved spec or state damaged: one line naming the file, which is left as it was
    for name, why in (("spec.json", "cannot be read as the sweep's saved spec"),
                      ("sweep.json", "is not the sweep's state")):
        f = Path(spec.sweep_dir()) / name
        good = f.read_bytes()
        f.write_bytes(b"\x00garbage{")
        rc, out, err = _run("resume", "trunc", "--storage", str(tmp_path), "--quiet")
        lines = err.strip().splitlines()
        assert rc == 1 and len(lines) == 1 and lines[0].startswith(
            f"stetune resume: error: {f} {why}"), err[-2000:]
        assert f.read_bytes() == b"\x00garbage{"
        f.write_bytes(good)

    # its MLflow store emptied, damaged or gone: refused in one line, the file left as it was
    db = Path(spec.sweep_dir()) / "mlflow.db"
    for content, why in ((b"", "the file is empty"), (b"garbage" * 300, "not an MLflow store"),
                         (None, "the file does not exist")):
        db.unlink(missing_ok=True)
        if content is not None:
            db.write_bytes(content)
        rc, out, err = _run("resume", "trunc", "--storage", str(tmp_path), "--quiet")
        lines = err.strip().splitlines()
        assert rc == 1 and len(lines) == 1 and lines[0].startswith("stetune resume: error: ") \
            and str(db) in lines[0] and why in lines[0], err[-2000:]
        assert "restore the sweep's mlflow.db, or rerun the spec under another name" in lines[0]
        assert (db.read_bytes() if db.exists() else None) == content  # read-only: nothing made


def test_storage_that_cannot_hold_a_sweep_is_one_line(tmp_path):
    spec = small_spec(tmp_path, "nowhere")
    path = write_spec(spec, tmp_path / "s.yaml")
    afile = tmp_path / "afile"
    afile.write_text("x")
    places = [(afile, "Not a directory")]
    if os.geteuid() == 0:  # root writes through permissions: a read-only mount it is
        ro = tmp_path / "ro"
        ro.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(ro)], check=True)
        places.append((ro, "Read-only file system"))
    else:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        places.append((ro, "Permission denied"))
    try:
        for storage, why in places:
            rc, out, err = _run("sweep", str(path), "--set", f"storage={storage}", "--quiet")
            assert rc == 2 and err.strip().splitlines() == [
                f"stetune sweep: error: storage '{storage}' cannot hold the sweep: {why}: "
                f"{storage / 'nowhere'}; set storage to a writable directory"], err[-2000:]
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", "--lazy", str(ro)], check=False)


def test_a_down_mlflow_server_fails_fast_and_leaves_nothing(tmp_path):
    import time

    from conftest import free_port

    spec = small_spec(tmp_path, "down", tracking_uri=f"http://u:s3cret@127.0.0.1:{free_port()}")
    path = write_spec(spec, tmp_path / "s.yaml")
    t0 = time.monotonic()
    rc, out, err = _run("sweep", str(path), "--quiet", timeout=120)
    assert rc == 1 and time.monotonic() - t0 < 60, err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stetune sweep: error: the MLflow server "
                                                   "http://127.0.0.1:"), err  # no credentials
    assert "s3cret" not in out + err and not Path(spec.sweep_dir()).exists()  # nothing to block a rerun


def test_an_unreachable_ray_cluster_fails_fast_and_leaves_nothing(tmp_path):
    import time

    from conftest import free_port

    spec = small_spec(tmp_path, "noray")
    path = write_spec(spec, tmp_path / "s.yaml")
    t0 = time.monotonic()
    rc, out, err = _run("sweep", str(path), "--address", f"127.0.0.1:{free_port()}", timeout=120)
    assert rc == 1 and time.monotonic() - t0 < 30, err[-2000:]  # Ray alone retries for minutes
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stetune sweep: error: the Ray cluster at "
                                                   "127.0.0.1:") and "nothing was created" in err
    assert not Path(spec.sweep_dir()).exists()

"""A sweep tracked straight into PostgreSQL (no MLflow server), with the password in the URI:
the driver hands it to libpq as PGPASSWORD, so no file, state or output of the sweep holds it."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
from pathlib import Path

import pytest

from service_helpers import base_env, pg_bin, postgres
from sweep_helpers import check_one_run_per_trial, small_spec, write_spec

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(pg_bin() is None, reason="PostgreSQL server binaries not "
                                                          "installed (apt-get install postgresql)")]


def test_a_sweep_into_postgresql_keeps_the_password_out_of_everything(tmp_path):
    import psycopg2

    # as root the cluster runs as `postgres`, which must reach its folder: pytest's are 0700
    pg_tmp = Path(tempfile.mkdtemp(prefix="stpg-", dir="/tmp"))
    pg_tmp.chmod(0o711)
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, pg_tmp, True)
        pg = stack.enter_context(postgres(pg_tmp))
        conn = psycopg2.connect(host=pg["host"], port=pg["port"], user=pg["user"],
                                password=pg["password"], dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE direct")
        conn.close()
        quoted = urllib.parse.quote(pg["password"], safe="")  # it holds % @ / :
        where = f"{pg['host']}:{pg['port']}/direct"
        # SQLAlchemy's postgresql:// means psycopg (3); this venv has psycopg2, as MLflow's docs
        spec = small_spec(tmp_path, "direct", ["cells.ste=[relu]", "cells.bits=[2]", "search={}",
                                               "budget.trials_per_cell=1", "replicates.seeds=[1]",
                                               "train.epochs=1"],
                          tracking_uri=f"postgresql+psycopg2://{pg['user']}:{quoted}@{where}")
        env = {k: v for k, v in base_env().items() if not k.startswith(("PG", "MLFLOW_"))}
        if importlib.util.find_spec("psycopg") is None:  # the plain scheme: a one-line error
            plain = small_spec(tmp_path, "direct", tracking_uri=f"postgresql://u:{quoted}@{where}")
            proc = subprocess.run([sys.executable, "-m", "stetune.cli", "sweep",
                                   str(write_spec(plain, tmp_path / "plain.yaml")), "--quiet"],
                                  env=env, capture_output=True, text=True, timeout=300)
            assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
                f"stetune sweep: error: the MLflow store postgresql://u@{where} needs the Python "
                f"module 'psycopg', which is not installed here: install it, or name an installed "
                f"driver in the URI (e.g. postgresql+psycopg2://)"], proc.stderr[-3000:]
        proc = subprocess.run([sys.executable, "-m", "stetune.cli", "sweep",
                               str(write_spec(spec, tmp_path / "s.yaml")), "--quiet"],
                              env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-4000:]
        secrets = (pg["password"], quoted)
        assert not [s for s in secrets if s in proc.stdout + proc.stderr]
        leaks = [str(f) for f in Path(spec.sweep_dir()).rglob("*") if f.is_file()
                 and any(s in f.read_bytes().decode("latin1") for s in secrets)]
        assert not leaks, leaks  # spec.json, sweep.json, Tune's experiment and trial state
        saved = json.loads((Path(spec.sweep_dir()) / "spec.json").read_text())
        assert saved["mlflow"]["tracking_uri"] == f"postgresql+psycopg2://{pg['user']}@{where}"
        assert "PGPASSWORD" not in os.environ
        children = check_one_run_per_trial(spec, n_search=1, n_replicate=1,
                                           statuses=("finished",))
        assert not [r for r in children if any(s in str(v) for s in secrets
                                               for v in (*r.data.params.values(),
                                                         *r.data.tags.values()))]

"""`stetune submit` / `status` / `logs` through the Ray Jobs API against a real Ray head with token
auth on, the sweep's trials logged to a real MLflow sqlite store.

The head is `ray start --head --block` in its own session and its own --temp-dir: its address file
(ray_current_cluster) lives there, not in /tmp/ray, so no other process on this machine joins it
or is later sent to a dead cluster; teardown signals only the processes of that session (never
`ray stop`, which would also stop every other Ray on the machine)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from service_helpers import base_env, free_ports, http_get, stop_session, wait_for

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")]

ROOT = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).parent / "ray"
AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
JOB_TIMEOUT = 200  # s; the 6 one-epoch trials take about 2 min on 2 busy cores
CELLS = {f"{ste}/{bits}" for ste in ("identity", "relu", "clipped_relu") for bits in (2, 4)}


@pytest.fixture(scope="module")
def ray_head():
    """A Ray head (2 CPUs, dashboard on 127.0.0.1) with token auth on; yields
    (dashboard address, token)."""
    tmp = Path(tempfile.mkdtemp(prefix="stj-", dir="/tmp"))  # short: Ray's unix sockets live here
    token = secrets.token_hex(16)
    gcs_port, dash_port, client_port, agent_port = free_ports(4)
    # the job's entrypoint runs `python`: make that this interpreter on the cluster's PATH
    env = base_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    cmd = [str(RAY), "start", "--head", "--block", "--num-cpus", "2",
           "--port", str(gcs_port), "--dashboard-host", "127.0.0.1",
           "--dashboard-port", str(dash_port), "--include-dashboard", "true",
           # fixed defaults (10001, 52365) would clash with another Ray on this machine
           "--ray-client-server-port", str(client_port),
           "--dashboard-agent-listen-port", str(agent_port),
           "--temp-dir", str(tmp / "ray"), "--disable-usage-stats"]
    log_path = tmp / "head.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp,
                            start_new_session=True)
    address = f"http://127.0.0.1:{dash_port}"

    def up() -> bool:
        try:  # /api/version is behind the token too: 401 without it
            return (http_get(f"{address}/api/version", token)[0] == 200
                    and http_get(f"{address}/api/jobs/", token)[0] == 200)
        except OSError:
            return False

    try:
        waited = wait_for("ray start", up, proc, log_path)
        print(f"ray head up after {waited:.1f} s at {address}")
        yield address, token
    finally:
        # SIGTERM to `ray start --block`: it stops its Ray processes (raylet, GCS, dashboard,
        # workers, the job's driver); whatever is left of its session is then SIGKILLed by pid
        stop_session(proc)
        log.close()
        # the head wrote its address to <temp-dir>/ray_current_cluster, never /tmp/ray's
        ours = tmp / "ray" / "ray_current_cluster"
        from ray._common.utils import get_ray_address_file

        default = Path(get_ray_address_file(None))
        try:
            if ours.exists() and default.read_text().strip() == ours.read_text().strip():
                default.unlink()
        except OSError:
            pass
        shutil.rmtree(tmp, ignore_errors=True)


def cli(*args: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return clis((args, env), timeout=timeout)[0]


def clis(*calls: tuple[tuple[str, ...], dict],
         timeout: float = 120) -> list[subprocess.CompletedProcess]:
    """Run `stetune ARGS` with ENV for each (ARGS, ENV), all at once (each one spends seconds
    importing Ray and torch)."""
    procs = [(args, subprocess.Popen([sys.executable, "-m", "stetune.cli", *args], env=env,
                                     cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True))
             for args, env in calls]
    done = []
    for args, proc in procs:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for _, q in procs:
                q.kill()
            raise
        done.append(subprocess.CompletedProcess(args, proc.returncode, out, err))
    return done


def write_spec(tmp_path: Path, name: str) -> Path:
    """Quickstart cut down to 6 cells x 1 one-epoch trial; storage and store are absolute, since
    the job runs with its uploaded working dir as cwd."""
    d = yaml.safe_load((ROOT / "sweeps" / "quickstart.yaml").read_text())
    d["name"] = name
    d["budget"]["trials_per_cell"] = 1
    d["replicates"]["seeds"] = []
    d["train"].update(epochs=1, limit=256)
    d["storage"] = str(tmp_path / "runs")
    d["mlflow"] = {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def job_count(address: str, token: str) -> int:
    status, body = http_get(f"{address}/api/jobs/", token)
    assert status == 200, body
    return len(json.loads(body))


def test_submit_runs_the_sweep_as_a_ray_job(ray_head, tmp_path):
    address, token = ray_head
    env = base_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)  # as on the head
    spec = write_spec(tmp_path, "jobs")

    sub = cli("submit", str(spec), "--address", address, env=env)
    assert sub.returncode == 0, sub.stderr[-4000:]
    job_id = sub.stdout.strip()
    assert job_id.startswith("raysubmit_") and job_id.isascii() and " " not in job_id, sub.stdout
    assert f"stetune status {job_id} --address {address}" in sub.stderr

    # wait on the Jobs REST API itself (cheap), then read the outcome through the CLI
    t0, status = time.monotonic(), None
    while time.monotonic() - t0 < JOB_TIMEOUT:
        code, body = http_get(f"{address}/api/jobs/{job_id}", token)
        assert code == 200, body
        status = json.loads(body)["status"]
        if status in {"SUCCEEDED", "FAILED", "STOPPED"}:
            break
        time.sleep(2)
    waited = time.monotonic() - t0
    st, logs, alone = clis(
        (("status", job_id, "--address", address), env),
        (("logs", job_id, "--address", address), env),
        # RAY_AUTH_TOKEN alone (no RAY_AUTH_MODE on the client) is enough
        (("status", job_id, "--address", address), base_env(RAY_AUTH_TOKEN=token)))
    assert logs.returncode == 0, logs.stderr[-4000:]
    assert status == "SUCCEEDED", (f"job {job_id} is {status} after {waited:.0f} s; "
                                   f"its logs:\n{logs.stdout[-6000:]}")
    print(f"job {job_id} SUCCEEDED after {waited:.0f} s")
    for q in (st, alone):
        assert (q.returncode, q.stdout.strip()) == (0, "SUCCEEDED"), (q.stdout, q.stderr[-4000:])
    # the driver's summary table: every cell searched once
    assert all(cell in logs.stdout for cell in CELLS), logs.stdout[-4000:]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("jobs")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("stetune.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("stetune.kind") == "trial"]
    assert len(parents) == 1 and len(children) == 6 == len(runs) - 1, \
        [(r.info.run_name, r.data.tags.get("stetune.kind")) for r in runs]
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags.get("stetune.sweep") == "jobs"
    assert {c.data.tags["stetune.cell"] for c in children} == CELLS
    for c in children:
        assert c.data.tags.get("mlflow.parentRunId") == parent.info.run_id
        assert c.info.status == "FINISHED", (c.data.tags.get("stetune.cell"), c.info.status)
        history = client.get_metric_history(c.info.run_id, "val_acc")
        assert [m.step for m in history] and all(0.0 <= m.value <= 1.0 for m in history), history


def test_submit_and_status_are_refused_without_the_token(ray_head, tmp_path):
    address, token = ray_head
    spec = write_spec(tmp_path, "refused")
    home = tmp_path / "home"  # no ~/.ray/auth_token there
    home.mkdir()
    before = job_count(address, token)

    sub, st, wrong = clis(
        # no token anywhere: the dashboard answers 401
        (("submit", str(spec), "--address", address), base_env(home)),
        # token mode but no token: Ray's client itself refuses (it has no token to send)
        (("status", "raysubmit_whatever", "--address", address),
         base_env(home, RAY_AUTH_MODE="token")),
        # a wrong token: 403
        (("logs", "raysubmit_whatever", "--address", address),
         base_env(home, RAY_AUTH_TOKEN=secrets.token_hex(16))))

    assert sub.returncode == 1 and sub.stdout == "", (sub.stdout, sub.stderr[-4000:])  # no job id
    assert "stetune submit: error: Authentication required" in sub.stderr, sub.stderr[-4000:]
    assert "RAY_AUTH_TOKEN" in sub.stderr and "Traceback" not in sub.stderr, sub.stderr[-4000:]

    assert st.returncode == 1 and st.stdout == "", (st.stdout, st.stderr[-4000:])
    line = next((ln for ln in st.stderr.splitlines() if ln.startswith("stetune status: ")), "")
    assert line.startswith("stetune status: error: ") and "authentication token" in line, \
        st.stderr[-4000:]
    assert "Traceback" not in st.stderr

    assert wrong.returncode == 1 and wrong.stdout == "", (wrong.stdout, wrong.stderr[-4000:])
    assert "stetune logs: error: Authentication failed" in wrong.stderr, wrong.stderr[-4000:]
    assert "Traceback" not in wrong.stderr

    assert job_count(address, token) == before  # nothing was submitted
    assert not (tmp_path / "runs").exists()

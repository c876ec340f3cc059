"""Can this MLflow store be used? Asked before a sweep makes or reads anything, without MLflow
(which would wait minutes for a server, or create and migrate a sqlite file): a plain HTTP
request to a server's /health, a read-only look at a sqlite file's tables."""

from __future__ import annotations

import os
import sqlite3
import urllib.error
import urllib.parse
import urllib.request

from pathlib import Path

from .naming import redact

__all__ = ["TrackingUnreachable", "StoreUnusable", "check_server", "check_sqlite_store",
           "bound_client_retries"]

# MLflow's client retries a failing request 7 times over about 4 minutes: a sweep would hang that
# long on every call to a dead server. 4 retries (0+2+4+8 s, plus jitter) ride out a restart;
# the user's own MLFLOW_HTTP_REQUEST_* settings win.
CLIENT_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4",
                         "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                         "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}


def bound_client_retries() -> None:
    for key, value in CLIENT_RETRY_DEFAULTS.items():
        os.environ.setdefault(key, value)


class TrackingUnreachable(ConnectionError):
    """The MLflow server does not answer: nothing of the sweep has been made yet."""


class StoreUnusable(RuntimeError):
    """A sqlite MLflow store that is missing (where one must exist), empty, damaged or not
    MLflow's; nothing was written to it."""


_MLFLOW_TABLES = {"alembic_version", "experiments", "runs"}


def check_sqlite_store(uri: str, *, must_exist: bool) -> None:
    """A sqlite URI's file, if there, must be a complete MLflow store: MLflow would otherwise
    migrate (write) an empty file, or fail with "file is not a database" deep in a sweep. A
    missing file is refused when `must_exist` (analysis, resume), fine otherwise (a new sweep
    creates it). Checked read-only; other URIs are the server's business."""
    if not uri.startswith("sqlite:"):
        return
    from sqlalchemy.engine import make_url

    db = make_url(uri).database
    if not db or db == ":memory:":
        return
    path = Path(db).expanduser()
    if not path.exists():
        if must_exist:
            raise StoreUnusable(f"no MLflow store at {path} (the file does not exist)")
        return
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        raise StoreUnusable(f"{path} is not an MLflow store (sqlite: {e})") from None
    if not _MLFLOW_TABLES <= tables:
        raise StoreUnusable(f"{path} is not a complete MLflow store (no MLflow tables"
                            f"{'' if tables else ': the file is empty'})")


def check_server(uri: str, timeout: float | None = None) -> None:
    """An http(s) tracking URI must answer /health within `timeout` seconds (default
    $STETUNE_MLFLOW_TIMEOUT, else 10) before a sweep makes anything: MLflow's own client retries
    for minutes and would leave a half-made sweep behind."""
    if not uri.startswith(("http://", "https://")):
        return
    timeout = timeout or float(os.environ.get("STETUNE_MLFLOW_TIMEOUT", "10"))
    parts = urllib.parse.urlsplit(uri)
    netloc = parts.netloc.rpartition("@")[2]  # credentials are not needed to see it is up
    url = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/health", "", ""))
    try:
        urllib.request.urlopen(url, timeout=timeout).close()
    except urllib.error.HTTPError:
        return  # it answered (e.g. 401 before auth): it is up
    except (OSError, ValueError) as e:  # URLError, timeouts, refused connections, bad URLs
        reason = getattr(e, "reason", e)
        raise TrackingUnreachable(f"the MLflow server {redact(uri)} does not answer ({reason}; "
                                  f"waited up to {timeout:g} s, STETUNE_MLFLOW_TIMEOUT); start "
                                  f"it or fix mlflow.tracking_uri: nothing was created") from None

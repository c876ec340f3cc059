"""Is an MLflow tracking server there? Asked before a sweep makes anything (no MLflow import:
a plain HTTP request to the server's /health)."""

from __future__ import annotations

import os
import urllib.error
import urllib.parse
import urllib.request

from .naming import redact

__all__ = ["TrackingUnreachable", "check_server"]


class TrackingUnreachable(ConnectionError):
    """The MLflow server does not answer: nothing of the sweep has been made yet."""


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

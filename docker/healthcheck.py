#!/usr/bin/env python3
"""Container healthcheck: exit 0 when this container's service is up, 1 (with one line) otherwise.

  healthcheck.py mlflow     [--port 5000]  GET /health of the MLflow server (public by design)
  healthcheck.py ray-head   [--port 8265]  GET /api/version of the Ray dashboard *with* the
                                           cluster token (RAY_AUTH_TOKEN): up, and token auth
                                           on with this token; a 401/403 is unhealthy
  healthcheck.py ray-worker                a raylet runs in this container

Standard library only (it runs in both images); never prints the token.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path


def http_ok(url: str, headers: dict | None = None) -> str | None:
    """None when `url` answers 200, else why not."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}),
                                    timeout=5) as r:
            return None if r.status == 200 else f"HTTP {r.status}"
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code}"
    except OSError as e:
        return f"{type(e).__name__}: {e}"


def raylet_running() -> str | None:
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == "raylet":
                return None
        except OSError:  # the process ended while we looked
            continue
    return "no raylet process"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("role", choices=["mlflow", "ray-head", "ray-worker"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int)
    args = p.parse_args(argv)
    if args.role == "mlflow":
        problem = http_ok(f"http://{args.host}:{args.port or 5000}/health")
    elif args.role == "ray-head":
        token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
        if not token:
            problem = "RAY_AUTH_TOKEN is not set"
        else:
            problem = http_ok(f"http://{args.host}:{args.port or 8265}/api/version",
                              {"Authorization": f"Bearer {token}"})
    else:
        problem = raylet_running()
    if problem:
        print(f"unhealthy: {args.role}: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

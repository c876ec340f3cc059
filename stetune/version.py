"""Code version recorded with every result: package version and, in a git checkout, the commit."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

from . import __version__

__all__ = ["code_version", "provenance_tags"]

_VERSIONED_PACKAGES = ("torch", "ray", "mlflow", "optuna")


@lru_cache(maxsize=1)
def code_version() -> dict:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=5).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "stetune"], cwd=root,
                                    capture_output=True, text=True, timeout=5).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {"stetune": __version__, "git_commit": commit, "git_dirty": dirty}


def provenance_tags() -> dict[str, str]:
    """Git commit, package versions and host: enough to tell where and with what a sweep ran."""
    cv = code_version()
    tags = {"stetune.version": cv.get("stetune"), "stetune.git_commit": cv.get("git_commit"),
            "stetune.git_dirty": cv.get("git_dirty"),
            "mlflow.source.git.commit": cv.get("git_commit"),  # shown by the MLflow UI
            "host.hostname": socket.gethostname(), "host.platform": platform.platform(),
            "host.python": sys.version.split()[0], "host.cpu_count": os.cpu_count()}
    for pkg in _VERSIONED_PACKAGES:
        try:  # metadata only: importing ray/torch just for a version costs seconds
            tags[f"version.{pkg}"] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            tags[f"version.{pkg}"] = "not installed"
    try:
        import torch
        if torch.cuda.is_available():
            tags["host.cuda_device"] = torch.cuda.get_device_name(0)
            tags["host.cuda_device_count"] = torch.cuda.device_count()
    except Exception:  # a broken CUDA setup must not stop the sweep from being tracked
        pass
    return {k: v for k, v in tags.items() if v is not None}

"""Code version recorded with every result: package version and, in a git checkout, the commit."""

from __future__ import annotations

import subprocess
from functools import lru_cache
from pathlib import Path

from . import __version__

__all__ = ["code_version"]


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

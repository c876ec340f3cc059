"""The sweep service: the only part of stetune that imports Ray."""

from .runner import run_sweep, summary_rows

__all__ = ["run_sweep", "summary_rows"]

"""The sweep service: the only part of stetune that imports Ray (kinds/ imports it only when a
kind runs, so its table is cheap to read)."""

__all__ = ["run_sweep", "get_kind", "list_kinds", "register_kind", "SweepKind"]


def __getattr__(name: str):
    # lazy: `stetune status/logs` import stetune.sweep.jobs and need neither Tune nor torch
    if name == "run_sweep":
        from .runner import run_sweep

        return run_sweep
    if name in __all__:
        from . import kinds

        return getattr(kinds, name)
    raise AttributeError(name)

"""The sweep service: the only part of stetune that imports Ray."""

__all__ = ["run_sweep", "summary_rows"]


def __getattr__(name: str):
    # lazy: `stetune status/logs` import stetune.sweep.jobs and need neither Tune nor torch
    if name in __all__:
        from . import runner

        return getattr(runner, name)
    raise AttributeError(name)

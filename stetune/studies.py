"""A network sweep's per-cell Optuna studies, read back for `stetune analyze`: Optuna's own
optimisation history, parameter importance and parallel-coordinate plots per cell. Reads only:
a sqlite storage is opened read-only, so analysis never creates or migrates one; an object store's
journal (journal.py) is only read."""

from __future__ import annotations

import warnings
from pathlib import Path

__all__ = ["load_studies", "study_figures"]


def load_studies(url: str | None, sweep: str, cells: list[str]) -> tuple[dict, str | None]:
    """({cell: optuna Study} for the cells whose study exists, why none could be read or None)."""
    if not url:
        return {}, "the sweep recorded no Optuna storage (made by an older stetune)"
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return {}, f"its Optuna storage {url} is not on this machine"
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    from .journal import open_study_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        storage = open_study_storage(url, readonly=True)
        names = set(optuna.get_all_study_names(storage))
        return {c: optuna.load_study(study_name=f"{sweep}/{c}", storage=storage)
                for c in cells if f"{sweep}/{c}" in names}, None
    except (SQLAlchemyError, OSError, RuntimeError, ValueError) as e:
        return {}, f"its Optuna storage cannot be read ({type(e).__name__}: {str(e)[:120]})"


def study_figures(study, out: Path, stem: str, width: float = 7.0) -> list[Path]:
    """Optuna's matplotlib plots of one cell's study as PNG (for the report) and PDF (TrueType
    fonts): history always; importance and parallel coordinates when more than one parameter
    was tuned and at least two trials completed (they say nothing otherwise)."""
    import matplotlib
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as ovm

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    params = {k for t in done for k in t.params}
    plots = {"history": ovm.plot_optimization_history}
    if len(params) > 1 and len(done) > 1:
        plots |= {"importance": ovm.plot_param_importances,
                  "parallel": ovm.plot_parallel_coordinate}
    files = []
    with warnings.catch_warnings(), matplotlib.rc_context({"pdf.fonttype": 42, "ps.fonttype": 42,
                                                           "font.size": 8}):
        warnings.simplefilter("ignore")  # Optuna's matplotlib backend is "experimental"
        for what, plot in plots.items():
            try:
                ax = plot(study)
            except (ValueError, RuntimeError, ZeroDivisionError):  # too few trials to plot
                continue
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            if what == "history":  # trials are numbered: no 0.2-trial ticks
                from matplotlib.ticker import MaxNLocator

                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            fig.set_size_inches(width, width * 0.5)
            fig.tight_layout()
            for ext in ("pdf", "png"):
                path = out / f"{stem}-{what}.{ext}"
                fig.savefig(path, dpi=150)
                files.append(path)
            plt.close(fig)
    return files

"""`stetune analyze`: a sweep's Markdown stability report, with its Table-1 files and figures.

Analysis DataFrames in (stetune.analysis), files out (through stetune.export); nothing here
reads or writes MLflow itself."""

from __future__ import annotations

import math
from pathlib import Path

from .analysis import StabilityRule, SweepData, cell_table, repulsion_table
from .export import curves_figure, plain_frame, repulsion_figure, save_figure, table1
from .naming import redact

__all__ = ["write_report", "caption"]

_CELL_COLUMNS = {"cell": "cell", "n": "n", "trials": "trials", "diverged": "diverged",
                 "divergence_rate": "div. rate", "pruned": "pruned", "spikes": "loss spikes",
                 "gap_mean": "final - best (pts)", "params": "tuned", "verdict": "verdict",
                 "reasons": "why"}


# (size, file-name suffix): 7 in wide for a two-column figure* or a page, 3.3 in for one column
_FIGURE_SIZES = (("double", ""), ("single", "-single"))


def caption(data: SweepData) -> str:
    # plain text: export escapes it for LaTeX. Neutral (no sweep name): it goes into a paper as is
    return ("Training loss / validation accuracy (%) at each cell's best epoch, mean ± std over "
            "the n replicate seeds; best accuracy per row in bold.")


def write_report(data: SweepData, out_dir: str | Path, rule: StabilityRule = StabilityRule()) -> list[Path]:
    """Write report.md and its tables/figures into out_dir; returns every file written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    head = [f"# Stability report: sweep `{data.name}`", "",
            f"- tracking: `{redact(data.tracking_uri)}`, experiment `{data.experiment}`, parent run "
            f"`{data.parent_run_id}`",
            f"- model `{data.spec.get('model')}`, dataset `{data.spec.get('dataset')}`, "
            f"{len(data.runs)} trial runs, sweep status {data.status}"]
    if data.running:
        done = int((data.runs["status"] != "running").sum())
        head.append(f"- **the sweep is still running**: this report uses the {done} of "
                    f"{len(data.runs)} trials that have finished")
    if data.incomplete:
        head.append(f"- **the sweep ended {data.status}** (interrupted or failed) before its "
                    f"budget was done: this report uses the trials that ran to a result; "
                    f"`stetune resume {data.name}` completes it")
    if not (data.runs["status"] != "running").any():
        files, body = [], ["No trial has finished yet: nothing to analyse."]
    elif data.analysis == "repulsion":
        files, body = _repulsion(data, out)
    else:  # "cells": load_sweep refuses kinds without an analysis
        files, body = _network(data, out, rule)
    report = out / "report.md"
    report.write_text("\n".join(head + [""] + body) + "\n")
    return [report, *files]


def _network(data: SweepData, out: Path, rule: StabilityRule) -> tuple[list[Path], list[str]]:
    cells = cell_table(data, rule)
    files = []
    for fmt, ext in (("markdown", "md"), ("latex", "tex"), ("csv", "csv")):
        path = out / f"table1.{ext}"
        path.write_text(table1(cells, fmt, caption=caption(data), label=f"tab:{data.name}"))
        files.append(path)
    full = out / "cells.csv"
    plain_frame(cells).to_csv(full, index=False)   # params one column each, no Python reprs
    files.append(full)

    # the runs behind the table: finished replicates, or each cell's best search trial
    reps = data.history[data.history["run_id"].isin(
        [r for ids in cells["run_ids"] for r in ids]) & (data.history["epoch"] >= 1)]
    source = ("the finished replicate runs (each cell's tuned config; curve = mean over seeds, "
              "band = min-max)" if (cells["source"] == "replicate").all() else
              "the runs behind Table 1 (replicates; each cell's best search trial where the "
              "sweep has no replicates)")
    figs = []
    if not reps.empty:   # both paper sizes; report.md shows the double-column one (figs[1])
        for size, suffix in _FIGURE_SIZES:
            figs += save_figure(curves_figure(reps, size=size), out / f"curves{suffix}")
        files += figs

    stab = cells[list(_CELL_COLUMNS)].rename(columns=_CELL_COLUMNS)
    stab["div. rate"] = stab["div. rate"].map(lambda x: f"{x:.0%}")
    stab["final - best (pts)"] = stab["final - best (pts)"].map(
        lambda x: "–" if not math.isfinite(x) else f"{x * 100:+.2f}")
    stab["tuned"] = stab["tuned"].map(lambda d: ", ".join(f"{k}={_short(v)}" for k, v in d.items()) or "–")
    body = ["## Table 1", "", (out / "table1.md").read_text().strip(), "",
            "Cells: training loss at the epoch of best validation accuracy / that accuracy (%), "
            "mean ± std over the replicate seeds (n = number of seeds); best per row in bold. "
            "Files: `table1.tex` (booktabs), `table1.csv`, `cells.csv` (every statistic).", "",
            "## Stability per cell", "", stab.to_markdown(index=False), "",
            f"**Rule.** {rule.describe()} Divergence rate = diverged trials / all trials of the "
            f"cell, search and replicate. Final - best: the replicates' last-epoch validation "
            f"accuracy minus their best, in points.", ""]
    verdicts = cells["verdict"].value_counts().to_dict()
    body += ["Verdicts: " + ", ".join(f"{n} {v}" for v, n in verdicts.items()) + ".", ""]
    if figs:
        body += ["## Curves", "", f"Training loss and validation accuracy per epoch, from {source}.",
                 "", f"![curves]({figs[1].name})", ""]
    search_files, search_body = _search(data, out, list(cells["cell"]))
    return files + search_files, body + search_body


def _search(data: SweepData, out: Path, cells: list[str]) -> tuple[list[Path], list[str]]:
    """Per cell, Optuna's view of its search (the study the sweep persisted)."""
    from .journal import is_journal
    from .studies import load_studies, study_figures

    studies, why = load_studies(data.tags.get("stetune.optuna_storage"), data.name, cells)
    body = ["## Search (Optuna)", ""]
    if not studies:
        return [], body + [f"No per-cell Optuna study to show: {why or 'none found'}.", ""]
    url = redact(data.tags["stetune.optuna_storage"])
    browse = ("Optuna's journal in the sweep's object store" if is_journal(url)
              else f"browse it: `optuna-dashboard {url}`")
    body += [f"Each cell's study, from `{url}` ({browse}): the "
             f"optimisation history, and where more than one hyper-parameter was tuned, their "
             f"importance and a parallel-coordinate view.", ""]
    files: list[Path] = []
    (out / "optuna").mkdir(exist_ok=True)
    for cell, study in studies.items():
        made = study_figures(study, out / "optuna", cell.replace("/", "-"))
        files += made
        states = [t.state.name.lower() for t in study.trials]
        counts = ", ".join(f"{states.count(s)} {s}" for s in sorted(set(states)))
        body += [f"### {cell}", "", f"{len(states)} trials ({counts}).", ""]
        body += [f"![{p.stem}](optuna/{p.name})" for p in made if p.suffix == ".png"] + [""]
    return files, body


def _repulsion(data: SweepData, out: Path) -> tuple[list[Path], list[str]]:
    rows = repulsion_table(data)
    factor, probe = rows.attrs["factor"], rows.attrs["probe_epochs"]
    csv = out / "repulsion.csv"
    rows.to_csv(csv, index=False)
    hist = data.history[(data.history["phase"] == "repulsion")
                        & data.history["status"].isin(["finished", "diverged"])]
    start = _start(data.spec)
    figs = []
    for size, suffix in _FIGURE_SIZES:   # both paper sizes; report.md shows figs[1], the double
        figs += save_figure(repulsion_figure(hist, probe_epochs=probe, size=size),
                            out / f"repulsion{suffix}")
    show = rows[["ste", "seeds", "start_loss", "probe_loss", "ratio", "start_acc", "probe_acc",
                 "final_acc", "verdict"]].copy()
    show.insert(5, "ratio range (seeds)", [f"{lo:.3f} - {hi:.3f}" for lo, hi in
                                           zip(rows["ratio_min"], rows["ratio_max"])])
    for k in ("start_acc", "probe_acc", "final_acc"):
        show[k] = show[k] * 100
    show = show.rename(columns={"start_loss": "start loss", "probe_loss": f"loss after {probe} ep.", "ratio": "loss ratio",
                                "start_acc": "start acc %", "probe_acc": "acc after probe %",
                                "final_acc": "final acc %"})
    body = ["## Repulsion", "",
            f"Start: the {start} ({data.spec.get('bits')} bits). Each STE continues "
            f"from it for {probe} epochs at lr {data.spec.get('probe.lr')} (the probe)"
            + (f", then {data.spec.get('schedule.epochs')} epochs of the normal schedule"
               if int(data.spec.get("schedule.epochs", 0)) else "") + ".", "",
            show.to_markdown(index=False, floatfmt=".4g"), "",
            f"**Rule.** Loss ratio = training loss after the probe / training loss at the start "
            f"(epoch 0: the start weights measured over one pass of the training set in train "
            f"mode, no update), mean over seeds. **repelled** when the ratio is >= {factor:g}, "
            f"**diverged** when a seed's loss became non-finite, **held** otherwise.", "",
            "## Curves", "", f"![repulsion]({figs[1].name})", ""]
    return [csv, *figs], body


def _start(spec: dict) -> str:
    """Where a repulsion sweep's minimum came from, in words (params hold None as 'None')."""
    given = {k: v for k in ("ste", "run", "checkpoint")
             if (v := spec.get(f"start.{k}")) not in (None, "None", "")}
    if "ste" in given:
        return f"{given['ste']} minimum"
    if "run" in given:
        return f"minimum of MLflow run {given['run']}"
    return f"minimum in {given.get('checkpoint', '?')}"


def _short(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)

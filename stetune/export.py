"""Paper-style exports: Table 1 (LaTeX / markdown / CSV) and Fig.-2-style curves (PDF + PNG).

DataFrames in, text or figures out; building the frames from MLflow is `stetune.analysis`'s job.
No MLflow/Ray imports here, so exporting stays cheap and testable on hand-made frames.

Number formats (one rule everywhere, matching the paper's precision):
  - loss: 2 significant digits, scientific without exponent padding when |x| < 0.1 or >= 1000
    ("5.1e-3", "2.6e-2"), fixed-point otherwise ("0.19", "1.2"); its std with 1 significant digit
    in the mean's notation ("5.1e-3 ± 4e-4", "0.19 ± 0.02").
  - accuracy: percent with 2 decimals, std too ("99.24 ± 0.05").
  - "± std" is left out when the std is NaN (n < 2).
  - a cell without a finished replicate (n == 0, or no row) shows "–".
  - bold = highest mean accuracy *as displayed* (2 decimals), so every cell that reads as the row's
    best is bold (ties bold together); a row without any finished cell gets no bold.
  - replicate counts go into an "n" column: one number when all STEs of the row agree, else the
    counts per STE in column order ("3,3,2").
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

__all__ = ["STE_NAMES", "DATASET_NAMES", "MODEL_NAMES", "FORMATS", "REQUIRED_CELL_COLUMNS",
           "table1", "curves_figure", "repulsion_figure", "save_figure"]

# Display names, defined once; unknown names pass through unchanged.
STE_NAMES = {"identity": "identity", "relu": "ReLU", "clipped_relu": "clipped ReLU"}
DATASET_NAMES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST", "cifar10": "CIFAR-10",
                 "digits": "digits", "synthetic": "synthetic"}
MODEL_NAMES = {"lenet5": "LeNet-5", "vgg11": "VGG-11", "resnet20": "ResNet-20"}

FORMATS = ("csv", "latex", "markdown")
REQUIRED_CELL_COLUMNS = ("dataset", "model", "bits", "ste", "n",
                         "acc_mean", "acc_std", "loss_mean", "loss_std")
_ROW_COLUMNS = ["data", "network", "bits", "n"]
_DEFAULT_CAPTION = ("Training loss / validation accuracy (%) at the best-accuracy epoch, "
                    "mean ± std over the n replicates; best accuracy per row in bold.")
_DASH = "–"   # en dash: the cell has no finished replicate
_BOLD_CSS = "textbf:--rwrap;"   # Styler.to_latex turns this into \textbf{...}
_HUGE = 1e300  # MLflow logs inf as ±1.797e308: anything this large is a diverged value
# Fixed colours for the built-in STEs so every panel and figure agrees; others take the rest.
_PALETTE = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
            "tab:pink", "tab:gray", "tab:olive", "tab:cyan"]


def _ste_order(stes) -> list[str]:
    builtin = [s for s in STE_NAMES if s in set(stes)]
    return builtin + sorted(set(stes) - set(STE_NAMES))


def _colors(stes: list[str]) -> dict[str, str]:
    free = iter(c for i, c in enumerate(_PALETTE) if i >= len(STE_NAMES))
    builtin = dict(zip(STE_NAMES, _PALETTE))
    return {s: builtin[s] if s in builtin else next(free, "black") for s in stes}


def _bits_key(b) -> tuple:
    # ints numerically, anything else (e.g. "float") after them
    try:
        return (0, float(b), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(b))


def _bits_str(b) -> str:
    # 2.0 (a frame upcast to float) still reads "2"
    numeric = isinstance(b, (int, float, np.integer, np.floating)) and not isinstance(b, bool)
    return str(int(b)) if numeric and float(b).is_integer() else str(b)


# ---------------------------------------------------------------- numbers
def _sig(x: float, digits: int, sci: bool | None = None) -> str:
    """`digits` significant digits; scientific ("5.1e-3") when |x| < 0.1 or >= 1000, or as `sci`
    says (a std follows its mean's notation: "0.19 ± 0.02", "5.1e-3 ± 4e-4")."""
    if x == 0:
        return "0"
    x = float(f"{x:.{digits - 1}e}")           # round first, so 0.0996 -> 0.1 -> "0.10"
    if sci if sci is not None else (abs(x) < 0.1 or abs(x) >= 1000):
        mant, exp = f"{x:.{digits - 1}e}".split("e")
        return f"{mant}e{int(exp)}"
    return f"{x:.{max(digits - 1 - math.floor(math.log10(abs(x))), 0)}f}"


def _finite(x) -> bool:
    return x is not None and not pd.isna(x) and math.isfinite(x) and abs(x) < _HUGE


def _cell_parts(r) -> tuple[str, str, str, str] | None:
    """(loss, loss std, acc %, acc std %) strings, '' for a missing std; None: no replicate."""
    if r is None or not (r["n"] > 0) or not _finite(r["acc_mean"]):
        return None
    loss = _sig(r["loss_mean"], 2) if _finite(r["loss_mean"]) else _DASH
    lstd = (_sig(r["loss_std"], 1, sci="e" in loss)
            if _finite(r["loss_std"]) and _finite(r["loss_mean"]) else "")
    astd = f"{100 * r['acc_std']:.2f}" if _finite(r["acc_std"]) else ""
    return loss, lstd, f"{100 * r['acc_mean']:.2f}", astd


def _join(parts, pm: str, dash: str, stack: bool = False) -> str:
    if parts is None:
        return dash
    loss, lstd, acc, astd = parts
    loss = f"{loss} {pm} {lstd}" if lstd else loss
    acc = f"{acc} {pm} {astd}" if astd else acc
    if stack:   # LaTeX: two lines in a kernel-only nested tabular (see table1)
        text = rf"\begin{{tabular}}{{@{{}}c@{{}}}}{loss} /\\ {acc}\end{{tabular}}"
    else:
        text = f"{loss} / {acc}"
    return text.replace(_DASH, dash)


def _latex_escape(s: str) -> str:
    # for the caption only (Styler escapes cells/headers itself but leaves the caption verbatim)
    out = "".join({"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                   "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                   "^": r"\textasciicircum{}"}.get(c, c) for c in s)
    return out.replace("±", r"$\pm$").replace(_DASH, "--")


# ---------------------------------------------------------------- Table 1
def _rank(names: dict, key) -> tuple:
    """The paper's order (the order of `names`: MNIST before CIFAR-10), unknown names after, A-Z."""
    order = list(names)
    return (order.index(key), "") if key in order else (len(order), str(key))


def _layout(cells: pd.DataFrame):
    """-> (row-descriptor frame, {fmt: cell-text frame}, best mask) all on the same index."""
    stes = _ste_order(cells["ste"].unique())
    keys = sorted({(d, m, b) for d, m, b in zip(cells["dataset"], cells["model"], cells["bits"])},
                  key=lambda k: (_rank(DATASET_NAMES, k[0]), _rank(MODEL_NAMES, k[1]),
                                 _bits_key(k[2])))
    by_key = {(d, m, b, s): r for (d, m, b, s), r in
              zip(zip(cells["dataset"], cells["model"], cells["bits"], cells["ste"]),
                  cells.to_dict("records"))}
    rows, text, shadow = [], {"plain": [], "latex": []}, []
    for d, m, b in keys:
        recs = [by_key.get((d, m, b, s)) for s in stes]
        ns = [int(r["n"]) if r is not None and pd.notna(r["n"]) else 0 for r in recs]
        rows.append([DATASET_NAMES.get(d, str(d)), MODEL_NAMES.get(m, str(m)), _bits_str(b),
                     str(ns[0]) if len(set(ns)) == 1 else ",".join(map(str, ns))])
        parts = [_cell_parts(r) for r in recs]
        text["plain"].append([_join(p, "±", _DASH) for p in parts])
        text["latex"].append(parts)
        # accuracy as displayed (rounded), so display-level ties are all bold
        shadow.append([float(p[2]) if p else np.nan for p in parts])
    header = [STE_NAMES.get(s, s) for s in stes]
    desc = pd.DataFrame(rows, columns=_ROW_COLUMNS)
    # With "± std" a one-line cell is ~140pt wide: three STEs overflow an article's \textwidth by
    # ~180pt, so LaTeX cells stack loss over accuracy then; std-free tables keep the paper's line.
    stack = any(p and (p[1] or p[3]) for row in text["latex"] for p in row)
    text["latex"] = [[_join(p, r"$\pm$", "--", stack) for p in row] for row in text["latex"]]
    frames = {k: pd.DataFrame(v, columns=header, index=desc.index, dtype=object)
              for k, v in text.items()}
    acc = pd.DataFrame(shadow, columns=header, index=desc.index, dtype=float)
    best = acc.eq(acc.max(axis=1), axis=0) & acc.notna()   # all-NaN rows: max NaN -> no bold
    return desc, frames, best


def table1(cells: pd.DataFrame, fmt: str, *, caption: str | None = None,
           label: str | None = None) -> str:
    """Render the paper's Table 1 from one row per (dataset, model, bits, ste) cell.

    `caption` is plain text (escaped for LaTeX, "±" allowed); None -> a default sentence that also
    explains the n column. `label` is used verbatim in LaTeX's \\label{} and ignored elsewhere.
    Markdown gets the caption as a pandoc-style "Table: ..." line; CSV gets neither.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {sorted(FORMATS)}, but got fmt={fmt!r}")
    missing = [c for c in REQUIRED_CELL_COLUMNS if c not in cells.columns]
    if missing:
        raise ValueError(f"cells is missing required columns {missing}")
    dup = cells.duplicated(["dataset", "model", "bits", "ste"], keep=False)
    if dup.any():   # which replicate set to show would be arbitrary
        keys = cells.loc[dup, ["dataset", "model", "bits", "ste"]].drop_duplicates()
        raise ValueError(f"cells has more than one row for {keys.values.tolist()}")
    caption = _DEFAULT_CAPTION if caption is None else caption
    desc, frames, best = _layout(cells)

    if fmt == "csv":
        return pd.concat([desc, frames["plain"]], axis=1).to_csv(index=False)

    if fmt == "markdown":
        body = frames["plain"].mask(best, "**" + frames["plain"] + "**")
        table = pd.concat([desc, body], axis=1)
        align = ["left", "left", "right", "right"] + ["center"] * body.shape[1]
        md = table.to_markdown(index=False, tablefmt="pipe", colalign=align)
        return f"{md}\n\nTable: {caption}\n" if caption else md + "\n"

    # LaTeX: Styler does the bold (CSS-like props), escaping and booktabs rules.
    table = pd.concat([desc, frames["latex"]], axis=1)
    ste_cols = list(frames["latex"].columns)
    styler = (table.style.hide(axis="index")
              # \small + narrower gaps: kernel-only commands, booktabs stays the only package
              .set_table_styles([{"selector": "small", "props": ":;"},
                                 {"selector": "setlength", "props": r":{\tabcolsep}{3pt};"}])
              .format(escape="latex", subset=_ROW_COLUMNS)   # STE cells are LaTeX already
              .format_index(escape="latex", axis="columns")
              .apply(lambda d: pd.DataFrame(np.where(best, _BOLD_CSS, ""), index=d.index,
                                           columns=d.columns), axis=None, subset=ste_cols))
    return styler.to_latex(hrules=True, caption=_latex_escape(caption) if caption else None,
                           label=label, position_float="centering",
                           column_format="llrr" + "c" * len(ste_cols))


# ---------------------------------------------------------------- figures
def _clean(history: pd.DataFrame, cols=("train_loss", "val_acc")) -> pd.DataFrame:
    """Diverged values (inf, NaN, MLflow's ±1.797e308) -> NaN, so they are gaps, not spikes."""
    h = history.copy()
    for c in cols:
        v = pd.to_numeric(h[c], errors="coerce").astype(float)
        h[c] = v.where(np.isfinite(v) & (v.abs() < _HUGE))
    h.loc[h["train_loss"] <= 0, "train_loss"] = np.nan   # log axis
    return h


def _plot_pair(axes, h: pd.DataFrame, stes: list[str], colors: dict[str, str]) -> None:
    """Loss (log y) and accuracy (%) axes: per STE one line (mean over seeds) + min-max band."""
    ax_loss, ax_acc = axes
    for ste in stes:
        g = h[h["ste"] == ste].groupby("epoch")
        n_seeds = h.loc[h["ste"] == ste, "seed"].nunique() if "seed" in h else 1
        for ax, col, scale in ((ax_loss, "train_loss", 1.0), (ax_acc, "val_acc", 100.0)):
            stats = g[col].agg(["mean", "min", "max"]).sort_index() * scale
            x = stats.index.to_numpy()
            # exactly one Line2D per STE per axis (tests count them); bands are collections
            ax.plot(x, stats["mean"].to_numpy(), color=colors[ste], label=STE_NAMES.get(ste, ste),
                    marker="o" if len(x) <= 30 else None, markersize=3, linewidth=1.5)
            if n_seeds > 1:
                ax.fill_between(x, stats["min"].to_numpy(), stats["max"].to_numpy(),
                                color=colors[ste], alpha=0.2, linewidth=0)
    ax_loss.set_yscale("log", nonpositive="mask")
    # plain numbers on major and minor ticks: a narrow loss range otherwise reads "2.07x10^-1"
    for axis in (ax_loss.yaxis.set_major_formatter, ax_loss.yaxis.set_minor_formatter):
        axis(FuncFormatter(lambda v, _: f"{v:.3g}"))
    ax_loss.set_ylabel("training loss")
    ax_acc.set_ylabel("validation accuracy (%)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))   # epochs are whole numbers
        ax.grid(True, which="major", alpha=0.3)


def _grid(n_rows: int, title: str | None) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(10, 3.4 * n_rows + 0.6), layout="constrained")
    axes = fig.subplots(n_rows, 2, squeeze=False)
    if title:
        fig.suptitle(title)
    return fig, axes


def _legend(fig: Figure, ax) -> None:
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 5),
               frameon=False)


def _require(history: pd.DataFrame, cols) -> None:
    missing = [c for c in cols if c not in history.columns]
    if missing:
        raise ValueError(f"history is missing required columns {missing}")


def curves_figure(history: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Paper Fig. 2: per bits value one row (loss per epoch, log y | val accuracy %), one line per
    STE (mean over seeds) with a shaded min-max band when there is more than one seed.

    Every axis holds one Line2D per STE in the frame (empty where a panel lacks that STE). A seed's
    diverged epochs (inf/NaN/|x| >= 1e300) drop out of the mean; all seeds diverged -> a gap."""
    _require(history, ["ste", "bits", "seed", "epoch", "train_loss", "val_acc"])
    h = _clean(history)
    stes, bits = _ste_order(h["ste"].unique()), sorted(h["bits"].unique(), key=_bits_key)
    colors = _colors(stes)
    fig, axes = _grid(len(bits), title)
    for row, b in zip(axes, bits):
        _plot_pair(row, h[h["bits"] == b], stes, colors)
        name = f"{_bits_str(b)}-bit" if _bits_key(b)[0] == 0 else str(b)
        row[0].set_title(f"{name}: training loss")
        row[1].set_title(f"{name}: validation accuracy")
    _legend(fig, axes[0, 0])
    return fig


def repulsion_figure(history: pd.DataFrame, *, probe_epochs: int | None = None,
                     title: str | None = None) -> Figure:
    """Training continued from a minimum with each STE (epoch 0 = the starting point): one row per
    `start` (if that column exists), loss (log y) | val accuracy %, one line per STE.

    The end of the small-lr probe is a dashed vertical LineCollection (`ax.vlines`), not a Line2D,
    so `ax.get_lines()` holds exactly one line per STE; it does appear in the legend."""
    _require(history, ["ste", "epoch", "train_loss", "val_acc"])
    h = _clean(history)
    starts = sorted(h["start"].astype(str).unique()) if "start" in h else [None]
    stes = _ste_order(h["ste"].unique())
    colors = _colors(stes)
    fig, axes = _grid(len(starts), title)
    for row, start in zip(axes, starts):
        _plot_pair(row, h if start is None else h[h["start"].astype(str) == start], stes, colors)
        where = "" if start is None else f"from {start}: "
        row[0].set_title(f"{where}training loss")
        row[1].set_title(f"{where}validation accuracy")
        if probe_epochs is not None:
            for ax in row:
                ax.vlines(probe_epochs, 0, 1, transform=ax.get_xaxis_transform(), colors="black",
                          linestyles="dashed", linewidth=1,
                          label=f"end of probe (epoch {probe_epochs})")
    _legend(fig, axes[0, 0])
    return fig


def save_figure(fig: Figure, out_stem: str | Path) -> list[Path]:
    """Write `<stem>.pdf` and `<stem>.png` (150 dpi, tight bbox), close the figure, return paths."""
    out_stem = Path(out_stem)
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    # not with_suffix: a stem may hold dots ("curves.v2")
    paths = [Path(f"{out_stem}.pdf"), Path(f"{out_stem}.png")]
    for p in paths:
        fig.savefig(p, dpi=150, bbox_inches="tight")
    if "matplotlib.pyplot" in sys.modules:   # our figures bypass pyplot; a caller's may not
        sys.modules["matplotlib.pyplot"].close(fig)
    return paths

"""Paper figures: per-epoch curves per STE (Fig. 2 style) and repulsion curves, PDF + PNG.

Sized for a paper: `size="single"` is one column (3.3 in wide, 8 pt text), `"double"` spans both
columns (7 in, 9 pt); saved at that size (no tight bbox), so the PDF drops into LaTeX at scale 1.
Layout: the training loss (log y) in the top row and the validation accuracy (%) below, one column
per bit-width (or per start); panels of a metric share their y axis, and wrap into further row
pairs past 3 (single) or 4 (double) columns. Each STE has a fixed colour, marker and line style,
so curves stay apart in greyscale. PDF/PS fonts are TrueType (Type 42), not Type 3.

Also the STE display names and orders, shared with the tables (stetune.export imports them).
No MLflow/Ray imports, figures are built on hand-made frames in tests.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

__all__ = ["STE_NAMES", "SIZES", "ste_styles", "curves_figure", "repulsion_figure", "save_figure"]

# Display names, defined once; unknown names pass through unchanged.
STE_NAMES = {"identity": "identity", "relu": "ReLU", "clipped_relu": "clipped ReLU"}
_HUGE = 1e300  # MLflow logs inf as ±1.797e308: anything this large is a diverged value

# Per size: figure width (in), height of one (loss, accuracy) row pair (in), text and tick-label
# size (pt), line width, marker size, most panel columns before wrapping, most legend columns.
# 8/9 pt at print size: near a paper's caption text, above venues' usual minimum.
SIZES = {
    "single": dict(width=3.3, pair_height=2.3, font=8, tick=8, line=1.0, marker=3.5,
                   max_cols=3, legend_cols=3, loss="training loss", acc="val. acc. (%)"),
    "double": dict(width=7.0, pair_height=3.1, font=9, tick=9, line=1.3, marker=4.5,
                   max_cols=4, legend_cols=6, loss="training loss", acc="val. accuracy (%)"),
}

# Fixed colour, marker and line style for the built-in STEs so every panel and figure agrees;
# others take the rest in order (colours run out into black, (marker, line) pairs after 32).
_PALETTE = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
            "tab:pink", "tab:gray", "tab:olive", "tab:cyan"]
_BUILTIN_MARKS = {"identity": ("o", "-"), "relu": ("s", "--"), "clipped_relu": ("^", "-.")}
_MARKERS = ("D", "v", "P", "X", "*", "<", ">", "p")
_LINES = ("-", "--", "-.", ":")


def _ste_order(stes) -> list[str]:
    builtin = [s for s in STE_NAMES if s in set(stes)]
    return builtin + sorted(set(stes) - set(STE_NAMES))


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


def ste_styles(stes) -> dict[str, dict]:
    """STE -> {color, marker, linestyle}: fixed for the built-ins, by order for the others (the
    i-th other STE: marker i mod 8, line style shifted every 8, so the first 32 pairs differ)."""
    free = iter(c for i, c in enumerate(_PALETTE) if i >= len(STE_NAMES))
    colors = dict(zip(STE_NAMES, _PALETTE))
    out, i = {}, 0
    for s in _ste_order(stes):
        if s in _BUILTIN_MARKS:
            marker, line = _BUILTIN_MARKS[s]
        else:   # ":" first: the one line style no built-in uses
            marker, line = _MARKERS[i % len(_MARKERS)], _LINES[(3 + i + i // len(_MARKERS)) % 4]
            i += 1
        out[s] = dict(color=colors[s] if s in colors else next(free, "black"), marker=marker,
                      linestyle=line)
    return out


# ---------------------------------------------------------------- drawing
def _clean(history: pd.DataFrame, cols=("train_loss", "val_acc")) -> pd.DataFrame:
    """Diverged values (inf, NaN, MLflow's ±1.797e308) -> NaN, so they are gaps, not spikes."""
    h = history.copy()
    for c in cols:
        v = pd.to_numeric(h[c], errors="coerce").astype(float)
        h[c] = v.where(np.isfinite(v) & (v.abs() < _HUGE))
    h.loc[h["train_loss"] <= 0, "train_loss"] = np.nan   # log axis
    return h


def _plot(ax_loss, ax_acc, h: pd.DataFrame, styles: dict, sz: dict) -> None:
    """Per STE one line (mean over seeds) + a min-max band when there is more than one seed."""
    for ste, st in styles.items():
        g = h[h["ste"] == ste].groupby("epoch")
        n_seeds = h.loc[h["ste"] == ste, "seed"].nunique() if "seed" in h else 1
        for ax, col, scale in ((ax_loss, "train_loss", 1.0), (ax_acc, "val_acc", 100.0)):
            stats = g[col].agg(["mean", "min", "max"]).sort_index() * scale
            x = stats.index.to_numpy()
            # about 12 markers per curve at most: enough to tell STEs apart, not a smear
            every = max(1, math.ceil(len(x) / 12))
            # exactly one Line2D per STE per axis (tests count them); bands are collections
            ax.plot(x, stats["mean"].to_numpy(), label=STE_NAMES.get(ste, ste), color=st["color"],
                    marker=st["marker"], linestyle=st["linestyle"], markevery=every,
                    markersize=sz["marker"], linewidth=sz["line"])
            if n_seeds > 1:
                ax.fill_between(x, stats["min"].to_numpy(), stats["max"].to_numpy(),
                                color=st["color"], alpha=0.2, linewidth=0)


def _tick_label(v: float, plain: bool) -> str:
    """A plain number ("0.05", "2") or a power of ten ("$10^{-4}$", "$2\\times10^{-4}$")."""
    if not (v > 0 and math.isfinite(v)):
        return ""
    if plain:
        return f"{v:.3g}"
    e = math.floor(math.log10(v) + 1e-9)
    m = v / 10 ** e
    return f"$10^{{{e}}}$" if abs(m - 1) < 1e-6 else f"${m:.2g}\\times10^{{{e}}}$"


def _log_ticks(ax, tick_pt: float) -> None:
    """Few labelled major ticks on the (shared) log axis, chosen from its span; minors unlabelled.
    Wide spans: decades only; about one decade: 1-2-5; narrower: evenly spaced values."""
    lo, hi = ax.get_ylim()   # after every panel is drawn: the shared, autoscaled range
    if not (0 < lo < hi and math.isfinite(hi)):
        return
    span = math.log10(hi / lo)
    if span > 1.6:
        major = LogLocator(base=10, subs=(1.0,), numticks=5)
    elif span > 0.6:
        major = LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=6)
    else:   # < a factor of 4: log ticks would be one or crowded; 3 linear steps read better
        major = MaxNLocator(nbins=3, steps=[1, 2, 2.5, 5, 10])
    ax.yaxis.set_major_locator(major)
    # one notation per axis: plain while every label is (0.001 to 9999), else powers of ten
    plain = all(1e-3 <= t < 1e4 for t in major.tick_values(lo, hi) if lo <= t <= hi)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: _tick_label(v, plain)))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.tick_params(axis="y", which="both", labelsize=tick_pt)


def _check_size(size: str) -> dict:
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, but got {size=}")
    return SIZES[size]


def _figure(h: pd.DataFrame, groups: list, select, titles: list[str], sz: dict,
            title: str | None) -> tuple[Figure, list]:
    """The grid: per group (bit-width / start) a column with the loss above the accuracy; all loss
    panels share y, as do all accuracy panels, and every panel shares x (epochs)."""
    n = max(len(groups), 1)
    cols = min(n, sz["max_cols"])
    pairs = math.ceil(n / cols)
    # rc_context: text/line defaults for the artists made here only, never the caller's globals
    with matplotlib.rc_context({"font.size": sz["font"], "axes.titlesize": sz["font"],
                                "axes.labelsize": sz["font"], "legend.fontsize": sz["font"],
                                "axes.linewidth": 0.6, "lines.linewidth": sz["line"]}):
        fig = Figure(figsize=(sz["width"], pairs * sz["pair_height"] + 0.35),
                     layout="constrained")
        fig.get_layout_engine().set(w_pad=2 / 72, h_pad=2 / 72, wspace=0.03, hspace=0.03)
        grid = fig.subplots(2 * pairs, cols, squeeze=False)
        loss_axes, acc_axes = [], []
        for k in range(pairs * cols):
            ax_loss, ax_acc = grid[2 * (k // cols), k % cols], grid[2 * (k // cols) + 1, k % cols]
            if k >= n:   # the last row pair is not full
                fig.delaxes(ax_loss), fig.delaxes(ax_acc)
                continue
            loss_axes.append(ax_loss), acc_axes.append(ax_acc)
        styles = ste_styles(h["ste"].unique())
        for k, (ax_loss, ax_acc) in enumerate(zip(loss_axes, acc_axes)):
            if k:
                ax_loss.sharey(loss_axes[0]), ax_acc.sharey(acc_axes[0])
                ax_loss.sharex(loss_axes[0]), ax_acc.sharex(loss_axes[0])
            else:
                ax_acc.sharex(ax_loss)
            _plot(ax_loss, ax_acc, select(groups[k]) if groups else h, styles, sz)
            if titles[k]:
                ax_loss.set_title(titles[k], pad=3)
            first, bottom = k % cols == 0, k + cols >= n   # nothing below it in its grid column
            ax_loss.set_ylabel(sz["loss"] if first else "")
            ax_acc.set_ylabel(sz["acc"] if first else "")
            ax_acc.set_xlabel("epoch" if bottom else "")
            for ax in (ax_loss, ax_acc):
                # explicit, so ticks made lazily at save time outside the rc_context match
                ax.tick_params(which="both", labelsize=sz["tick"], labelleft=first, width=0.6)
                ax.tick_params(which="major", length=3)
                ax.tick_params(which="minor", length=1.5)
                ax.grid(True, which="major", linewidth=0.4, alpha=0.4)
            ax_loss.tick_params(labelbottom=False)
        if loss_axes:
            loss_axes[0].set_yscale("log", nonpositive="mask")
        if title:
            fig.suptitle(title)
    return fig, list(zip(loss_axes, acc_axes))


def _finish(fig: Figure, pairs: list, sz: dict) -> None:
    """Ticks (from the final data ranges, so after everything is drawn) and the legend."""
    if not pairs:
        return
    ax_loss, ax_acc = pairs[0]   # shared axes share their tickers: one setting serves all
    ax_acc.yaxis.set_major_locator(MaxNLocator(nbins=4 if len(pairs) > 1 else 5))
    # epochs are whole numbers; few ticks so narrow panels stay legible
    ax_loss.xaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
    _log_ticks(ax_loss, sz["tick"])
    handles, labels = ax_loss.get_legend_handles_labels()
    if labels:   # long handles: the dash pattern must be visible beside the marker
        fig.legend(handles, labels, loc="outside upper center", frameon=False,
                   ncols=_legend_cols(labels, sz), fontsize=sz["font"],
                   handlelength=2.8, columnspacing=1.2, handletextpad=0.5, borderaxespad=0.2)


def _legend_cols(labels: list[str], sz: dict) -> int:
    """Most columns (up to the size's limit) whose estimated width fits the figure: a legend wider
    than the figure is clipped at the page edge. Entries fill columns as matplotlib's do: the
    first len % cols columns get one entry more."""
    em = sz["font"] / 72   # inches; a DejaVu Sans character is ~0.6 em wide, handle+gaps 4.5 em
    for cols in range(min(len(labels), sz["legend_cols"]), 1, -1):
        rows, large = divmod(len(labels), cols)
        sizes = [rows + 1] * large + [rows] * (cols - large)
        starts = np.cumsum([0] + sizes)
        width = sum(max(len(t) for t in labels[a:b]) * 0.6 * em + 4.5 * em
                    for a, b in zip(starts[:-1], starts[1:]))
        if width <= 0.97 * sz["width"]:
            return cols
    return 1


def _require(history: pd.DataFrame, cols) -> None:
    missing = [c for c in cols if c not in history.columns]
    if missing:
        raise ValueError(f"history is missing required columns {missing}")


def curves_figure(history: pd.DataFrame, *, size: str = "double",
                  title: str | None = None) -> Figure:
    """Paper Fig. 2: per bits value one column (training loss per epoch, log y, above validation
    accuracy %), one line per STE (mean over seeds) with a shaded min-max band when there is more
    than one seed. `size`: "single" (3.3 in wide) or "double" (7 in); no title unless given.

    Every axis holds one Line2D per STE in the frame (empty where a panel lacks that STE). A seed's
    diverged epochs (inf/NaN/|x| >= 1e300) drop out of the mean; all seeds diverged -> a gap."""
    sz = _check_size(size)
    _require(history, ["ste", "bits", "seed", "epoch", "train_loss", "val_acc"])
    h = _clean(history)
    bits = sorted(h["bits"].unique(), key=_bits_key)
    titles = [f"{_bits_str(b)}-bit" if _bits_key(b)[0] == 0 else str(b) for b in bits]
    fig, pairs = _figure(h, bits, lambda b: h[h["bits"] == b], titles, sz, title)
    _finish(fig, pairs, sz)
    return fig


def repulsion_figure(history: pd.DataFrame, *, probe_epochs: int | None = None,
                     size: str = "double", title: str | None = None) -> Figure:
    """Training continued from a minimum with each STE (epoch 0 = the starting point): one column
    per `start` (if that column exists), loss (log y) above val accuracy %, one line per STE.

    The end of the small-lr probe is a dashed vertical LineCollection (`ax.vlines`), not a Line2D,
    so `ax.get_lines()` holds exactly one line per STE; it does appear in the legend."""
    sz = _check_size(size)
    _require(history, ["ste", "epoch", "train_loss", "val_acc"])
    h = _clean(history)
    starts = sorted(h["start"].astype(str).unique()) if "start" in h else []
    titles = [f"from {s}" for s in starts] or [""]
    fig, pairs = _figure(h, starts, lambda s: h[h["start"].astype(str) == s], titles, sz, title)
    if probe_epochs is not None:
        for ax in (ax for pair in pairs for ax in pair):
            ax.vlines(probe_epochs, 0, 1, transform=ax.get_xaxis_transform(), colors="black",
                      linestyles="dotted", linewidth=0.8,
                      label=f"end of probe (epoch {probe_epochs})")
    _finish(fig, pairs, sz)
    return fig


def save_figure(fig: Figure, out_stem: str | Path, *, dpi: int = 300) -> list[Path]:
    """Write `<stem>.pdf` and `<stem>.png` at the figure's own size, close it, return the paths.

    TrueType (Type 42) fonts in PDF/PS, set for this save only: many venues' checkers reject
    matplotlib's default Type 3 fonts. PNG at 300 dpi, print resolution."""
    out_stem = Path(out_stem)
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    # not with_suffix: a stem may hold dots ("curves.v2")
    paths = [Path(f"{out_stem}.pdf"), Path(f"{out_stem}.png")]
    with matplotlib.rc_context({"pdf.fonttype": 42, "ps.fonttype": 42}):
        for p in paths:
            fig.savefig(p, dpi=dpi)
    if "matplotlib.pyplot" in sys.modules:   # our figures bypass pyplot; a caller's may not
        sys.modules["matplotlib.pyplot"].close(fig)
    return paths

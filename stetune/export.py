"""Paper-style exports: Table 1 (LaTeX / markdown / CSV) and Fig.-2-style curves (PDF + PNG).

DataFrames in, text or figures out; building the frames from MLflow is `stetune.analysis`'s job.
No MLflow/Ray imports here, so exporting stays cheap and testable on hand-made frames.

Number formats (one rule for the LaTeX, Markdown and CSV tables, so all three agree):
  - loss: one notation for the whole table, so a column reads uniformly. Fixed-point with as many
    decimals as the smallest loss mean needs for 2 significant digits ("0.0051", "0.1900"; at
    most 4 decimals); a smaller loss needs more, so then every loss is scientific with 2
    significant digits ("5.1e-3", "1.9e-1"). Its std: the same decimals ("0.0051 ± 0.0004"), or
    in scientific with 1 significant digit ("5.1e-3 ± 4e-4").
  - accuracy: percent with 2 decimals, std too ("99.24 ± 0.05").
  - "± std" is left out when the std is NaN (n < 2).
  - a cell without a finished replicate (n == 0, or no row) shows "–" (CSV: empty fields).
  - bold = the accuracy (never the loss) of the highest mean accuracy *as displayed* (2
    decimals), so every cell that reads as the row's best is bold (ties bold together); a row
    without any finished cell gets no bold.
  - replicate counts go into an "n" column: one number when all STEs of the row agree, else the
    counts per STE in column order ("3,3,2").
  - LaTeX and Markdown name the dataset and network on the first row of their group only; LaTeX
    separates the groups by \\midrule. CSV repeats them and holds plain numbers, rounded as
    displayed: per STE the columns "<STE> n", "<STE> loss", "<STE> loss std", "<STE> acc %",
    "<STE> acc std %".
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

# the figures live in stetune.figures (this module would pass 400 lines); re-exported here, where
# callers have always found them, with the STE names and orders the two share
from .figures import (_HUGE, STE_NAMES, _bits_key, _bits_str, _ste_order, curves_figure,
                      repulsion_figure, save_figure)

__all__ = ["STE_NAMES", "DATASET_NAMES", "MODEL_NAMES", "FORMATS", "REQUIRED_CELL_COLUMNS",
           "table1", "plain_frame", "curves_figure", "repulsion_figure", "save_figure"]

# Display names, defined once; unknown names pass through unchanged.
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
_MAX_DECIMALS = 4   # fixed-point losses beyond 4 decimals ("0.00012") read worse than "1.2e-4"
_CSV_STATS = ("n", "loss", "loss std", "acc %", "acc std %")


# ---------------------------------------------------------------- numbers
def _sig(x: float, digits: int) -> str:
    """`digits` significant digits, scientific without exponent padding ("5.1e-3", "1.9e-1")."""
    if x == 0:
        return "0"
    mant, exp = f"{x:.{digits - 1}e}".split("e")
    return f"{mant}e{int(exp)}"


def _finite(x) -> bool:
    return x is not None and not pd.isna(x) and math.isfinite(x) and abs(x) < _HUGE


def _shown(r) -> bool:
    """The cell has a finished replicate to show."""
    return r is not None and r["n"] > 0 and _finite(r["acc_mean"])


def _loss_decimals(recs) -> int | None:
    """Decimals for every loss of the table (None: scientific), see the module docstring."""
    losses = [abs(r["loss_mean"]) for r in recs if _shown(r) and _finite(r["loss_mean"])
              and r["loss_mean"] != 0]
    if not losses:
        return 2
    smallest = float(f"{min(losses):.1e}")   # rounded first: 0.0996 reads "0.10", 2 decimals
    need = max(0, 1 - math.floor(math.log10(smallest)))
    return need if need <= _MAX_DECIMALS else None


def _cell_parts(r, dec: int | None) -> tuple[str, str, str, str] | None:
    """(loss, loss std, acc %, acc std %) strings, '' for a missing std; None: no replicate."""
    if not _shown(r):
        return None
    num = (lambda x, digits: f"{x:.{dec}f}") if dec is not None else _sig
    loss = num(r["loss_mean"], 2) if _finite(r["loss_mean"]) else _DASH
    lstd = num(r["loss_std"], 1) if _finite(r["loss_std"]) and _finite(r["loss_mean"]) else ""
    astd = f"{100 * r['acc_std']:.2f}" if _finite(r["acc_std"]) else ""
    return loss, lstd, f"{100 * r['acc_mean']:.2f}", astd


def _join(parts, pm: str, dash: str, bold: tuple[str, str] = ("", ""), stack: bool = False) -> str:
    if parts is None:
        return dash
    loss, lstd, acc, astd = parts
    loss = f"{loss}{pm}{lstd}" if lstd else loss
    acc = bold[0] + (f"{acc}{pm}{astd}" if astd else acc) + bold[1]   # the accuracy only
    if stack:   # LaTeX: two lines in a kernel-only nested tabular (see table1)
        text = rf"\begin{{tabular}}{{@{{}}c@{{}}}}{loss} /\\ {acc}\end{{tabular}}"
    else:
        text = f"{loss} / {acc}"
    return text.replace(_DASH, dash)


def _latex_escape(s: str) -> str:
    out = "".join({"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                   "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                   "^": r"\textasciicircum{}"}.get(c, c) for c in str(s))
    return out.replace("±", r"$\pm$").replace(_DASH, "--")


def _number(text: str) -> float:
    return float(text) if text and text != _DASH else math.nan


# ---------------------------------------------------------------- Table 1
def _rank(names: dict, key) -> tuple:
    """The paper's order (the order of `names`: MNIST before CIFAR-10), unknown names after, A-Z."""
    order = list(names)
    return (order.index(key), "") if key in order else (len(order), str(key))


def _layout(cells: pd.DataFrame) -> dict:
    """Rows in the paper's order: descriptors, (dataset, model) group, n per STE, cell parts, and
    which cells hold the row's best displayed accuracy."""
    stes = _ste_order(cells["ste"].unique())
    keys = sorted({(d, m, b) for d, m, b in zip(cells["dataset"], cells["model"], cells["bits"])},
                  key=lambda k: (_rank(DATASET_NAMES, k[0]), _rank(MODEL_NAMES, k[1]),
                                 _bits_key(k[2])))
    recs = cells.to_dict("records")
    by_key = {(r["dataset"], r["model"], r["bits"], r["ste"]): r for r in recs}
    dec = _loss_decimals(recs)
    out = {"header": [STE_NAMES.get(s, s) for s in stes], "rows": [], "groups": [], "ns": [],
           "parts": [], "best": []}
    for d, m, b in keys:
        row = [by_key.get((d, m, b, s)) for s in stes]
        ns = [int(r["n"]) if r is not None and pd.notna(r["n"]) else 0 for r in row]
        out["rows"].append([DATASET_NAMES.get(d, str(d)), MODEL_NAMES.get(m, str(m)), _bits_str(b),
                            str(ns[0]) if len(set(ns)) == 1 else ",".join(map(str, ns))])
        out["groups"].append((d, m))
        out["ns"].append(ns)
        parts = [_cell_parts(r, dec) for r in row]
        out["parts"].append(parts)
        # accuracy as displayed (rounded), so display-level ties are all bold
        acc = [float(p[2]) if p else -math.inf for p in parts]
        out["best"].append([p is not None and a == max(acc) for p, a in zip(parts, acc)])
    return out


def _first_of_group(lay: dict) -> list[bool]:
    return [i == 0 or g != lay["groups"][i - 1] for i, g in enumerate(lay["groups"])]


def _csv(lay: dict) -> str:
    columns = ["data", "network", "bits"] + [f"{h} {k}" for h in lay["header"] for k in _CSV_STATS]
    records = []
    for row, ns, parts in zip(lay["rows"], lay["ns"], lay["parts"]):
        rec = row[:3]
        for n, p in zip(ns, parts):
            loss, lstd, acc, astd = p or ("", "", "", "")
            rec += [n, _number(loss), _number(lstd), _number(acc), _number(astd)]
        records.append(rec)
    return pd.DataFrame(records, columns=columns).to_csv(index=False)


def _markdown(lay: dict, caption: str) -> str:
    rows = [r if first else ["", "", *r[2:]] for r, first in zip(lay["rows"], _first_of_group(lay))]
    body = [[_join(p, " ± ", _DASH, ("**", "**") if best else ("", "")) for p, best in zip(ps, bs)]
            for ps, bs in zip(lay["parts"], lay["best"])]
    table = pd.DataFrame([r + b for r, b in zip(rows, body)], columns=_ROW_COLUMNS + lay["header"])
    align = ["left", "left", "right", "right"] + ["center"] * len(lay["header"])
    md = table.to_markdown(index=False, tablefmt="pipe", colalign=align)
    return f"{md}\n\nTable: {caption}\n" if caption else md + "\n"


def _latex(lay: dict, caption: str, label: str | None) -> str:
    # With "± std" a one-line cell is ~140pt wide: three STEs overflow an article's \textwidth by
    # ~180pt, so LaTeX cells stack loss over accuracy then; std-free tables keep the paper's line.
    stack = any(p and (p[1] or p[3]) for row in lay["parts"] for p in row)
    lines = [r"\begin{table}", r"\centering"]
    lines += [rf"\caption{{{_latex_escape(caption)}}}"] if caption else []
    lines += [rf"\label{{{label}}}"] if label else []
    # \small + narrower gaps: kernel-only commands, booktabs stays the only package
    lines += [r"\small", r"\setlength{\tabcolsep}{3pt}",
              rf"\begin{{tabular}}{{llrr{'c' * len(lay['header'])}}}", r"\toprule",
              " & ".join(_latex_escape(c) for c in _ROW_COLUMNS + lay["header"]) + r" \\",
              r"\midrule"]
    for i, (row, first, parts, best) in enumerate(zip(lay["rows"], _first_of_group(lay),
                                                      lay["parts"], lay["best"])):
        if first and i:
            lines.append(r"\midrule")
        desc = [_latex_escape(c) for c in (row if first else ["", "", *row[2:]])]
        # thin spaces around ±: word spaces push three STE columns with std past \textwidth
        body = [_join(p, r"\,$\pm$\,", "--", (r"\textbf{", "}") if b else ("", ""), stack)
                for p, b in zip(parts, best)]
        lines.append(" & ".join(desc + body) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def table1(cells: pd.DataFrame, fmt: str, *, caption: str | None = None,
           label: str | None = None) -> str:
    """Render the paper's Table 1 from one row per (dataset, model, bits, ste) cell.

    `caption` is plain text (escaped for LaTeX, "±" allowed); None -> a neutral default sentence
    that also explains the n column. `label` is used verbatim in LaTeX's \\label{} and ignored
    elsewhere. Markdown gets the caption as a pandoc-style "Table: ..." line; CSV gets neither.
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
    lay = _layout(cells)
    if fmt == "csv":
        return _csv(lay)
    if fmt == "markdown":
        return _markdown(lay, caption)
    return _latex(lay, caption, label)


# ---------------------------------------------------------------- CSV of any frame
def _plain(v):
    """One CSV field: numpy scalars as Python numbers, sequences ';'-joined, not reprs."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (list, tuple, set, np.ndarray)):
        return ";".join(str(_plain(x)) for x in v)
    if isinstance(v, dict):
        return ";".join(f"{k}={_plain(x)}" for k, x in v.items())
    return v


def plain_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy fit for CSV (e.g. cell_table's): a column of dicts (the tuned params) becomes one
    column per key, in place (named `<column>.<key>` only where the key is taken already); lists
    (run ids) become ';'-joined strings; numpy scalars plain numbers."""
    out: dict[str, list] = {}
    for col in frame.columns:
        values = frame[col].tolist()
        # a dict column: dicts, and nothing else but gaps (None / NaN)
        gap = [v is None or (isinstance(v, float) and math.isnan(v)) for v in values]
        if any(isinstance(v, dict) for v in values) and \
                all(isinstance(v, dict) or g for v, g in zip(values, gap)):
            keys = dict.fromkeys(k for v in values if isinstance(v, dict) for k in v)
            for k in keys:
                name = f"{col}.{k}" if k in frame.columns or k in out else str(k)
                out[name] = [_plain(v.get(k)) if isinstance(v, dict) else None for v in values]
        else:
            out[col] = [_plain(v) for v in values]
    return pd.DataFrame(out, index=frame.index)

"""stetune.export / stetune.figures on hand-made frames: Table 1 formatting edge cases, LaTeX
compiles (and fits the page), plain CSVs, figures sized and styled for a paper."""

from __future__ import annotations

import io
import math
import re
import shutil
import subprocess
from types import SimpleNamespace

import matplotlib
import numpy as np
import pandas as pd
import pytest

from stetune.export import (DATASET_NAMES, MODEL_NAMES, STE_NAMES, curves_figure, plain_frame,
                            repulsion_figure, save_figure, table1)
from stetune.figures import ste_styles

NAN = float("nan")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def cell(dataset="mnist", model="lenet5", bits=2, ste="relu", n=3, acc=0.99, acc_std=0.001,
         loss=5e-3, loss_std=4e-4, **extra):
    return dict(dataset=dataset, model=model, bits=bits, ste=ste, n=n, acc_mean=acc,
                acc_std=acc_std, loss_mean=loss, loss_std=loss_std, **extra)


@pytest.fixture
def paper_cells():
    """The paper's Table 1 (n=1, no std) plus a 3-seed row with std."""
    return pd.DataFrame([
        cell(ste="identity", n=1, acc=0.9849, acc_std=NAN, loss=2.6e-2, loss_std=NAN),
        cell(ste="relu", n=1, acc=0.9924, acc_std=NAN, loss=5.1e-3, loss_std=NAN),
        cell(ste="clipped_relu", n=1, acc=0.9923, acc_std=NAN, loss=5.4e-3, loss_std=NAN),
        cell("cifar10", "vgg11", 4, "identity", 1, 0.9019, NAN, 3.1e-2, NAN),
        cell("cifar10", "vgg11", 4, "relu", 1, 0.9201, NAN, 1.5e-3, NAN),
        cell("cifar10", "vgg11", 4, "clipped_relu", 1, 0.9208, NAN, 1.3e-3, NAN),
        cell("mnist", "lenet5", 4, "clipped_relu", 3, 0.9931, 0.0005, 5.1e-3, 4e-4, run_ids="a,b,c"),
        cell("mnist", "lenet5", 4, "relu", 3, 0.9901, 0.0012, 0.19, 0.02),
        cell("mnist", "lenet5", 4, "identity", 3, 0.9801, 0.0012, 0.3, 0.02),
    ])


def read_md(md: str) -> pd.DataFrame:
    """The markdown pipe table back into a frame (caption line dropped)."""
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    return pd.DataFrame(rows[2:], columns=rows[0])


# ---------------------------------------------------------------- Table 1
def test_layout_order_names_and_cell_text(paper_cells):
    df = pd.read_csv(io.StringIO(table1(paper_cells, "csv")), dtype=str)
    assert list(df.columns)[:3] == ["data", "network", "bits"]
    assert [c for c in df.columns if c.endswith(" loss")] == [
        "identity loss", "ReLU loss", "clipped ReLU loss"]
    # the paper's order: dataset (MNIST before CIFAR-10), then model, then bits numerically;
    # CSV repeats dataset and network on every row
    assert df[["data", "network", "bits"]].values.tolist() == [
        ["MNIST", "LeNet-5", "2"], ["MNIST", "LeNet-5", "4"], ["CIFAR-10", "VGG-11", "4"]]
    md = read_md(table1(paper_cells, "markdown"))
    # smallest loss 1.3e-3 -> 4 decimals for every loss of the table; no std at n=1
    assert md.loc[0, "identity"] == "0.0260 / 98.49"
    assert md.loc[2, "clipped ReLU"] == "0.0013 / **92.08**"
    assert md.loc[1, "clipped ReLU"] == "0.0051 ± 0.0004 / **99.31 ± 0.05**"
    assert md.loc[1, "ReLU"] == "0.1900 ± 0.0200 / 99.01 ± 0.12"   # std in the mean's decimals
    assert md["n"].tolist() == ["1", "3", "1"]


def test_csv_holds_plain_numbers_that_match_the_latex(paper_cells):
    text = table1(paper_cells, "csv")
    df = pd.read_csv(io.StringIO(text))
    assert df.shape == (3, 3 + 5 * 3)
    assert not re.search(r"\*\*|textbf|±|/|np\.|\{", text.split("\n", 1)[1])
    stats = df.drop(columns=["data", "network"])
    assert all(pd.api.types.is_numeric_dtype(t) for t in stats.dtypes), stats.dtypes
    assert df["clipped ReLU loss std"].tolist()[1] == 0.0004 and df["ReLU n"].tolist() == [1, 3, 1]
    assert math.isnan(df.loc[0, "ReLU loss std"])                # n=1: empty field
    # the same rounded numbers as the LaTeX shows, cell by cell
    tex_rows = [r for r in table1(paper_cells, "latex").splitlines() if r.count("&") == 6][1:]
    for i, row in enumerate(tex_rows):
        for ste, cell_tex in zip(["identity", "ReLU", "clipped ReLU"], row.split("&")[4:]):
            nums = [float(x) for x in re.findall(r"\d+\.\d+(?:e-?\d+)?", cell_tex)]
            loss, acc = nums[::2] if "pm" in cell_tex else nums   # (mean, std) pairs with std
            assert (df.loc[i, f"{ste} loss"], df.loc[i, f"{ste} acc %"]) == (loss, acc)


def test_markdown_bolds_best_and_shows_n(paper_cells):
    md = table1(paper_cells, "markdown")
    df = read_md(md)
    assert "n" in df.columns
    assert df.loc[2, "clipped ReLU"] == "0.0013 / **92.08**"   # the accuracy bold, not the loss
    assert df.loc[0, "ReLU"] == "0.0051 / **99.24**"
    assert df.loc[0, "clipped ReLU"] == "0.0054 / 99.23"      # 99.23 < 99.24: not bold
    assert md.count("**") == 2 * 3                            # one best per row
    assert "Table: " in md                                   # default caption explains n


def test_ties_all_bold_and_empty_rows_not_bold():
    cells = pd.DataFrame([
        cell(ste="identity", acc=0.95), cell(ste="relu", acc=0.99), cell(ste="clipped_relu", acc=0.99),
        cell(bits=4, ste="relu", n=0, acc=NAN, acc_std=NAN, loss=NAN, loss_std=NAN),
        cell(bits=4, ste="identity", n=0, acc=NAN, acc_std=NAN, loss=NAN, loss_std=NAN),
    ])
    df = read_md(table1(cells, "markdown"))
    assert df.loc[0, "ReLU"].endswith("**") and df.loc[0, "clipped ReLU"].endswith("**")
    assert "**" not in df.loc[0, "identity"]
    assert df.loc[1, ["identity", "ReLU", "clipped ReLU"]].tolist() == ["–"] * 3  # absent cell too
    assert df.loc[1, "n"] == "0"
    tex = table1(cells, "latex")
    assert tex.count(r"\textbf") == 2


def test_nan_std_mixed_n_and_unknown_names():
    cells = pd.DataFrame([
        cell("svhn", "mlp", 3, "relu", n=2, acc=0.9, acc_std=0.01, loss=0.2, loss_std=NAN),
        cell("svhn", "mlp", 3, "my_ste", n=1, acc=0.8, acc_std=NAN, loss=1e-4, loss_std=NAN),
        cell("svhn", "mlp", 3, "a_ste", n=1, acc=0.7, acc_std=NAN, loss=1e-4, loss_std=NAN),
    ])
    df = read_md(table1(cells, "markdown"))
    # built-ins first in paper order, then the others alphabetically; only STEs present
    assert list(df.columns)[4:] == ["ReLU", "a_ste", "my_ste"]
    assert df.loc[0, ["data", "network", "bits", "n"]].tolist() == ["svhn", "mlp", "3", "2,1,1"]
    # 1e-4 would need 5 decimals (> 4): every loss of the table goes scientific
    assert df.loc[0, "ReLU"] == "2.0e-1 / **90.00 ± 1.00**"
    assert df.loc[0, "my_ste"] == "1.0e-4 / 80.00"
    csv = pd.read_csv(io.StringIO(table1(cells, "csv")))
    assert csv[["ReLU n", "a_ste n", "my_ste n"]].values.tolist() == [[2, 1, 1]]
    assert csv.loc[0, "my_ste loss"] == 1e-4 and csv.loc[0, "ReLU acc std %"] == 1.0


def test_latex_escapes_and_structure(paper_cells):
    weird = pd.concat([paper_cells, pd.DataFrame([cell("my_data%", "net&1", 2, "clipped_relu")])])
    tex = table1(weird, "latex", caption="Accuracy in % ± std_dev", label="tab:stes")
    for token in (r"\toprule", r"\midrule", r"\bottomrule", r"\label{tab:stes}",
                  r"\caption{Accuracy in \% $\pm$ std\_dev}", r"my\_data\%", r"net\&1", r"$\pm$"):
        assert token in tex, token
    assert "±" not in tex and "–" not in tex


def test_bad_fmt_and_missing_columns(paper_cells):
    with pytest.raises(ValueError, match=r"fmt must be one of \['csv', 'latex', 'markdown'\], "
                                         r"but got fmt='x'"):
        table1(paper_cells, "x")
    with pytest.raises(ValueError, match="acc_std.*loss_mean|loss_mean.*acc_std"):
        table1(paper_cells.drop(columns=["acc_std", "loss_mean"]), "csv")
    with pytest.raises(ValueError, match="more than one row"):
        table1(pd.concat([paper_cells, paper_cells.iloc[:1]]), "csv")


@pytest.mark.skipif(not (shutil.which("pdflatex") or shutil.which("lualatex")),
                    reason="no TeX engine on PATH (CI installs texlive)")
@pytest.mark.parametrize("with_std", [False, True])
def test_latex_compiles_with_booktabs(paper_cells, tmp_path, with_std):
    cells = paper_cells if with_std else paper_cells[paper_cells["n"] == 1]
    weird = pd.concat([cells, pd.DataFrame([cell("x_y", "m#1", 2, "odd_ste^2", n=0, acc=NAN)])])
    (tmp_path / "table.tex").write_text(table1(weird, "latex", caption="50% ± 1", label="tab:1"))
    (tmp_path / "doc.tex").write_text("\\documentclass{article}\n\\usepackage{booktabs}\n"
                                      "\\begin{document}\n\\input{table}\n\\end{document}\n")
    engine = shutil.which("pdflatex") or shutil.which("lualatex")
    r = subprocess.run([engine, "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 1000


def tex_rows(tex: str) -> list[list[str]]:
    """The body rows of a table1 LaTeX (header dropped), split into cells."""
    rows = [ln.removesuffix(r" \\").split(" & ") for ln in tex.splitlines() if " & " in ln]
    return rows[1:]


def test_latex_uniform_decimals_per_column_and_only_accuracy_bold(paper_cells):
    tex = table1(paper_cells, "latex")
    rows = tex_rows(tex)
    number = r"\d+\.\d+(?:e-?\d+)?"
    for j in range(4, 7):
        losses = [re.findall(number, r[j])[0] for r in rows]
        accs = [re.search(r"/(?:\\\\)? (?:\\textbf\{)?(" + number + ")", r[j])[1] for r in rows]
        # smallest loss 1.3e-3 keeps 2 significant digits: 4 decimals, for every loss
        assert {len(x.split(".")[1]) for x in losses} == {4} and "e" not in "".join(losses), losses
        assert {len(x.split(".")[1]) for x in accs} == {2}, accs
    # the loss never bold; bold holds exactly one accuracy (with its std), one per row here
    bold = re.findall(r"\\textbf\{([^}]*)\}", tex)
    assert len(bold) == 3
    assert all(re.fullmatch(r"\d+\.\d\d(\\,\$\\pm\$\\,\d+\.\d\d)?", b) for b in bold), bold
    assert all("textbf" not in r[j].split("/")[0] for r in rows for j in range(4, 7))
    # a table whose smallest loss needs > 4 decimals: every loss scientific, none fixed
    tiny = paper_cells.assign(loss_mean=paper_cells["loss_mean"] / 100,
                              loss_std=paper_cells["loss_std"] / 100)
    losses = [re.findall(number, r[j])[0] for r in tex_rows(table1(tiny, "latex"))
              for j in range(4, 7)]
    assert all(re.fullmatch(r"\d\.\de-\d+", x) for x in losses), losses
    # a table of larger losses: 3 decimals where the smallest (0.086) needs them
    big = paper_cells.assign(loss_mean=paper_cells["loss_mean"] * 66)
    assert [r[4].split(" /")[0] for r in read_md(table1(big, "markdown")).values.tolist()] \
        == ["1.716", "19.800 ± 0.020", "2.046"]


def test_dataset_and_network_once_per_group(paper_cells):
    tex = table1(paper_cells, "latex")
    rows = tex_rows(tex)
    assert [r[:3] for r in rows] == [["MNIST", "LeNet-5", "2"], ["", "", "4"],
                                     ["CIFAR-10", "VGG-11", "4"]]
    lines = tex.splitlines()
    # \midrule under the header and between the groups, nowhere else
    assert [lines[i + 1].split(" & ")[0] for i, ln in enumerate(lines) if ln == r"\midrule"] \
        == ["MNIST", "CIFAR-10"]
    md = read_md(table1(paper_cells, "markdown"))
    assert md["data"].tolist() == ["MNIST", "", "CIFAR-10"]
    assert md["network"].tolist() == ["LeNet-5", "", "VGG-11"]


def test_default_captions_are_neutral(paper_cells):
    from stetune.report import caption   # here: it imports MLflow, slow for the other tests

    text = caption(SimpleNamespace(name="quickstart", spec={}))   # report's caption
    assert "quickstart" not in text and "Sweep" not in text and "mean ± std" in text
    tex = table1(paper_cells, "latex", caption=text, label="tab:quickstart")
    assert re.search(r"\\caption\{Training loss / validation accuracy \(\\%\)[^}]*bold\.\}", tex)
    assert "Sweep" not in table1(paper_cells, "latex")


def test_plain_frame_flattens_params_and_lists_for_csv():
    cells = pd.DataFrame([
        dict(cell="relu/2", n=np.int64(2), run_ids=["a", "b"], acc_mean=np.float64(0.5),
             params={"lr": np.float64(0.0643), "batch_size": np.int64(64), "n": 1.0}),
        dict(cell="relu/4", n=np.int64(1), run_ids=["c"], acc_mean=np.nan,
             params={"lr": np.float64(1e-3), "opt": "sgd"}),
    ])
    text = plain_frame(cells).to_csv(index=False)
    assert not re.search(r"np\.|float64|\{|\[|'", text), text
    back = pd.read_csv(io.StringIO(text))
    # one column per param, where the dict was; a name taken already gets the column's prefix
    assert list(back.columns) == ["cell", "n", "run_ids", "acc_mean", "lr", "batch_size",
                                  "params.n", "opt"]
    assert back["lr"].dtype == float and back["lr"].tolist() == [0.0643, 1e-3]
    assert back["run_ids"].tolist() == ["a;b", "c"] and back["n"].tolist() == [2, 1]
    assert math.isnan(back.loc[1, "batch_size"]) and back.loc[1, "opt"] == "sgd"


@pytest.mark.skipif(not shutil.which("pdflatex"), reason="no pdflatex (CI installs texlive)")
def test_latex_table_with_std_fits_the_text_width(paper_cells, tmp_path):
    # three STE columns with "± std" are the widest table1 makes; it must not stick out
    (tmp_path / "table.tex").write_text(table1(paper_cells, "latex"))
    (tmp_path / "doc.tex").write_text("\\documentclass{article}\n\\usepackage{booktabs}\n"
                                      "\\begin{document}\n\\input{table}\n\\end{document}\n")
    r = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:]
    assert "Overfull \\hbox" not in (tmp_path / "doc.log").read_text()


def test_display_name_maps():
    assert STE_NAMES["clipped_relu"] == "clipped ReLU" and STE_NAMES["relu"] == "ReLU"
    assert DATASET_NAMES["cifar10"] == "CIFAR-10" and MODEL_NAMES["vgg11"] == "VGG-11"


# ---------------------------------------------------------------- figures
STES = ["identity", "relu", "clipped_relu"]


def labelled(ax):
    return [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]


@pytest.fixture
def history():
    rng = np.random.default_rng(0)
    rows = []
    for bits in (2, 4):
        for k, ste in enumerate(STES):
            for seed in range(3):
                for ep in range(1, 11):
                    loss = 2 * math.exp(-(k + 1) * 0.3 * ep) * (1 + 0.1 * rng.random())
                    if ste == "identity" and seed == 0 and ep >= 6:   # diverged run
                        loss = [math.inf, 1.797e308, -1.797e308, NAN][ep % 4]
                    rows.append(dict(ste=ste, bits=bits, seed=seed, epoch=ep, train_loss=loss,
                                     val_acc=0.99 - 0.5 * math.exp(-ep), run_id=f"r{seed}"))
    return pd.DataFrame(rows)


def check_saved(fig, stem):
    paths = save_figure(fig, stem)
    assert [p.suffix for p in paths] == [".pdf", ".png"]
    assert paths[0].read_bytes()[:5] == b"%PDF-"
    png = paths[1].read_bytes()
    assert png[:8] == PNG_MAGIC and len(png) > 5000
    return paths


def test_curves_figure(history, tmp_path):
    fig = curves_figure(history, title="LeNet-5 on MNIST")
    axes = fig.get_axes()
    assert len(axes) == 4                                  # 2 bits values x (loss, accuracy)
    for ax in axes:
        assert len(ax.get_lines()) == len(STES) == len(labelled(ax))
        assert ax.get_ylim()[1] < 1e10                     # no spike to 1.8e308
    assert axes[0].get_yscale() == "log"
    assert [ln.get_label() for ln in axes[0].get_lines()] == ["identity", "ReLU", "clipped ReLU"]
    # one colour per STE across panels
    assert len({tuple(ln.get_color() for ln in ax.get_lines()) for ax in axes}) == 1
    assert len(axes[0].collections) == len(STES)          # min-max bands (3 seeds)
    check_saved(fig, tmp_path / "sub" / "curves.v1")       # dots in the stem survive
    assert (tmp_path / "sub" / "curves.v1.png").exists()


def test_curves_figure_single_seed_no_band(history):
    fig = curves_figure(history[(history["seed"] == 1) & (history["bits"] == 2)].drop(columns="seed")
                        .assign(seed=1))
    (ax_loss, ax_acc) = fig.get_axes()
    assert len(ax_loss.get_lines()) == 3 and not ax_loss.collections


def test_repulsion_figure(tmp_path):
    rows = [dict(start=start, ste=ste, epoch=ep, train_loss=1e-3 * (1 + k * ep) if ep != 7 else math.inf,
                 val_acc=0.92 - 0.01 * k * ep)
            for start in ("clipped_relu/4", "relu/4") for k, ste in enumerate(STES) for ep in range(0, 16)]
    fig = repulsion_figure(pd.DataFrame(rows), probe_epochs=5, title="repulsion")
    axes = fig.get_axes()
    assert len(axes) == 4                                  # one row per start
    for ax in axes:
        assert len(ax.get_lines()) == len(STES) == len(labelled(ax))   # probe marker is no Line2D
        assert ax.get_ylim()[1] < 1e10
        assert any(list(c.get_segments()[0][:, 0]) == [5, 5] for c in ax.collections
                   if hasattr(c, "get_segments"))
    check_saved(fig, tmp_path / "repulsion")
    # without start column / probe marker: one row
    fig = repulsion_figure(pd.DataFrame(rows).query("start == 'relu/4'").drop(columns="start"))
    assert len(fig.get_axes()) == 2 and not fig.get_axes()[0].collections


def test_figures_reject_missing_columns(history):
    with pytest.raises(ValueError, match="val_acc"):
        curves_figure(history.drop(columns="val_acc"))
    with pytest.raises(ValueError, match="epoch"):
        repulsion_figure(history.drop(columns="epoch"))


def test_empty_and_float_bits():
    empty = pd.DataFrame(columns=["dataset", "model", "bits", "ste", "n", "acc_mean", "acc_std",
                                  "loss_mean", "loss_std"])
    assert table1(empty, "csv").strip() == "data,network,bits"
    assert r"\bottomrule" in table1(empty, "latex")
    df = pd.read_csv(io.StringIO(table1(pd.DataFrame([cell(bits=2.0, n=3.0)]), "csv")), dtype=str)
    assert df.loc[0, ["bits", "ReLU n"]].tolist() == ["2", "3"]


def test_curves_figure_ste_missing_in_a_panel_and_all_diverged():
    rows = [dict(ste="identity", bits=2, seed=0, epoch=e, train_loss=math.inf, val_acc=0.1)
            for e in range(1, 4)]
    rows += [dict(ste="relu", bits=4, seed=s, epoch=e, train_loss=0.5 / e, val_acc=0.5)
             for e in range(1, 4) for s in range(2)]
    for ax in curves_figure(pd.DataFrame(rows)).get_axes():
        assert len(ax.get_lines()) == 2 and ax.get_ylim()[1] < 1e10


# ---------------------------------------------------------------- paper-grade figures
def repulsion_rows():
    return pd.DataFrame([dict(start=start, ste=ste, epoch=ep, train_loss=1e-3 * (1 + k * ep),
                              val_acc=0.92 - 0.01 * k * ep)
                         for start in ("clipped_relu/4", "relu/4") for k, ste in enumerate(STES)
                         for ep in range(0, 16)])


def test_pdf_fonts_are_truetype_not_type3(history, tmp_path):
    before = (matplotlib.rcParams["pdf.fonttype"], matplotlib.rcParams["ps.fonttype"])
    for name, fig in (("curves", curves_figure(history, size="single")),
                      ("repulsion", repulsion_figure(repulsion_rows(), probe_epochs=5))):
        pdf = save_figure(fig, tmp_path / name)[0].read_bytes()
        assert b"/Subtype /Type3" not in pdf, name
        assert b"/CIDFontType2" in pdf or b"/Subtype /TrueType" in pdf, name
    # set for the save only: the caller's own figures keep their settings
    assert (matplotlib.rcParams["pdf.fonttype"], matplotlib.rcParams["ps.fonttype"]) == before


def test_each_ste_has_its_own_marker_and_line_style(history):
    extra = history[history["ste"] == "identity"]
    h = pd.concat([history, extra.assign(ste="my_ste"), extra.assign(ste="a_ste")])
    fig = curves_figure(h)
    looks = [[(ln.get_label(), ln.get_marker(), ln.get_linestyle(), ln.get_color())
              for ln in ax.get_lines()] for ax in fig.get_axes()]
    assert all(panel == looks[0] for panel in looks)               # the same in every panel
    pairs = [(m, ls) for _, m, ls, _ in looks[0]]
    assert len(set(pairs)) == len(pairs) == 5 and "None" not in {m for m, _ in pairs}
    # the built-ins' look is fixed, whichever STEs a figure holds
    alone = curves_figure(history[history["ste"] == "clipped_relu"]).get_axes()[0].get_lines()[0]
    assert (alone.get_marker(), alone.get_linestyle(), alone.get_color()) == looks[0][2][1:]
    assert {lbl: (m, ls) for lbl, m, ls, _ in looks[0][:3]} == {
        "identity": ("o", "-"), "ReLU": ("s", "--"), "clipped ReLU": ("^", "-.")}
    # others by name order, whatever order they come in; 32 of them still all differ
    names = [f"ste{i:02d}" for i in range(32)]
    assert ste_styles(names[::-1]) == ste_styles(names)
    assert len({(s["marker"], s["linestyle"]) for s in ste_styles([*names, *STES]).values()}) == 35


def test_panels_of_a_metric_share_their_y_axis(history):
    for fig in (curves_figure(history), repulsion_figure(repulsion_rows(), probe_epochs=5)):
        loss = [ax for ax in fig.get_axes() if ax.get_yscale() == "log"]
        acc = [ax for ax in fig.get_axes() if ax.get_yscale() == "linear"]
        assert len(loss) == len(acc) == 2
        for a, b in (loss, acc):
            assert a.get_shared_y_axes().joined(a, b) and a.get_ylim() == b.get_ylim()
        assert not loss[0].get_shared_y_axes().joined(loss[0], acc[0])


@pytest.mark.parametrize("size, width", [("single", 3.3), ("double", 7.0)])
def test_figures_are_one_or_two_columns_wide_with_print_size_text(history, tmp_path, size, width):
    for name, fig in (("curves", curves_figure(history, size=size)),
                      ("repulsion", repulsion_figure(repulsion_rows(), probe_epochs=5, size=size))):
        assert fig.get_size_inches()[0] == pytest.approx(width)
        pdf = save_figure(fig, tmp_path / name)[0].read_bytes()
        # saved at its own size (no tight bbox), so \includegraphics needs no scaling
        box = re.search(rb"/MediaBox \[ *0 0 ([\d.]+) ([\d.]+) *\]", pdf)
        assert float(box[1]) == pytest.approx(72 * width) and 72 * 1.5 < float(box[2]) < 72 * 5
        texts = [t for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text()]
        assert {t.get_fontsize() for t in texts} == {8.0 if size == "single" else 9.0}
    with pytest.raises(ValueError, match=r"size must be one of \['double', 'single'\], "
                                         r"but got size='a4'"):
        curves_figure(history, size="a4")


def test_no_title_unless_asked(history):
    assert curves_figure(history)._suptitle is None
    assert repulsion_figure(repulsion_rows())._suptitle is None
    assert curves_figure(history, title="LeNet-5")._suptitle.get_text() == "LeNet-5"


def _loss_labels(fig, tmp_path) -> list[str]:
    save_figure(fig, tmp_path / "f")   # draws: ticks exist
    ax = fig.get_axes()[0]
    lo, hi = ax.get_ylim()
    assert not any(t.get_text() for t in ax.yaxis.get_minorticklabels())
    return [t.label1.get_text() for t in ax.yaxis.get_major_ticks() if lo <= t.get_loc() <= hi]


@pytest.mark.parametrize("low, high, expect", [
    (2.5e-4, 2.0, ["0.001", "0.01", "0.1", "1"]),                # decades, plain numbers
    (1e-6, 1.0, ["$10^{-6}$", "$10^{-4}$", "$10^{-2}$", "$10^{0}$"]),   # powers for all
    (0.09, 0.9, ["0.1", "0.2", "0.5", "1"]),                      # one decade: 1-2-5
    (0.13, 0.31, ["0.2", "0.3"]),                                 # narrow: even steps
])
def test_log_axis_has_few_clean_labels(tmp_path, low, high, expect):
    rows = [dict(ste=ste, bits=2, seed=0, epoch=ep, train_loss=low * (high / low) ** ((9 - ep) / 9),
                 val_acc=0.9) for ste in STES for ep in range(10)]
    labels = _loss_labels(curves_figure(pd.DataFrame(rows), size="single"), tmp_path)
    assert labels == expect

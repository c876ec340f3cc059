"""stetune.export on hand-made frames: Table 1 formatting edge cases, LaTeX compiles, figures."""

from __future__ import annotations

import io
import math
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from stetune.export import (DATASET_NAMES, MODEL_NAMES, STE_NAMES, curves_figure, repulsion_figure,
                            save_figure, table1)

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
    assert list(df.columns) == ["data", "network", "bits", "n", "identity", "ReLU", "clipped ReLU"]
    # the paper's order: dataset (MNIST before CIFAR-10), then model, then bits numerically
    assert df[["data", "network", "bits"]].values.tolist() == [
        ["MNIST", "LeNet-5", "2"], ["MNIST", "LeNet-5", "4"], ["CIFAR-10", "VGG-11", "4"]]
    assert df.loc[0, "identity"] == "2.6e-2 / 98.49"          # paper style, no std at n=1
    assert df.loc[2, "clipped ReLU"] == "1.3e-3 / 92.08"
    assert df.loc[1, "clipped ReLU"] == "5.1e-3 ± 4e-4 / 99.31 ± 0.05"
    assert df.loc[1, "ReLU"] == "0.19 ± 0.02 / 99.01 ± 0.12"   # std in the mean's notation
    assert df["n"].tolist() == ["1", "3", "1"]


def test_csv_round_trips_without_markup(paper_cells):
    df = pd.read_csv(io.StringIO(table1(paper_cells, "csv")))
    assert df.shape == (3, 7)
    assert not df.astype(str).apply(lambda c: c.str.contains(r"\*\*|textbf", regex=True)).any().any()


def test_markdown_bolds_best_and_shows_n(paper_cells):
    md = table1(paper_cells, "markdown")
    df = read_md(md)
    assert "n" in df.columns
    assert df.loc[2, "clipped ReLU"] == "**1.3e-3 / 92.08**"
    assert df.loc[0, "ReLU"] == "**5.1e-3 / 99.24**"
    assert df.loc[0, "clipped ReLU"] == "5.4e-3 / 99.23"      # 99.23 < 99.24: not bold
    assert md.count("**") == 2 * 3                            # one best per row
    assert "Table: " in md                                   # default caption explains n


def test_ties_all_bold_and_empty_rows_not_bold():
    cells = pd.DataFrame([
        cell(ste="identity", acc=0.95), cell(ste="relu", acc=0.99), cell(ste="clipped_relu", acc=0.99),
        cell(bits=4, ste="relu", n=0, acc=NAN, acc_std=NAN, loss=NAN, loss_std=NAN),
        cell(bits=4, ste="identity", n=0, acc=NAN, acc_std=NAN, loss=NAN, loss_std=NAN),
    ])
    df = read_md(table1(cells, "markdown"))
    assert df.loc[0, "ReLU"].startswith("**") and df.loc[0, "clipped ReLU"].startswith("**")
    assert not df.loc[0, "identity"].startswith("**")
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
    df = pd.read_csv(io.StringIO(table1(cells, "csv")), dtype=str)
    # built-ins first in paper order, then the others alphabetically; only STEs present
    assert list(df.columns)[4:] == ["ReLU", "a_ste", "my_ste"]
    assert df.loc[0, ["data", "network", "bits", "n"]].tolist() == ["svhn", "mlp", "3", "2,1,1"]
    assert df.loc[0, "ReLU"] == "0.20 / 90.00 ± 1.00"
    assert df.loc[0, "my_ste"] == "1.0e-4 / 80.00"


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
    assert table1(empty, "csv").strip() == "data,network,bits,n"
    assert r"\bottomrule" in table1(empty, "latex")
    df = pd.read_csv(io.StringIO(table1(pd.DataFrame([cell(bits=2.0, n=3.0)]), "csv")), dtype=str)
    assert df.loc[0, ["bits", "n"]].tolist() == ["2", "3"]


def test_curves_figure_ste_missing_in_a_panel_and_all_diverged():
    rows = [dict(ste="identity", bits=2, seed=0, epoch=e, train_loss=math.inf, val_acc=0.1)
            for e in range(1, 4)]
    rows += [dict(ste="relu", bits=4, seed=s, epoch=e, train_loss=0.5 / e, val_acc=0.5)
             for e in range(1, 4) for s in range(2)]
    for ax in curves_figure(pd.DataFrame(rows)).get_axes():
        assert len(ax.get_lines()) == 2 and ax.get_ylim()[1] < 1e10

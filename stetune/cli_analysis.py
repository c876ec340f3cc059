"""`stetune analyze` and `stetune export`: a finished (or running) sweep, read back from MLflow,
as a stability report with figures, or as the paper's Table 1 in LaTeX, Markdown or CSV."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

from . import storage as st

__all__ = ["add_parsers", "locate"]


def _common(p) -> None:
    p.add_argument("name", help="the sweep's name (its `name:` in the spec)")
    p.add_argument("--storage", default="runs",
                   help="the sweep's storage directory, where <name>/spec.json tells the tracking "
                        "URI (default: runs)")
    p.add_argument("--tracking-uri",
                   help="MLflow tracking URI, e.g. http://HOST:5000 or sqlite:///path/mlflow.db "
                        "(default: the one in <storage>/<name>/spec.json)")
    p.add_argument("--experiment", help="MLflow experiment (default: the spec's, else the name)")


def add_parsers(sub) -> None:
    a = sub.add_parser(
        "analyze", help="stability report of a sweep: Table 1, verdict per cell, figures",
        description="Read a sweep's trials from MLflow and write report.md (Table 1, stability per "
                    "cell with the rule used, figures), table1.{md,tex,csv}, cells.csv and the "
                    "figures as PDF and PNG; the files are also logged to the sweep's parent MLflow "
                    "run under analysis/. A repulsion sweep gets its loss-ratio table and curves.")
    _common(a)
    a.add_argument("--out", help="output folder (default: <storage>/<name>/analysis)")
    a.add_argument("--spike-factor", type=_number("--spike-factor", "a number > 1", lambda x: x > 1),
                   default=1.5, help="a loss spike: an epoch's training loss above this x the "
                                     "running minimum (default: %(default)s)")
    a.add_argument("--gap-tol", type=_number("--gap-tol", "a fraction in [0, 1]",
                                             lambda x: 0 <= x <= 1), default=0.01,
                   help="a final-minus-best validation accuracy below -this (a fraction: 0.01 = "
                        "1 point) makes a cell marginal (default: %(default)s)")
    a.add_argument("--max-divergence", type=_number("--max-divergence", "a fraction in [0, 1]",
                                                    lambda x: 0 <= x <= 1), default=0.5,
                   help="share of a cell's trials diverging above which it is unstable "
                        "(default: %(default)s)")
    a.add_argument("--no-log", action="store_true",
                   help="do not log the files to the sweep's MLflow parent run")
    a.set_defaults(func=_run_analyze)

    e = sub.add_parser(
        "export", help="a sweep's Table 1 as LaTeX, Markdown or CSV",
        description="Write a sweep's results in the paper's Table-1 layout: rows dataset / network "
                    "/ bits, columns STEs, cells 'training loss / validation accuracy %' (mean ± "
                    "std over replicate seeds), best per row in bold; LaTeX uses booktabs.")
    _common(e)
    e.add_argument("--format", required=True, choices=["latex", "markdown", "csv"])
    e.add_argument("--out", required=True, help="output file ('-' for standard output)")
    e.add_argument("--caption", help="table caption, LaTeX and Markdown (default: says what the "
                                     "cells are)")
    e.add_argument("--label", help="LaTeX label (default: tab:<name>)")
    e.set_defaults(func=_run_export)


def _number(flag: str, rule: str, test):
    """An argparse type: a float passing `test`, else "FLAG must be RULE, but got FLAG=VALUE"."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = None
        if value is None or not test(value):
            raise argparse.ArgumentTypeError(f"{flag} must be {rule}, but got {flag}={text}")
        return value
    return parse


def locate(name: str, storage: str, tracking_uri: str | None,
           experiment: str | None) -> tuple[str, str]:
    """(tracking URI, experiment) of a sweep: the flags, else what its spec.json says."""
    saved = st.locate(storage) / name / "spec.json"
    if tracking_uri is None:
        if not saved.exists():
            raise LookupError(f"no sweep named '{name}' in {saved.parent.parent} (no spec.json "
                              f"there); pass --storage, or --tracking-uri for a remote sweep")
        from .spec import spec_from_dict

        from .naming import default_tracking_uri

        spec = spec_from_dict(json.loads(saved.read_text()))
        # the default store sits next to spec.json; a relative `storage` in the spec would
        # resolve against whatever directory this command runs in
        uri = spec.mlflow.tracking_uri or default_tracking_uri(saved.parent.path)
        return uri, experiment or spec.resolved_experiment()
    return tracking_uri, experiment or name


def _load(args, command: str):
    from mlflow.exceptions import MlflowException

    from .analysis import AnalysisError, load_sweep
    from .naming import redact
    from .spec import SpecError

    try:
        uri, experiment = locate(args.name, args.storage, args.tracking_uri, args.experiment)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            data = load_sweep(args.name, uri, experiment)
        for w in caught:
            if issubclass(w.category, UserWarning) and str(w.message).startswith("sweep "):
                print(f"stetune {command}: note: {w.message}", file=sys.stderr)
        return data
    except (LookupError, AnalysisError, SpecError) as e:
        print(redact(f"stetune {command}: error: {e}"), file=sys.stderr)
    except MlflowException as e:  # e.g. 401 from a server with auth: say where and why, briefly
        # MLflow's text holds the request URL, with any password in it: mask the whole line
        print(redact(f"stetune {command}: error: MLflow at {args.tracking_uri or '(spec.json)'}: "
                     f"{str(e).splitlines()[0]} (credentials: MLFLOW_TRACKING_USERNAME and "
                     f"MLFLOW_TRACKING_PASSWORD)"), file=sys.stderr)
    return None


def _run_analyze(args) -> int:
    from .analysis import StabilityRule
    from .report import write_report
    from .tracking import log_sweep_artifacts

    data = _load(args, "analyze")
    if data is None:
        return 2
    rule = StabilityRule(args.spike_factor, args.gap_tol, args.max_divergence)
    where = st.locate(args.out or st.locate(args.storage) / args.name / "analysis")
    with tempfile.TemporaryDirectory(prefix="stetune-analysis-") as tmp:
        out = Path(where) if where.local else Path(tmp)  # an object store's: written, then sent
        files = write_report(data, out, rule)
        if not args.no_log:
            for sub in sorted({f.parent for f in files}):  # optuna/ keeps its folder there too
                rel = sub.relative_to(out).as_posix()
                log_sweep_artifacts(data.tracking_uri, data.parent_run_id,
                                    [f for f in files if f.parent == sub],
                                    "analysis" if rel == "." else f"analysis/{rel}")
        print((out / "report.md").read_text())
        if not where.local:
            where.upload(out)
            files = [where / f.relative_to(out).as_posix() for f in files]
    print(f"wrote {', '.join(str(f) for f in files)}"
          + ("" if args.no_log else f"; logged to run {data.parent_run_id} under analysis/"),
          file=sys.stderr)
    return 0


def _run_export(args) -> int:
    from .analysis import cell_table
    from .export import table1
    from .report import caption

    data = _load(args, "export")
    if data is None:
        return 2
    if data.analysis != "cells":
        print(f"stetune export: error: sweep '{args.name}' is a {data.kind} sweep; Table 1 needs "
              f"a sweep of (STE, bits) cells, e.g. a network sweep (use stetune analyze)",
              file=sys.stderr)
        return 2
    cells = cell_table(data)
    if cells.empty:
        print(f"stetune export: error: sweep '{args.name}' has no finished trial yet",
              file=sys.stderr)
        return 2
    text = table1(cells, args.format, caption=args.caption or caption(data),
                  label=args.label or f"tab:{args.name}")
    if args.out == "-":
        sys.stdout.write(text)
    else:
        out = st.locate(args.out)
        out.parent.mkdir()
        out.write_text(text)
        print(f"wrote {out}", file=sys.stderr)
    return 0

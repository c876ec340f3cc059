"""`stetune list` and `stetune show`: the sweeps under a storage folder and their state, read
from their spec.json, sweep.json, driver.lock and Tune's experiment-state files only. No Ray and
no MLflow import (a listing is instant; a running sweep's store is not touched). Also the pieces
`sweep`/`resume` share with them: a sweep's status, its summary and next commands, and the one
JSON document `--json` prints."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from datetime import datetime

from .storage import Location, locate

__all__ = ["add_parsers", "sweep_status", "read_state", "complete", "next_commands",
           "document", "print_document", "human_to_stderr", "EXIT_MEANINGS"]

# the exit codes of `sweep`/`resume` (README: "When things go wrong")
EXIT_MEANINGS = {0: "done: the budget ran", 1: "a fault under the sweep (disk, MLflow store, "
                 "saved state); fix it, then resume", 2: "bad input or a conflict",
                 3: "done, but some trials failed", 130: "interrupted by SIGINT",
                 143: "interrupted by SIGTERM"}
SIGNAL_CODES = {"SIGINT": 130, "SIGTERM": 143}
DONE_KEYS = ("summary", "rows")  # what the built-in kinds' run() writes last (network; the others)


def add_parsers(sub) -> None:
    ls = sub.add_parser("list", help="the sweeps under a storage folder and their state",
                        description="One line per sweep under --storage (each folder with a "
                                    "spec.json): name, kind, status (done, failed trials, "
                                    "interrupted (phase), running, stopped), cells, trials ended, "
                                    "last modified. Reads files only: no Ray, no MLflow.")
    ls.add_argument("--storage", default="runs", help="the storage directory (default: runs)")
    ls.add_argument("--json", action="store_true", help="print one JSON document instead")
    ls.set_defaults(func=_run_list)
    sh = sub.add_parser("show", help="a sweep's state and summary table, without Ray",
                        description="Print a sweep's state and the summary table its sweep or "
                                    "resume printed at the end, from its sweep.json; then what to "
                                    "run next. No Ray, no MLflow.")
    sh.add_argument("name", help="the sweep's name")
    sh.add_argument("--storage", default="runs", help="the sweep's storage directory "
                                                      "(default: runs)")
    sh.add_argument("--json", action="store_true",
                    help="print one JSON document (state, per-cell rows, failed trials)")
    sh.set_defaults(func=_run_show)


# -- state -----------------------------------------------------------------------------------------
def read_state(sweep_dir: Location) -> dict | None:
    """sweep.json's content; None when it is missing or unreadable (resume then says why)."""
    try:
        state = json.loads((locate(sweep_dir) / "sweep.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return state if isinstance(state, dict) else None


def complete(state: dict | None, kind=None) -> bool:
    """Every phase ran: the kind's last key is written and no interrupt recorded after it. A kind
    outside DONE_KEYS that cannot resume has no partial state worth telling apart."""
    if not state or "interrupted" in state:
        return False
    if any(k in state for k in DONE_KEYS):
        return True
    return kind is not None and not kind.resumable and bool(set(state) - {"failed"})


def _holder(sweep_dir: Location) -> dict | None:
    """The live driver holding driver.lock (host, pid, started), judged as DriverLock judges a
    lock it finds; None when there is none. Read-only: the lock is never taken."""
    from .sweep.lock import DriverLock

    found = DriverLock(sweep_dir, sweep_dir.name).holder()
    return None if found is None or DriverLock._stale(*found) else found[0]


def sweep_status(sweep_dir: Location, state: dict | None, kind=None) -> dict:
    """{status, phase, exit_code, note}: running / interrupted / done / failed trials / stopped /
    not started; exit_code is the code the sweep's driver ended with (None: still running)."""
    held = _holder(sweep_dir)
    if held is not None:
        return {"status": "running", "phase": None, "exit_code": None,
                "note": f"driver pid {held.get('pid', '?')} on host {held.get('host', '?')} since "
                        f"{held.get('started', '?')}"}
    if state is None:
        return {"status": "not started", "phase": None, "exit_code": None,
                "note": "no readable sweep.json"}
    if "interrupted" in state:
        stop = state["interrupted"] if isinstance(state["interrupted"], dict) else {}
        return {"status": "interrupted", "phase": stop.get("phase"),
                "exit_code": SIGNAL_CODES.get(stop.get("signal"), 130),
                "note": f"by {stop.get('signal', 'a signal')}"}
    if complete(state, kind):
        failed = _failed(state)
        return {"status": "failed trials" if failed else "done", "phase": None,
                "exit_code": 3 if failed else 0,
                "note": f"{len(failed)} trial(s) failed" if failed else "every phase ran"}
    return {"status": "stopped", "phase": None, "exit_code": 1,
            "note": "ended before its last phase (a fault, or its driver was killed)"}


def _failed(state: dict) -> list[str]:
    return [f"{phase}: {t}" for phase, trials in (state.get("failed") or {}).items()
            for t in trials]


def _trials_ended(sweep_dir: Location) -> int | None:
    """Trials Tune ended (finished, stopped early or errored) over every phase folder, from each
    phase's newest experiment state; None when a state file cannot be read."""
    n = 0
    for phase in (p for p in sweep_dir.iterdir() if p.is_dir()):
        states = sorted(phase.glob("experiment_state-*.json"), key=lambda p: p.name)  # names hold the start time
        if not states:
            continue
        try:
            trials = json.loads(states[-1].read_text())["trial_data"]
            n += sum(json.loads(t).get("status") in ("TERMINATED", "ERROR") for t, _ in trials)
        except (OSError, ValueError, KeyError, TypeError):
            return None
    return n


def _modified(sweep_dir: Location) -> float:
    # sweep.json, spec.json, the lock's heartbeat and the stores change while a sweep runs
    return max((f.mtime() for f in sweep_dir.iterdir() if f.is_file()), default=0.0)


def _load(sweep_dir: Location):
    """(spec, kind) from spec.json: the spec resolved (any kind registered here), else None."""
    from .spec import SpecError, spec_from_dict
    from .sweep.kinds import get_kind

    try:
        spec = spec_from_dict(json.loads((sweep_dir / "spec.json").read_text()))
        return spec, get_kind(spec.kind)
    except (SpecError, ValueError, UnicodeDecodeError, OSError):
        return None, None


def _sweeps(storage: Location) -> list[Location]:
    return [d for d in storage.iterdir() if (d / "spec.json").is_file()]


# -- what to print ---------------------------------------------------------------------------------
def _tracking(spec, sweep_dir: Location) -> str:
    from .naming import default_tracking_uri, redact

    # the default store sits beside spec.json, wherever this command runs (as analyze reads it)
    return redact(spec.mlflow.tracking_uri or default_tracking_uri(sweep_dir.path))


def next_commands(spec, sweep_dir: Location, storage: str) -> list[str]:
    """Where to look next: MLflow (URI redacted), then analyze/export where the kind has them."""
    from .sweep.kinds import get_kind

    uri, name = _tracking(spec, sweep_dir), spec.name
    browse = (f"open {uri} in a browser" if uri.lower().startswith(("http://", "https://"))
              else f"mlflow ui --backend-store-uri {uri}")
    lines = ["next:", f"  browse:  {browse}   (experiment '{spec.resolved_experiment()}')"]
    analysis = get_kind(spec.kind).analysis
    if analysis:
        lines.append(f"  analyze: stetune analyze {name} --storage {storage}   (report, "
                     f"figures{', Table 1' if analysis == 'cells' else ''})")
    if analysis == "cells":
        lines.append(f"  export:  stetune export {name} --storage {storage} --format latex "
                     f"--out {name}-table1.tex   (or --format markdown --out -)")
    if spec.kind == "network":  # each cell's Optuna study
        from .naming import redact

        studies = spec.search.storage or (f"sqlite:///{sweep_dir / 'optuna.db'}" if sweep_dir.local
                                          else None)
        lines.append(f"  studies: optuna-dashboard {redact(studies)}   (pip install optuna-dashboard)"
                     if studies else f"  studies: Optuna's journal in {sweep_dir / 'optuna'} "
                     f"(stetune analyze plots each cell's study)")
    return lines


def _summary(spec, kind, state: dict | None) -> str:
    try:
        return kind.summary(spec, state or {})
    except (KeyError, TypeError, ValueError, AttributeError):  # a kind whose results are not in
        return "(no summary yet: no phase has finished)"


def _rows(spec, state: dict | None) -> list:
    if spec.kind == "network":
        from .sweep.kinds.network import summary_rows

        return summary_rows(spec, state or {})
    return (state or {}).get("rows") or (state or {}).get("summary") or []


def document(name: str | None, spec, sweep_dir: Location | None, code: int | None = None) -> dict:
    """The one JSON document of `sweep/resume/show --json`; exit_code: this command's (sweep,
    resume), else the one the sweep's driver ended with."""
    doc = {"name": name, "kind": None, "status": None, "phase": None, "storage": None,
           "sweep_dir": None, "tracking_uri": None, "experiment": None, "cells": [],
           "failed_trials": []}
    if spec is not None and sweep_dir is not None:
        from .sweep.kinds import get_kind

        state, kind = read_state(sweep_dir), get_kind(spec.kind)
        st = sweep_status(sweep_dir, state, kind)
        doc.update(kind=spec.kind, status=st["status"], phase=st["phase"],
                   storage=str(sweep_dir.parent), sweep_dir=str(sweep_dir),
                   tracking_uri=_tracking(spec, sweep_dir),
                   experiment=spec.resolved_experiment(), cells=_rows(spec, state),
                   failed_trials=_failed(state or {}))
        code = st["exit_code"] if code is None else code
    doc.update(exit_code=code, exit_meaning=EXIT_MEANINGS.get(code))
    return doc


def print_document(doc: dict) -> None:
    from .naming import redact

    print(json.dumps(redact(doc), indent=2, default=str))


@contextlib.contextmanager
def human_to_stderr(active: bool):
    """With --json, stdout carries the JSON document alone: everything else, ours, Tune's
    tables and processes started meanwhile (Ray's, which inherit fd 1), goes to stderr."""
    if not active:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 1)
        os.close(saved)


# -- the commands ----------------------------------------------------------------------------------
def _when(t: float) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M") if t else "-"


def _run_list(args) -> int:
    storage = locate(args.storage)
    rows = []
    for d in _sweeps(storage):
        spec, kind = _load(d)
        state = read_state(d)
        st = sweep_status(d, state, kind)
        rows.append({"name": d.name, "kind": spec.kind if spec else "?",
                     "status": st["status"] + (f" ({st['phase']})" if st["phase"] else ""),
                     "cells": len(spec.cells()) if hasattr(spec, "cells") else None,
                     "trials_ended": _trials_ended(d), "modified": _modified(d),
                     "sweep_dir": str(d)})
    if args.json:
        for r in rows:
            r["modified"] = datetime.fromtimestamp(r["modified"]).astimezone().isoformat(
                timespec="seconds")
        print(json.dumps({"storage": str(storage), "sweeps": rows}, indent=2))
        return 0
    if not rows:
        print(f"no sweeps in {storage}", file=sys.stderr)
        return 0
    w = max(len("name"), *(len(r["name"]) for r in rows))
    print(f"{'name':<{w}}  {'kind':<9} {'status':<20} {'cells':>5} {'trials':>6}  last modified")
    for r in rows:
        cells, trials = (("-" if r[k] is None else r[k]) for k in ("cells", "trials_ended"))
        print(f"{r['name']:<{w}}  {r['kind']:<9} {r['status']:<20} {cells:>5} {trials:>6}  "
              f"{_when(r['modified'])}")
    return 0


def _run_show(args) -> int:
    storage = locate(args.storage)
    d = storage / args.name
    if not (d / "spec.json").is_file():
        there = [p.name for p in _sweeps(storage)]
        print(f"stetune show: error: no sweep named '{args.name}' in {storage} "
              f"({'sweeps there: ' + ', '.join(there) if there else 'no sweeps there'})",
              file=sys.stderr)
        return 2
    spec, kind = _load(d)
    if spec is None:
        print(f"stetune show: error: {d / 'spec.json'} cannot be read as a sweep spec of a kind "
              f"this stetune knows", file=sys.stderr)
        return 1
    if args.json:
        print_document(document(args.name, spec, d))
        return 0
    show(spec, kind, d, args.storage)
    return 0


def show(spec, kind, sweep_dir: Location, storage: str, *, out=None) -> None:
    """The state line, the summary table, failed trials and the next commands."""
    state = read_state(sweep_dir)
    st = sweep_status(sweep_dir, state, kind)
    phase = f" ({st['phase']})" if st["phase"] else ""
    print(f"sweep '{spec.name}' ({spec.kind}): {st['status']}{phase}, {st['note']}; "
          f"last modified {_when(_modified(sweep_dir))}\n", file=out)
    print(_summary(spec, kind, state), file=out)
    for line in _failed(state or {}):
        print(f"failed: {line}", file=out)
    if st["status"] in ("interrupted", "stopped") and kind.resumable:
        print(f"\ncontinue it: stetune resume {spec.name} --storage {storage}", file=out)
    print("\n" + "\n".join(next_commands(spec, sweep_dir, storage)), file=out)

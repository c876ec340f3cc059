"""`stetune sweep`, `resume`, `submit`, `status`, `logs` and `schema`: running sweeps of any
kind (each kind's summary and resumability come from its entry in the kind table)."""

from __future__ import annotations

import errno
import json
import sys

__all__ = ["add_parsers"]


def add_parsers(sub) -> None:
    _add_sweep(sub)
    _add_schema(sub)


def _add_sweep(sub) -> None:
    from .sweep.kinds import get_kind, list_kinds

    kinds = "; ".join(f"`kind: {k}`{' (the default)' if k == 'network' else ''}: "
                      f"{get_kind(k).description}" for k in list_kinds())
    p = sub.add_parser(
        "sweep", help="run a sweep spec on Ray Tune (local Ray, or --address of a cluster)",
        description="Run a YAML sweep spec: optional float pre-training, an equal Optuna TPE budget "
                    "for every (STE, bits) cell with ASHA early stopping, then the best config of "
                    "each cell re-run with the replicate seeds. Every trial is an MLflow run. "
                    f"Kinds: {kinds}. `stetune schema` prints the spec's JSON Schema.")
    p.add_argument("spec", help="sweep spec YAML (see sweeps/)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec field, e.g. --set epochs=2 --set budget.trials_per_cell=1")
    p.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    _add_output(p)
    p.set_defaults(func=_run_sweep)

    r = sub.add_parser("resume", help="resume an interrupted sweep by name",
                       description="Restore an interrupted sweep (trials, searcher state, "
                                   "checkpoints) and run it to the end; MLflow runs are reused. "
                                   "A complete sweep: its summary, without starting Ray.")
    r.add_argument("name", help="the sweep's name")
    r.add_argument("--storage", default="runs", help="the sweep's storage directory")
    r.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    _add_output(r)
    r.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="change a field of the saved spec (needs --allow-spec-change)")
    r.add_argument("--allow-spec-change", action="store_true",
                   help="continue even though the spec differs from the one the sweep started "
                        "with (the changed fields are recorded on the parent run)")
    r.set_defaults(func=_run_resume)

    j = sub.add_parser("submit", help="submit a sweep to a Ray cluster through the Jobs API",
                       description="Ship the spec and the stetune source to a Ray cluster as a Ray "
                                   "job and print its id. Token auth: set RAY_AUTH_TOKEN as for any "
                                   "Ray client. Give the spec an absolute storage path on the "
                                   "cluster and an MLflow server as tracking_uri.")
    j.add_argument("spec", help="sweep spec YAML")
    j.add_argument("--address", required=True, help="Ray dashboard address, e.g. http://HEAD:8265")
    j.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec field")
    j.set_defaults(func=_run_submit)
    for name, helptext in (("status", "a submitted job's status"), ("logs", "a submitted job's logs")):
        q = sub.add_parser(name, help=helptext, description=f"Print {helptext}.")
        q.add_argument("job", help="job id printed by stetune submit")
        q.add_argument("--address", required=True, help="Ray dashboard address, e.g. http://HEAD:8265")
        q.set_defaults(func=_run_job_query, query=name)


def _add_output(p) -> None:
    """How much `sweep`/`resume` print, and --json (the exit code stays the same)."""
    how = p.add_mutually_exclusive_group()
    how.add_argument("--quiet", action="store_true", help="print only the summary at the end "
                                                          "(default: stetune's progress display)")
    how.add_argument("-v", "--verbose", action="count", default=0,
                     help="-v: also Ray's progress tables and library INFO logs; -vv: also the "
                          "workers' output")
    p.add_argument("--json", action="store_true",
                   help="standard output holds only one JSON document at the end (name, kind, "
                        "status, tracking URI, per-cell rows, failed trials, exit code); "
                        "everything else goes to standard error")


def _verbosity(args) -> int:
    # the session's levels: 0 the summary only, 1 stetune's display, 2 + Ray's, 3 + workers'
    return 0 if args.quiet else 1 + min(args.verbose, 2)


def _load_spec(path: str, sets: list[str], command: str):
    from .spec import SpecError, load_sweep_spec

    try:
        return load_sweep_spec(path, sets)
    except SpecError as e:
        print(f"stetune {command}: error: {e}", file=sys.stderr)
        return None


def _finish_sweep(spec, state: dict, storage: str | None = None) -> int:
    from .sweep.kinds import get_kind

    print("\n" + get_kind(spec.kind).summary(spec, state))
    _browse(spec, storage)
    failed = [f"{phase}: {t}" for phase, trials in state.get("failed", {}).items() for t in trials]
    if failed:  # a failed trial is a hole in the results (diverged ones are results)
        print(f"stetune: {len(failed)} trial(s) failed: {'; '.join(failed)} (tracebacks: "
              f"{spec.sweep_dir()}/<phase>/<trial>/error.txt; shown as they happen with -v)", file=sys.stderr)
        return 3
    return 0


def _browse(spec, storage: str | None = None) -> int:
    from .cli_show import next_commands

    # MLflow, analyze, export; the URI redacted: stdout ends up in job logs
    print("\n" + "\n".join(next_commands(spec, spec.sweep_dir(), storage or spec.storage)))
    return 0


def _run_sweep(args) -> int:
    from .cli_show import human_to_stderr

    with human_to_stderr(args.json):
        spec = _load_spec(args.spec, args.sets, "sweep")
        code = 2 if spec is None else _drive("sweep", spec, address=args.address,
                                             verbose=_verbosity(args))
    return _emit(args, getattr(spec, "name", None), spec, code)


def _emit(args, name: str | None, spec, code: int) -> int:
    """With --json, the document on stdout (the sweep as it is on disk now); the code as it is."""
    if args.json:
        from .cli_show import document, print_document

        print_document(document(name, spec, spec.sweep_dir() if spec is not None else None,
                                code))
    return code


def _drive(command: str, spec, **kw) -> int:
    """Run (or resume) the sweep; every way it can end is one line and an exit code: 0 done,
    1 a runtime fault, 2 bad input or a conflict, 3 failed trials, 130/143 interrupted."""
    from .checkpoint import UnsafeCheckpointError
    from .store import StoreUnusable, TrackingUnreachable
    from .sweep import run_sweep
    from .sweep.phase import DataUnavailable
    from .sweep.session import ClusterUnreachable, StorageError, SweepInterrupted, SweepStateError
    from .tracking import STORE_ERRORS, TrackingConflict, TrackingStateError

    try:
        state = run_sweep(spec, **kw)
    except (FileExistsError, UnsafeCheckpointError, TrackingConflict, StorageError) as e:
        return _fail(command, e, 2)  # incl. SweepLocked, SpecChanged
    except (TrackingUnreachable, StoreUnusable, SweepStateError, TrackingStateError,
            ClusterUnreachable, DataUnavailable) as e:  # nothing made, or nothing changed
        return _fail(command, e, 1)
    except SweepInterrupted as e:
        return _interrupted(command, spec, e)
    except (OSError, *STORE_ERRORS) as e:  # the disk or the MLflow store failed mid-sweep
        return _fail(command, e, 1, _fault(spec, e))
    return _finish_sweep(spec, state)


def _fail(command: str, e: BaseException, code: int, text: str | None = None) -> int:
    """`stetune COMMAND: error: ...` on one line: the error, then what was left undone (notes)."""
    from .naming import redact

    text = text or str(e).strip()  # stetune's own errors are one line
    print(redact(f"stetune {command}: error: {'; '.join([text, *getattr(e, '__notes__', [])])}"),
          file=sys.stderr)
    return code


def _fault(spec, e: BaseException) -> str:
    """What failed under the sweep (the disk, the MLflow store) and how to go on, on one line."""
    from .naming import gist, redact
    from .storage import StorageUnreachable
    from .store import TrackingUnreachable, check_server
    from .sweep.kinds import get_kind

    go_on = (f"run `stetune resume {spec.name} --storage {spec.storage}`"
             if get_kind(spec.kind).resumable else "run the spec again under another name")
    # pyarrow (Tune's storage) and sqlite say it in words, without an errno
    if getattr(e, "errno", None) == errno.ENOSPC or any(
            words in str(e) for words in ("No space left on device", "disk is full")):
        why = "sqlite: database or disk is full" if "disk is full" in str(e) else gist(e)
        return f"disk full ({why}); free space, then {go_on}"
    if isinstance(e, StorageUnreachable):  # says the URI and what to check, in one line
        return f"{e}; {e.hint}; once it answers, {go_on}"
    if isinstance(e, OSError):
        return f"{gist(e)}; fix it, then {go_on}"
    uri = spec.resolved_tracking_uri()
    try:
        check_server(uri, timeout=3)
    except TrackingUnreachable:
        return (f"the MLflow server {redact(uri)} stopped answering mid-sweep (MLflow's client "
                f"gave up after its retries, MLFLOW_HTTP_REQUEST_MAX_RETRIES); once it is back, "
                f"{go_on}")
    from sqlalchemy.exc import SQLAlchemyError

    if isinstance(e, SQLAlchemyError) and hasattr(spec, "resolved_optuna_storage"):
        where = f"the Optuna storage {redact(spec.resolved_optuna_storage())}"  # the studies'
    else:
        where = f"the MLflow store {redact(uri)}"
    return f"{where} failed ({gist(e)}); once it works again, {go_on}"


def _interrupted(command: str, spec, e) -> int:
    """One line on what stopped and how to go on; the shell's code for the signal (130, 143)."""
    from .sweep.kinds import get_kind

    how = (f"continue with `stetune resume {spec.name} --storage {spec.storage}`"
           if get_kind(spec.kind).resumable else "run it again under another name")
    # what could not be ended (a dead server, a full disk) replaces the claim that it was
    ended = "; ".join(getattr(e, "__notes__", [])) or "its MLflow runs are ended KILLED"
    print(f"stetune {command}: {e}; {ended}; {how}", file=sys.stderr)
    return 128 + e.signum


def _run_resume(args) -> int:
    from .cli_show import human_to_stderr

    with human_to_stderr(args.json):
        spec, code = _resume(args)
    return _emit(args, args.name, spec, code)


def _resume(args):
    """(the saved spec, or None where there is none, and the exit code)."""
    import dataclasses

    from .cli_show import complete, read_state
    from .spec import SpecError, apply_overrides, spec_from_dict
    from .storage import locate
    from .sweep.kinds import get_kind

    saved = locate(args.storage) / args.name / "spec.json"
    if not saved.exists():
        from .sweep.lock import DriverLock, SweepLocked

        try:  # a driver that is starting holds the lock before it saves the spec
            DriverLock(saved.parent, args.name).check()
        except SweepLocked as e:
            print(f"stetune resume: error: {e}", file=sys.stderr)
            return None, 2
        print(f"stetune resume: error: no sweep named '{args.name}' in {saved.parent.parent}",
              file=sys.stderr)
        return None, 2
    try:
        spec = spec_from_dict(apply_overrides(json.loads(saved.read_text()), args.sets))
    except SpecError as e:
        print(f"stetune resume: error: {saved}: {e}", file=sys.stderr)
        return None, 2
    except (ValueError, UnicodeDecodeError, OSError) as e:  # not JSON: damaged, or not ours
        print(f"stetune resume: error: {saved} cannot be read as the sweep's saved spec "
              f"({type(e).__name__}: {str(e)[:120]}); run the spec again under another name",
              file=sys.stderr)
        return None, 1
    kind = get_kind(spec.kind)
    if not kind.resumable:  # short grids: rerunning them is the resume
        print(f"stetune resume: error: {spec.kind} sweeps cannot be resumed; run the spec again "
              f"under another name (or delete {saved.parent})", file=sys.stderr)
        return spec, 2
    state = read_state(saved.parent)
    # nothing left to run: no Ray, no MLflow. A --set goes on below, where a changed spec is
    # refused or recorded; an unreadable sweep.json too, where its error is said
    if not args.sets and complete(state, kind):
        spec = dataclasses.replace(spec, storage=str(saved.parent.parent))  # where it was found
        print(f"sweep '{args.name}' is complete; nothing to resume")
        return spec, _finish_sweep(spec, state, args.storage)
    return spec, _drive("resume", spec, address=args.address, resume=True,
                        verbose=_verbosity(args), allow_spec_change=args.allow_spec_change)


def _run_submit(args) -> int:
    spec = _load_spec(args.spec, args.sets, "submit")
    if spec is None:
        return 2
    from .sweep.jobs import submit

    try:
        job_id = submit(spec, args.address)
    except _job_client_errors() as e:
        return _job_error("submit", e)
    print(job_id)
    print(f"follow it: stetune status {job_id} --address {args.address}; "
          f"stetune logs {job_id} --address {args.address}", file=sys.stderr)
    return 0


def _run_job_query(args) -> int:
    from .sweep.jobs import job_logs, job_status

    try:
        out = job_status(args.address, args.job) if args.query == "status" else job_logs(args.address, args.job)
    except _job_client_errors() as e:
        return _job_error(args.query, e)
    print(out)
    return 0


def _job_client_errors() -> tuple[type[BaseException], ...]:
    from .sweep.jobs import client_errors

    return client_errors()


def _job_error(command: str, e: BaseException) -> int:
    from .sweep.jobs import is_auth_error

    first = (str(e).strip().splitlines() or [type(e).__name__])[0]  # Ray appends a long how-to
    hint = " (set RAY_AUTH_TOKEN to the cluster's token)" if is_auth_error(e) else ""
    print(f"stetune {command}: error: {first}{hint}", file=sys.stderr)
    return 1


def _add_schema(sub) -> None:
    p = sub.add_parser(
        "schema", help="print the JSON Schema of sweep specs (for editors)",
        description="Print a JSON Schema (draft 2020-12) of sweep spec files, every kind, made from "
                    "the same field rules the loader checks. Point an editor at it to validate and "
                    "complete sweeps/*.yaml (README: Sweeps).")
    p.add_argument("--out", help="write it to this file instead of standard output")
    p.set_defaults(func=_run_schema)


def _run_schema(args) -> int:
    import stetune.sweep.kinds  # noqa: F401  (every registered kind is in the schema)
    from .spec import json_schema

    text = json.dumps(json_schema(), indent=2) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0

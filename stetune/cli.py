"""The `stetune` command: train, bench, theory, sweep, resume, submit, status, logs, schema."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

__all__ = ["main", "build_parser"]


def _bits(value: str):
    from .quant import parse_bits

    try:
        return parse_bits(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_train(sub) -> None:
    # help is built from the registries: a registered model, dataset or STE shows up here
    from .data import dataset_info, list_datasets
    from .models import list_models, model_info
    from .quant import list_stes
    from .spec import RunSpec

    d = {f.name: f.default for f in dataclasses.fields(RunSpec)}  # RunSpec owns every default
    models = "; ".join(model_info(m).summary() for m in list_models())
    datasets = " | ".join(f"{d} ({'x'.join(map(str, dataset_info(d).input_size))})"
                          for d in list_datasets())
    p = sub.add_parser(
        "train", help="train one model (no Ray, no MLflow)",
        description="Train one activation-quantized (or float) network and print a JSON summary. "
                    f"Unset epochs/batch/lr/milestones take the model's paper defaults ({models}; "
                    "milestones at the same fractions of the epochs).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=d["model"], help=" | ".join(list_models()))
    p.add_argument("--dataset", default=d["dataset"], help=datasets)
    p.add_argument("--ste", default=d["ste"], help=" | ".join(list_stes()))
    p.add_argument("--bits", type=_bits, default=d["bits"], help="activation bits 1..8, or 'float' (plain ReLU)")
    p.add_argument("--epochs", type=int, help="training epochs (default: the model's)")
    p.add_argument("--batch-size", type=int, help="batch size (default: the model's)")
    p.add_argument("--lr", type=float, help="initial learning rate (default: the model's)")
    p.add_argument("--momentum", type=float, default=d["momentum"], help="SGD momentum")
    p.add_argument("--weight-decay", type=float, default=d["weight_decay"], help="L2 weight decay")
    p.add_argument("--milestones", type=int, nargs="+", help="epochs at which lr *= gamma")
    p.add_argument("--gamma", type=float, default=d["gamma"], help="lr decay factor at each milestone")
    p.add_argument("--seed", type=int, default=d["seed"], help="seed for weights, data order, augmentation")
    p.add_argument("--device", default=d["device"], help="auto (cuda if available) | cpu | cuda[:N]")
    p.add_argument("--data-dir", help="dataset directory (default: $STETUNE_DATA or ~/.cache/stetune/data)")
    p.add_argument("--limit", type=int, help="use only the first N train and val examples")
    p.add_argument("--alpha", type=float, help="quantizer step (default: Lloyd-Max for the bit-width)")
    p.add_argument("--alpha-scale", type=float, default=d["alpha_scale"], help="multiply the quantizer step")
    p.add_argument("--init-from", help="checkpoint (e.g. a float run's) to initialise the weights from")
    p.add_argument("--switch-ste", help="STE to switch to at --switch-ste-at")
    p.add_argument("--switch-ste-at", type=int, help="epoch (1-based) from which --switch-ste is used")
    p.add_argument("--checkpoint-dir", help="save state here every epoch; resume from it if present")
    p.add_argument("--out", help="also write the JSON summary to this file")
    p.add_argument("--no-progress", action="store_true", help="no per-batch progress bar")
    p.set_defaults(func=_run_train)


def _run_train(args) -> int:
    from .spec import RunSpec, SpecError
    from .train import train

    fields = [f.name for f in dataclasses.fields(RunSpec) if hasattr(args, f.name)]
    try:
        spec = RunSpec(**{f: getattr(args, f) for f in fields}).resolved()
    except SpecError as e:
        print(f"stetune train: error: {e}", file=sys.stderr)
        return 2
    print(f"training {spec.model} on {spec.dataset}: bits={spec.bits} ste={spec.ste} "
          f"epochs={spec.epochs} batch={spec.batch_size} lr={spec.lr} milestones={spec.milestones}",
          file=sys.stderr)

    def report(m: dict) -> None:
        print(f"epoch {m['epoch']:>3}  train loss {m['train_loss']:.4f} acc {m['train_acc']:.2%}  "
              f"val loss {m['val_loss']:.4f} acc {m['val_acc']:.2%}  lr {m['lr']:.3g}  "
              f"|g| {m['grad_norm']:.3f}  {m['epoch_time']:.1f}s  [{m['status']}]",
              file=sys.stderr, flush=True)

    from .checkpoint import UnsafeCheckpointError
    from .data import DatasetNotFoundError

    try:
        result = train(spec, report, checkpoint_dir=args.checkpoint_dir,
                       progress=not args.no_progress and sys.stderr.isatty())
    except UnsafeCheckpointError as e:  # a crafted or broken file: bad input, refused unread
        print(f"stetune train: error: {e}", file=sys.stderr)
        return 2
    except (DatasetNotFoundError, FileNotFoundError) as e:
        print(f"stetune train: error: {e}", file=sys.stderr)
        return 1
    summary = {"status": result.status, "epochs_run": result.epochs_run,
               "best_val_acc": result.best_val_acc, "final": result.metrics,
               "epoch_time_mean": sum(h["epoch_time"] for h in result.history) / max(1, len(result.history)),
               "spec": result.spec, "code": result.code}
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


def _add_bench(sub) -> None:
    p = sub.add_parser(
        "bench", help="time training steps: quantized (each STE) vs float ReLU",
        description="Time training steps (forward, backward, SGD step) of each model with quantized "
                    "activations, for every STE, against the same model with float ReLU, same loop "
                    "and batch. Rounds are interleaved; medians are reported with the quantized/float "
                    "ratio.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", nargs="+", default=["lenet5", "resnet20"], help="models to time")
    p.add_argument("--bits", type=_bits, default=2, help="activation bits of the quantized runs")
    p.add_argument("--batch-size", type=int, default=128, help="batch size")
    p.add_argument("--steps", type=int, default=10, help="training steps per timing")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds (median taken)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--json", help="also write the rows as JSON to this file")
    p.set_defaults(func=_run_bench)


def _run_bench(args) -> int:
    from .bench import format_rows, run_bench
    from .models import list_models

    bad = [m for m in args.models if m not in list_models()]
    if bad:
        print(f"stetune bench: error: models must be among {list_models()}, but got {bad}", file=sys.stderr)
        return 2
    rows = run_bench(args.models, bits=args.bits, batch_size=args.batch_size, steps=args.steps,
                     rounds=args.rounds, device=args.device)
    print(format_rows(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


def _add_bench_sweep(sub) -> None:
    p = sub.add_parser(
        "bench-sweep", help="measure sweep utilisation and per-trial overhead",
        description="Run a sweep of identical-length LeNet-5 trials on digits on a local Ray and "
                    "report utilisation = sum of the trials' epoch times / (wall time x slots), and "
                    "the per-trial overhead (start-up, scheduling, checkpoints, MLflow).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--trials", type=int, default=8, help="number of trials")
    p.add_argument("--epochs", type=int, default=100, help="epochs per trial (100 ≈ 30 s on one core)")
    p.add_argument("--slots", type=int, default=2, help="concurrent trials (one CPU each)")
    p.set_defaults(func=_run_bench_sweep)


def _run_bench_sweep(args) -> int:
    from .sweep.bench import sweep_utilisation

    r = sweep_utilisation(trials=args.trials, epochs=args.epochs, slots=args.slots)
    print(f"{r['trials']} trials x {r['train_s_per_trial']:.1f} s of training on {r['slots']} slots: "
          f"wall {r['wall_s']:.1f} s, utilisation {r['utilisation']:.3f}, "
          f"overhead {r['overhead_s_per_trial']:.2f} s per trial")
    print(json.dumps(r, indent=2))
    return 0


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
    p.add_argument("--quiet", action="store_true", help="no Ray progress table")
    p.set_defaults(func=_run_sweep)

    r = sub.add_parser("resume", help="resume an interrupted sweep by name",
                       description="Restore an interrupted sweep (trials, searcher state, "
                                   "checkpoints) and run it to the end; MLflow runs are reused.")
    r.add_argument("name", help="the sweep's name")
    r.add_argument("--storage", default="runs", help="the sweep's storage directory")
    r.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    r.add_argument("--quiet", action="store_true", help="no Ray progress table")
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


def _load_spec(path: str, sets: list[str], command: str):
    from .spec import SpecError, load_sweep_spec

    try:
        return load_sweep_spec(path, sets)
    except SpecError as e:
        print(f"stetune {command}: error: {e}", file=sys.stderr)
        return None


def _finish_sweep(spec, state: dict) -> int:
    from .sweep.kinds import get_kind

    print("\n" + get_kind(spec.kind).summary(spec, state))
    _browse(spec)
    failed = [f"{phase}: {t}" for phase, trials in state.get("failed", {}).items() for t in trials]
    if failed:  # a failed trial is a hole in the results (diverged ones are results)
        print(f"stetune: {len(failed)} trial(s) failed: {'; '.join(failed)}", file=sys.stderr)
        return 3
    return 0


def _browse(spec) -> int:
    from .naming import redact

    uri = redact(spec.resolved_tracking_uri())  # stdout ends up in job logs: no password
    ui = (f"mlflow ui --backend-store-uri {uri}" if uri.startswith("sqlite:")
          else f"open {uri} in a browser")
    print(f"\nbrowse it: {ui}   (experiment '{spec.resolved_experiment()}')")
    return 0


def _run_sweep(args) -> int:
    spec = _load_spec(args.spec, args.sets, "sweep")
    if spec is None:
        return 2
    from .sweep import run_sweep

    from .checkpoint import UnsafeCheckpointError
    from .sweep.session import SweepInterrupted

    try:
        state = run_sweep(spec, address=args.address, verbose=0 if args.quiet else 1)
    except (FileExistsError, UnsafeCheckpointError) as e:
        print(f"stetune sweep: error: {e}", file=sys.stderr)
        return 2
    except SweepInterrupted as e:
        return _interrupted("sweep", spec, e)
    return _finish_sweep(spec, state)


def _interrupted(command: str, spec, e) -> int:
    """One line on what stopped and how to go on; the shell's code for the signal (130, 143)."""
    from .sweep.kinds import get_kind

    how = (f"continue with `stetune resume {spec.name} --storage {spec.storage}`"
           if get_kind(spec.kind).resumable else "run it again under another name")
    print(f"stetune {command}: {e}; its MLflow runs are ended KILLED; {how}", file=sys.stderr)
    return 128 + e.signum


def _run_resume(args) -> int:
    from pathlib import Path

    from .spec import SpecError, spec_from_dict
    from .sweep.kinds import get_kind

    saved = Path(args.storage).expanduser().resolve() / args.name / "spec.json"
    if not saved.exists():
        print(f"stetune resume: error: no sweep named '{args.name}' in {saved.parent.parent}",
              file=sys.stderr)
        return 2
    try:
        spec = spec_from_dict(json.loads(saved.read_text()))
    except SpecError as e:
        print(f"stetune resume: error: {saved}: {e}", file=sys.stderr)
        return 2
    if not get_kind(spec.kind).resumable:  # short grids: rerunning them is the resume
        print(f"stetune resume: error: {spec.kind} sweeps cannot be resumed; run the spec again "
              f"under another name (or delete {Path(args.storage) / args.name})", file=sys.stderr)
        return 2
    from .sweep import run_sweep
    from .sweep.session import SweepInterrupted

    try:
        state = run_sweep(spec, address=args.address, resume=True, verbose=0 if args.quiet else 1)
    except SweepInterrupted as e:
        return _interrupted("resume", spec, e)
    return _finish_sweep(spec, state)


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stetune",
        description="Train and sweep activation-quantized networks with straight-through estimators "
                    "(identity, ReLU, clipped ReLU), after Yin et al., ICLR 2019.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"stetune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub)
    _add_bench(sub)
    _add_sweep(sub)
    _add_bench_sweep(sub)
    _add_schema(sub)
    from .cli_analysis import add_parsers as add_analysis
    from .theory.cli import add_parser as add_theory

    add_analysis(sub)
    add_theory(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

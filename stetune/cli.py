"""The `stetune` command: train, bench, bench-sweep and theory here; sweep, resume, submit,
status, logs and schema in cli_sweep; list and show in cli_show; analyze and export in
cli_analysis."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

__all__ = ["main", "build_parser"]


class _Defaults(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is one: None means "the model's" or "none", which the
    option's help says."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


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
        formatter_class=_Defaults)
    p.add_argument("--model", default=d["model"], help=" | ".join(list_models()))
    p.add_argument("--dataset", default=d["dataset"], help=datasets)
    p.add_argument("--ste", default=d["ste"], help=" | ".join(list_stes()))
    p.add_argument("--bits", type=_bits, default=d["bits"], help="activation bits 1..8, or 'float' (plain ReLU)")
    p.add_argument("--epochs", type=int, help="training epochs (default: the model's)")
    p.add_argument("--batch-size", type=int, help="batch size (default: the model's)")
    p.add_argument("--lr", type=float, help="initial learning rate (default: the model's)")
    p.add_argument("--momentum", type=float, default=d["momentum"], help="SGD momentum")
    p.add_argument("--weight-decay", type=float, default=d["weight_decay"], help="L2 weight decay")
    p.add_argument("--milestones", type=int, nargs="+",
                   help="epochs at which lr *= gamma (default: the model's fractions of the epochs)")
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
    from .train import DeviceError, resolve_device, train

    fields = [f.name for f in dataclasses.fields(RunSpec) if hasattr(args, f.name)]
    try:
        spec = RunSpec(**{f: getattr(args, f) for f in fields}).resolved()
        resolve_device(spec.device)  # here too, so that bad input is the only line printed
    except (SpecError, DeviceError) as e:
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
    from .data import DatasetError

    try:
        result = train(spec, report, checkpoint_dir=args.checkpoint_dir,
                       progress=not args.no_progress and sys.stderr.isatty())
    except UnsafeCheckpointError as e:  # a crafted or broken file: bad input, refused unread
        print(f"stetune train: error: {e}", file=sys.stderr)
        return 2
    # the environment: data missing (DatasetNotFoundError is an OSError) or corrupt on disk, a
    # missing --init-from, a --checkpoint-dir that cannot be written
    except (DatasetError, OSError) as e:
        print(f"stetune train: error: {e}", file=sys.stderr)
        return 1
    summary = {"status": result.status, "epochs_run": result.epochs_run,
               "best_val_acc": result.best_val_acc, "final": result.metrics,
               "epoch_time_mean": sum(h["epoch_time"] for h in result.history) / max(1, len(result.history)),
               "spec": result.spec, "code": result.code}
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        try:
            with open(args.out, "w") as f:
                f.write(text + "\n")
        except OSError as e:  # the summary is on stdout already; say why the file is not
            print(f"stetune train: error: out must be a writable file, but got out={args.out!r} "
                  f"({e.strerror or e})", file=sys.stderr)
            return 1
    return 0


def _add_bench(sub) -> None:
    p = sub.add_parser(
        "bench", help="time training steps: quantized (each STE) vs float ReLU",
        description="Time training steps (forward, backward, SGD step) of each model with quantized "
                    "activations, for every STE, against the same model with float ReLU, same loop "
                    "and batch. Rounds are interleaved; medians are reported with the quantized/float "
                    "ratio.", formatter_class=_Defaults)
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
    from .train import DeviceError, resolve_device

    bad = [m for m in args.models if m not in list_models()]
    if bad:
        print(f"stetune bench: error: models must be among {list_models()}, but got {bad}", file=sys.stderr)
        return 2
    try:
        resolve_device(args.device)
    except DeviceError as e:
        print(f"stetune bench: error: {e}", file=sys.stderr)
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
        "bench-sweep", help="measure sweep utilisation against a plain process pool",
        description="Run the same LeNet-5 trials on digits twice: in a plain process pool (the "
                    "floor: train() per trial, nothing else), then as a sweep on a local Ray. "
                    "Reports each one's utilisation = sum of the trials' epoch times / (wall time "
                    "x slots), the per-trial overhead, the sweep's utilisation as a share of the "
                    "floor's and its overhead beyond the floor per epoch.",
        formatter_class=_Defaults)
    p.add_argument("--trials", type=int, default=8, help="number of trials")
    p.add_argument("--epochs", type=int, default=100, help="epochs per trial (100 ≈ 20 s on one core)")
    p.add_argument("--slots", type=int, default=2, help="concurrent trials (one CPU each)")
    p.add_argument("--mlflow-server", action="store_true",
                   help="log through an `mlflow server` on 127.0.0.1 instead of a sqlite file")
    p.add_argument("--no-floor", action="store_true", help="skip the process-pool run")
    p.add_argument("--pack", type=int, default=1,
                   help="resources.pack of the sweep: trials trained together per process")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    p.set_defaults(func=_run_bench_sweep)


def _run_bench_sweep(args) -> int:
    from .sweep.bench import format_report, sweep_utilisation

    for name in ("trials", "epochs", "slots", "pack"):
        if getattr(args, name) < 1:
            print(f"stetune bench-sweep: error: --{name} must be >= 1, but got "
                  f"{getattr(args, name)}", file=sys.stderr)
            return 2
    r = sweep_utilisation(trials=args.trials, epochs=args.epochs, slots=args.slots,
                          server=args.mlflow_server, floor=not args.no_floor, pack=args.pack)
    print(format_report(r))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stetune",
        description="Train and sweep activation-quantized networks with straight-through estimators "
                    "(identity, ReLU, clipped ReLU), after Yin et al., ICLR 2019.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"stetune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from .cli_analysis import add_parsers as add_analysis
    from .cli_show import add_parsers as add_show
    from .cli_sweep import add_parsers as add_sweep
    from .theory.cli import add_parser as add_theory

    _add_train(sub)
    _add_bench(sub)
    add_sweep(sub)
    add_show(sub)
    _add_bench_sweep(sub)
    add_analysis(sub)
    add_theory(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from . import load_plugins

    try:
        load_plugins()  # before the parser: its help lists what plugins register
    except ImportError as e:
        print(f"stetune: error: {e}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    from .storage import StorageUnreachable

    try:
        return args.func(args)
    except StorageUnreachable as e:  # list, show, analyze ... on an object store that fails
        print(f"stetune {args.command}: error: {e}; {e.hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

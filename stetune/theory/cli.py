"""`stetune theory`: coarse gradient descent on the two-linear-layer model (and Fig. 1)."""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from .descent import INITS, coarse_gradient_descent, initial_point, plot_one_step
from .model import STES, make_problem

__all__ = ["add_parser", "run", "validate", "main"]


def _nonneg_float(text: str) -> float:  # argparse `type`: reject nan / negative eps early
    x = float(text)
    if not x >= 0:
        raise argparse.ArgumentTypeError(f"eps must be >= 0, but got eps={text}")
    return x


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `theory` subcommand to an argparse subparsers object; returns its parser."""
    p = subparsers.add_parser(
        "theory",
        help="coarse gradient descent on the paper's two-linear-layer model (exact theory)",
        description="Algorithm 1 of Yin et al. (ICLR 2019) on y = v^T sigma(Z w) with binary "
                    "sigma, using exact expected coarse gradients (or mini-batches).",
    )
    p.add_argument("--ste", choices=STES, default="relu",
                   help="straight-through estimator used for the w-gradient (default: relu)")
    p.add_argument("--m", type=int, default=5, help="number of hidden units, >= 1 (default: 5)")
    p.add_argument("--n", type=int, default=8, help="input dimension, >= 2 (default: 8)")
    p.add_argument("--lr", type=float, default=0.1, help="step size eta, > 0 (default: 0.1)")
    p.add_argument("--steps", type=int, default=1000,
                   help="number of descent iterations, >= 1 (default: 1000)")
    p.add_argument("--init", choices=INITS, default="random",
                   help="starting point: seeded random, or the spurious minimum (default: random)")
    p.add_argument("--eps", type=_nonneg_float, default=0.0,
                   help="size of the seeded perturbation added to --init spurious (default: 0)")
    p.add_argument("--batch", type=int, default=None,
                   help="mini-batch size of sampled Z per step (omit: exact expectations)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the teacher (v*, w*), the init and the mini-batches (default: 0)")
    p.add_argument("--tol", type=float, default=1e-6,
                   help="loss below which the run counts as converged (default: 1e-6)")
    p.add_argument("--json", metavar="FILE", default=None,
                   help="also write the final summary as JSON to FILE")
    p.add_argument("--fig1", metavar="FILE", default=None,
                   help="also write the paper's Fig. 1 (loss after one step vs eta) at the "
                        "initial point to FILE (.png or .pdf)")
    p.set_defaults(func=run)
    return p


def validate(args) -> str | None:
    """First invalid option as an error message ("m must be an int >= 1 (m: hidden units), but
    got m=0"), or None: each checked by the rule of its field in a theory sweep spec."""
    from ..spec import SpecError, TheorySweepSpec
    from ..spec.fields import rule_of
    from ..spec.theory import HIDDEN, INPUT_DIM

    def item(name):  # the rule of one element of a list field (lrs -> lr, seeds -> seed)
        return rule_of(TheorySweepSpec, name).item

    rules = {"m": HIDDEN, "n": INPUT_DIM, "lr": item("lrs"), "seed": item("seeds"),
             **{k: rule_of(TheorySweepSpec, k) for k in ("steps", "batch", "eps", "tol")}}
    try:
        for name, rule in rules.items():
            rule.parse(getattr(args, name), name)
    except SpecError as e:
        return str(e)
    return None


def _jsonable(x):
    if isinstance(x, float) and not np.isfinite(x):
        return None  # JSON has no nan/inf
    return x


def _print_trajectory(res, rows: int = 6) -> None:
    idx = np.unique(np.linspace(0, res.f.size - 1, rows).round().astype(int))
    print(f"{'iter':>7} {'f':>12} {'cos':>9} {'theta':>9} {'||w||':>9}")
    for k in idx:
        print(f"{k:>7d} {res.f[k]:>12.4e} {res.cos[k]:>9.4f} {res.theta[k]:>9.4f} "
              f"{res.w_norm[k]:>9.4f}")


def run(args) -> int:
    """Run the `theory` subcommand; returns the exit code (2 on invalid values)."""
    err = validate(args)
    if err is not None:
        print(f"stetune theory: error: {err}", file=sys.stderr)
        return 2
    try:
        prob = make_problem(args.m, args.n, args.seed)
        v0, w0 = initial_point(prob, args.init, eps=args.eps, seed=args.seed)
        if args.fig1:
            plot_one_step(prob, v0, w0, args.ste, args.fig1, seed=args.seed)
            print(f"wrote {args.fig1}")
        res = coarse_gradient_descent(prob, args.ste, args.lr, args.steps, init=args.init,
                                      eps=args.eps, batch=args.batch, seed=args.seed,
                                      tol=args.tol)
    except (ValueError, FloatingPointError) as exc:
        print(f"stetune theory: error: {exc}", file=sys.stderr)
        return 2
    summary = {"m": args.m, "n": args.n, **{k: _jsonable(v) for k, v in res.summary.items()}}
    _print_trajectory(res)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    return 0


def main(argv=None) -> int:
    """Stand-alone entry (python -m stetune.theory.cli ...): only the `theory` subcommand."""
    parser = argparse.ArgumentParser(prog="stetune")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())

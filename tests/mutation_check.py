"""Mutation check: does the suite catch the bugs that matter? (issue 15)

Usage: .venv/bin/python tests/mutation_check.py [--only NAME ...] [--list] [--no-baseline]

Copies the repository's files (tracked and untracked-but-not-ignored, as they are in the working
tree now) into a temporary folder, then for each mutation below, one at a time, in a fresh copy:
replaces one exact piece of code, runs that mutation's tests there with this repository's venv
python (`python -m pytest -q -x -p no:cacheprovider <tests>`, cwd and PYTHONPATH the copy, so the
copy's stetune is the one imported: checked before anything runs), and prints a table:
mutation | caught? | by which test | seconds.

A mutation whose old text is not found exactly once is reported "stale" (the code moved on: fix
its entry), never counted as caught. A baseline run of the unmutated copy comes first: a test that
already fails would make every mutation look caught. Exit status 1 when any mutation survives or
is stale, or the baseline fails. Not collected by pytest (no test_ prefix) and not part of the
default test run: a full pass takes minutes.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYTHON = REPO / ".venv" / "bin" / "python"
TIMEOUT_S = 1200  # per mutation: the slowest listed tests take well under a minute each


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str            # relative to the repository root
    old: str             # must occur exactly once in `file`
    new: str
    description: str
    tests: tuple[str, ...]  # pytest node ids (or files) to run against the mutant


Q, T = "tests/test_quant.py", "tests/test_train.py"
QUANTIZER = (f"{Q}::test_quantizer_levels_and_intervals", f"{Q}::test_quantizer_boundary_points")
STE = (f"{Q}::test_ste_gradient_masks_are_exact",
       f"{Q}::test_ste_backward_is_the_proxy_derivative_away_from_kinks")
LLOYD = (f"{Q}::test_lloyd_alpha_matches_published_2bit_to_1e3",
         f"{Q}::test_lloyd_alpha_1_and_4_bits_within_sampling_noise_of_published",
         f"{Q}::test_lloyd_alpha_is_the_exact_mse_minimiser_at_every_bit_width")

MUTATIONS: list[Mutation] = [
    Mutation("quantizer-floor+1", "stetune/quant/ste/base.py",
             "return q.clamp_(0.0, float(levels)).ceil_().mul_(alpha)",
             "return q.clamp_(0.0, float(levels)).floor_().add_(1).clamp_(max=float(levels)).mul_(alpha)",
             "quantizer levels shifted: floor(x/a)+1 instead of ceil(x/a)", QUANTIZER),
    Mutation("quantizer-round", "stetune/quant/ste/base.py",
             "return q.clamp_(0.0, float(levels)).ceil_().mul_(alpha)",
             "return q.clamp_(0.0, float(levels)).round_().mul_(alpha)",
             "quantizer: round(x/a) instead of ceil(x/a)", QUANTIZER),
    Mutation("clipped-relu-passes-at-top", "stetune/quant/ste/clipped_relu.py",
             "return torch.ops.aten.hardtanh_backward(grad, x, 0.0, ctx.top), None, None",
             "return torch.where((x > 0) & (x <= ctx.top), grad, torch.zeros_like(grad)), None, None",
             "clipped-ReLU STE passes the gradient at x == top", STE),
    Mutation("relu-passes-at-0", "stetune/quant/ste/relu.py",
             "        ctx.save_for_backward(output)\n\n    @staticmethod\n    def backward(ctx, grad):\n"
             "        (y,) = ctx.saved_tensors\n"
             "        return torch.ops.aten.threshold_backward(grad, y, 0.0), None, None",
             "        ctx.save_for_backward(inputs[0])\n\n    @staticmethod\n    def backward(ctx, grad):\n"
             "        (x,) = ctx.saved_tensors\n"
             "        return torch.where(x >= 0, grad, torch.zeros_like(grad)), None, None",
             "ReLU STE passes the gradient at x == 0", STE),
    Mutation("resume-without-generator", "stetune/checkpoint.py",
             '    gen.set_state(state["generator"])\n',
             "    pass  # mutant: the data-order generator is not restored\n",
             "resume without restoring the data-order generator",
             (f"{T}::test_resume_with_augmentation_repeats_history_metrics_and_weights",)),
    Mutation("lloyd-stops-at-1e-4", "stetune/quant/lloyd.py",
             "        g2 = _lloyd_step(g1, levels)\n",
             "        if abs(g1 - a) < 1e-4 * abs(a):\n            return g1\n"
             "        g2 = _lloyd_step(g1, levels)\n",
             "Lloyd-Max (exact) iteration stopped at a 1e-4 relative change", LLOYD),
    Mutation("ste-switch-never-applied", "stetune/train.py",
             "        set_ste_(model, ste)\n",
             "        pass  # mutant: the STE switch is never applied to the model\n",
             "train() never applies the STE switch (the label still says it)",
             (f"{T}::test_ste_switch_changes_the_trained_models_gradients",)),
    Mutation("ste-switch-only-at-its-epoch", "stetune/train.py",
             "        set_ste_(model, ste)\n",
             "        if epoch == spec.switch_ste_at:  # mutant: lost when resuming past the switch\n"
             "            set_ste_(model, ste)\n",
             "STE switched only at switch_ste_at (a run resumed past it trains with the old STE)",
             (f"{T}::test_ste_switch_changes_the_trained_models_gradients",)),
    Mutation("divergence-no-mid-epoch-stop", "stetune/train.py",
             "            if step % DIVERGENCE_CHECK == 0 and not torch.isfinite(loss_sum):",
             "            if False:  # mutant: divergence noticed only at the epoch's end",
             "no mid-epoch divergence check (the epoch runs to its end on NaN)",
             (f"{T}::test_divergence_in_a_later_epoch_stops_mid_epoch",
              f"{T}::test_nan_loss_ends_the_run_as_diverged")),
    Mutation("redact-stops-at-first-@", "stetune/naming.py",
             r':)\S+(?=@[^@/\s]*(?:[/?#\s]|$))")',
             r':)[^@\s]+(?=@)")',
             "URL-password masking stops at the first '@' (p@ss-123 would show ss-123)",
             ("tests/test_naming.py",)),
    # -- sweep-level: real sweeps on a local Ray, so each takes a minute or two ---------------
    Mutation("asha-shared-across-cells", "stetune/sweep/cells.py",
             '        key = trial.config["cfg"]["cell"]\n',
             '        key = "all"  # mutant: one ASHA for every cell\n',
             "single shared ASHA scheduler instead of one per cell (CellASHA)",
             ("tests/test_sweep_cells.py::test_cell_asha_stops_a_trial_only_against_its_own_cell",
              "tests/test_sweep_cells.py::test_cell_asha_mode_min_stops_the_higher_loss_within_a_cell",
              "tests/test_sweep.py::test_asha_prunes_each_cell_against_its_own_trials_only")),
    Mutation("asha-plain-scheduler-in-sweep", "stetune/sweep/kinds/network.py",
             "    scheduler = (CellASHA(spec.metric, spec.mode, epochs, spec.asha.grace_period,\n"
             "                          spec.asha.reduction_factor) if spec.asha.enabled else None)\n",
             "    from ray.tune.schedulers import ASHAScheduler  # mutant: one scheduler for the sweep\n"
             "    scheduler = (ASHAScheduler(time_attr='training_iteration', metric=spec.metric, "
             "mode=spec.mode, max_t=epochs, grace_period=spec.asha.grace_period, "
             "reduction_factor=spec.asha.reduction_factor) if spec.asha.enabled else None)\n",
             "the search phase uses one shared ASHAScheduler for all cells",
             ("tests/test_sweep.py::test_asha_prunes_each_cell_against_its_own_trials_only",)),
    Mutation("replicates-worst-config", "stetune/sweep/kinds/network.py",
             'sign * value > sign * entry["best"]["value"]',
             'sign * value < sign * entry["best"]["value"]',
             "replicates re-run each cell's worst finished search config (mode max and min)",
             ("tests/test_sweep.py::test_local_sweep_one_parent_one_child_per_trial",
              "tests/test_analysis.py::test_cell_table_matches_the_mlflow_runs")),
    Mutation("replicates-first-config", "stetune/sweep/kinds/network.py",
             'if entry["best"] is None or sign * value > sign * entry["best"]["value"]:',
             'if entry["best"] is None:  # mutant: the first finished trial',
             "replicates re-run each cell's first finished search config",
             ("tests/test_sweep.py::test_local_sweep_one_parent_one_child_per_trial",
              "tests/test_analysis.py::test_cell_table_matches_the_mlflow_runs")),
    Mutation("replicates-mode-ignored", "stetune/sweep/kinds/network.py",
             '    sign = 1 if spec.mode == "max" else -1\n    cells: dict',
             '    sign = 1  # mutant: always the highest value\n    cells: dict',
             "best config chosen as the highest value even for mode: min",
             ("tests/test_sweep.py::test_local_sweep_one_parent_one_child_per_trial",)),
    Mutation("retries-hidden", "stetune/sweep/callbacks.py",
             '        self.tracker.tag_trial(self.key(trial), {"stetune.retries": trial.num_failures})\n',
             '        pass  # mutant: a retry leaves no trace on the run\n',
             "retries hidden: a trial that crashed once and was retried shows nothing",
             ("tests/test_sweep.py::test_a_retry_is_on_its_run_and_an_existing_sweep_name_is_refused",)),
]


def repo_files() -> list[str]:
    """Tracked and untracked-but-not-ignored files, as in the working tree (read-only git)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=REPO, capture_output=True, check=True).stdout
    return sorted({p for p in out.decode().split("\0") if p and (REPO / p).is_file()})


def make_copy(files: list[str], dest: Path) -> None:
    for rel in files:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest / rel)


def env_for(copy: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(copy), PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTEST_ADDOPTS", None)
    return env


def check_import(copy: Path) -> None:
    """The copy's stetune must win over the venv's editable install of this checkout."""
    out = subprocess.run([str(PYTHON), "-c", "import stetune; print(stetune.__file__)"], cwd=copy,
                         env=env_for(copy), capture_output=True, text=True, check=True).stdout
    where = Path(out.strip()).resolve()
    if copy.resolve() not in where.parents:
        sys.exit(f"mutation_check: the copy imports stetune from {where}, not from {copy}")


def run_tests(copy: Path, tests: tuple[str, ...]) -> tuple[int, str, float]:
    cmd = [str(PYTHON), "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-rfE", *tests]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=copy, env=env_for(copy), capture_output=True, text=True,
                              timeout=TIMEOUT_S)
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        rc, out = -1, f"timed out after {TIMEOUT_S} s\n{e.stdout or ''}"
    return rc, out, time.perf_counter() - t0


def first_failure(out: str) -> str:
    m = re.search(r"^(?:FAILED|ERROR) (\S+)", out, re.MULTILINE)
    return m.group(1) if m else ""


def verdict(rc: int, out: str) -> tuple[str, str]:
    """(caught?, by which test) from pytest's exit status: 1 = a test failed = caught."""
    if rc == 0:
        return "NO", ""
    if rc == 1:
        return "yes", first_failure(out)
    why = {-1: "timeout", 2: "interrupted/collection error", 4: "usage error", 5: "no tests ran"}
    return f"ERROR (rc={rc}: {why.get(rc, 'pytest failed to run')})", first_failure(out)


def print_table(rows: list[tuple[str, str, str, str]]) -> None:
    head = ("mutation", "caught?", "by which test", "seconds")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    print(line(head))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(line(r))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutations")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the run of the unmutated copy")
    args = parser.parse_args()
    if args.list:
        for m in MUTATIONS:
            print(f"{m.name}: {m.description}  [{m.file}; {' '.join(m.tests)}]")
        return 0
    chosen = MUTATIONS
    if args.only:
        unknown = sorted(set(args.only) - {m.name for m in MUTATIONS})
        if unknown:
            parser.error(f"--only must name listed mutations (see --list), but got {unknown}")
        chosen = [m for m in MUTATIONS if m.name in args.only]

    files = repo_files()
    rows, survived = [], False
    with tempfile.TemporaryDirectory(prefix="stetune-mutants-") as tmp:
        pristine = Path(tmp) / "pristine"
        make_copy(files, pristine)
        check_import(pristine)
        if not args.no_baseline:
            tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
            rc, out, secs = run_tests(pristine, tests)
            rows.append(("(baseline: no mutation)", "passes" if rc == 0 else f"FAILS (rc={rc})",
                         first_failure(out), f"{secs:.0f}"))
            print(f"baseline: rc={rc} in {secs:.0f} s", flush=True)
            if rc != 0:
                print(out[-3000:])
                print_table(rows)
                return 1
        for i, m in enumerate(chosen):
            copy = Path(tmp) / f"m{i}"
            shutil.copytree(pristine, copy)
            path = copy / m.file
            count = path.read_text().count(m.old) if path.is_file() else 0
            if count != 1:
                rows.append((m.name, f"STALE (old text found {count} times)", "", "-"))
                survived = True
            else:
                path.write_text(path.read_text().replace(m.old, m.new))
                rc, out, secs = run_tests(copy, m.tests)
                caught, by = verdict(rc, out)
                survived |= caught != "yes"
                rows.append((m.name, caught, by, f"{secs:.0f}"))
            print(f"{m.name}: {rows[-1][1]} {rows[-1][2]}", flush=True)
            shutil.rmtree(copy, ignore_errors=True)
    print()
    print_table(rows)
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())

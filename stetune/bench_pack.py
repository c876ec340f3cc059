"""`python -m stetune.bench_pack`: training-step throughput of trial packs (K members trained
as one vectorised model) against K = 1, for LeNet-5 (batch 64, 1x28x28) and ResNet-20 (batch
128, 3x32x32) on random inputs, plus the quantized/float step ratio per STE (stetune.bench).

Runs from the repository root with only PyTorch and NumPy installed: it imports torch and
stetune's models, quantizers and pack model, not the trainer (whose spec layer needs YAML and
SciPy); the STE ratios need stetune.bench, and are skipped, saying so, where it cannot load.
Timings are medians over rounds after warm-up, synchronised on CUDA; rounds interleave the
K values, so drift on a shared machine hits them alike."""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from .models import create_model
from .pack_model import PackedModel, StackedSGD, default_fused, pack_step

__all__ = ["bench_pack", "main"]

SHAPES = {"lenet5": ((1, 28, 28), 64), "resnet20": ((3, 32, 32), 128)}
CPU_MAX_K = {"lenet5": 16, "resnet20": 4}  # a few minutes in all on a CPU


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("device must be available on this machine, but got device='cuda' "
                         "(this machine has no CUDA device; use auto or cpu)")
    return torch.device(name)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _pack(name: str, k: int, batch: int, device, fused: bool):
    shape, _ = SHAPES[name]
    models = []
    for seed in range(k):
        torch.manual_seed(seed)
        models.append(create_model(name, bits=2, ste="clipped_relu").to(device))
    model = PackedModel(models, fused=fused, device=device)
    opt = StackedSGD(model.params, [0.01] * k, [0.9] * k, [1e-4] * k)
    x = torch.randn(k, batch, *shape, device=device)
    y = torch.randint(0, 10, (k, batch), device=device)
    return model, opt, x, y


def bench_pack(name: str, ks: list[int], steps: int, rounds: int, warmup: int, device,
               fused: bool) -> list[dict]:
    """Seconds per pack training step (median over rounds) for each K; one row per K."""
    _, batch = SHAPES[name]
    packs = {k: _pack(name, k, batch, device, fused) for k in ks}
    times: dict[int, list[float]] = {k: [] for k in ks}
    for k, (model, opt, x, y) in packs.items():
        for _ in range(warmup):
            pack_step(model, opt, x, y)
    for _ in range(rounds):
        for k, (model, opt, x, y) in packs.items():
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                pack_step(model, opt, x, y)
            _sync(device)
            times[k].append((time.perf_counter() - t0) / steps)
    base = statistics.median(times[ks[0]]) / ks[0]  # one member-step at the smallest K
    rows = []
    for k in ks:
        sec = statistics.median(times[k])
        rows.append({"model": name, "mode": "fused" if fused else "sequential", "k": k, "batch": batch,
                     "step_ms": 1e3 * sec, "member_step_ms": 1e3 * sec / k,
                     "images_per_s": k * batch / sec, "member_images_per_s": batch / sec,
                     "speedup": base / (sec / k)})
    return rows


def _format(rows: list[dict], k0: int) -> str:
    head = (f"{'model':<9} {'mode':<10} {'K':>3} {'step ms':>9} {'ms/member':>9} {'images/s':>9} "
            f"{'img/s/member':>12} {f'x vs K={k0}':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['model']:<9} {r['mode']:<10} {r['k']:>3} {r['step_ms']:>9.2f} "
                     f"{r['member_step_ms']:>9.2f} {r['images_per_s']:>9.0f} "
                     f"{r['member_images_per_s']:>12.0f} {r['speedup']:>9.2f}")
    return "\n".join(lines)


def _ste_ratios(models: list[str], device, steps: int, rounds: int, quick: bool) -> None:
    try:
        from .bench import bench_model, format_rows
    except ImportError as e:  # stetune.bench imports the trainer, whose spec layer needs YAML/SciPy
        print(f"skipped: quantized/float ratio per STE (stetune.bench cannot be imported here: {e})")
        return
    rows = []
    for name in models:
        shape, batch = SHAPES[name]
        rows += bench_model(name, batch_size=batch, steps=steps, rounds=rounds,
                            warmup=1 if quick else 3, device=device.type)
    print(format_rows(rows))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m stetune.bench_pack", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--ks", default="1,4,16,64", help="pack sizes, comma-separated (default 1,4,16,64)")
    p.add_argument("--models", default="lenet5,resnet20", help="lenet5 and/or resnet20")
    p.add_argument("--steps", type=int, default=None, help="steps per timed round")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds (the median is shown)")
    p.add_argument("--modes", default="auto",
                   help="fused, sequential or both (comma-separated; stetune.pack_model); auto: "
                        "both on CUDA, sequential on CPU")
    p.add_argument("--quick", action="store_true", help="fewest steps and rounds (a smoke run)")
    p.add_argument("--no-ste", action="store_true", help="skip the quantized/float ratios")
    args = p.parse_args(argv)
    device = _device(args.device)
    ks = sorted({int(k) for k in args.ks.split(",") if k.strip()})
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in models if m not in SHAPES]
    if bad or not ks or min(ks) < 1:
        raise SystemExit(f"models must be among {sorted(SHAPES)} and ks positive ints, but got "
                         f"models={args.models!r} ks={args.ks!r}")
    cuda = device.type == "cuda"
    modes = (["fused", "sequential"] if cuda else ["sequential"]) if args.modes == "auto" else \
        [m.strip() for m in args.modes.split(",")]
    if bad := [m for m in modes if m not in ("fused", "sequential")]:
        raise SystemExit(f"modes must be fused and/or sequential, but got modes={bad}")
    steps = args.steps or (1 if args.quick else (10 if cuda else 3))
    rounds = args.rounds or (2 if args.quick else (5 if cuda else 3))
    warmup = 1 if args.quick else 3
    name = torch.cuda.get_device_name(device) if cuda else (platform.processor() or platform.machine())
    print(f"device: {device} ({name}); torch {torch.__version__}; threads {torch.get_num_threads()}; "
          f"steps {steps} x rounds {rounds} (median), warm-up {warmup}; "
          f"default mode here: {'fused' if default_fused(device) else 'sequential'}")
    for model in models:
        use = ks if cuda else [k for k in ks if k <= CPU_MAX_K[model]]
        if skipped := sorted(set(ks) - set(use)):
            print(f"skipped on cpu: {model} K={skipped} (over {CPU_MAX_K[model]}: minutes per step)")
        if not use:
            continue
        rows = []
        for mode in modes:
            rows += bench_pack(model, use, steps, rounds, warmup, device, fused=mode == "fused")
        print(_format(rows, use[0]))
    if not args.no_ste:
        _ste_ratios(models, device, steps, rounds, args.quick)


if __name__ == "__main__":
    main()

"""`stetune bench`: training-step throughput of quantized models against their float twins.

Same model, same `train_step`, same batch; only the activations differ. Float and quantized
runs are interleaved in rounds and summarised by medians, so drift on a shared machine hits
both alike; the ratio is the figure to read, not the absolute images/s."""

from __future__ import annotations

import statistics
import time

import torch

from .models import create_model
from .quant import list_stes
from .train import resolve_device, train_step

__all__ = ["bench_model", "run_bench"]

INPUT_SHAPES = {"lenet5": (1, 28, 28), "vgg11": (3, 32, 32), "resnet20": (3, 32, 32)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_steps(model, opt, x, y, steps: int, device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step(model, opt, x, y)
    _sync(device)
    return (time.perf_counter() - t0) / steps


def bench_model(name: str, bits: int = 2, batch_size: int = 128, steps: int = 10, rounds: int = 5,
                warmup: int = 3, device: str = "auto", stes: tuple[str, ...] | None = None) -> list[dict]:
    """Seconds per training step (median over rounds) for float and each STE at `bits`."""
    device = resolve_device(device)
    torch.manual_seed(0)
    x = torch.randn(batch_size, *INPUT_SHAPES[name], device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)
    variants = {"float": ("float", "clipped_relu")}
    variants.update({ste: (bits, ste) for ste in (stes or list_stes())})
    runs = {}
    for key, (b, ste) in variants.items():
        model = create_model(name, bits=b, ste=ste).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
        _time_steps(model, opt, x, y, warmup, device)
        runs[key] = (model, opt, [])
    for _ in range(rounds):  # interleave: each round times every variant once
        for model, opt, times in runs.values():
            times.append(_time_steps(model, opt, x, y, steps, device))
    base, base_min = statistics.median(runs["float"][2]), min(runs["float"][2])
    rows = []
    for key, (_, _, times) in runs.items():
        sec = statistics.median(times)
        # the min is the least disturbed timing: on a busy machine noise only ever adds time
        rows.append({"model": name, "variant": key, "bits": variants[key][0], "batch": batch_size,
                     "device": device.type, "step_ms": 1e3 * sec, "images_per_s": batch_size / sec,
                     "ratio_vs_float": sec / base, "ratio_min": min(times) / base_min,
                     "spread": (max(times) - min(times)) / sec})
    return rows


def run_bench(models: list[str], **kwargs) -> list[dict]:
    rows = []
    for name in models:
        rows += bench_model(name, **kwargs)
    return rows


def format_rows(rows: list[dict]) -> str:
    head = (f"{'model':<9} {'variant':<13} {'bits':>5} {'step ms':>9} {'images/s':>9} {'ratio':>6} "
            f"{'min-ratio':>9} {'spread':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['model']:<9} {r['variant']:<13} {str(r['bits']):>5} {r['step_ms']:>9.2f} "
                     f"{r['images_per_s']:>9.0f} {r['ratio_vs_float']:>6.3f} {r['ratio_min']:>9.3f} {r['spread']:>7.1%}")
    return "\n".join(lines)

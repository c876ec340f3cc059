"""The training loop: `train(spec, report)`. Knows nothing of Ray or MLflow: it reports a metrics
dict per epoch to a callback and returns a RunResult. Diverging is a result, not an exception."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import CHECKPOINT_FILE, load_checkpoint, load_weights, save_checkpoint
from .data import Dataset, augment_batch, batch_indices, load_dataset
from .models import create_model
from .quant import QuantAct, set_ste_
from .spec import RunSpec
from .version import code_version

__all__ = ["train", "RunResult", "DeviceError", "resolve_device", "build_model", "train_step", "evaluate"]

Report = Callable[[dict], None]
EVAL_BATCH = 1000        # evaluation needs no gradients, so big batches are cheap
DIVERGENCE_CHECK = 20    # steps between finiteness checks (each one syncs with the device)


@dataclass
class RunResult:
    status: str                  # "finished" or "diverged"
    epochs_run: int
    metrics: dict                # the last epoch's metrics
    best_val_acc: float
    history: list[dict] = field(default_factory=list)
    spec: dict = field(default_factory=dict)          # the resolved spec
    code: dict = field(default_factory=dict)          # package version and git commit

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class DeviceError(ValueError):
    """A device string that is malformed, or names a device this machine does not have."""


def resolve_device(name: str = "auto") -> torch.device:
    """`name` as a torch.device this machine has: checked here, so that a missing GPU is a one-line
    DeviceError before any work rather than a driver traceback at the first tensor moved."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):  # "cuda:x", "cpu:", a non-string
        raise DeviceError(f"device must be auto, cpu, cuda[:N] or mps, but got device={name!r}") from None

    def missing(why: str) -> DeviceError:
        return DeviceError(f"device must be available on this machine, but got device={name!r} ({why})")

    if device.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise missing("this machine has no CUDA device; use auto or cpu")
        if (device.index or 0) >= n:
            raise missing(f"this machine has {n} CUDA device{'s' * (n > 1)}: cuda:0"
                          + (f"..cuda:{n - 1}" if n > 1 else ""))
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise missing("this machine has no MPS device; use auto or cpu")
        if device.index not in (None, 0):
            raise missing("there is one MPS device; use mps")
    elif device.type == "cpu":
        if device.index not in (None, 0):  # torch would ignore the index: say so rather than pretend to pin
            raise missing("the CPU is one device; use cpu")
    else:
        raise DeviceError(f"device must be auto, cpu, cuda[:N] or mps, but got device={name!r}")
    return device


def build_model(spec: RunSpec, data: Dataset) -> nn.Module:
    model = create_model(spec.model, bits=spec.bits, ste=spec.ste, alpha=spec.alpha,
                         alpha_scale=spec.alpha_scale, num_classes=data.num_classes,
                         in_channels=data.in_channels)
    if spec.init_from:
        load_weights(model, spec.init_from)  # activations hold no state: float -> quantized works
    return model


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor):
    """One SGD step; returns (loss, correct count, grad norm) as device tensors (no sync)."""
    out = model(x)
    loss = F.cross_entropy(out, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
    opt.step()
    return loss.detach(), (out.argmax(1) == y).sum(), grad_norm


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Loss and accuracy on (x, y), plus each quantized layer's saturation rate."""
    model.eval()
    acts = {n: m for n, m in model.named_modules() if isinstance(m, QuantAct)}
    for m in acts.values():
        m.track_saturation = True
        m.reset_saturation()
    loss, correct = torch.zeros((), device=x.device), torch.zeros((), device=x.device)
    for i in range(0, len(x), EVAL_BATCH):
        out = model(x[i:i + EVAL_BATCH])
        loss += F.cross_entropy(out, y[i:i + EVAL_BATCH], reduction="sum")
        correct += (out.argmax(1) == y[i:i + EVAL_BATCH]).sum()
    for m in acts.values():
        m.track_saturation = False
    model.train()
    metrics = {"val_loss": loss.item() / len(x), "val_acc": correct.item() / len(x)}
    metrics.update({f"sat/{n}": m.saturation() for n, m in acts.items()})
    return metrics


@torch.no_grad()
def measure_train(model: nn.Module, data: Dataset, batch_size: int, seed: int) -> dict:
    """Training loss and accuracy of the current weights over one pass of the training set, in
    train mode (batch statistics, augmentation) like an epoch's running loss, but without
    updates; BN running statistics are restored after, so the pass leaves no trace."""
    buffers = [b.clone() for b in model.buffers()]
    model.train()
    gen = torch.Generator().manual_seed(seed + 1)  # its own stream: the run's data order stays
    loss_sum = correct = 0.0
    for idx in batch_indices(len(data.x_train), batch_size, gen, device=data.x_train.device):
        x, y = data.x_train[idx], data.y_train[idx]
        if data.augment:
            x = augment_batch(x, gen)
        out = model(x)
        loss_sum += F.cross_entropy(out, y, reduction="sum")
        correct += (out.argmax(1) == y).sum()
    for b, saved in zip(model.buffers(), buffers):
        b.copy_(saved)
    n = len(data.x_train)
    return {"train_loss": float(loss_sum) / n, "train_acc": float(correct) / n}


def train(spec: RunSpec, report: Report | None = None, *, checkpoint_dir: str | Path | None = None,
          checkpoint_every: float = 0.0, save_now: Callable[[], bool] | None = None,
          progress: bool = False) -> RunResult:
    """Train `spec` to the end (or to divergence), reporting each epoch's metrics.

    With `checkpoint_dir`, the full state is saved there after an epoch once `checkpoint_every`
    seconds have passed since the last save (0: every epoch), after any epoch where `save_now()`
    says so (a stop is coming), and always after the last one; a run that finds a checkpoint
    there continues from it bit-exactly."""
    spec = spec.validate().resolved()
    report = report or (lambda metrics: None)
    device = resolve_device(spec.device)
    if checkpoint_dir is not None:
        _check_writable_dir(Path(checkpoint_dir))

    # data: tensors on the device, batches drawn by shuffled index
    data = load_dataset(spec.dataset, data_dir=spec.data_dir, device=device, limit=spec.limit,
                        seed=spec.seed)

    # model and optimizer; the seed fixes the initial weights, the generator the data order
    torch.manual_seed(spec.seed)
    model = build_model(spec, data).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=spec.momentum,
                          weight_decay=spec.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=spec.milestones, gamma=spec.gamma)
    gen = torch.Generator().manual_seed(spec.seed)
    result = RunResult("finished", 0, {}, 0.0, spec=spec.to_dict(), code=code_version())

    # resume: model, optimizer, scheduler, RNG, epoch and history, so the run continues exactly
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_FILE if checkpoint_dir else None
    if ckpt_path is not None and ckpt_path.exists():
        state = load_checkpoint(ckpt_path, model, opt, sched, gen, device)
        result.history, result.epochs_run = state["history"], state["epoch"]
        result.best_val_acc = max((h["val_acc"] for h in result.history if h["epoch"] >= 1), default=0.0)

    # epoch 0 (repulsion experiment): where the start weights stand, measured like an epoch
    if spec.measure_start and not result.history:
        metrics = {"epoch": 0, **measure_train(model, data, spec.batch_size, spec.seed),
                   "lr": opt.param_groups[0]["lr"], "ste": spec.ste,
                   **evaluate(model, data.x_val, data.y_val)}
        result.history.append(metrics)
        report(dict(metrics, status=result.status))

    model.train()
    saved_at = time.monotonic()
    for epoch in range(result.epochs_run + 1, spec.epochs + 1):
        t0 = time.perf_counter()
        # STE switch (the repulsion experiment): from `switch_ste_at` on, train with `switch_ste`
        ste = spec.switch_ste if spec.switch_ste_at and epoch >= spec.switch_ste_at else spec.ste
        set_ste_(model, ste)
        lr = opt.param_groups[0]["lr"]

        # one pass over the shuffled training set
        batches = batch_indices(len(data.x_train), spec.batch_size, gen, device=device)
        loss_sum, correct, gnorm_sum, seen = (torch.zeros((), device=device) for _ in range(4))
        diverged = False
        for step, idx in enumerate(_progress(batches, progress, epoch, spec.epochs)):
            x, y = data.x_train[idx], data.y_train[idx]
            if data.augment:
                x = augment_batch(x, gen)
            loss, corr, gnorm = train_step(model, opt, x, y)
            loss_sum += loss * len(idx)
            correct += corr
            gnorm_sum += gnorm
            seen += len(idx)
            if step % DIVERGENCE_CHECK == 0 and not torch.isfinite(loss_sum):
                diverged = True
                break
        sched.step()
        n = seen.item()
        train_loss = loss_sum.item() / n
        diverged = diverged or not math.isfinite(train_loss)

        # evaluate and report; a non-finite loss ends the run as "diverged"
        metrics = {"epoch": epoch, "train_loss": train_loss, "train_acc": correct.item() / n,
                   "lr": lr, "grad_norm": gnorm_sum.item() / (step + 1), "ste": ste}
        metrics.update(evaluate(model, data.x_val, data.y_val))
        metrics["epoch_time"] = time.perf_counter() - t0
        result.history.append(metrics)
        result.epochs_run, result.metrics = epoch, metrics
        if math.isfinite(metrics["val_acc"]):
            result.best_val_acc = max(result.best_val_acc, metrics["val_acc"])
        if diverged:
            result.status = "diverged"
        last = diverged or epoch == spec.epochs
        due = last or time.monotonic() - saved_at >= checkpoint_every
        if ckpt_path is not None and (due or (save_now is not None and save_now())):
            save_checkpoint(ckpt_path, model, opt, sched, gen, epoch, result.history, spec.to_dict())
            saved_at = time.monotonic()
        report(dict(metrics, status=result.status))
        if diverged:
            break
    return result


def _check_writable_dir(folder: Path) -> None:
    """Fail before the first epoch, not after it: the first save is where a bad folder would show."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        why = None if os.access(folder, os.W_OK) else "not writable"  # a read-only mount: even root can't
    except FileExistsError:
        why = "it is a file"
    except NotADirectoryError:
        why = "a folder above it is a file"
    except OSError as e:  # no permission, read-only file system, ...
        why = e.strerror or type(e).__name__
    if why:
        raise OSError(f"checkpoint_dir must be a writable directory, but got checkpoint_dir='{folder}' ({why})")


def _progress(batches, enabled: bool, epoch: int, epochs: int):
    if not enabled:
        return batches
    from tqdm import tqdm

    return tqdm(batches, desc=f"epoch {epoch}/{epochs}", leave=False, unit="batch")

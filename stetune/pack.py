"""Trial packs: K training runs of one cell trained in one process as one vectorised model
(horizontal fusion, HFTA, MLSys 2021). Members differ in seed (initial weights, data order and,
for datasets whose split depends on it, the data) and in lr, momentum, weight_decay, gamma and
alpha_scale; everything else (pack_key) is shared. Each member reproduces its own train() run:
same initial weights, same batches, same schedule, same divergence rule, same metrics.

Knows nothing of Ray, MLflow or Optuna, like train(): it reports each member's epochs to a
callback (whose truthy answer stops that member: ASHA's pruning) and returns RunResults."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Callable

import torch

from .checkpoint import CHECKPOINT_FILE, safe_load
from .data import Dataset, augment_batch, batch_indices, load_dataset
from .pack_model import PackedModel, PackError, StackedSGD, default_fused, pack_step
from .pack_state import check_pack_state, member_weights, save_pack
from .spec import RunSpec
from .train import (DIVERGENCE_CHECK, EVAL_BATCH, RunResult, _check_writable_dir, build_model,
                    resolve_device)
from .version import code_version

__all__ = ["train_pack", "pack_key", "PackError", "member_weights", "PACK_FIELDS"]

PackReport = Callable[[int, dict], object]
# what members of one pack share; they differ in seed, lr, momentum, weight_decay, gamma,
# alpha_scale (and alpha, handled like alpha_scale), and extra
PACK_FIELDS = ("model", "dataset", "ste", "bits", "batch_size", "epochs", "milestones", "device",
               "limit", "data_dir", "init_from")
EVAL_IMAGES = 32768  # fused evaluation: members x examples per vmapped chunk (GPU memory)


def pack_key(spec: RunSpec) -> tuple:
    """The values that must be equal for specs to share a pack (resolved: an unset epochs and
    the model's default are the same run)."""
    s = spec.validate().resolved()
    return tuple(tuple(v) if isinstance(v, list) else v for v in
                 (getattr(s, f) for f in PACK_FIELDS))


def _check_pack(specs: list[RunSpec]) -> list[RunSpec]:
    if not specs:
        raise PackError(f"specs must hold at least one RunSpec, but got {specs=}")
    specs = [s.validate().resolved() for s in specs]
    for i, s in enumerate(specs):
        for f in ("measure_start", "switch_ste"):
            if getattr(s, f):
                raise PackError(f"pack members must not use {f} (train() runs those), but got "
                                f"{f}={getattr(s, f)!r} (member {i})")
    keys = [pack_key(s) for s in specs]
    for i, key in enumerate(keys):
        for f, a, b in zip(PACK_FIELDS, keys[0], key):
            if a != b:
                raise PackError(f"pack members must share {f}, but got {f}={a!r} (member 0) and "
                                f"{f}={b!r} (member {i})")
    return specs


def _load_data(specs: list[RunSpec], device) -> tuple[list[Dataset], list[int]]:
    """Each member's dataset, loaded as train() loads it; members whose seed gives identical
    data (most datasets ignore it; digits and synthetic do not) share one copy."""
    unique: list[Dataset] = []
    which = []
    for s in specs:
        d = load_dataset(s.dataset, data_dir=s.data_dir, device="cpu", limit=s.limit, seed=s.seed)
        same = (j for j, u in enumerate(unique) if all(torch.equal(getattr(u, f), getattr(d, f))
                                                        for f in ("x_train", "y_train", "x_val", "y_val")))
        j = next(same, None)
        if j is None:
            unique.append(d)
            j = len(unique) - 1
        which.append(j)
    unique = [dataclasses.replace(d, **{f: getattr(d, f).to(device) for f in
                                        ("x_train", "y_train", "x_val", "y_val")}) for d in unique]
    return unique, which


class _Pack:
    """The mutable state of a running pack: who is in it, their stacked model and optimizer,
    their schedules, generators and results."""

    def __init__(self, specs: list[RunSpec], device):
        self.specs, self.device = specs, device
        self.data, self.which = _load_data(specs, device)
        models = []
        for s, j in zip(specs, self.which):
            torch.manual_seed(s.seed)  # as train(): the seed fixes the initial weights
            models.append(build_model(s, self.data[j]).to(device))
        self.model = PackedModel(models, fused=default_fused(device), device=device)
        self.opt = StackedSGD(self.model.params, [s.lr for s in specs],
                              [s.momentum for s in specs], [s.weight_decay for s in specs])
        self.gens = [torch.Generator().manual_seed(s.seed) for s in specs]
        self.lr = [float(s.lr) for s in specs]  # MultiStepLR, per member
        self.epoch = 0                           # epochs done (the schedules' last_epoch)
        self.active = list(range(len(specs)))    # members in the stacked tensors, in order
        self.results = [RunResult("finished", 0, {}, 0.0, spec=s.to_dict(), code=code_version())
                        for s in specs]

    # -- checkpoint --------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "specs": [s.to_dict() for s in self.specs], "active": list(self.active),
            "epoch": self.epoch, "keys": self.model.keys,
            "params": {n: p.detach() for n, p in self.model.params.items()},
            "buffers": self.model.buffers, "momentum": self.opt.momentum_buffer,
            "schedule": [{"lr": lr, "last_epoch": self.epoch} for lr in self.lr],
            "generators": [g.get_state() for g in self.gens], "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "members": [{"status": r.status, "epochs_run": r.epochs_run, "history": r.history,
                         "best_val_acc": r.best_val_acc} for r in self.results],
        }

    def restore(self, state: dict) -> None:
        self.model.select(state["active"])
        self.opt.select(state["active"])
        self.active, self.epoch = list(state["active"]), state["epoch"]
        self.model.load(state["params"], state["buffers"])
        self.opt.momentum_buffer = {n: b.to(self.device) for n, b in state["momentum"].items()}
        self.lr = [s["lr"] for s in state["schedule"]]
        for g, s in zip(self.gens, state["generators"]):
            g.set_state(s)
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        for r, m in zip(self.results, state["members"]):
            r.status, r.epochs_run, r.history = m["status"], m["epochs_run"], m["history"]
            r.best_val_acc, r.metrics = m["best_val_acc"], (m["history"][-1] if m["history"] else {})

    # -- one epoch ---------------------------------------------------------------------------
    def _batches(self):
        """Each member's batches for this epoch, drawn as train() draws them, as (K, n) indices."""
        spec, data = self.specs[0], self.data[0]
        orders = [batch_indices(len(data.x_train), spec.batch_size, self.gens[i], device=self.device)
                  for i in self.active]
        return torch.stack([torch.cat(o) for o in orders]), [len(b) for b in orders[0]]

    def _inputs(self, idx: torch.Tensor):
        """(K, B, ...) images and (K, B) labels of member k's batch idx[k]."""
        which = [self.which[i] for i in self.active]
        if len(set(which)) == 1:
            data = self.data[which[0]]
            x, y = data.x_train[idx], data.y_train[idx]
        else:
            x = torch.stack([self.data[w].x_train[i] for w, i in zip(which, idx)])
            y = torch.stack([self.data[w].y_train[i] for w, i in zip(which, idx)])
        if self.data[which[0]].augment:  # each member's crops from its own generator, as train()
            x = torch.stack([augment_batch(xk, self.gens[i]) for xk, i in zip(x, self.active)])
        return x, y

    def train_epoch(self, progress: bool):
        k = len(self.active)
        zeros = [torch.zeros(k, device=self.device) for _ in range(4)]
        loss_sum, correct, gnorm_sum, seen = zeros
        frozen = None                   # members whose divergence check fired this epoch
        steps = [0] * k                 # steps each member ran (its grad_norm's divisor)
        order, sizes = self._batches()
        start = 0
        for step, size in enumerate(_progress(sizes, progress, self.epoch + 1, self.specs[0].epochs, k)):
            x, y = self._inputs(order[:, start:start + size])
            start += size
            loss, corr, gnorm = pack_step(self.model, self.opt, x, y, frozen)
            if frozen is None:
                loss_sum += loss * size
                correct += corr
                gnorm_sum += gnorm
                seen += size
            else:  # the frozen keep their sums as they were when they broke
                live = ~frozen
                loss_sum = torch.where(live, loss_sum + loss * size, loss_sum)
                correct = torch.where(live, correct + corr, correct)
                gnorm_sum = torch.where(live, gnorm_sum + gnorm, gnorm_sum)
                seen = torch.where(live, seen + size, seen)
            if step % DIVERGENCE_CHECK == 0:
                bad = ~torch.isfinite(loss_sum)
                if frozen is not None:
                    bad &= ~frozen
                if bad.any():  # one sync for the whole pack, as train()'s one per run
                    for j in bad.nonzero().flatten().tolist():
                        steps[j] = step + 1
                    frozen = bad if frozen is None else frozen | bad
                    if frozen.all():
                        break
        steps = [s or step + 1 for s in steps]
        frozen = frozen.tolist() if frozen is not None else [False] * k
        return loss_sum.tolist(), correct.tolist(), gnorm_sum.tolist(), seen.tolist(), steps, frozen

    @torch.no_grad()
    def evaluate(self) -> list[dict]:
        """train()'s evaluate for every member at once, each on its own validation split."""
        which = [self.which[i] for i in self.active]
        shared = len(set(which)) == 1
        k = len(self.active)
        xs = self.data[which[0]].x_val if shared else torch.stack([self.data[w].x_val for w in which])
        ys = self.data[which[0]].y_val if shared else torch.stack([self.data[w].y_val for w in which])
        n = len(self.data[which[0]].x_val)
        chunk = max(1, min(EVAL_BATCH, EVAL_IMAGES // k)) if self.model.fused else EVAL_BATCH
        loss = correct = sats = None
        seen = [0] * len(self.model.acts)
        for s in range(0, n, chunk):
            sl = (slice(s, s + chunk),) if shared else (slice(None), slice(s, s + chunk))
            lo, co, sa, se = self.model.evaluate_chunk(xs[sl], ys[sl], shared)
            if loss is None:
                loss = torch.zeros(k, device=self.device)
                correct = torch.zeros(k, device=self.device)
                sats = torch.zeros_like(sa)
            loss += lo
            correct += co
            sats += sa
            seen = [a + b for a, b in zip(seen, se)]
        loss, correct, sats = loss.tolist(), correct.tolist(), sats.tolist()
        names = [name for name, _ in self.model.acts]
        return [{"val_loss": loss[j] / n, "val_acc": correct[j] / n,
                 **{f"sat/{name}": (float(sats[j][a]) / seen[a] if seen[a] else None)
                    for a, name in enumerate(names)}} for j in range(k)]

    def schedule_step(self) -> None:
        """MultiStepLR.step() for every member: lr x gamma ** (times the epoch is a milestone)."""
        self.epoch += 1
        for i, s in enumerate(self.specs):
            if self.epoch in s.milestones:
                self.lr[i] = self.lr[i] * s.gamma ** s.milestones.count(self.epoch)

    def leave(self, gone: set[int]) -> None:
        keep = [j for j, i in enumerate(self.active) if i not in gone]
        self.model.select(keep)
        self.opt.select(keep)
        self.active = [self.active[j] for j in keep]


def train_pack(specs: list[RunSpec], report: PackReport | None = None, *,
               checkpoint_dir: str | Path | None = None, checkpoint_every: float = 0.0,
               save_now: Callable[[], bool] | None = None, progress: bool = False
               ) -> list[RunResult]:
    """Train `specs` as one pack; `report(i, metrics)` after each epoch of member i (an index
    into specs) with the metrics train() reports; a truthy answer stops member i ("pruned").
    A member whose loss turns non-finite is frozen at that step and leaves as "diverged".

    With `checkpoint_dir`, the whole pack is saved to checkpoint.pt there after an epoch's
    reports (so it records who they stopped) when `checkpoint_every` seconds have passed since
    the last save (0: every epoch) or `save_now()` says so, and always after the last epoch and
    after an epoch in which a member left; a pack that finds a checkpoint there continues from it bit-exactly (a report
    that raises loses that epoch, which the next run repeats, reporting it again)."""
    specs = _check_pack(specs)
    report = report or (lambda i, metrics: None)
    device = resolve_device(specs[0].device)
    if checkpoint_dir is not None:
        _check_writable_dir(Path(checkpoint_dir))
    pack = _Pack(specs, device)
    ckpt = Path(checkpoint_dir) / CHECKPOINT_FILE if checkpoint_dir is not None else None
    if ckpt is not None and ckpt.exists():
        state = safe_load(ckpt, map_location=device)
        check_pack_state(state, ckpt, [s.to_dict() for s in specs])
        pack.restore(state)
    last_save = time.monotonic()
    epochs = specs[0].epochs
    while pack.active and pack.epoch < epochs:
        t0 = time.perf_counter()
        lrs = [pack.lr[i] for i in pack.active]
        pack.opt.set_hyper(lrs, [specs[i].momentum for i in pack.active],
                           [specs[i].weight_decay for i in pack.active])
        loss, correct, gnorm, seen, steps, frozen = pack.train_epoch(progress)
        pack.schedule_step()
        evals = pack.evaluate()
        # each member's share of the pack's epoch: summed over runs, the machine's time (as
        # for separate trials), so utilisation and time-per-trial figures stay comparable
        epoch_time = (time.perf_counter() - t0) / len(pack.active)
        gone = set()
        for j, i in enumerate(list(pack.active)):
            r, n = pack.results[i], seen[j]
            train_loss = loss[j] / n
            diverged = frozen[j] or not math.isfinite(train_loss)
            metrics = {"epoch": pack.epoch, "train_loss": train_loss, "train_acc": correct[j] / n,
                       "lr": lrs[j], "grad_norm": gnorm[j] / steps[j], "ste": specs[i].ste,
                       **evals[j], "epoch_time": epoch_time}
            r.history.append(metrics)
            r.epochs_run, r.metrics = pack.epoch, metrics
            if math.isfinite(metrics["val_acc"]):
                r.best_val_acc = max(r.best_val_acc, metrics["val_acc"])
            if diverged:
                r.status = "diverged"
                gone.add(i)
            stop = report(i, dict(metrics, status=r.status))
            if stop and not diverged and pack.epoch < epochs:  # after the last, nothing to stop
                r.status = "pruned"
                gone.add(i)
        if gone:
            pack.leave(gone)
        due = (time.monotonic() - last_save >= checkpoint_every or bool(gone)
               or not pack.active or pack.epoch == epochs)
        if ckpt is not None and (due or (save_now is not None and save_now())):
            save_pack(ckpt, pack.state())
            last_save = time.monotonic()
    return pack.results


def _progress(sizes, enabled: bool, epoch: int, epochs: int, k: int):
    if not enabled:
        return sizes
    from tqdm import tqdm

    return tqdm(sizes, desc=f"pack of {k}, epoch {epoch}/{epochs}", leave=False, unit="batch")

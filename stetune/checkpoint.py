"""Checkpoints: full training state (for bit-exact resume) and plain weights (for init_from).

Every load is `torch.load(weights_only=True)`: tensors, numbers, strings and plain containers
only, so a crafted file (an `--init-from`, a checkpoint dropped into a checkpoint folder, weights
someone uploaded to an MLflow run) is refused rather than run."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch
from torch import nn

__all__ = ["CHECKPOINT_FILE", "save_checkpoint", "load_checkpoint", "load_weights", "safe_load",
           "UnsafeCheckpointError"]

CHECKPOINT_FILE = "checkpoint.pt"


def save_checkpoint(path: Path, model, opt, sched, gen: torch.Generator, epoch: int,
                    history: list[dict], spec: dict) -> None:
    state = {
        "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
        "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "epoch": epoch, "history": history, "spec": spec,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a crash mid-save leaves the previous checkpoint intact


class UnsafeCheckpointError(ValueError):
    """A file that is not a plain-data checkpoint (a pickle that would run code, or garbage), or
    whose weights do not fit the model: either way bad input, refused before any training."""


def safe_load(path: str | os.PathLike, map_location=None, what: str = "checkpoint"):
    """torch.load(weights_only=True), with a one-line error naming the file when it refuses."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__]
        # torch's first paragraph suggests loading it unsafely (never here); the next line says
        # why it refused ("Trying to load unsupported GLOBAL posix.system ...")
        if lines[0].startswith("Weights only load failed") and len(lines) > 1:
            lines = lines[1:]
        first = lines[0].removeprefix("WeightsUnpickler error:").strip()
        raise UnsafeCheckpointError(f"{what} {str(path)!r} must be a weights-only PyTorch file "
                                    f"(tensors and plain data), but loading it safely failed: "
                                    f"{first[:200]}") from None


def load_checkpoint(path: Path, model, opt, sched, gen: torch.Generator, device) -> dict:
    state = safe_load(path, map_location=device)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    gen.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return state


def load_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load weights from a training checkpoint or a bare state_dict file (strict: a checkpoint
    of another architecture is an error, not a silent partial load)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"init_from must be an existing checkpoint file, but got init_from='{path}'")
    state = safe_load(path, map_location="cpu", what="init_from")
    try:
        model.load_state_dict(state["model"] if isinstance(state, dict) and "model" in state
                              else state)
    except (RuntimeError, TypeError, AttributeError) as e:  # another architecture, or no weights
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        detail = " ".join(ln.strip() for ln in str(e).splitlines()[1:3])[:200]
        raise UnsafeCheckpointError(f"init_from {str(path)!r} must hold weights of this model, but "
                                    f"they do not fit: {first} {detail}".rstrip()) from None

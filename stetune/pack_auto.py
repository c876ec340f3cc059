"""`resources.pack: auto` on a GPU: how many members of a cell one trial's share of the device
holds. Measured, not guessed: a pack of two trains one step and the peak memory per member,
times a margin, divides the free share. Runs where the trials run (a Ray task with the trial's
GPU share); knows nothing of Ray."""

from __future__ import annotations

import torch

__all__ = ["auto_pack_size", "MAX_AUTO_PACK"]

MAX_AUTO_PACK = 64   # past this a GPU is saturated by LeNet-5 already (stetune.bench_pack)
MARGIN = 1.5         # evaluation batches, allocator fragmentation, the last partial batch


def auto_pack_size(run: dict, gpu_share: float) -> int:
    """Members of `run` (a RunSpec dict) that fit in `gpu_share` of the current CUDA device."""
    from .pack import train_pack
    from .spec import RunSpec

    if not torch.cuda.is_available():
        raise RuntimeError("resources.pack: auto with gpus_per_trial > 0 needs a CUDA device "
                           "on the node, but torch.cuda.is_available() is False there")
    device = torch.device("cuda")
    free, total = torch.cuda.mem_get_info(device)
    spec = RunSpec.from_dict({**run, "epochs": 1, "limit": 2 * (run.get("batch_size") or 128),
                              "device": "cuda"})
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    train_pack([spec, RunSpec.from_dict({**spec.to_dict(), "seed": spec.seed + 1})])
    per_member = max(1, (torch.cuda.max_memory_allocated(device) - base) / 2)
    budget = min(free, total * min(1.0, gpu_share))
    return int(max(1, min(MAX_AUTO_PACK, budget // (per_member * MARGIN))))

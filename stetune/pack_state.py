"""A pack's checkpoint: one file holding every member's state, and one member's plain weights
read back from it.

Plain data only (tensors, numbers, strings, lists, dicts), so it loads with
`torch.load(weights_only=True)` (stetune.checkpoint.safe_load) like every checkpoint here, and
stetune.checkpoint.load_weights never needs to know about packs: member_weights hands it the
plain format."""

from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["PACK_FORMAT", "save_pack", "member_weights", "check_pack_state"]

PACK_FORMAT = "stetune-pack/1"


def save_pack(path: Path, state: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(dict(state, format=PACK_FORMAT), tmp)
    os.replace(tmp, path)  # atomic: a crash mid-save leaves the previous checkpoint intact


def check_pack_state(state, path, specs: list[dict]) -> None:
    """A checkpoint found in a pack's folder must be that pack's: same specs, same order."""
    if not isinstance(state, dict) or state.get("format") != PACK_FORMAT:
        got = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"checkpoint {str(path)!r} must be a pack checkpoint ({PACK_FORMAT}), "
                         f"but got format={got!r}")
    if state["specs"] != specs:
        diff = next((i for i, (a, b) in enumerate(zip(state["specs"], specs)) if a != b),
                    min(len(specs), len(state["specs"])))
        raise ValueError(f"checkpoint {str(path)!r} must hold this pack's specs to resume it, but "
                         f"got {len(state['specs'])} specs there and {len(specs)} here, "
                         f"first differing at member {diff}")


def member_weights(state: dict, i: int) -> dict:
    """{"model": member i's plain state_dict (loadable into create_model(...) with strict=True,
    or by load_weights), "spec": its resolved spec dict} from a loaded pack checkpoint. Only
    members still in the pack when it was saved have weights there (a finished pack holds all
    its finished members); one that was pruned or diverged earlier left with them."""
    n = len(state["specs"])
    if not (isinstance(i, int) and 0 <= i < n):
        raise ValueError(f"i must be a member index in 0..{n - 1}, but got {i=}")
    if i not in state["active"]:
        status = state["members"][i]["status"]
        raise ValueError(f"member i must be in the pack when it was saved, but got {i=} "
                         f"(status {status!r}, left after epoch {state['members'][i]['epochs_run']})")
    j = state["active"].index(i)
    both = {**state["params"], **state["buffers"]}
    model = {name: both[name][j].detach().cpu().clone() for name in state["keys"]}
    return {"model": model, "spec": dict(state["specs"][i])}

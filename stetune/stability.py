"""Stability measures shared by the sweep driver and the analysis (pure Python: no Ray, MLflow
or torch): loss spikes in a training curve, and the repulsion experiment's loss ratio and
verdict per STE."""

from __future__ import annotations

import math

__all__ = ["count_spikes", "loss_ratios", "repulsion_rows"]


def count_spikes(losses, factor: float) -> int:
    """Epochs whose training loss exceeds `factor` x the minimum of the epochs before them
    (non-finite losses are divergence, counted separately, not spikes)."""
    spikes, low = 0, math.inf
    for x in losses:
        if not math.isfinite(x):
            continue
        if x > factor * low:
            spikes += 1
        low = min(low, x)
    return spikes


def loss_ratios(history: list[dict], probe_epochs: int) -> dict:
    """From one continuation run's per-epoch rows (epoch 0 = the start): start, after-probe and
    final training loss and validation accuracy, and ratio = loss after probe / start loss."""
    at = {int(h["epoch"]): h for h in history if _num(h.get("train_loss")) is not None}
    start, probe = at.get(0, {}), at.get(probe_epochs, {})
    last = at[max(at)] if at else {}
    s, p = _num(start.get("train_loss")), _num(probe.get("train_loss"))
    ratio = p / s if s and p is not None else math.nan
    return {"start_loss": s, "start_acc": _num(start.get("val_acc")), "probe_loss": p,
            "probe_acc": _num(probe.get("val_acc")), "final_loss": _num(last.get("train_loss")),
            "final_acc": _num(last.get("val_acc")), "ratio": ratio}


def repulsion_rows(trials: list[dict], factor: float) -> list[dict]:
    """Per STE (first-seen order), over its seeds: the mean loss ratio after the probe and the
    verdict: diverged if any seed diverged, repelled if the mean ratio >= factor, else held."""
    rows = []
    for ste in dict.fromkeys(t["ste"] for t in trials):
        ts = [t for t in trials if t["ste"] == ste]
        ratios = [r for t in ts if (r := _num(t.get("ratio"))) is not None and math.isfinite(r)]
        mean = sum(ratios) / len(ratios) if ratios else math.nan
        verdict = ("diverged" if any(t.get("status") == "diverged" for t in ts)
                   else "no data" if not ratios else "repelled" if mean >= factor else "held")
        rows.append({"ste": ste, "seeds": len(ts), "ratio": mean,
                     "ratio_min": min(ratios, default=math.nan),
                     "ratio_max": max(ratios, default=math.nan), "verdict": verdict,
                     **{k: _mean(ts, k) for k in ("start_loss", "probe_loss", "final_loss",
                                                  "start_acc", "probe_acc", "final_acc")}})
    return rows


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _mean(ts: list[dict], key: str) -> float:
    vals = [v for t in ts if (v := _num(t.get(key))) is not None and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else math.nan

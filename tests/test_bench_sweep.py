"""`stetune bench-sweep` as a user runs it: the floor and the sweep on the same trials, figures
that add up; and what `resources.pack: auto` means on a CPU."""

from __future__ import annotations

import json

import pytest

from sweep_helpers import run_cli, small_spec

from stetune.sweep.kinds.network import AUTO_PACK_CPU, _pack_size

pytestmark = pytest.mark.slow


def test_bench_sweep_reports_the_floor_and_a_packed_sweep_on_the_same_trials(tmp_path):
    code, out, err = run_cli("bench-sweep", "--trials", "3", "--epochs", "2", "--pack", "2",
                             "--json", str(tmp_path / "r.json"), timeout=900)
    assert code == 0, err[-3000:]
    r = json.loads((tmp_path / "r.json").read_text())
    floor, sweep = r["floor"], r["sweep"]
    assert floor["trials"] == sweep["trials"] == 3 and r["pack"] == 2
    for f in (floor, sweep):
        # each trial's epochs: about the same training either way (a pack's members report
        # their share of its epochs), never more than the machine had
        assert 0 < f["utilisation"] <= f["window_utilisation"] <= 1.0, f
        assert f["train_s"] == pytest.approx(f["train_s_per_trial"] * 3)
        assert f["startup_s"] >= 0 and f["window_s"] <= f["wall_s"]
    assert r["utilisation_vs_floor"] == pytest.approx(sweep["utilisation"] / floor["utilisation"])
    assert r["wall_ratio"] == pytest.approx(floor["wall_s"] / sweep["wall_s"])
    assert "sweep utilisation / floor" in out and "packs of 2" in out


def test_pack_auto_on_a_cpu_is_capped_by_the_cells_trials(tmp_path):
    spec = small_spec(tmp_path, "auto", ["resources.pack=auto"])
    assert _pack_size(spec, 3) == 3  # never more members than a cell has trials
    assert _pack_size(spec, 100) == AUTO_PACK_CPU
    assert _pack_size(small_spec(tmp_path, "four", ["resources.pack=4"]), 100) == 4

"""CellSearcher: every cell gets exactly its budget, each from its own seeded TPE."""

import pickle

from ray.tune.search import Searcher

from stetune.spec.sweep import Param
from stetune.sweep.cells import CellSearcher
from stetune.sweep.kinds.base import cell_key

CELLS = [("identity", 2), ("relu", 2), ("clipped_relu", 4)]
SEARCH = {"lr": Param("loguniform", 0.01, 0.1)}


def _drain(searcher: CellSearcher, start: int = 0) -> list[dict]:
    configs = []
    for i in range(start, 100):
        cfg = searcher.suggest(f"t{i}")
        if cfg == Searcher.FINISHED:
            break
        cfg = cfg["cfg"]  # a trial config {cell, phase, params, tags}
        configs.append(cfg)
        # the cell TPEs learn from completed trials; a bad cell must not lose its budget
        value = 0.9 if cfg["params"]["ste"] == "clipped_relu" else 0.1
        searcher.on_trial_complete(f"t{i}", {"val_acc": value, "training_iteration": 1})
    return configs


def test_equal_budget_per_cell_round_robin():
    configs = _drain(CellSearcher(CELLS, SEARCH, 4, "val_acc", "max", seed=0))
    keys = [c["cell"] for c in configs]
    assert len(keys) == 12 and all(keys.count(cell_key(s, b)) == 4 for s, b in CELLS)
    assert all(c["phase"] == "search" and c["tags"]["stetune.ste"] == c["params"]["ste"]
               for c in configs)
    assert keys[:3] == ["identity/2", "relu/2", "clipped_relu/4"]  # interleaved, not cell by cell
    assert all(0.01 <= c["params"]["lr"] <= 0.1 for c in configs)


def test_seeded_and_restorable(tmp_path):
    a = _drain(CellSearcher(CELLS, SEARCH, 3, "val_acc", "max", seed=7))
    b = _drain(CellSearcher(CELLS, SEARCH, 3, "val_acc", "max", seed=7))
    assert a == b
    # save mid-way, restore into a fresh object: the rest of the budget, no more, no less
    s = CellSearcher(CELLS, SEARCH, 3, "val_acc", "max", seed=7)
    first = [s.suggest(f"t{i}") for i in range(4)]
    for i in range(4):
        s.on_trial_complete(f"t{i}", {"val_acc": 0.5, "training_iteration": 1})
    s.save(str(tmp_path / "state.pkl"))
    restored = CellSearcher([("x", 1)], {}, 1, "val_acc", "max")
    restored.restore(str(tmp_path / "state.pkl"))
    rest = _drain(restored, start=4)
    assert len(first) + len(rest) == 9
    pickle.dumps(restored)  # Tune pickles it with the experiment state

"""Theory sweeps (`kind: theory`): the spec, kind dispatch, and a real local-Ray run whose trials
land in MLflow (sqlite) with per-iteration histories and the descent summary."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from stetune.spec import SpecError, SweepSpec, TheorySweepSpec, load_sweep_spec, spec_from_dict

ROOT = Path(__file__).resolve().parents[1]

BASE = {"kind": "theory", "name": "tiny", "stes": ["identity", "relu", "clipped_relu"],
        "lrs": [0.1], "sizes": [[5, 8]], "inits": ["random", "spurious"], "seeds": [2],
        "steps": 100, "report_every": 10, "eps": 0.0, "batch": None, "radius": 0.001,
        "max_concurrent": 2, "storage": "runs", "mlflow": {"tracking_uri": None, "experiment": None}}


def _with(path: str, value) -> dict:
    d = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node = d
    for p in parents:
        node = node[p]
    node[last] = value
    return d


# -- spec ---------------------------------------------------------------------------------------
def test_base_round_trips_and_grid_order():
    spec = TheorySweepSpec.from_dict(BASE)
    assert TheorySweepSpec.from_dict(yaml.safe_load(yaml.safe_dump(spec.to_dict()))) == spec
    assert spec.to_dict()["kind"] == "theory"
    trials = spec.trials()
    assert len(trials) == 6
    assert [(t["ste"], t["init"]) for t in trials[:2]] == [("identity", "random"),
                                                           ("identity", "spurious")]
    assert trials[0] == {"ste": "identity", "init": "random", "m": 5, "n": 8, "lr": 0.1,
                         "seed": 2, "steps": 100, "eps": 0.0, "batch": None,
                         "radius": 0.001, "tol": 1e-6, "report_every": 10}


@pytest.mark.parametrize("path, value, message", [
    ("lrs", [0.1, 0], "lrs[1] must be a number > 0, but got lrs[1]=0"),
    ("lrs", ["1e-3"], "lrs[0] must be a number > 0, but got lrs[0]='1e-3' (a string"),
    ("lrs", [], "lrs must be a non-empty list, but got lrs=[]"),
    ("sizes", [[5, 1]], "sizes[0][1] must be an int >= 2 (n: input dimension), but got sizes[0][1]=1"),
    ("sizes", [[5, 8], [0, 8]], "sizes[1][0] must be an int >= 1 (m: hidden units)"),
    ("sizes", [5], "sizes[0] must be a pair [m, n]"),
    ("sizes", [[5, 8], [5, 8]], "sizes must have no duplicates"),
    ("stes", ["relu", "rleu"], "stes[1] must be one of"),
    ("inits", ["random", "spurios"], "(did you mean 'spurious'?)"),
    ("seeds", [-1], "seeds[0] must be an int >= 0, but got seeds[0]=-1"),
    ("steps", 0, "steps must be an int >= 1, but got steps=0"),
    ("report_every", 1.5, "report_every must be an int >= 1"),
    ("report_every", 101, "report_every must be <= steps (100), but got report_every=101"),
    ("eps", -0.1, "eps must be a number >= 0, but got eps=-0.1"),
    ("batch", 0, "batch must be an int >= 1, but got batch=0"),
    ("radius", 0, "radius must be a number > 0"),
    ("max_concurrent", 0, "max_concurrent must be an int >= 1"),
    ("name", "a/b", "name must be a name of characters"),
    ("mlflow.tracking_uri", 3, "mlflow.tracking_uri must be a non-empty string or null"),
    ("kind", "network", "kind must be 'theory' for a theory spec"),
])
def test_invalid_field_is_named(path, value, message):
    with pytest.raises(SpecError) as e:
        TheorySweepSpec.from_dict(_with(path, value))
    assert message in str(e.value)


def test_missing_and_unknown_keys():
    d = copy.deepcopy(BASE)
    del d["stes"]
    with pytest.raises(SpecError, match=r"stes is required \(e.g. stes: \[identity, relu\]\)"):
        TheorySweepSpec.from_dict(d)
    with pytest.raises(SpecError, match="unknown key 'step' at the top level \\(did you mean 'steps'\\?\\)"):
        TheorySweepSpec.from_dict(BASE | {"step": 3})
    with pytest.raises(SpecError, match="unknown key 'experimnt' in mlflow \\(did you mean 'experiment'\\?\\)"):
        TheorySweepSpec.from_dict(_with("mlflow", {"experimnt": "x"}))


def test_kind_dispatch(tmp_path):
    theory = tmp_path / "t.yaml"
    theory.write_text(yaml.safe_dump(BASE))
    spec = load_sweep_spec(theory, ["steps=50", "lrs=[0.01, 0.1]"])
    assert isinstance(spec, TheorySweepSpec) and spec.steps == 50 and spec.lrs == (0.01, 0.1)
    with pytest.raises(SpecError, match="unknown --set key 'epochs'"):
        load_sweep_spec(theory, ["epochs=2"])  # no train-field shorthand in a theory spec
    quick = yaml.safe_load((ROOT / "sweeps" / "quickstart.yaml").read_text())
    assert isinstance(spec_from_dict(quick), SweepSpec)
    assert spec_from_dict(quick | {"kind": "network"}) == spec_from_dict(quick)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(BASE | {"kind": "theroy"}))
    with pytest.raises(SpecError, match="kind must be one of \\['network', 'theory', 'repulsion'\\], but got "
                                        "kind='theroy' \\(did you mean 'theory'\\?\\)"):
        load_sweep_spec(bad)


def test_preset_is_small_and_documented():
    path = ROOT / "sweeps" / "theory.yaml"
    spec = load_sweep_spec(path)
    assert isinstance(spec, TheorySweepSpec) and spec.name == path.stem
    assert path.read_text().startswith("#")
    assert set(spec.stes) == {"identity", "relu", "clipped_relu"}
    assert spec.inits == ("random", "spurious") and len(spec.trials()) <= 64


# -- a real local-Ray run -----------------------------------------------------------------------
@pytest.mark.slow
def test_theory_sweep_on_local_ray(tmp_path, local_ray, capsys):
    from stetune.cli_sweep import _finish_sweep
    from stetune.sweep import run_sweep
    from sweep_helpers import sweep_runs

    # m=1 has no spurious minimum ((1^T v*)^2 = ||v*||^2): those trials are skipped, not errors
    spec = TheorySweepSpec.from_dict(_with("storage", str(tmp_path)) | {"sizes": [[5, 8], [1, 3]]})
    state = run_sweep(spec, verbose=0)  # dispatches to run_theory_sweep

    client, parents, children = sweep_runs(spec)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(parents[0].info.run_id)} >= {"spec.yaml", "sweep.json"}
    assert len(children) == 12
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    outcome = {}
    for c in children:
        p, tags, metrics = c.data.params, c.data.tags, c.data.metrics
        assert c.info.status == "FINISHED" and tags["stetune.phase"] == "grid"
        assert tags["stetune.cell"] == f"{p['ste']}/{p['m']}x{p['n']}"
        if p["m"] == "1" and p["init"] == "spurious":
            assert tags["stetune.note"] == "no spurious minimum"
            assert tags["stetune.status"] == "skipped"
            assert metrics["final/spurious_exists"] == 0 and "final/final_loss" not in metrics
            continue
        steps = [m.step for m in client.get_metric_history(c.info.run_id, "loss")]
        assert steps == list(range(0, 101, 10)), (c.info.run_name, steps)
        assert tags["stetune.status"] == "finished"
        assert {"final/final_loss", "final/converged", "final/spurious_exists"} <= set(metrics)
        assert metrics["final/final_loss"] == metrics["loss"]
        if p["m"] == "5":
            outcome[(p["ste"], p["init"])] = metrics["final/left_spurious"]
    # the paper's point: exactly at a spurious minimum (eps=0) only the identity STE moves away
    assert outcome[("identity", "spurious")] == 1
    assert outcome[("relu", "spurious")] == 0 and outcome[("clipped_relu", "spurious")] == 0

    statuses = {(t["ste"], t["init"], t["m"]): t["status"] for t in state["trials"]}
    assert statuses[("relu", "spurious", 1)] == "skipped"
    assert sum(s == "finished" for s in statuses.values()) == 9
    rows = {(r["ste"], r["init"], r["size"]): r for r in state["rows"]}
    assert len(rows) == 12
    assert rows[("identity", "spurious", "5x8")]["left_spurious"] == 1.0
    assert rows[("relu", "spurious", "5x8")]["left_spurious"] == 0.0
    assert rows[("relu", "spurious", "1x3")]["skipped"] == 1

    capsys.readouterr()
    assert _finish_sweep(spec, state) == 0
    out = capsys.readouterr().out
    assert "left spurious" in out and "clipped_relu  spurious  5x8" in out
    with pytest.raises(FileExistsError, match="use another name"):
        run_sweep(spec, verbose=0)

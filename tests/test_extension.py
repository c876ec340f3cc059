"""Extending stetune from outside the package: a toy model, a toy dataset and a toy sweep kind,
each one file written by this test, go through `train`, a real tiny network sweep and a real
`kind: toy` sweep on a local Ray whose workers load them through $STETUNE_PLUGINS."""

from __future__ import annotations

import importlib
import json
import sys
import textwrap

import pytest
import yaml

TOY_MODEL = '''
"""A toy model family: a two-layer MLP on 1x8x8 inputs, registered with its defaults."""
from torch import nn

from stetune.models import register_model
from stetune.models.layers import bn_act


@register_model(epochs=3, batch_size=32, lr=0.05, milestone_fracs=(0.5,), input_size=(1, 8, 8),
                title="toy MLP")
def toy_mlp(act, num_classes=10, in_channels=1):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64, 32, bias=False),
                         *(m for _, m in bn_act(1, 32, act, dims=1)), nn.Linear(32, num_classes))
'''

TOY_DATASET = '''
"""A toy dataset: three noisy prototypes as 1x8x8 images, 240 train / 60 val examples."""
import torch

from stetune.data import register_dataset


@register_dataset("toy-blobs", num_classes=3, input_size=(1, 8, 8), title="toy blobs")
def toy_blobs(root, download, seed):
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(3, 1, 8, 8, generator=g)
    y = torch.randint(0, 3, (300,), generator=g)
    x = (protos[y] + 0.15 * torch.randn(300, 1, 8, 8, generator=g)).clamp(0, 1)
    return x[:240], y[:240], x[240:], y[240:]
'''

TOY_KIND = '''
"""A toy sweep kind: `kind: toy` squares each x of a grid, reporting `steps` times."""
from dataclasses import dataclass
from typing import ClassVar

from stetune.spec.base import Placement
from stetune.spec.fields import Int, ListOf, Num, fld
from stetune.sweep.kinds import SweepKind, register_kind


@dataclass(frozen=True, kw_only=True)
class ToySpec(Placement):
    kind: ClassVar[str] = "toy"
    xs: tuple[float, ...] = fld(ListOf(Num(), nonempty=True, unique=True), "points to square",
                                example="xs: [1, 2]")
    steps: int = fld(Int(ge=1, le=100), "reports per trial", default=3)
    max_concurrent: int = fld(Int(ge=1), "trials at once", default=2)


def toy_trial(config, scale):
    from stetune.sweep.phase import trial_workspace

    p = config["cfg"]["params"]
    with trial_workspace() as ws:
        for step in range(1, p["steps"] + 1):
            ws.report({"epoch": step, "y": scale * p["x"] ** 2 * step / p["steps"]},
                      checkpoint=False)


def run(session):
    from stetune.sweep.phase import Phase, run_phase

    spec = session.spec
    configs = [{"cell": f"x={x}", "phase": "square", "params": {"x": x, "steps": spec.steps},
                "tags": {"toy.x": str(x)}} for x in spec.xs]
    outs = run_phase(session, Phase("square", toy_trial, {"scale": 1.0}, spec.steps, 1,
                                    configs=configs, metric="y", mode="min",
                                    final_keys=("y", "epoch"), max_failures=0))
    session.state["ys"] = {str(o.cfg["params"]["x"]): o.last["y"] for o in outs}


KIND = register_kind(SweepKind(
    "toy", ToySpec, run, ("square",),
    lambda spec, state: "\\n".join(f"x={k} y={v:g}" for k, v in state["ys"].items()),
    description="square a grid of numbers"))
'''

PLUGINS = {"toy_model": TOY_MODEL, "toy_dataset": TOY_DATASET, "toy_kind": TOY_KIND}


@pytest.fixture(scope="module")
def toys(tmp_path_factory):
    """The three files, importable here and (PYTHONPATH, STETUNE_PLUGINS) in Ray's workers."""
    folder = tmp_path_factory.mktemp("plugins")
    for name, text in PLUGINS.items():
        (folder / f"{name}.py").write_text(textwrap.dedent(text))
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(folder))
        mp.setenv("PYTHONPATH", str(folder))
        mp.setenv("STETUNE_PLUGINS", ",".join(PLUGINS))
        yield {name: importlib.import_module(name) for name in PLUGINS}
    # registries are per process: later test modules must not see the toys
    from stetune.data import _DATASETS
    from stetune.models.registry import _MODELS
    from stetune.spec.load import SPEC_KINDS
    from stetune.sweep.kinds.base import _KINDS

    _MODELS.pop("toy_mlp"), _DATASETS.pop("toy-blobs"), _KINDS.pop("toy"), SPEC_KINDS.pop("toy")
    for name in PLUGINS:
        sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def plugin_ray(toys):
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # workers inherit the env
    yield
    ray.shutdown()


def test_toy_model_and_dataset_train_with_their_registered_metadata(toys):
    from stetune.cli import build_parser
    from stetune.data import dataset_info, load_dataset
    from stetune.models import model_info
    from stetune.spec import RunSpec
    from stetune.train import train

    assert model_info("toy_mlp").input_size == (1, 8, 8)
    data = load_dataset("toy-blobs")
    assert data.num_classes == 3 and dataset_info("toy-blobs").num_classes == 3
    epochs = []
    result = train(RunSpec(model="toy_mlp", dataset="toy-blobs", ste="relu", bits=2),
                   report=lambda m: epochs.append(m["epoch"]))
    assert result.status == "finished" and epochs == [1, 2, 3]  # the model's registered epochs
    assert (result.spec["batch_size"], result.spec["lr"], result.spec["milestones"]) == (32, 0.05, [2])
    assert result.best_val_acc > 0.8, result.history  # three separable prototypes
    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    assert "toy_mlp" in help_text and "toy-blobs" in help_text


def test_network_sweep_of_the_toy_model_and_dataset(toys, plugin_ray, tmp_path):
    from sweep_helpers import sweep_runs

    from stetune.spec import spec_from_dict
    from stetune.sweep import run_sweep

    spec = spec_from_dict({
        "name": "toy-net", "model": "toy_mlp", "dataset": "toy-blobs", "storage": str(tmp_path),
        "cells": {"ste": ["relu"], "bits": [2]}, "train": {"epochs": 2},
        "search": {"lr": {"dist": "loguniform", "low": 0.02, "high": 0.1}},
        "budget": {"trials_per_cell": 2}, "replicates": {"seeds": [1]}, "asha": {"enabled": False}})
    state = run_sweep(spec, verbose=0)
    _, parents, children = sweep_runs(spec)
    assert parents[0].info.status == "FINISHED"
    assert sorted(c.data.tags["stetune.phase"] for c in children) == ["replicate", "search", "search"]
    for c in children:
        assert c.data.tags["stetune.status"] == "finished" and c.data.tags["stetune.cell"] == "relu/2"
        assert c.data.metrics["val_acc"] > 0.5 and "epoch" not in c.data.metrics
    assert state["summary"][0]["replicates"] == 1


def test_toy_kind_through_the_cli(toys, plugin_ray, tmp_path, capsys):
    from sweep_helpers import sweep_runs

    from stetune.cli import main
    from stetune.spec import SpecError, json_schema, load_sweep_spec

    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump({"kind": "toy", "name": "toy-grid", "xs": [1, 2, 3],
                                    "storage": str(tmp_path)}))
    spec = load_sweep_spec(path)
    assert type(spec) is toys["toy_kind"].ToySpec and spec.steps == 3
    with pytest.raises(SpecError, match=r"xs\[1\] must be a number"):
        load_sweep_spec(path, ["xs=[1, .inf]"])
    import jsonschema

    schema = json_schema()
    jsonschema.validate(yaml.safe_load(path.read_text()), schema)  # the kind is in the schema
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"kind": "toy", "name": "t", "xs": [1], "stepz": 3}, schema)

    capsys.readouterr()
    assert main(["sweep", str(path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "x=2 y=4" in out and "x=3 y=9" in out  # the kind's own summary
    client, parents, children = sweep_runs(spec)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED" and len(children) == 3
    for c in children:  # the trial config, logged as it is
        x = c.data.params["x"]
        assert c.data.tags["stetune.phase"] == "square" and c.data.tags["stetune.cell"] == f"x={x}"
        assert c.data.tags["toy.x"] == x and c.data.params["steps"] == "3"
        assert c.data.metrics["final/y"] == float(x) ** 2
        assert [m.step for m in client.get_metric_history(c.info.run_id, "y")] == [1, 2, 3]
    saved = json.loads((tmp_path / "toy-grid" / "sweep.json").read_text())
    assert saved["ys"] == {"1": 1.0, "2": 4.0, "3": 9.0}

    # the table answers for the kind everywhere: resume refuses, analyze says why
    assert main(["resume", "toy-grid", "--storage", str(tmp_path)]) == 2
    assert "toy sweeps cannot be resumed" in capsys.readouterr().err
    assert main(["analyze", "toy-grid", "--storage", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is a toy sweep" in err and "network or repulsion" in err


@pytest.mark.parametrize("bad, message", [
    ({"kind": "toyy"}, "kind must be one of"),
    ({"xs": []}, "xs must be a non-empty list"),
    ({"steps": 0}, "steps must be an int >= 1, but got steps=0"),
])
def test_toy_spec_errors_keep_the_path_rule_value_form(toys, bad, message):
    from stetune.spec import SpecError, spec_from_dict

    with pytest.raises(SpecError, match=message.replace("[", r"\[")):
        spec_from_dict({"kind": "toy", "name": "t", "xs": [1]} | bad)


def test_plugins_that_cannot_be_imported_say_so_in_one_line(tmp_path):
    import subprocess

    (tmp_path / "broken_plugin.py").write_text("raise RuntimeError('half-written')\n")
    for name, why in (("no_such_plugin_module", "ModuleNotFoundError"),
                      ("broken_plugin", "RuntimeError: half-written")):
        env = {"STETUNE_PLUGINS": name, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path)}
        out = subprocess.run([sys.executable, "-m", "stetune.cli", "--help"], capture_output=True,
                             text=True, env=env, timeout=120)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1, out.stderr
        assert lines[0].startswith(f"stetune: error: STETUNE_PLUGINS names {name!r}, which "
                                   f"cannot be imported: {why}"), lines

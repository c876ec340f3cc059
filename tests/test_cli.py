"""The `stetune` command as a user runs it."""

import json
import subprocess
import sys

import pytest

from stetune.cli import build_parser, main


def run_cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "stetune.cli", *args], capture_output=True,
                          text=True, timeout=600, **kw)


def test_help_lists_every_command():
    out = run_cli("--help")
    assert out.returncode == 0
    for cmd in ("train", "bench", "theory"):
        assert cmd in out.stdout
    for cmd in ("train", "bench", "theory"):
        sub = run_cli(cmd, "--help")
        assert sub.returncode == 0 and "usage: stetune " + cmd in sub.stdout


def test_train_prints_epochs_and_a_json_summary(tmp_path):
    out = run_cli("train", "--dataset", "synthetic", "--limit", "256", "--epochs", "2",
                  "--batch-size", "64", "--ste", "relu", "--bits", "4", "--out", str(tmp_path / "s.json"))
    assert out.returncode == 0, out.stderr
    assert "epoch   1" in out.stderr and "epoch   2" in out.stderr and "val loss" in out.stderr
    summary = json.loads(out.stdout)
    assert summary == json.loads((tmp_path / "s.json").read_text())
    assert summary["status"] == "finished" and summary["epochs_run"] == 2
    assert summary["spec"]["ste"] == "relu" and summary["spec"]["bits"] == 4
    assert 0 <= summary["best_val_acc"] <= 1 and summary["epoch_time_mean"] > 0


@pytest.mark.parametrize("args,message", [
    (["--bits", "0"], "bits must be in 1..8 or 'float', but got bits='0'"),
    (["--bits", "9"], "bits must be in 1..8 or 'float', but got bits='9'"),
    (["--lr", "0"], "lr must be > 0, but got lr=0.0"),
    (["--epochs", "0"], "epochs must be an int >= 1, but got epochs=0"),
    (["--model", "alexnet"], "model must be one of"),
    (["--dataset", "imagenet"], "dataset must be one of"),
    (["--ste", "tanh"], "ste must be one of"),
])
def test_bad_input_is_a_clear_error_not_a_traceback(args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        code = main(["train", *args])
        raise SystemExit(code)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_missing_dataset_offline_is_one_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("STETUNE_SYSTEM_DATASETS", str(tmp_path / "none"))
    out = run_cli("train", "--dataset", "mnist", "--data-dir", str(tmp_path), "--epochs", "1",
                  env={**__import__("os").environ, "STETUNE_OFFLINE": "1"})
    # offline here: torchvision's download fails, and the error says where it looked and what to do
    assert out.returncode == 1
    assert "mnist" in out.stderr and str(tmp_path) in out.stderr and "Traceback" not in out.stderr


def test_bench_runs_and_reports_ratios(tmp_path):
    out = run_cli("bench", "--models", "lenet5", "--batch-size", "16", "--steps", "2", "--rounds", "2",
                  "--json", str(tmp_path / "b.json"))
    assert out.returncode == 0, out.stderr
    rows = json.loads((tmp_path / "b.json").read_text())
    assert [r["variant"] for r in rows] == ["float", "identity", "relu", "clipped_relu"]
    assert rows[0]["ratio_vs_float"] == 1.0 and all(r["images_per_s"] > 0 for r in rows)
    assert "ratio" in out.stdout


def test_parser_defaults_match_the_run_spec():
    from stetune.spec import RunSpec

    args = build_parser().parse_args(["train"])
    spec = RunSpec()
    for field in ("model", "dataset", "ste", "bits", "momentum", "weight_decay", "gamma", "seed",
                  "device", "alpha_scale"):
        assert getattr(args, field) == getattr(spec, field), field


def test_schema_command_writes_the_sweep_spec_schema(tmp_path):
    import jsonschema
    import yaml

    out = run_cli("schema")
    assert out.returncode == 0, out.stderr
    schema = json.loads(out.stdout)
    assert run_cli("schema", "--out", str(tmp_path / "s.json")).returncode == 0
    assert json.loads((tmp_path / "s.json").read_text()) == schema
    from pathlib import Path

    quick = yaml.safe_load((Path(__file__).parents[1] / "sweeps" / "quickstart.yaml").read_text())
    jsonschema.validate(quick, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(quick | {"budget": {"trials_per_cell": 0}}, schema)

"""The `stetune` command as a user runs it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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


def only_error_line(out, prefix: str = "stetune train: error: ") -> str:
    """The run's last stderr line, checked to be its one error line, with no traceback anywhere."""
    lines = out.stderr.strip().splitlines()
    assert "Traceback" not in out.stderr and lines and lines[-1].startswith(prefix), out.stderr[-2000:]
    assert sum(line.startswith(prefix) for line in lines) == 1, out.stderr
    return lines[-1]


NO_CUDA = "this machine has no CUDA device"
CUDA_PRESENT = "this machine has CUDA: the no-CUDA case does not apply"


@pytest.mark.parametrize("device,why", [
    pytest.param("cuda:7", NO_CUDA if not torch.cuda.is_available() else "CUDA devices: cuda:0",
                 marks=pytest.mark.skipif(torch.cuda.device_count() > 7, reason="this machine has a cuda:7")),
    pytest.param(f"cuda:{torch.cuda.device_count()}", "CUDA device"),  # one past the last: never there
    pytest.param("cuda", NO_CUDA, marks=pytest.mark.skipif(torch.cuda.is_available(), reason=CUDA_PRESENT)),
    pytest.param("mps", "no MPS device", marks=pytest.mark.skipif(
        torch.backends.mps.is_available(), reason="this machine has an MPS device")),
    pytest.param("cpu:3", "the CPU is one device; use cpu"),
])
def test_a_device_this_machine_lacks_is_one_line_exit_2(device, why):
    out = run_cli("train", "--dataset", "digits", "--epochs", "1", "--device", device, "--no-progress")
    assert out.returncode == 2, out.stderr[-2000:]
    # refused before the run's header: the error is all of stderr
    assert out.stderr.strip().splitlines() == [only_error_line(out, "stetune train: error: device")]
    assert f"must be available on this machine, but got device='{device}' (" in out.stderr and why in out.stderr


def test_a_malformed_device_is_one_line_exit_2():
    out = run_cli("train", "--dataset", "digits", "--epochs", "1", "--device", "cuda:x")
    assert out.returncode == 2
    assert only_error_line(out) == ("stetune train: error: device must be auto, cpu, cuda[:N] or mps, "
                                    "but got device='cuda:x'")


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_garbage_dataset_files_are_one_line_exit_1(tmp_path, dataset):
    # what a partial download leaves: files with the right names and garbage in them
    garbage = bytes(range(256)) * 4
    if dataset == "mnist":
        folder = tmp_path / "MNIST" / "raw"
        names = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"]
    else:
        folder = tmp_path / "cifar-10-batches-py"
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    folder.mkdir(parents=True)
    for name in names:
        (folder / name).write_bytes(garbage)
    out = run_cli("train", "--dataset", dataset, "--data-dir", str(tmp_path), "--epochs", "1", "--no-progress",
                  env={**__import__("os").environ, "STETUNE_OFFLINE": "1"})
    assert out.returncode == 1, out.stderr[-2000:]
    line = only_error_line(out)
    assert repr(str(folder / names[0])) in line and "delete it" in line


def test_a_checkpoint_dir_that_is_a_file_is_one_line_before_training(tmp_path):
    (tmp_path / "ck").write_text("not a folder")
    for where, why in [(tmp_path / "ck", "it is a file"), (tmp_path / "ck" / "sub", "a folder above it is a file")]:
        out = run_cli("train", "--dataset", "synthetic", "--limit", "64", "--epochs", "1", "--no-progress",
                      "--checkpoint-dir", str(where))
        assert out.returncode == 1 and "epoch   1" not in out.stderr
        assert only_error_line(out) == (f"stetune train: error: checkpoint_dir must be a writable directory, "
                                        f"but got checkpoint_dir='{where}' ({why})")


def test_a_missing_init_from_and_an_unwritable_out_are_one_line(tmp_path):
    out = run_cli("train", "--dataset", "synthetic", "--limit", "64", "--epochs", "1",
                  "--init-from", str(tmp_path / "nope.pt"))
    assert out.returncode == 1 and str(tmp_path / "nope.pt") in only_error_line(out)
    out = run_cli("train", "--dataset", "synthetic", "--limit", "64", "--epochs", "1", "--out", str(tmp_path))
    assert out.returncode == 1 and json.loads(out.stdout)["status"] == "finished"  # the summary still shows
    assert only_error_line(out).startswith(
        f"stetune train: error: out must be a writable file, but got out='{tmp_path}'")


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
    with pytest.raises(jsonschema.ValidationError, match="greater than the maximum"):
        jsonschema.validate(quick | {"train": {**quick["train"], "lr": float("inf")}}, schema)


@pytest.mark.parametrize("flags, verbose", [([], 1), (["--quiet"], 0), (["-v"], 2), (["-vv"], 3),
                                            (["-v", "-v", "-v"], 3), (["--verbose"], 2)])
@pytest.mark.parametrize("command", ["sweep", "resume"])
def test_verbosity_flags_reach_the_session(command, flags, verbose, tmp_path, monkeypatch):
    import yaml

    import stetune.cli_sweep as cli_sweep
    from stetune.spec import SweepSpec

    spec = SweepSpec.from_dict({"name": "v", "model": "lenet5", "dataset": "digits",
                                "cells": {"ste": ["relu"], "bits": [2]}, "storage": str(tmp_path)})
    (tmp_path / "v.yaml").write_text(yaml.safe_dump(spec.to_dict()))
    Path(spec.sweep_dir()).mkdir()
    (Path(spec.sweep_dir()) / "spec.json").write_text(json.dumps(spec.to_dict()))  # an unfinished one
    got = []
    monkeypatch.setattr(cli_sweep, "_drive", lambda cmd, s, **kw: got.append(kw["verbose"]) or 0)
    target = [str(tmp_path / "v.yaml")] if command == "sweep" else ["v", "--storage", str(tmp_path)]
    assert main([command, *target, *flags]) == 0
    assert got == [verbose]


def test_quiet_and_verbose_exclude_each_other_and_help_says_what_each_shows():
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["sweep", "x.yaml", "--quiet", "-v"])
    assert exc.value.code == 2
    out = run_cli("sweep", "--help")
    text = " ".join(out.stdout.split())
    assert "stetune's progress display" in text and "Ray's progress tables and library INFO logs" \
        in text and "-vv: also the workers' output" in text and "--json" in text
    listed = run_cli("--help").stdout
    assert "list" in listed and "show" in listed


def test_sweep_json_with_a_bad_spec_is_one_document_and_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: b\nmodel: lenet5\ndataset: digits\ncells: {ste: [relu], bits: [0]}\n")
    out = run_cli("sweep", str(bad), "--json")
    assert out.returncode == 2
    doc = json.loads(out.stdout)
    assert (doc["exit_code"], doc["exit_meaning"], doc["status"]) == (2, "bad input or a conflict",
                                                                      None)
    assert out.stderr.strip().startswith("stetune sweep: error: ") and "bits" in out.stderr


def test_list_of_an_empty_or_missing_storage(tmp_path):
    out = run_cli("list", "--storage", str(tmp_path / "none"))
    assert out.returncode == 0 and out.stdout == "" and "no sweeps in" in out.stderr
    out = run_cli("list", "--storage", str(tmp_path), "--json")
    assert out.returncode == 0 and json.loads(out.stdout) == {"storage": str(tmp_path),
                                                              "sweeps": []}

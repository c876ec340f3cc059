"""Files stetune did not write itself are data, never code: a crafted pickle given as
--init-from, dropped into a checkpoint folder, or posing as a CIFAR-10 batch is refused with one
line naming the file, and its payload never runs."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch


class _Payload:
    """Unpickling this runs a shell command: what an attacker's checkpoint would carry."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil(path, marker):
    torch.save({"model": _Payload(marker)}, path)
    # the trap is real: an unsafe load would run it
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()
    return path


def _train(*args, cwd):
    return subprocess.run([sys.executable, "-m", "stetune.cli", "train", "--dataset", "synthetic",
                           "--limit", "64", "--epochs", "1", "--batch-size", "32", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


def test_init_from_a_crafted_file_is_refused_unrun(tmp_path):
    marker = tmp_path / "pwned"
    evil = _evil(tmp_path / "evil.pt", marker)
    out = _train("--init-from", str(evil), cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("stetune train: error: init_from") and str(evil) in last
    assert "Traceback" not in out.stderr and not marker.exists()
    # the reason torch refused it, not torch's advice to load it unsafely
    assert "GLOBAL" in last and "weights_only` set to `False`" not in last, last


def test_init_from_weights_of_another_model_is_one_line(tmp_path):
    import torch

    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "other.pt")
    out = _train("--init-from", str(tmp_path / "other.pt"), cwd=tmp_path)
    last = out.stderr.strip().splitlines()[-1]
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert last.startswith(f"stetune train: error: init_from '{tmp_path / 'other.pt'}' must hold "
                           f"weights of this model, but they do not fit: ") and "Missing key" in last


def test_a_crafted_checkpoint_in_the_checkpoint_dir_is_refused_unrun(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "ck").mkdir()
    _evil(tmp_path / "ck" / "checkpoint.pt", marker)
    out = _train("--checkpoint-dir", str(tmp_path / "ck"), cwd=tmp_path)
    assert out.returncode == 2 and "checkpoint" in out.stderr and "Traceback" not in out.stderr
    assert not marker.exists()


def test_stetunes_own_checkpoints_still_load_and_resume(tmp_path):
    first = _train("--checkpoint-dir", str(tmp_path / "ck"), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    again = _train("--checkpoint-dir", str(tmp_path / "ck"), "--init-from",
                   str(tmp_path / "ck" / "checkpoint.pt"), cwd=tmp_path)
    assert again.returncode == 0, again.stderr


def test_a_cifar_batch_with_a_payload_is_refused_unrun(tmp_path):
    from stetune.data import load_dataset

    marker = tmp_path / "pwned"
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    good = {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps(good))
    assert load_dataset("cifar10", data_dir=tmp_path, download=False).x_train.shape[0] == 10
    (folder / "data_batch_3").write_bytes(pickle.dumps({"data": _Payload(marker), "labels": []}))
    with pytest.raises(ValueError, match="data_batch_3.*must be a pickled dict of numpy arrays"):
        load_dataset("cifar10", data_dir=tmp_path, download=False)
    assert not marker.exists()


@pytest.mark.slow
def test_repulsion_start_weights_with_a_payload_are_refused_on_the_driver(tmp_path):
    import yaml
    from mlflow.tracking import MlflowClient

    marker = tmp_path / "pwned"
    evil = _evil(tmp_path / "evil.pt", marker)
    spec = tmp_path / "rep.yaml"
    spec.write_text(yaml.safe_dump({
        "kind": "repulsion", "name": "rep", "model": "lenet5", "dataset": "digits", "bits": 2,
        "start": {"checkpoint": str(evil)}, "stes": ["relu"], "probe": {"epochs": 1},
        "storage": str(tmp_path / "runs")}))
    out = subprocess.run([sys.executable, "-m", "stetune.cli", "sweep", str(spec), "--quiet"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1].startswith("stetune sweep: error: the start weights")
    assert "Traceback" not in out.stderr and not marker.exists()
    client = MlflowClient(f"sqlite:///{tmp_path}/runs/rep/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("rep").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]  # the parent; no trial ever started

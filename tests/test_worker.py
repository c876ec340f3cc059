"""The trial's reporter (stetune/sweep/worker.py) under real Ray Tune: training does not wait for
a slow driver between epochs, waits at the epochs where the driver decides, stops there when
told, and every result and the last checkpoint reach Tune in order."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import ray.cloudpickle
from ray import tune
from ray.tune.logger import JsonLoggerCallback
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from stetune.sweep.worker import trial_workspace

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
DRIVER_S = 0.4  # what the slow driver spends on each result
EPOCHS = 8


def trainable(config):
    out = Path(config["out"])
    with trial_workspace(decides=lambda epoch: epoch == 4) as ws:
        waited = {}
        for epoch in range(1, EPOCHS + 1):
            time.sleep(0.01)  # "training"
            (ws.ckpt / "checkpoint.pt").write_text(str(epoch))
            out.write_text(json.dumps({"reached": epoch, "waited": waited}))
            t0 = time.perf_counter()
            ws.report({"epoch": epoch, "val_acc": epoch / 10})
            waited[epoch] = time.perf_counter() - t0
        out.write_text(json.dumps({"reached": epoch, "waited": waited}))


class SlowDriver(tune.Callback):
    def on_trial_result(self, iteration, trials, trial, result, **info):
        time.sleep(DRIVER_S)


class StopAt(FIFOScheduler):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_trial_result(self, tune_controller, trial, result):
        return TrialScheduler.STOP if result["epoch"] >= self.epoch else TrialScheduler.CONTINUE


def _run(tmp_path: Path, name: str, scheduler=None):
    out = tmp_path / f"{name}.json"
    tuner = tune.Tuner(trainable, param_space={"out": str(out)},
                       tune_config=tune.TuneConfig(scheduler=scheduler),
                       run_config=tune.RunConfig(name=name, storage_path=str(tmp_path / "tune"),
                                                 # stetune turns Tune's auto loggers off
                                                 # (phase.py); result.json is the history
                                                 callbacks=[SlowDriver(), JsonLoggerCallback()],
                                                 verbose=0))
    (result,) = tuner.fit()
    return result, json.loads(out.read_text())


def test_training_waits_for_the_driver_only_where_it_decides(tmp_path):
    result, seen = _run(tmp_path, "all")
    assert result.error is None
    df = result.metrics_dataframe
    assert list(df["epoch"]) == list(range(1, EPOCHS + 1))  # every result, in order
    with result.checkpoint.as_directory() as d:  # the last checkpoint reached Tune
        assert (Path(d) / "checkpoint.pt").read_text() == str(EPOCHS)
    waited = {int(k): v for k, v in seen["waited"].items()}
    # at the deciding epoch the trial waited for the driver's answer (its queue, then DRIVER_S)
    assert waited[4] >= DRIVER_S * 0.9
    # elsewhere it did not: Tune's own report would wait DRIVER_S or more at every epoch (the
    # bound leaves room for a loaded machine)
    assert max(v for e, v in waited.items() if e != 4) < DRIVER_S / 2, waited


def test_a_trial_the_driver_stops_at_a_deciding_epoch_goes_no_further(tmp_path):
    result, seen = _run(tmp_path, "stop", StopAt(4))
    assert result.error is None
    assert list(result.metrics_dataframe["epoch"]) == [1, 2, 3, 4]
    assert seen["reached"] == 4  # it stopped at the rung: not an epoch past it

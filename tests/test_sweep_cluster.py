"""The sweep service on a real multi-node Ray cluster (ray.cluster_utils.Cluster: several raylets
on this machine) with real MLflow: trials spread over the nodes, and a worker node killed
mid-sweep whose trials are retried elsewhere, resumed from their last epoch, logged once.

The Tune driver is the CLI in a subprocess (`stetune sweep --address`): the test process owns the
cluster and removes nodes from it; it never connects to Ray itself."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from ray._common.utils import get_ray_address_file
from ray.cluster_utils import Cluster

from stetune.spec import SweepSpec
from stetune.spec.load import apply_overrides
from sweep_helpers import check_one_run_per_trial, tune_results

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
NODE_ARGS = {"num_cpus": 1, "include_dashboard": False}
# a node killed without notice is declared dead after period x threshold (default 3 s x 5)
FAST_NODE_DEATH = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _unadvertise(address_file: Path, ours: str, previous: str | None) -> None:
    """Put the address file back as it was before our cluster wrote (or shutdown deleted) it."""
    current = _read(address_file)
    if current not in (None, ours):
        return  # someone else's cluster wrote it since: theirs to keep
    if previous is not None and previous != ours:
        address_file.write_text(previous)
    elif current is not None:
        address_file.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def ray_cluster():
    """A head and one worker node, one CPU each, shared by the module's tests (a node costs
    seconds to start); shut down at the end.

    The head writes its address to /tmp/ray/ray_current_cluster, where any `ray.init()` without
    an address on this machine would find it and join it (and, once it is shut down, try to
    join a dead cluster). The driver gets the address explicitly, so the file is put back as it
    was at once, and again after shutdown (which deletes it)."""
    address_file = Path(get_ray_address_file(None))
    previous = _read(address_file)
    c = Cluster(initialize_head=True,
                head_node_args={**NODE_ARGS, "_system_config": FAST_NODE_DEATH})
    ours = c.address
    try:
        _unadvertise(address_file, ours, previous)
        c.add_node(**NODE_ARGS)
        c.wait_for_nodes()
        yield c
    finally:
        c.shutdown()
        _unadvertise(address_file, ours, previous)


@pytest.fixture
def cluster(ray_cluster):
    """The shared cluster and its one worker node (a test that kills it adds a fresh one)."""
    ray_cluster.wait_for_nodes()
    assert len(ray_cluster.worker_nodes) == 1
    return ray_cluster, next(iter(ray_cluster.worker_nodes))


def write_spec(tmp_path: Path, name: str, sets: list[str]) -> tuple[SweepSpec, Path]:
    d = yaml.safe_load((ROOT / "sweeps" / "quickstart.yaml").read_text())
    d = apply_overrides(d, [
        f"name={name}", f"storage={tmp_path}", f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        "max_concurrent=2", "resources.cpus_per_trial=1",
        # a range that does not diverge at small batch sizes: every trial ends "finished"
        "search.lr={dist: loguniform, low: 0.01, high: 0.05}", *sets])
    spec = SweepSpec.from_dict(d)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
    return spec, path


@contextlib.contextmanager
def sweep_driver(spec_path: Path, address: str, log: Path):
    """`stetune sweep SPEC --address ADDR` in a subprocess, output to `log`; killed if the test
    leaves it running."""
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "stetune.cli", "sweep", str(spec_path),
                                 "--address", address, "--quiet"],
                                stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def wait_driver(driver: subprocess.Popen, log: Path, timeout: float) -> str:
    try:
        driver.wait(timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"sweep driver still running after {timeout:.0f} s:\n{log.read_text()[-4000:]}")
    text = log.read_text()
    assert driver.returncode == 0, text[-4000:]
    return text


def check_runs(spec: SweepSpec, n_search: int, n_replicate: int, retries: bool = False) -> list:
    # no learning rate in these specs diverges: every trial must end finished or pruned
    return check_one_run_per_trial(spec, n_search, n_replicate, statuses=("finished", "pruned"),
                                   retries=retries)


def test_trials_run_on_both_nodes(tmp_path, cluster):
    c, worker = cluster
    spec, path = write_spec(tmp_path, "two-nodes", [
        "cells.ste=[identity, clipped_relu]", "cells.bits=[2]", "budget.trials_per_cell=1",
        "replicates.seeds=[1]", "train.epochs=2", "train.limit=400"])
    log = tmp_path / "driver.log"
    with sweep_driver(path, c.address, log) as driver:
        out = wait_driver(driver, log, 240)
    assert "identity/2" in out  # the summary table

    n_cells = len(spec.cells())
    children = check_runs(spec, n_search=n_cells, n_replicate=n_cells)
    nodes = {ch.data.tags.get("stetune.node") for ch in children}
    assert nodes == {c.head_node.node_id, worker.node_id}, nodes

    # Tune saw the same placement: every result of a trial came from the node MLflow names
    by_id = {ch.data.tags["stetune.trial_id"]: ch for ch in children}
    for phase in ("search", "replicate"):
        for trial_id, rows in tune_results(Path(spec.sweep_dir()) / phase).items():
            assert {r["node_id"] for r in rows} == {by_id[f"{phase}-{trial_id}"].data.tags["stetune.node"]}


def test_worker_node_killed_mid_sweep_trials_resume_and_log_once(tmp_path, cluster):
    c, worker = cluster
    epochs = 6
    spec, path = write_spec(tmp_path, "node-loss", [
        "cells.ste=[identity, clipped_relu]", "cells.bits=[2]", "budget.trials_per_cell=2",
        "replicates.seeds=[]", f"train.epochs={epochs}", "train.batch_size=8", "asha.enabled=false",
        "max_failures=3", "resources.checkpoint_s=0"])  # a checkpoint every epoch: resume from it
    log = tmp_path / "driver.log"
    search_dir = Path(spec.sweep_dir()) / "search"
    with sweep_driver(path, c.address, log) as driver:
        # wait for a trial on the worker that has checkpointed an epoch and has epochs left, then
        # kill the worker node without notice (SIGKILL: no draining); a fresh node takes its place
        deadline, victim = time.monotonic() + 180, None
        while victim is None:
            assert driver.poll() is None, f"driver exited early:\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"no trial on the worker:\n{log.read_text()[-4000:]}"
            time.sleep(0.2)
            for trial_id, rows in tune_results(search_dir).items():
                if rows and rows[-1]["node_id"] == worker.node_id and 1 <= rows[-1]["epoch"] <= epochs - 2:
                    victim = trial_id
                    break
        c.remove_node(worker, allow_graceful=False)
        c.add_node(**NODE_ARGS)
        wait_driver(driver, log, 240)

    # the victim moved off the dead node and went on from its checkpoint: in Tune's own record of
    # its results (unfiltered by the tracker) no epoch repeats, so it did not start over
    results = tune_results(search_dir)
    assert len(results) == len(spec.cells()) * 2
    moved = {t for t, rows in results.items()
             if worker.node_id in {r["node_id"] for r in rows} and rows[-1]["node_id"] != worker.node_id}
    assert victim in moved, {t: [(r["epoch"], r["node_id"][:8]) for r in rows] for t, rows in results.items()}
    for trial_id, rows in results.items():
        assert [r["epoch"] for r in rows] == list(range(1, epochs + 1)), (trial_id, rows)

    # the killed node's trials are retried on purpose
    children = check_runs(spec, n_search=len(spec.cells()) * 2, n_replicate=0, retries=True)
    by_id = {ch.data.tags["stetune.trial_id"]: ch for ch in children}
    assert set(by_id) == {f"search-{t}" for t in results}
    for trial_id in moved:  # the node tag follows the trial to where it finished
        assert by_id[f"search-{trial_id}"].data.tags["stetune.node"] == results[trial_id][-1]["node_id"]
    assert all(ch.data.tags["stetune.status"] == "finished" for ch in children)  # ASHA is off

"""Run by tests/test_multihost.py ON one of its hosts (inside its namespaces), where the object
store, MLflow and Ray are reachable; prints one JSON document. The test process itself has no
route to those hosts.

  bucket NAME          make the bucket (S3 API at AWS_ENDPOINT_URL)
  wait-http URL        until URL answers 200 (at most 120 s)
  node-id              this host's Ray node id (joins the cluster at RAY_ADDRESS)
  trials SPEC_JSON     per search trial: its MLflow run (status, node) and its checkpoints
  check SPEC_JSON N    the MLflow checks of every sweep test (sweep_helpers), then Tune's results
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request


def _spec(text: str):
    from stetune.spec import SweepSpec

    return SweepSpec.from_dict(json.loads(text))


def main(cmd: str, *args: str) -> dict:
    if cmd == "bucket":
        import boto3

        boto3.client("s3").create_bucket(Bucket=args[0])
        return {"bucket": args[0]}
    if cmd == "wait-http":
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(args[0], timeout=2) as r:
                    if r.status == 200:
                        return {"up": args[0]}
            except OSError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.5)
    if cmd == "node-id":
        import ray

        ray.init(address="auto", log_to_driver=False)
        try:
            return {"node_id": ray.get_runtime_context().get_node_id(),
                    "nodes": sum(n["Alive"] for n in ray.nodes())}
        finally:
            ray.shutdown()
    if cmd == "trials":
        from sweep_helpers import sweep_runs

        spec = _spec(args[0])
        try:
            _, _, children = sweep_runs(spec)
        except Exception:  # noqa: BLE001 (the experiment is not made yet)
            return {"trials": {}}
        search = spec.sweep_dir() / "search"
        return {"trials": {
            c.data.tags["stetune.trial_id"].removeprefix("search-"): {
                "status": c.info.status, "node": c.data.tags.get("stetune.node"),
                "checkpoints": [p.name for p in (search / c.data.tags["stetune.trial_id"]
                                                 .removeprefix("search-")).glob("checkpoint_*")]}
            for c in children if c.data.tags.get("stetune.phase") == "search"}}
    if cmd == "check":
        from sweep_helpers import check_one_run_per_trial, tune_results

        spec = _spec(args[0])
        check_one_run_per_trial(spec, int(args[1]), 0, statuses=("finished",), retries=True,
                               driver_died=True)
        return {"results": {t: [(r["epoch"], r["node_id"]) for r in rows if "epoch" in r]
                            for t, rows in tune_results(spec.sweep_dir() / "search").items()}}
    raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:])))

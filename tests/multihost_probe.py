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


def _trials(d: dict) -> dict:
    """Per search trial of the sweep (a spec's dict): its MLflow run's status and node, read
    through MLflow's REST API, and its checkpoints in S3."""
    import urllib.error
    from urllib.parse import quote

    import boto3

    uri, exp = d["mlflow"]["tracking_uri"], d["mlflow"]["experiment"] or d["name"]

    def api(path: str, body: dict | None = None) -> dict:
        req = urllib.request.Request(f"{uri}/api/2.0/mlflow/{path}",
                                     data=json.dumps(body).encode() if body else None,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)

    try:
        eid = api(f"experiments/get-by-name?experiment_name={quote(exp)}")["experiment"]
    except urllib.error.HTTPError:  # the experiment is not made yet
        return {}
    runs = api("runs/search", {"experiment_ids": [eid["experiment_id"]],
                               "max_results": 1000}).get("runs", [])
    bucket, _, prefix = d["storage"].removeprefix("s3://").partition("/")
    base = f"{prefix}/{d['name']}/search/"
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                          Prefix=base)
    keys = [o["Key"][len(base):] for page in pages for o in page.get("Contents", [])]
    out = {}
    for r in runs:
        tags = {t["key"]: t["value"] for t in r["data"].get("tags", [])}
        if tags.get("stetune.kind") != "trial" or tags.get("stetune.phase") != "search":
            continue
        tid = tags["stetune.trial_id"].removeprefix("search-")
        out[tid] = {"status": r["info"]["status"], "node": tags.get("stetune.node"),
                    "checkpoints": sorted({k.split("/")[1] for k in keys
                                           if k.startswith(f"{tid}/checkpoint_")})}
    return out


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
    if cmd == "trials":  # polled by the test: urllib and boto3 only (stetune's imports take
        # seconds, and a window the test waits for may be shorter than that)
        return {"trials": _trials(json.loads(args[0]))}
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

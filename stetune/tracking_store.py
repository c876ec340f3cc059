"""MLflow beside the sweep's run tracking: the sqlite store's creation, and what reads or writes
one run's artifacts outside a sweep (a repulsion start's weights, analysis output)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from .naming import WEIGHTS_ARTIFACT, redact

__all__ = ["create_sqlite_store", "download_weights", "log_sweep_artifacts"]


def create_sqlite_store(db_path: Path, artifact_root: str) -> None:
    """Create an MLflow sqlite store at db_path atomically: build it under a temporary name, then
    hard-link it into place. Anyone who opens db_path while the store is being built (`stetune
    status`, `mlflow ui`, a test polling) would otherwise find half-made tables and run MLflow's
    migrations a second time, which fails the creating driver ("table ... already exists")."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    tmp = db_path.with_name(f".{db_path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    tmp_uri = f"sqlite:///{tmp}"
    try:
        store = SqlAlchemyStore(tmp_uri, artifact_root)  # creates and migrates every table
        store.engine.dispose()  # close the file before it is linked into place
        getattr(SqlAlchemyStore, "_engine_map", {}).pop(tmp_uri, None)
        try:
            os.link(tmp, db_path)  # atomic and never overwrites: a concurrent creator's store wins
        except FileExistsError:
            pass
        except OSError:  # a filesystem without hard links: rename (atomic, may overwrite)
            if not db_path.exists():
                os.replace(tmp, db_path)
    finally:
        tmp.unlink(missing_ok=True)


def download_weights(tracking_uri: str, run_id: str, dst_dir: str | Path) -> Path:
    """The weights a trial run logged (WEIGHTS_ARTIFACT), downloaded into dst_dir."""
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        client.get_run(run_id)
    except MlflowException as e:
        raise ValueError(f"start.run must be an MLflow run id at {redact(tracking_uri)}, but got "
                         f"start.run={run_id!r} ({e.error_code})") from None
    try:
        return Path(client.download_artifacts(run_id, WEIGHTS_ARTIFACT, str(dst_dir)))
    except (MlflowException, OSError):
        raise ValueError(f"run {run_id} has no {WEIGHTS_ARTIFACT} artifact: only replicate and "
                         f"pretrain trials log their weights") from None


def log_sweep_artifacts(tracking_uri: str, run_id: str, paths, artifact_path: str) -> None:
    """Attach files (tables, figures, the report) to a sweep's parent run, under artifact_path."""
    client = MlflowClient(tracking_uri=tracking_uri)
    for p in paths:
        client.log_artifact(run_id, str(p), artifact_path)

"""Optuna studies in an object store (the default when a sweep's storage is s3:// or gs://):
Optuna's JournalStorage over a backend that writes each append as an object of its own,
`<sweep>/optuna/<first log number>.jsonl`. Objects are never rewritten, so no append needs the
atomic file append an object store lacks; one writer at a time is the sweep's driver lock."""

from __future__ import annotations

import json
from typing import Any, Iterable

import optuna
from optuna.storages.journal import BaseJournalBackend, JournalStorage

from .storage import Location, is_object_store, locate

__all__ = ["ObjectJournal", "open_study_storage", "is_journal"]


def is_journal(url: str) -> bool:
    """An object-store URI (the journal) rather than a SQLAlchemy database URL."""
    return is_object_store(url)


class ObjectJournal(BaseJournalBackend):
    def __init__(self, where: Location):
        self.where = where
        self._read: dict[int, list[dict]] = {}  # first log number -> its logs (immutable)

    def _sync(self) -> dict[int, list[dict]]:
        for obj in self.where.glob("*.jsonl"):
            first = int(obj.name.split(".")[0])
            if first not in self._read:
                self._read[first] = [json.loads(line) for line in
                                     obj.read_text().splitlines() if line]
        return self._read

    def read_logs(self, log_number_from: int) -> Iterable[dict[str, Any]]:
        out = []
        for first, logs in sorted(self._sync().items()):
            out += logs[max(0, log_number_from - first):]
        return out

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        read = self._sync()
        first = max((n + len(v) for n, v in read.items()), default=0)
        (self.where / f"{first:012d}.jsonl").write_text(
            "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs))
        read[first] = list(logs)


def open_study_storage(url: str, readonly: bool = False) -> optuna.storages.BaseStorage:
    """The studies' storage: the journal for an object-store URI, else an RDB (SQLAlchemy URL;
    `readonly`: a sqlite file opened read-only, so analysis never creates or migrates one)."""
    if is_journal(url):
        return JournalStorage(ObjectJournal(locate(url)))
    if readonly and url.startswith("sqlite:///") and "mode=ro" not in url:
        url = f"sqlite:///file:{url.removeprefix('sqlite:///')}?mode=ro&uri=true"
    return optuna.storages.RDBStorage(url)

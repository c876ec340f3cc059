"""What every sweep spec kind shares: its `name`, where its files go (`storage`) and its MLflow
store (`mlflow`), declared once in `Placement`, plus the generic `from_dict` / `to_dict`. A kind's
spec class subclasses Placement, sets `kind`, and declares its own fields with `fld`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

from ..naming import default_tracking_uri
from ..storage import Location, is_object_store, locate
from .errors import SpecError
from .fields import Section, Str, dump, fld, parse, spec_fields

__all__ = ["Placement", "Mlflow", "NAME_RULE", "DEFAULT_KIND", "NO_PASSWORD"]

DEFAULT_KIND = "network"  # a spec without `kind:` is a network sweep
NAME_RULE = r"(?!\.+$)[A-Za-z0-9_.-]+"  # used in paths and MLflow names; '.' and '..' are not
NAME_WORDS = "a name of characters [A-Za-z0-9_.-]"
# 100: a path component (at most 255 bytes) that Ray and MLflow lengthen with trial names
NAME = Str((NAME_WORDS, NAME_RULE),
           ("a name not starting with '-' (it would read as a command-line option)", r"(?!-).*"),
           words=NAME_WORDS, max_len=100)


# a password is kept out of every file only where its client reads one from the environment
_KEPT_PASSWORD = (r"a URI with a password only for http(s) (moved to MLFLOW_TRACKING_PASSWORD) or "
                  r"postgresql (moved to PGPASSWORD); for another database give it to its driver",
                  r"(?!(?!(?i:https?|postgres(?:ql)?(?:\+\w+)?)://)[A-Za-z][\w+.-]*://[^/@:\s]*:.*@).*")
NO_PASSWORD = (r"a URI without a password (it would be saved with the sweep; set "
               r"MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, or PGPASSWORD)",
               r"(?![A-Za-z][\w+.-]*://[^/@:\s]*:.*@).*")


@dataclass(frozen=True)
class Mlflow:
    tracking_uri: str | None = fld(Str(_KEPT_PASSWORD, null=True), "None: sqlite:///<abs storage>/"
                                   "<name>/mlflow.db, no server", default=None)
    experiment: str | None = fld(Str(null=True), "None: the sweep name", default=None)


@dataclass(frozen=True, kw_only=True)
class Placement:
    """A sweep spec's name and where its files and MLflow runs go (shared by every kind)."""
    kind: ClassVar[str]                   # `kind:` in a spec file selects the class
    bare_section: ClassVar[str | None] = None  # `--set KEY=V` with KEY of this section: its KEY

    name: str = fld(NAME, "[A-Za-z0-9_.-]+: the sweep directory and the MLflow experiment",
                    example="name: my-sweep")
    storage: str = fld(Str(), "sweep directory root (Ray Tune results, checkpoints, the default "
                       "MLflow store), relative to the cwd, or an object store: s3://bucket/"
                       "prefix, gs://bucket/prefix (no shared disk needed)", default="runs",
                       tail=True)
    mlflow: Mlflow = fld(Section(Mlflow), "MLflow tracking store and experiment",
                         default=Mlflow(), tail=True)

    def __post_init__(self):
        scheme = self.storage.split("://", 1)[0] if "://" in self.storage else None
        if scheme is not None and not re.fullmatch(r"(s3|gs|gcs)://[^/\s]+(/.*)?", self.storage):
            raise SpecError(f"storage must be a local path or an object store "
                            f"(s3://BUCKET/prefix, gs://BUCKET/prefix), but got "
                            f"storage={self.storage!r}")
        # a sqlite file cannot live in an object store: the runs need a server (or a database)
        if is_object_store(self.storage) and self.mlflow.tracking_uri is None:
            raise SpecError(f"mlflow.tracking_uri must be set when storage is an object store (a "
                            f"sqlite store cannot live there; e.g. http://mlflow:5000), but got "
                            f"mlflow.tracking_uri=None with storage={self.storage!r}")

    def sweep_dir(self) -> Location:
        return locate(self.storage) / self.name

    def resolved_tracking_uri(self) -> str:
        return self.mlflow.tracking_uri or default_tracking_uri(self.sweep_dir().path)

    def resolved_experiment(self) -> str:
        return self.mlflow.experiment or self.name

    # -- dict round trip -----------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Any):
        """Validate a spec dict (a loaded YAML, a saved spec.json); every problem is a SpecError."""
        if not isinstance(d, dict):
            raise SpecError(f"a sweep spec must be a mapping at the top level, but got {d!r}")
        if d.get("kind", cls.kind) != cls.kind:
            raise SpecError(f"kind must be {cls.kind!r} for a {cls.kind} spec, but got "
                            f"kind={d['kind']!r}")
        return parse(cls, {k: v for k, v in d.items() if k != "kind"}, "", extra_keys=("kind",))

    def to_dict(self) -> dict:
        """Plain data that from_dict (and YAML, JSON) round-trip; `kind` unless the default."""
        head = {} if self.kind == DEFAULT_KIND else {"kind": self.kind}
        return head | {f.name: dump(getattr(self, f.name)) for f in spec_fields(type(self))}

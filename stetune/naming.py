"""How stetune names things in MLflow, as pure functions every reader and the writer share: the
default store URI, tag names, trial statuses, secret redaction, flattening a spec into params,
metric keys and filter-string quoting. No MLflow import: spec, analysis and report use these
without loading the writer (stetune.tracking)."""

from __future__ import annotations

import json
import posixpath
import re
from pathlib import Path

__all__ = ["gist", "default_tracking_uri", "split_credentials", "redact", "flatten", "quote",
           "metric_key", "run_name", "as_float", "TRIAL_STATUSES", "WEIGHTS_ARTIFACT", "MASK", "is_secret_key"]

# Trial status -> MLflow run status. Diverged and pruned trials ran to a decision, so they are
# FINISHED in MLflow; the stetune.status tag keeps the distinction. skipped: nothing to run;
# interrupted: the driver was stopped mid-trial (a resume continues the same run).
TRIAL_STATUSES = {"finished": "FINISHED", "diverged": "FINISHED", "pruned": "FINISHED",
                  "skipped": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
WEIGHTS_ARTIFACT = "weights/model.pt"  # a trial's final weights (replicate, pretrain runs)
MASK = "***"
MAX_KEY_LENGTH = 250  # MLflow's MAX_ENTITY_KEY_LENGTH
_SECRET = re.compile(r"password|passwd|token|secret|key|credential", re.IGNORECASE)
# scheme://user:PASSWORD@host: the password runs to the last '@' before the host (it may hold
# '@', ':' and '/'); on doubt (an '@' in a path) more is masked, never less
# scheme://USER[:PASSWORD]@host[/path]: the password runs to the last '@' before the host (it may
# hold '@', ':' and '/'); a user holds none of '/@:' (so sqlite:////a@b/x.db has no userinfo)
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][\w+.-]*)://(?P<user>[^/@:\s]*)(?::(?P<password>.*))?"
                       r"@(?P<host>[^@/?#\s]+)(?P<tail>[/?#][^@]*)?")
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][\w+.-]*://[^/@:\s]*:)\S+(?=@[^@/\s]*(?:[/?#\s]|$))")


def default_tracking_uri(sweep_dir: str | Path) -> str:
    """sqlite:///<abs sweep_dir>/mlflow.db: a sweep's own store beside its spec.json (MLflow's
    file store raises since 3.13)."""
    return f"sqlite:///{Path(sweep_dir).expanduser().resolve() / 'mlflow.db'}"


def split_credentials(uri: str | None) -> tuple[str | None, str | None, str | None]:
    """(the URI without its password, user, password). An http(s) URI loses its whole
    `user:password@` (MLflow's client sends both from its environment); a database URI keeps
    `user@` (its driver takes the password from the environment, e.g. PGPASSWORD). A URI
    without userinfo comes back as it is, with None, None."""
    m = _USERINFO.fullmatch(uri or "")
    if m is None:
        return uri, None, None
    user, password = m["user"], m["password"] or ""
    keep = "" if m["scheme"].lower() in ("http", "https") else f"{user}@"
    return f"{m['scheme']}://{keep}{m['host']}{m['tail'] or ''}", user, password


def is_secret_key(key: str) -> bool:
    return bool(_SECRET.search(str(key)))


def redact(obj, _key: str = ""):
    """Copy of obj with the value of every secret-looking key replaced by '***', at any depth,
    and the password of any user:password@ URL (a tracking URI, a database URL) masked."""
    if _key and is_secret_key(_key):
        return MASK
    if isinstance(obj, str):
        return _URL_PASSWORD.sub(rf"\g<head>{MASK}", obj)
    if isinstance(obj, dict):
        return {k: redact(v, str(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v) for v in obj]
    return obj


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested dict -> {dotted.key: value}; lists/tuples become JSON strings (one param each)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, key))
        elif isinstance(v, dict):
            out[key] = "{}"  # keep the key visible rather than dropping it
        elif isinstance(v, (list, tuple)):
            out[key] = json.dumps(v, default=str)
        else:
            out[key] = v
    return out


def metric_key(key: str) -> str:
    """A key MLflow accepts: alphanumerics and _ - . / space, no path tricks ('a//b', '../x')."""
    k = re.sub(r"[^/\w.\- ]", "_", str(key))[:MAX_KEY_LENGTH]
    if not k or k == "." or posixpath.normpath(k) != k or k.startswith(("..", "/")):
        k = re.sub(r"[/.]", "_", k) or "_"
    return k


def quote(value: str) -> str:
    """A value for an MLflow filter string: '...' or "..." (the grammar has no escape)."""
    value = str(value)
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"cannot search MLflow for a value with both quote kinds: {value!r}")


def gist(e: BaseException) -> str:
    """An error's gist on one line, for messages: an OSError's reason and file, else the first
    line of its text (MLflow and Ray append pages of detail)."""
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


_NAMED_ELSEWHERE = ("ste", "bits", "seed")  # in the cell part, or said as "seed N"


def run_name(cfg: dict, status: str | None = None, epoch: int | None = None) -> str:
    """What a trial run is, at a glance in MLflow's runs table: 'relu/4b lr=0.065 · search',
    'relu/4b lr=0.065 seed 1 · replicate'; 'pruned@2 · ...' once it ended early."""
    p = cfg.get("params", {})
    bits = p.get("bits")
    cell = ("float" if cfg.get("phase") == "pretrain" and bits == "float"  # one per sweep
            else f"{p['ste']}/{bits}b" if isinstance(bits, int) and "ste" in p
            else f"{p['ste']}/{bits}" if "ste" in p and bits is not None else cfg["cell"])
    words = [f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
             for k, v in p.items() if k not in _NAMED_ELSEWHERE]
    if cfg.get("phase") != "search" and p.get("seed") is not None:  # search trials share seed 0
        words.append(f"seed {p['seed']}")
    name = " ".join([cell, *words]) + f" · {cfg.get('phase', '?')}"
    # first, so the runs table's narrow name column shows it
    if status in ("pruned", "diverged") and epoch is not None:
        name = f"{status}@{epoch} · {name}"
    elif status in ("failed", "skipped"):
        name = f"{status} · {name}"
    return name[:MAX_KEY_LENGTH]


def as_float(v) -> float | None:
    """float for numbers (bools, numpy and 0-d torch scalars included); None for anything else."""
    if isinstance(v, (str, bytes, dict, list, tuple)) or v is None:
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None

"""Passwords in URIs: masked wherever stetune writes or prints, and split off http(s) tracking
URIs into MLflow's own credential variables; a password may hold '@', ':' and '/'."""

import pytest

from stetune.naming import redact, run_name, split_credentials

CASES = [  # (uri, password, uri without its password)
    ("http://u:pw@h:5000", "pw", "http://h:5000"),
    ("http://alice:p@ss:w/rd@127.0.0.1:5000/x", "p@ss:w/rd", "http://127.0.0.1:5000/x"),
    ("https://alice:a:b@c/d@db:443/mlflow?x=1", "a:b@c/d", "https://db:443/mlflow?x=1"),
    ("http://u:p%40x@h", "p%40x", "http://h"),
    # a database URI keeps its user: its driver takes the password from the environment
    ("postgresql://alice:a:b@c/d@db/mlflow", "a:b@c/d", "postgresql://alice@db/mlflow"),
    ("postgresql+psycopg2://alice:p@ss-123@db/x", "p@ss-123", "postgresql+psycopg2://alice@db/x"),
]


@pytest.mark.parametrize("uri, password, clean", CASES)
def test_passwords_are_masked_and_split_off(uri, password, clean):
    masked = redact(uri)  # exactly: no piece of the password (after an '@' in it) may show
    assert masked == uri.replace(f":{password}@", ":***@", 1)
    assert redact({"tracking_uri": uri, "db_password": "x"}) == {"tracking_uri": masked,
                                                                "db_password": "***"}
    got, user, pw = split_credentials(uri)
    assert (got, user, pw) == (clean, "alice" if "alice" in uri else "u", password)


def test_uris_without_credentials_are_left_alone():
    for uri in ("http://h:5000/path", "sqlite:////tmp/a/mlflow.db", "see http://h and more",
                "sqlite:////data/a@b/mlflow.db", "postgresql://bob@db/x"):
        assert redact(uri) == uri and split_credentials(uri)[0] == uri


def _cfg(phase, bits=4, seed=0, **params):
    return {"cell": f"relu/{bits}", "phase": phase,
            "params": {"ste": "relu", "bits": bits, "seed": seed, **params}}


@pytest.mark.parametrize("cfg, status, epoch, name", [
    (_cfg("search", lr=0.0651234, momentum=0.9), None, None, "relu/4b lr=0.0651 momentum=0.9 · search"),
    (_cfg("replicate", seed=2, lr=0.0651234), None, None, "relu/4b lr=0.0651 seed 2 · replicate"),
    (_cfg("search", lr=0.11), "pruned", 1, "pruned@1 · relu/4b lr=0.11 · search"),
    (_cfg("search", lr=3.0), "diverged", 2, "diverged@2 · relu/4b lr=3 · search"),
    (_cfg("search", lr=0.1), "failed", None, "failed · relu/4b lr=0.1 · search"),
    (_cfg("search", lr=0.1), "finished", 3, "relu/4b lr=0.1 · search"),
    (_cfg("search", bits="float", batch_size=64), None, None, "relu/float batch_size=64 · search"),
    (_cfg("pretrain", bits="float"), None, None, "float seed 0 · pretrain"),
    ({"cell": "relu/1x2", "phase": "grid", "params": {"ste": "relu", "init": "spurious", "seed": 3}},
     None, None, "relu/1x2 init=spurious seed 3 · grid"),
])
def test_run_names_say_what_the_run_is(cfg, status, epoch, name):
    assert run_name(cfg, status, epoch) == name

"""The JSON Schema (draft 2020-12) of a sweep spec file, generated from the spec classes' field
rules, so editors validate and complete `sweeps/*.yaml`: one subschema per registered kind,
chosen by `kind:` (absent: network). Choices list the STEs, models and datasets registered now."""

from __future__ import annotations

from .base import DEFAULT_KIND
from .fields import object_schema
from .load import SPEC_KINDS

__all__ = ["json_schema"]


def kind_schema(cls: type) -> dict:
    """One kind's file: its fields, plus `kind` (optional for the default kind)."""
    s = object_schema(cls)
    kind = {"const": cls.kind, "description": "the sweep kind"}
    s["properties"] = {"kind": kind, **s["properties"]}
    if cls.__doc__:
        s["description"] = cls.__doc__.strip().splitlines()[0]
    return s


def json_schema() -> dict:
    """The schema of a sweep spec file (`stetune schema` prints it)."""
    branches = []
    for kind in SPEC_KINDS:
        when: dict = {"properties": {"kind": {"const": kind}}}
        if kind != DEFAULT_KIND:
            when["required"] = ["kind"]
        branches.append({"if": when, "then": {"$ref": f"#/$defs/{kind}"}})
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "stetune sweep spec",
        "description": "A sweep spec file (sweeps/*.yaml); `kind` selects its fields.",
        "type": "object",
        "properties": {"kind": {"enum": list(SPEC_KINDS), "default": DEFAULT_KIND,
                                "description": "the sweep kind (absent: network)"}},
        "allOf": branches,
        "$defs": {kind: kind_schema(cls) for kind, cls in SPEC_KINDS.items()},
    }

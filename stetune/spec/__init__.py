"""Specs, validated before any work starts: `RunSpec` (one training run), `SweepSpec` (a grid
of cells tuned and replicated, loaded from `sweeps/*.yaml`) and `TheorySweepSpec` (a grid of
runs on the theory model, `kind: theory`), `RepulsionSpec` (the repulsion experiment,
`kind: repulsion`). Every default lives here, each field's rule beside it (`fields`); a new
kind subclasses `Placement` and calls `register_spec_kind`; `json_schema()` describes the files."""

from .base import Placement
from .errors import SpecError
from .load import apply_overrides, load_sweep_spec, register_spec_kind, spec_from_dict
from .run import RunSpec
from .sweep import (METRIC_MODES, TUNABLE, Asha, Budget, Cells, Mlflow, Param, Replicates,
                    Resources, SweepSpec, suggest)
from .repulsion import RepulsionSpec
from .schema import json_schema
from .theory import TheorySweepSpec

__all__ = ["RunSpec", "SpecError", "SweepSpec", "Param", "Cells", "Budget",
           "Replicates", "Asha", "Resources", "Mlflow", "load_sweep_spec", "apply_overrides",
           "spec_from_dict", "TheorySweepSpec", "RepulsionSpec", "suggest", "TUNABLE", "METRIC_MODES",
           "register_spec_kind", "Placement", "json_schema"]

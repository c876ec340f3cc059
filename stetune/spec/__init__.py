"""Specs, validated before any work starts: `RunSpec` (one training run), `SweepSpec` (a grid
of cells tuned and replicated, loaded from `sweeps/*.yaml`) and `TheorySweepSpec` (a grid of
runs on the theory model, `kind: theory`), `RepulsionSpec` (the repulsion experiment,
`kind: repulsion`). Every default lives here."""

from .load import apply_overrides, load_sweep_spec, spec_from_dict
from .run import MODEL_DEFAULTS, RunSpec, SpecError
from .sweep import (METRIC_MODES, TUNABLE, Asha, Budget, Cells, Mlflow, Param, Replicates,
                    Resources, SweepSpec, suggest)
from .repulsion import RepulsionSpec
from .theory import TheorySweepSpec

__all__ = ["RunSpec", "MODEL_DEFAULTS", "SpecError", "SweepSpec", "Param", "Cells", "Budget",
           "Replicates", "Asha", "Resources", "Mlflow", "load_sweep_spec", "apply_overrides",
           "spec_from_dict", "TheorySweepSpec", "RepulsionSpec", "suggest", "TUNABLE", "METRIC_MODES"]

"""Specs, validated before any work starts: `RunSpec` (one training run) and `SweepSpec` (a grid
of cells tuned and replicated, loaded from `sweeps/*.yaml`). Every default lives here."""

from .load import apply_overrides, load_sweep_spec
from .run import MODEL_DEFAULTS, RunSpec, SpecError
from .sweep import (METRIC_MODES, TUNABLE, Asha, Budget, Cells, Mlflow, Param, Replicates,
                    Resources, SweepSpec, suggest)

__all__ = ["RunSpec", "MODEL_DEFAULTS", "SpecError", "SweepSpec", "Param", "Cells", "Budget",
           "Replicates", "Asha", "Resources", "Mlflow", "load_sweep_spec", "apply_overrides",
           "suggest", "TUNABLE", "METRIC_MODES"]

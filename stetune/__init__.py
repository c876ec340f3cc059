"""stetune: sweeps for activation-quantized nets trained with straight-through estimators."""

import importlib as _importlib
import os as _os

__version__ = "0.1.0"
__all__ = ["__version__"]


def _load_plugins() -> None:
    """Import the modules named in $STETUNE_PLUGINS (comma-separated), so the models, datasets,
    STEs and sweep kinds they register exist in every process that reads the registries: the
    CLI, a sweep's driver and each Ray worker (a local Ray inherits the variable; on a cluster,
    set it, and make the modules importable, on every node)."""
    for name in filter(None, (n.strip() for n in _os.environ.get("STETUNE_PLUGINS", "").split(","))):
        try:
            _importlib.import_module(name)
        except ImportError as e:
            raise ImportError(f"STETUNE_PLUGINS names {name!r}, which cannot be imported: {e}") from e


_load_plugins()

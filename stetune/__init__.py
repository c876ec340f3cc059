"""stetune: sweeps for activation-quantized nets trained with straight-through estimators."""

import importlib as _importlib
import os as _os

__version__ = "0.1.0"
__all__ = ["__version__", "load_plugins"]

_loaded: set[str] = set()


def load_plugins() -> None:
    """Import the modules named in $STETUNE_PLUGINS (comma-separated), so the models, datasets,
    STEs and sweep kinds they register exist: the `stetune` command calls this first, and so
    does every sweep trial on its Ray worker (a local Ray inherits the variable; on a cluster,
    set it, and make the modules importable, on every node). A module that cannot be imported is
    an ImportError naming it."""
    for name in filter(None, (n.strip() for n in _os.environ.get("STETUNE_PLUGINS", "").split(","))):
        if name in _loaded:
            continue
        try:
            _importlib.import_module(name)
        except Exception as e:  # any failure of a plugin is the plugin's, said as such
            raise ImportError(f"STETUNE_PLUGINS names {name!r}, which cannot be imported: "
                              f"{type(e).__name__}: {e}") from e
        _loaded.add(name)

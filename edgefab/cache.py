"""Where edgefab keeps what it can reuse (trained weights, latency tables): one folder for all."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """edgefab's cache folder: ``$EDGEFAB_CACHE_DIR`` or the platform's user cache dir."""
    override = os.environ.get("EDGEFAB_CACHE_DIR")
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_cache_dir("edgefab"))

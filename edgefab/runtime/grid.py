"""Image grids as PNG files (numpy and Pillow only: generator packages use it on the device side)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from edgefab.errors import EdgefabError


def image_grid(images: np.ndarray, columns: int | None = None, padding: int = 2) -> np.ndarray:
    """Tile (N, C, H, W) images (uint8, or floats in [0, 1]) into one (H', W'[, 3]) uint8 array."""
    array = np.asarray(images)
    if array.ndim != 4 or array.shape[1] not in (1, 3):
        raise EdgefabError(f"images for a grid must be (N, C, H, W) with C 1 or 3, got {array.shape}")
    if array.dtype != np.uint8:
        array = np.rint(np.clip(array, 0.0, 1.0) * 255).astype(np.uint8)
    count, channels, height, width = array.shape
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    grid = np.zeros(
        (channels, rows * (height + padding) + padding, columns * (width + padding) + padding), np.uint8
    )
    for index, image in enumerate(array):
        top = padding + (index // columns) * (height + padding)
        left = padding + (index % columns) * (width + padding)
        grid[:, top : top + height, left : left + width] = image
    return grid[0] if channels == 1 else grid.transpose(1, 2, 0)


def save_png_grid(images: np.ndarray, path: Path, columns: int | None = None, scale: int = 2) -> Path:
    """Write ``images`` as one PNG grid (each pixel ``scale`` x ``scale``, so small digits are visible)."""
    from PIL import Image

    grid = image_grid(images, columns)
    picture = Image.fromarray(grid)
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        picture.save(path, format="PNG")
    except OSError as exc:
        raise EdgefabError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path

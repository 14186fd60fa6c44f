"""``edgefab package run`` on a generator package: noise in, images out, one PNG grid.

Imports neither torch nor the build code (runtime layer).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgefab.errors import EdgefabError
from edgefab.runtime.grid import save_png_grid
from edgefab.runtime.loader import Package
from edgefab.runtime.runner import read_inputs

SAMPLES = 16  # noise samples drawn (seed 0) when no --input is given


def _noise(package: Package, input_file: Path | None) -> np.ndarray:
    spec = package.inputs[0]
    shape = tuple(spec["shape"][1:])
    if input_file is None:
        return np.random.default_rng(0).standard_normal((SAMPLES, *shape)).astype(np.float32)
    noise = read_inputs(Path(input_file))
    if isinstance(noise, dict):
        if spec["name"] not in noise and len(noise) != 1:
            raise EdgefabError(
                f"{input_file} holds {', '.join(noise) or 'no arrays'}; save one array '{spec['name']}'"
            )
        noise = noise.get(spec["name"], next(iter(noise.values()), None))
    noise = noise[None] if noise.shape == shape else noise
    if noise.shape[1:] != shape:
        raise EdgefabError(
            f"noise has shape {noise.shape}; the generator takes (N, {', '.join(map(str, shape))})"
        )
    return noise


def generate(package: Package, input_file: Path | None, out: Path | None) -> dict[str, Any]:
    """Run each noise sample (from ``input_file``, else 16 seeded N(0, I)) and write the images as a PNG
    grid: ``out`` if it ends in .png, else ``<package name>-samples.png`` (and ``out`` as .npz)."""
    spec, output = package.inputs[0], package.outputs[0]["name"]
    noise = _noise(package, input_file)
    images = np.concatenate([package.run({spec["name"]: sample[None]})[output] for sample in noise])
    to_png = out is not None and Path(out).suffix.lower() == ".png"
    png = Path(out) if to_png else Path(f"{package.manifest['name']}-samples.png")
    save_png_grid(images, png)
    if out is not None and not to_png:
        np.savez(out, **{output: images})
    shape = "x".join(map(str, images.shape))
    rows = [[output, shape, f"{images.min():.4g}", f"{images.max():.4g}", str(png)]]
    return {"columns": ["output", "shape", "min", "max", "png"], "rows": rows, "png": str(png)}

"""``edgefab package run``: feed a package inputs from a ``.npy``/``.npz`` file and summarise the outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgefab.errors import EdgefabError
from edgefab.runtime.loader import Package, load


def read_inputs(path: Path, what: str = "input file") -> np.ndarray | dict[str, np.ndarray]:
    """An array from ``.npy`` or named arrays from ``.npz`` (never unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise EdgefabError(f"{what} {path} does not exist")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise EdgefabError(f"cannot read {what} {path} as .npy/.npz: {exc}") from None
    if isinstance(loaded, np.ndarray):
        return loaded
    with loaded:
        return {name: loaded[name] for name in loaded.files}


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _classify(package: Package, images: np.ndarray) -> dict[str, Any]:
    logits = package.predict(images)
    probabilities = _softmax(logits)
    labels = package.labels or [str(i) for i in range(logits.shape[1])]
    best = probabilities.argmax(axis=1)
    rows = [[i, labels[k], round(float(probabilities[i, k]), 4)] for i, k in enumerate(best)]
    return {"columns": ["sample", "label", "probability"], "rows": rows, "outputs": {"logits": logits}}


def _run_raw(package: Package, inputs: np.ndarray | dict[str, np.ndarray]) -> dict[str, Any]:
    feeds = inputs if isinstance(inputs, dict) else {package.inputs[0]["name"]: inputs}
    outputs = package.run(feeds)
    rows = [
        [
            name,
            "x".join(map(str, value.shape)),
            str(value.dtype),
            f"{value.min():.6g}",
            f"{value.max():.6g}",
            f"{value.mean():.6g}",
        ]
        for name, value in outputs.items()
    ]
    return {"columns": ["output", "shape", "dtype", "min", "max", "mean"], "rows": rows, "outputs": outputs}


def run_file(
    package_dir: Path, input_file: Path | None, engine: str = "auto", out: Path | None = None
) -> dict[str, Any]:
    """Run the package on the file's inputs; classifiers get labels, generators write a PNG grid
    (see :mod:`edgefab.runtime.generate`), other models output summaries."""
    package = load(package_dir, engine)
    if package.manifest.get("kind") == "generator":
        from edgefab.runtime.generate import generate

        return {"package": str(package_dir), "engine": package.engine, **generate(package, input_file, out)}
    if input_file is None:
        raise EdgefabError("--input is required (only generator packages draw their own noise)")
    inputs = read_inputs(Path(input_file))
    if package.manifest.get("kind") == "classifier" and isinstance(inputs, np.ndarray):
        result = _classify(package, inputs)
    else:
        result = _run_raw(package, inputs)
    outputs = result.pop("outputs")
    if out is not None:
        np.savez(out, **outputs)
    return {"package": str(package_dir), "engine": package.engine, **result}

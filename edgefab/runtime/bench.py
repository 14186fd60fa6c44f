"""Time a package's engines side by side: same seeded inputs, median and spread of each.

Runtime layer: uses only the package loader (numpy, ONNX Runtime, TVM), never the build code.
PyTorch is not timed here: a package holds no PyTorch weights, only the ONNX model and the TVM
library; ``edgefab bench`` adds PyTorch eager from the manifest's architecture
(:mod:`edgefab.pipeline.torch_bench`) where there is one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgefab.errors import EdgefabError
from edgefab.runtime.loader import load, tvm_runs_here
from edgefab.runtime.package import verify_package


@dataclass(frozen=True)
class BenchOptions:
    """How to time: ``runs`` timed calls after ``warmup`` untimed ones, inputs from ``seed``."""

    runs: int = 50
    warmup: int = 10
    seed: int = 0


def seeded_inputs(signature: list[dict[str, Any]], seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs for a manifest's ``inputs``: standard normal floats, zeros for integers."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in signature:
        dtype = np.dtype(spec["dtype"])
        shape = [int(d) for d in spec["shape"]]
        if np.issubdtype(dtype, np.floating):
            feeds[spec["name"]] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[spec["name"]] = np.zeros(shape, dtype=dtype)
    return feeds


def summarize(samples: list[float]) -> dict[str, float]:
    """Median, interquartile range and minimum of timings (ms)."""
    q1, median, q3 = np.percentile(samples, [25, 50, 75])
    return {"median_ms": float(median), "iqr_ms": float(q3 - q1), "min_ms": float(min(samples))}


def timed_runs(run, feeds: dict[str, np.ndarray], options: BenchOptions) -> list[float]:
    """Milliseconds of each of ``options.runs`` calls of ``run(feeds)``, after the warm-up calls."""
    for _ in range(options.warmup):
        run(feeds)
    samples = []
    for _ in range(options.runs):
        start = time.perf_counter()
        run(feeds)
        samples.append((time.perf_counter() - start) * 1e3)
    return samples


def bench_package(path: Path, options: BenchOptions | None = None) -> dict[str, Any]:
    """Time every engine of the package that runs here on the same inputs.

    Returns per-engine median, IQR and minimum (ms), the largest output difference from ONNX
    Runtime, and for engines that cannot run here, why.
    """
    options = options or BenchOptions()
    if options.runs < 1 or options.warmup < 0:
        raise EdgefabError("--runs must be at least 1 and --warmup at least 0")
    manifest = verify_package(path)
    feeds = seeded_inputs(manifest["inputs"], options.seed)
    engines: dict[str, dict[str, Any]] = {}
    reference = None
    for engine in ("onnxruntime", "tvm"):
        entry = manifest["engines"].get(engine, {})
        if engine == "tvm" and not tvm_runs_here(entry):
            why = entry.get("error") or "the TVM library does not run on this machine"
            engines[engine] = {"skipped": why}
            continue
        package = load(path, engine=engine)
        outputs = [np.asarray(v) for v in package.run(feeds).values()]
        result: dict[str, Any] = summarize(timed_runs(package.run, feeds, options))
        if reference is None:
            reference = outputs
        else:
            result["max_abs_diff_vs_onnxruntime"] = max(
                float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0
                for a, b in zip(outputs, reference, strict=True)
            )
        result["tuned"] = bool(entry.get("tuned")) if engine == "tvm" else None
        engines[engine] = result
    engines["pytorch"] = {"skipped": "a package holds no PyTorch weights (ONNX model and TVM library only)"}
    return {
        "package": str(path),
        "inputs": {k: list(v.shape) for k, v in feeds.items()},
        "runs": options.runs,
        "warmup": options.warmup,
        "engines": engines,
        "fastest": fastest_engine(engines),
        "recommended_engine": manifest.get("recommended_engine"),
    }


def fastest_engine(engines: dict[str, dict[str, Any]]) -> str | None:
    """The timed engine with the lowest median (None when nothing was timed)."""
    timed = {k: v for k, v in engines.items() if "median_ms" in v}
    return min(timed, key=lambda k: timed[k]["median_ms"]) if timed else None

"""Latency of a model on a target: measured where the target is this machine, predicted elsewhere.

v1 predictor: a power law ``ms = a * MACs**b`` fitted to the target's published whole-network
calibration points. It says where its figure comes from; per-layer models replace it for the
phone targets.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgefab.targets import Target


@dataclass(frozen=True)
class LatencyFigure:
    """A latency with its provenance."""

    ms: float
    source: str  # "measured" or "predicted"
    method: str  # how, in words

    def to_dict(self) -> dict:
        """JSON form for manifests."""
        return {"ms": round(self.ms, 4), "source": self.source, "method": self.method}


def fit_power_law(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares fit of ``ms = a * macs**b`` in log space; returns ``(a, b)``."""
    macs = np.log([p[0] for p in points])
    ms = np.log([p[1] for p in points])
    b, log_a = np.polyfit(macs, ms, 1)
    return float(np.exp(log_a)), float(b)


def predict_from_macs(target: Target, macs: int) -> LatencyFigure | None:
    """Predicted latency from the target's calibration points, or None if it has none."""
    points = target.latency.get("calibration")
    if not points:
        return None
    a, b = fit_power_law([(float(m), float(ms)) for m, ms in points])
    low, high = min(p[0] for p in points), max(p[0] for p in points)
    range_note = (
        ""
        if low <= macs <= high
        else f"; extrapolated outside the {low / 1e6:g}-{high / 1e6:g} M MACs calibrated"
    )
    method = f"{target.latency.get('provenance', 'fitted')}{range_note}"
    return LatencyFigure(ms=a * macs**b, source="predicted", method=method)


def time_calls(call, warmup: int = 10, runs: int = 50) -> list[float]:
    """Milliseconds of each of ``runs`` calls of ``call()``, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1e3)
    return samples


def measure_onnx(
    path: Path, feeds: dict[str, np.ndarray], threads: int = 0, warmup: int = 10, runs: int = 50
) -> LatencyFigure:
    """Median latency of one ONNX Runtime inference (CPU provider) on ``feeds``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    samples = time_calls(lambda: session.run(None, feeds), warmup, runs)
    thread_note = f"{threads} thread(s)" if threads else "all cores"
    return LatencyFigure(
        ms=statistics.median(samples),
        source="measured",
        method=f"ONNX Runtime {ort.__version__} CPU on this machine, {thread_note}, median of {runs}",
    )

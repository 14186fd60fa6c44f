"""Measuring a quantized model against its float original with ONNX Runtime.

Two ways to run a QDQ model: ``exact=False`` is ONNX Runtime as it ships (graph optimisations fuse
DequantizeLinear -> op -> QuantizeLinear into integer kernels for this CPU); ``exact=True`` turns
graph optimisations off, so every QDQ pair runs as written (dequantize, float op, quantize): the
arithmetic every non-saturating integer kernel (ARM, VNNI) and TVM (which dequantizes) reproduce
up to rounding. Their difference on this machine is the integer kernels' own error (saturation).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgefab.compress.calibration import Feeds

AGREEMENT_SPREAD = 0.02  # single-value outputs agree when within 2 % of the float output's spread


def session(path: Path, exact: bool = False):
    """An ONNX Runtime CPU session; ``exact`` runs QDQ as written (no fused integer kernels)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if exact:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def first_outputs(sess, feeds: list[Feeds]) -> np.ndarray:
    """The first output of each sample, stacked: (N, *output_shape)."""
    return np.stack([sess.run(None, feed)[0] for feed in feeds])


def top1_accuracy(sess, inputs: np.ndarray, labels: np.ndarray, input_name: str) -> float:
    """Share of samples (``inputs`` stacked on axis 0, batch 1 each) whose argmax is the label."""
    hits = sum(
        int(sess.run(None, {input_name: sample[None]})[0].argmax() == label)
        for sample, label in zip(inputs, labels, strict=True)
    )
    return hits / max(1, len(labels))


@dataclass(frozen=True)
class Agreement:
    """How closely a quantized model's first output follows the float model's."""

    share: float  # samples that agree, 0..1
    metric: str
    max_abs_diff: float
    relative_rms: float  # RMS difference over RMS of the float output

    def to_dict(self) -> dict:
        """JSON form."""
        return {
            "share": round(self.share, 5),
            "metric": self.metric,
            "max_abs_diff": float(self.max_abs_diff),
            "relative_rms": round(float(self.relative_rms), 6),
        }


def agreement(reference: np.ndarray, candidate: np.ndarray) -> Agreement:
    """Per-sample agreement of two stacked first outputs (N, ...).

    With more than one value on the last axis the samples agree where the argmax over that axis
    is the same everywhere (top-1 for a classifier); with a single value, where the difference is
    within 2 % of the reference's spread (max - min over the samples).
    """
    reference = reference.astype(np.float64)
    candidate = candidate.astype(np.float64)
    diff = np.abs(reference - candidate)
    rms = float(np.sqrt(np.mean(reference**2))) or 1.0
    relative = float(np.sqrt(np.mean(diff**2))) / rms
    n = len(reference)
    if reference.ndim >= 2 and reference.shape[-1] > 1:
        same = (reference.argmax(-1) == candidate.argmax(-1)).reshape(n, -1).all(axis=1)
        metric = "top-1 agreement (argmax over the last axis)"
    else:
        spread = float(np.ptp(reference)) or 1.0
        same = (diff.reshape(n, -1) <= AGREEMENT_SPREAD * spread).all(axis=1)
        metric = f"within {AGREEMENT_SPREAD:.0%} of the float output's spread"
    return Agreement(float(same.mean()), metric, float(diff.max()) if diff.size else 0.0, relative)


def kernel_check(qdq_path: Path, feeds: list[Feeds]) -> dict:
    """This machine's fused integer kernels vs the exact QDQ arithmetic, on ``feeds``.

    A large difference means the kernels saturate (x86 without VNNI with u8s8/s8s8 weights).
    """
    fused = first_outputs(session(qdq_path), feeds)
    exact = first_outputs(session(qdq_path, exact=True), feeds)
    result = agreement(exact, fused)
    return {
        "what": "ONNX Runtime's integer kernels on this machine vs the exact QDQ arithmetic",
        "samples": len(feeds),
        "max_abs_diff": result.max_abs_diff,
        "mean_abs_diff": float(np.mean(np.abs(exact.astype(np.float64) - fused))),
        "agreement": round(result.share, 5),
    }

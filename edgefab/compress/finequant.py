"""FineQuant-style choice of each weight matrix's group size, from the weights alone.

FineQuant (Kim et al., 2023, "FineQuant: Unlocking Efficiency with Fine-Grained Weight-Only
Quantization for LLMs") starts every matrix at per-channel granularity (one scale per output row)
and makes the groups finer only where the weights' ranges show outliers, since one large weight
stretches the grid of its whole group. The rule implemented here (edgefab's reading of it):

1. start with ``g = C`` (the row length: per-channel);
2. split every group of ``g`` columns in two halves (``ceil(g / 2)`` columns, then the rest) and,
   per row and group, take ``r = range(group) / min(range(left half), range(right half))``: near 1
   when the values are spread evenly, large when a few outliers sit in one half;
3. if the mean of ``r`` over all rows and groups exceeds ``OUTLIER_RATIO`` (1.5; a Gaussian row
   of 128 values gives about 1.15) and the halves have at least ``MIN_GROUP`` (16) columns, halve:
   ``g = ceil(g / 2)``, and repeat from 2; otherwise keep ``g``.

No calibration data is involved: the choice can be made, and checked, before any data is seen.
The same idea picks INT8 static quantization's granularity per matrix (:func:`int8_wants_per_channel`).
"""

from __future__ import annotations

import numpy as np

OUTLIER_RATIO = 1.5
MIN_GROUP = 16


def outlier_ratio(weights: np.ndarray, group_size: int) -> float:
    """Mean over rows and groups of range(group) / range(its flatter half), for ``weights`` [..., C]."""
    w = weights.reshape(-1, weights.shape[-1]).astype(np.float64)
    half = -(-group_size // 2)
    ratios = []
    for g in range(-(-w.shape[-1] // group_size)):
        group = w[:, g * group_size : (g + 1) * group_size]
        if group.shape[-1] <= half:  # a short last group has no second half to compare
            continue
        left, right = np.ptp(group[:, :half], axis=-1), np.ptp(group[:, half:], axis=-1)
        flatter = np.minimum(left, right)
        full = np.ptp(group, axis=-1)
        ratios.append(np.where(flatter > 0, full / np.maximum(flatter, 1e-30), 1.0))
    return float(np.mean(np.concatenate(ratios))) if ratios else 1.0


def auto_group_size(weights: np.ndarray) -> int:
    """The group size FineQuant's rule picks for ``weights`` [..., C] (C = the reduction axis)."""
    size = weights.shape[-1]
    while -(-size // 2) >= MIN_GROUP and outlier_ratio(weights, size) > OUTLIER_RATIO:
        size = -(-size // 2)
    return size


# INT8 static: per-channel or per-tensor weights, per matrix, from the weights alone. In QDQ form a
# per-channel weight costs about 9 bytes per output channel beyond its values (a float scale, a
# zero point and the bias's float scale): more than a 3x3 depthwise kernel's 9 int8 weights. So one
# scale per channel is kept only where one scale for the whole tensor loses precision.
PER_TENSOR_ERROR = 0.01  # relative RMS error of symmetric int8 per-tensor weights deemed harmless
PER_CHANNEL_GAIN = 1.5  # and per-channel must cut that error by at least this factor to be worth it


def int8_weight_error(rows: np.ndarray, per_channel: bool) -> float:
    """Relative RMS error of ``rows`` [out, ...] in symmetric int8 (one scale per row, or one in all)."""
    w = rows.reshape(rows.shape[0], -1).astype(np.float64)
    peak = np.abs(w).max(axis=1, keepdims=True) if per_channel else np.abs(w).max()
    scale = np.where(peak > 0, peak / 127.0, 1.0)
    error = np.sqrt(np.mean((np.clip(np.round(w / scale), -127, 127) * scale - w) ** 2))
    norm = np.sqrt(np.mean(w**2))
    return float(error / norm) if norm > 0 else 0.0


def int8_wants_per_channel(rows: np.ndarray) -> bool:
    """Whether ``rows`` [out, ...] should get one int8 scale per output channel (see above)."""
    per_tensor = int8_weight_error(rows, per_channel=False)
    return per_tensor > PER_TENSOR_ERROR and per_tensor > PER_CHANNEL_GAIN * int8_weight_error(rows, True)

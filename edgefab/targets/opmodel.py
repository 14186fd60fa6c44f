"""A fitted per-op latency model: how tables generalise beyond the layers they hold.

Each fused layer is split into primitive ops (dense, pointwise and depthwise convolutions, the
squeeze-excitation branch, activations, residual add, pooling, the classifier), and described by
six features: dense, pointwise and depthwise MACs (millions), activation traffic and weight bytes
(MB, float32) and the number of kernels launched. Latency is a non-negative linear function of
them, fitted to measured rows by least squares on the relative error (so small and large layers
weigh alike). A row may be a single layer or a whole network (the sum of its layers' features).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgefab.targets.layers import Layer, se_channels

FEATURES = ("dense_macs", "pw_macs", "dw_macs", "act_mb", "weight_mb", "kernels")
_MB = 4 / 1e6  # float32 bytes -> MB


def _conv(h: int, w: int, ho: int, wo: int, cin: int, cout: int, k: int, groups: int = 1) -> np.ndarray:
    macs = ho * wo * cout * (cin // groups) * k * k / 1e6
    kind = 2 if groups > 1 else (1 if k == 1 else 0)
    row = np.zeros(len(FEATURES))
    row[kind] = macs
    row[3] = (h * w * cin + ho * wo * cout) * _MB
    row[4] = cout * (cin // groups) * k * k * _MB
    row[5] = 1
    return row


def _eltwise(elements: int, passes: int = 2) -> np.ndarray:
    row = np.zeros(len(FEATURES))
    row[3], row[5] = elements * passes * _MB, 1
    return row


def features(layer: Layer) -> np.ndarray:
    """The six features of one fused layer."""
    h, w, ho, wo = layer.h, layer.w, layer.out_h, layer.out_w
    if layer.kind == "conv":
        row = _conv(h, w, ho, wo, layer.cin, layer.cout, layer.kernel)
    elif layer.kind == "dwconv":
        row = _conv(h, w, ho, wo, layer.cin, layer.cout, layer.kernel, layer.cin)
    elif layer.kind == "fc":
        row = _conv(h, w, h, w, layer.cin, layer.cout, 1)
    elif layer.kind in ("pool", "eltwise"):
        return _eltwise(h * w * layer.cin, 1 if layer.kind == "pool" else 3)
    else:
        row = _mbconv(layer)
    if layer.act == "hswish":  # a separate pass where the runtime does not fuse it
        row[3] += ho * wo * layer.cout * 2 * _MB
    return row


def _mbconv(layer: Layer) -> np.ndarray:
    h, w, ho, wo, mid = layer.h, layer.w, layer.out_h, layer.out_w, layer.mid
    row = np.zeros(len(FEATURES))
    if mid != layer.cin:
        row += _conv(h, w, h, w, layer.cin, mid, 1)
    row += _conv(h, w, ho, wo, mid, mid, layer.kernel, mid)
    row += _conv(ho, wo, ho, wo, mid, layer.cout, 1)
    if layer.se:
        squeeze = se_channels(mid)
        row += _eltwise(ho * wo * mid, 1) + _eltwise(ho * wo * mid, 2)  # pool, then scale
        row += _conv(1, 1, 1, 1, mid, squeeze, 1) + _conv(1, 1, 1, 1, squeeze, mid, 1)
    if layer.act == "hswish":  # after the expand and the depthwise conv (the caller adds none)
        row[3] += (h * w * (mid if mid != layer.cin else 0) + ho * wo * mid) * 2 * _MB
    if layer.residual:
        row += _eltwise(ho * wo * layer.cout, 3)
    return row


def network_features(layers: Sequence[Layer]) -> np.ndarray:
    """The summed features of a whole network."""
    return np.sum([features(layer) for layer in layers], axis=0)


def nnls(a: np.ndarray, b: np.ndarray, iterations: int = 200) -> np.ndarray:
    """Non-negative least squares ``min |a x - b|, x >= 0`` (Lawson-Hanson active set)."""
    n = a.shape[1]
    x, passive = np.zeros(n), np.zeros(n, dtype=bool)
    for _ in range(iterations):
        gradient = a.T @ (b - a @ x)
        if passive.all() or gradient[~passive].max(initial=0) <= 1e-12:
            break
        passive[np.argmax(np.where(passive, -np.inf, gradient))] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if (z[passive] > 0).all():
                x = z
                break
            bad = passive & (z <= 0)
            step = np.min(x[bad] / (x[bad] - z[bad] + 1e-300))
            x = x + step * (z - x)
            passive &= x > 1e-15
    return x


@dataclass(frozen=True)
class OpModel:
    """``ms = coefficients . features``, fitted to rows of measured latencies."""

    coefficients: tuple[float, ...]
    rows: int

    @classmethod
    def fit(
        cls, rows: Sequence[np.ndarray], ms: Sequence[float], weights: Sequence[float] | None = None
    ) -> OpModel:
        """Fit to feature rows and their milliseconds, minimising the (weighted) relative error.

        Rows of 0 ms (too small to time) carry no relative error and are left out.
        """
        a, y = np.asarray(rows, dtype=float), np.asarray(ms, dtype=float)
        w = np.asarray(weights if weights is not None else np.ones(len(y)), dtype=float)
        keep = y > 0
        a, y, w = a[keep], y[keep], w[keep]
        scale = w / y
        scales = a.max(axis=0) + 1e-12  # columns of comparable size keep the solver well conditioned
        solution = nnls(a * scale[:, None] / scales, y * scale) / scales
        return cls(tuple(float(c) for c in solution), len(y))

    def predict(self, row: np.ndarray) -> float:
        """Milliseconds for a feature row."""
        return float(np.dot(self.coefficients, row))

    def layer_ms(self, layer: Layer) -> float:
        """Milliseconds for one layer."""
        return self.predict(features(layer))

    def to_dict(self) -> dict:
        """The coefficients by feature name (ms per unit)."""
        return {"coefficients": dict(zip(FEATURES, self.coefficients, strict=True)), "rows": self.rows}

"""GPTQ and round-to-nearest for one weight matrix, group-wise, in numpy.

GPTQ (Frantar et al., 2023) quantizes a weight matrix ``W`` (rows = output channels, columns =
the reduction axis) one column at a time and spreads each column's rounding error over the
columns not yet quantized, weighted by the inverse Hessian of the layer's reconstruction loss,
``H = 2 X X^T`` (``X``: the layer's calibration inputs, one column per position and sample).
As in the reference implementation: the Hessian is damped by ``damp * mean(diag(H))``, columns
whose input is always zero are zeroed, the updates are applied lazily in blocks of ``block``
columns, and ``act_order`` visits the columns by decreasing ``diag(H)``.

Matrices come batched as ``W[G, R, C]`` with one Hessian per batch entry, ``H[G, C, C]``: a dense
layer is ``G = 1``; a grouped convolution has one Hessian per convolution group (each sees other
input channels) and a depthwise one is ``G = channels, R = 1``: per-output-channel rows.

The grid is asymmetric min-max (scale and zero point per row and group of ``group_size``
consecutive columns, zero included in the range, as in the reference quantizer). Without
``act_order`` each group's grid is fitted when GPTQ reaches it, on the weights as updated so
far; with ``act_order`` the grids are fitted first on the original weights ("static groups"), so
that groups stay runs of consecutive columns, which is what blocked DequantizeLinear stores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class QuantizedMatrix:
    """Integer codes and their grid: ``W ~ (codes - zero) * scale`` group by group."""

    codes: np.ndarray  # [G, R, C] integers in [0, 2**bits - 1]
    scale: np.ndarray  # [G, R, groups] float32
    zero: np.ndarray  # [G, R, groups] integers in [0, 2**bits - 1]
    group_size: int

    def dequantize(self) -> np.ndarray:
        """The float32 weights the runtimes compute with: (codes - zero) * scale, in float32."""
        scale = np.repeat(self.scale, self.group_size, axis=-1)[..., : self.codes.shape[-1]]
        zero = np.repeat(self.zero, self.group_size, axis=-1)[..., : self.codes.shape[-1]]
        return (self.codes.astype(np.float32) - zero.astype(np.float32)) * scale.astype(np.float32)


def _grid(w: np.ndarray, maxq: int) -> tuple[np.ndarray, np.ndarray]:
    """Asymmetric min-max scale and zero point over the last axis (zero kept in range)."""
    low = np.minimum(w.min(axis=-1), 0.0)
    high = np.maximum(w.max(axis=-1), 0.0)
    flat = high == low  # all-zero rows: any scale reproduces them
    high = np.where(flat, 1.0, high)
    low = np.where(flat, -1.0, low)
    scale = (high - low) / maxq
    zero = np.round(-low / scale)
    return scale.astype(np.float32), zero


def _groups(w: np.ndarray, group_size: int, maxq: int) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero of every group of ``group_size`` columns: [..., groups] each."""
    count = -(-w.shape[-1] // group_size)
    scales, zeros = zip(
        *(_grid(w[..., g * group_size : (g + 1) * group_size], maxq) for g in range(count)), strict=True
    )
    return np.stack(scales, axis=-1), np.stack(zeros, axis=-1)


def _round(w: np.ndarray, scale: np.ndarray, zero: np.ndarray, maxq: int) -> np.ndarray:
    """Codes of ``w`` on the grid (scale, zero broadcast against w)."""
    return np.clip(np.round(w / scale) + zero, 0, maxq)


def rtn(weights: np.ndarray, bits: int, group_size: int) -> QuantizedMatrix:
    """Round-to-nearest on the same grid GPTQ uses: the baseline GPTQ is measured against."""
    maxq = 2**bits - 1
    w = weights.astype(np.float64)
    scale, zero = _groups(w, group_size, maxq)
    expand = lambda a: np.repeat(a, group_size, axis=-1)[..., : w.shape[-1]]  # noqa: E731
    codes = _round(w, expand(scale).astype(np.float64), expand(zero), maxq)
    return QuantizedMatrix(codes.astype(np.uint8), scale, zero.astype(np.uint8), group_size)


def _inverse_hessian(hessian: np.ndarray, damp: float) -> np.ndarray:
    """Upper Cholesky factor of the damped inverse Hessian, per batch entry."""
    h = hessian.copy()
    diag = np.einsum("gii->gi", h)
    diag += damp * diag.mean(axis=-1, keepdims=True) + 1e-12  # writes through to h
    inverse = np.linalg.inv(np.linalg.cholesky(h))  # L^-1
    inverse = np.swapaxes(inverse, -1, -2) @ inverse  # H^-1 = L^-T L^-1
    return np.swapaxes(np.linalg.cholesky(inverse), -1, -2)


def gptq(
    weights: np.ndarray,
    hessian: np.ndarray,
    bits: int = 4,
    group_size: int = 128,
    damp: float = 0.01,
    block: int = 128,
    act_order: bool = False,
) -> QuantizedMatrix:
    """GPTQ codes for ``weights`` [G, R, C] given the layer Hessians ``hessian`` [G, C, C]."""
    maxq = 2**bits - 1
    w = weights.astype(np.float64).copy()
    h = hessian.astype(np.float64).copy()
    cols = w.shape[-1]
    dead = np.einsum("gii->gi", h) == 0  # inputs that never fire: their weights cannot matter
    for g in range(len(h)):
        h[g, dead[g], dead[g]] = 1.0
        w[g][:, dead[g]] = 0.0
    static = _groups(w, group_size, maxq) if act_order else None
    order = np.argsort(-np.einsum("gii->gi", h), axis=-1, kind="stable") if act_order else None
    if order is not None:
        w = np.take_along_axis(w, order[:, None, :], axis=-1)
        h = np.take_along_axis(np.take_along_axis(h, order[:, :, None], axis=1), order[:, None, :], axis=2)
    u = _inverse_hessian(h, damp)
    codes = np.zeros_like(w)
    scale = np.zeros((*w.shape[:2], -(-cols // group_size)), np.float32)
    zero = np.zeros_like(scale, dtype=np.float64)
    for start in range(0, cols, block):
        stop = min(start + block, cols)
        chunk = w[..., start:stop].copy()
        errors = np.zeros_like(chunk)
        for i in range(stop - start):
            col = start + i
            if static is not None:
                natural = order[:, col] // group_size  # [G]: the group of this column, per batch entry
                s = np.take_along_axis(static[0], natural[:, None, None], axis=-1)[..., 0]
                z = np.take_along_axis(static[1], natural[:, None, None], axis=-1)[..., 0]
            else:
                if col % group_size == 0:  # fit this group's grid on the weights as updated so far
                    current = np.concatenate([chunk[..., i:], w[..., stop:]], axis=-1)[..., :group_size]
                    scale[..., col // group_size], zero[..., col // group_size] = _grid(current, maxq)
                s, z = scale[..., col // group_size], zero[..., col // group_size]
            q = _round(chunk[..., i], s.astype(np.float64), z, maxq)
            codes[..., col] = q
            d = u[:, col, col][:, None]
            err = (chunk[..., i] - (q - z) * s.astype(np.float64)) / d
            chunk[..., i:] -= err[..., None] * u[:, None, col, col:stop]
            errors[..., i] = err
        w[..., stop:] -= errors @ u[:, start:stop, stop:]
    if order is not None:
        inverse = np.argsort(order, axis=-1)
        codes = np.take_along_axis(codes, inverse[:, None, :], axis=-1)
        scale, zero = static
    return QuantizedMatrix(codes.astype(np.uint8), scale, zero.astype(np.uint8), group_size)


def output_error(weights: np.ndarray, approx: np.ndarray, hessian: np.ndarray) -> float:
    """Relative output error of a layer on its calibration inputs: ||(W - Q) X|| / ||W X||.

    Computed from the Hessian (``||D X||^2 = tr(D X X^T D^T)``), so no inputs are kept.
    """
    w = weights.astype(np.float64)
    d = w - approx.astype(np.float64)
    num = np.einsum("grc,gcd,grd->", d, hessian, d)
    den = np.einsum("grc,gcd,grd->", w, hessian, w)
    return float(np.sqrt(max(num, 0.0) / den)) if den > 0 else 0.0

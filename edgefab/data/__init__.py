"""Datasets for the model factory: loading, a fixed train/validation split, and input normalisation.

A model's preprocessing is the dict from :func:`normalization`, stored with the model::

    x = (uint8_pixels * scale - mean[c]) / std[c]        # float32, NCHW

:func:`to_float` applies it; a device runtime applies the same formula.
"""

from __future__ import annotations

import numpy as np

from edgefab.data.sources import (
    Dataset,
    ImageFiles,
    from_map_dataset,
    load_dataset,
    load_image_folder,
    load_mnist,
    load_npz,
    load_torchvision,
)
from edgefab.errors import EdgefabError

__all__ = [
    "Dataset",
    "ImageFiles",
    "from_map_dataset",
    "load_dataset",
    "load_image_folder",
    "load_mnist",
    "load_npz",
    "load_torchvision",
    "normalization",
    "to_float",
    "train_val_split",
]


def train_val_split(ds: Dataset, val_fraction: float = 0.2, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Split ``ds`` into (train, validation), stratified: each class gives ``val_fraction`` of its
    samples (rounded) to validation. The same seed gives the same split on every machine."""
    if not 0.0 < val_fraction < 1.0:
        raise EdgefabError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    # PCG64 streams are fixed by numpy across platforms and versions, unlike the legacy global RNG.
    rng = np.random.default_rng(seed)
    val_parts = []
    for label in range(ds.num_classes):
        members = np.flatnonzero(ds.labels == label)
        n_val = int(np.floor(len(members) * val_fraction + 0.5))
        val_parts.append(rng.permutation(members)[:n_val])
    val_idx = np.sort(np.concatenate(val_parts))
    train_mask = np.ones(len(ds), dtype=bool)
    train_mask[val_idx] = False
    if not val_idx.size or train_mask.all() or not train_mask.any():
        raise EdgefabError(
            f"{ds.name} has {len(ds)} samples, too few to split with val_fraction={val_fraction}; add data"
        )
    return ds.subset(np.flatnonzero(train_mask)), ds.subset(val_idx)


def normalization(ds: Dataset) -> dict:
    """The preprocessing a model trained on ``ds`` (the train split) needs, JSON-serialisable:
    ``{"layout": "NCHW", "scale": 1/255, "mean": [per channel], "std": [per channel]}``,
    meaning ``x = (uint8 * scale - mean) / std``. mean/std are measured after scaling."""
    scale = 1.0 / 255.0
    means, stds = [], []
    for channel in range(ds.input_shape[0]):
        # A 256-bin histogram gives exact moments without a float copy of the whole dataset.
        counts = np.bincount(ds.images[:, channel].ravel(), minlength=256).astype(np.float64)
        levels = np.arange(256, dtype=np.float64) * scale
        mean = float(counts @ levels / counts.sum())
        var = float(counts @ (levels - mean) ** 2 / counts.sum())
        means.append(mean)
        # A constant channel would divide by zero; std 1 leaves it merely shifted.
        stds.append(float(np.sqrt(var)) if var > 0 else 1.0)
    return {"layout": "NCHW", "scale": scale, "mean": means, "std": stds}


def to_float(images: np.ndarray, prep: dict) -> np.ndarray:
    """Apply :func:`normalization`'s preprocessing to uint8 NCHW images -> float32 NCHW."""
    if prep.get("layout") != "NCHW":
        raise EdgefabError(f"preprocessing layout {prep.get('layout')!r} is not supported; expected 'NCHW'")
    channels = len(prep["mean"])
    if images.ndim != 4 or images.shape[1] != channels:
        raise EdgefabError(
            f"images have shape {images.shape} but the preprocessing expects (N, {channels}, H, W); "
            "use data with the model's channel count"
        )
    mean = np.asarray(prep["mean"], dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(prep["std"], dtype=np.float32).reshape(1, -1, 1, 1)
    return (images.astype(np.float32) * np.float32(prep["scale"]) - mean) / std

"""Calibration data for static quantization: read, check against the model's inputs, feed.

A calibration file is an ``.npz`` with one array per model input, named like the input, or an
``.npy`` for a single-input model. Each array holds N samples stacked on the first axis: shape
``(N, *input_shape[1:])`` for an input with batch size 1 (the batch axis is the sample axis), or
``(N, *input_shape)``. Float inputs take float arrays (cast to float32): preprocessing is the
user's, as the model expects it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from edgefab.errors import EdgefabError
from edgefab.runtime.runner import read_inputs

Feeds = dict[str, np.ndarray]

MIN_CALIBRATION_SAMPLES = 16  # fewer gives ranges that depend on which samples happened to be picked
MIN_HELD_OUT_SAMPLES = 8  # compile's accuracy guard checks agreement on samples kept out of calibration


class FeedsReader(CalibrationDataReader):
    """ONNX Runtime's calibration reader over a list of feeds (one dict per sample)."""

    def __init__(self, feeds: list[Feeds]):
        self._feeds = list(feeds)
        self._next = iter(self._feeds)

    def get_next(self) -> Feeds | None:
        """The next sample's feeds, or None at the end."""
        return next(self._next, None)

    def rewind(self) -> None:
        """Start again from the first sample."""
        self._next = iter(self._feeds)


def read_calibration_file(path: Path) -> dict[str, np.ndarray] | np.ndarray:
    """The arrays of an ``.npz`` (by name) or the array of an ``.npy``; never unpickled."""
    path = Path(path)
    if path.is_file() and path.suffix not in (".npz", ".npy"):
        raise EdgefabError(f"calibration data {path} must be a .npz (arrays named like the inputs) or .npy")
    return read_inputs(path, what="calibration data")


def _sample_shape(name: str, array: np.ndarray, shape: list[int]) -> np.ndarray:
    """``array`` as (N, *shape): the batch axis of a batch-1 input may be the sample axis."""
    if list(array.shape[1:]) == list(shape):
        return array
    if shape and shape[0] == 1 and list(array.shape[1:]) == list(shape[1:]):
        return array[:, None]
    wanted = f"(N, {', '.join(map(str, shape[1:] if shape and shape[0] == 1 else shape))})"
    raise EdgefabError(
        f"calibration array '{name}' has shape {tuple(array.shape)}; input {name} is {shape}, "
        f"so stack N samples as {wanted}"
    )


def _cast(name: str, array: np.ndarray, dtype: str) -> np.ndarray:
    wanted = np.dtype(dtype)
    if wanted.kind == "f" and array.dtype.kind != "f":
        raise EdgefabError(
            f"calibration array '{name}' is {array.dtype}; input {name} takes {wanted.name}: "
            "save the samples preprocessed, as float, the way the model expects them"
        )
    if wanted.kind in "iub" and array.dtype.kind not in "iub":
        raise EdgefabError(f"calibration array '{name}' is {array.dtype}; input {name} takes {wanted.name}")
    return array.astype(wanted, copy=False)


def feeds_from_arrays(
    arrays: dict[str, np.ndarray] | np.ndarray, signature: list[dict], source: str = "calibration data"
) -> list[Feeds]:
    """Per-sample feeds from calibration arrays, checked against the model's input signature."""
    names = [spec["name"] for spec in signature]
    if isinstance(arrays, np.ndarray):
        if len(names) != 1:
            raise EdgefabError(
                f"{source} is one .npy array but the model has inputs {', '.join(names)}; "
                "use a .npz with one array per input"
            )
        arrays = {names[0]: arrays}
    unknown = sorted(set(arrays) - set(names))
    missing = [n for n in names if n not in arrays]
    if unknown or missing:
        raise EdgefabError(
            f"{source} has arrays {', '.join(sorted(arrays)) or 'none'}; the model's inputs are "
            f"{', '.join(names)}: name one array after each input"
        )
    stacked = {
        spec["name"]: _cast(
            spec["name"], _sample_shape(spec["name"], arrays[spec["name"]], spec["shape"]), spec["dtype"]
        )
        for spec in signature
    }
    counts = {name: len(array) for name, array in stacked.items()}
    if len(set(counts.values())) > 1:
        raise EdgefabError(f"{source} arrays hold different sample counts: {counts}")
    count = next(iter(counts.values()))
    return [{name: np.ascontiguousarray(array[i]) for name, array in stacked.items()} for i in range(count)]


def check_sample_count(count: int, needed: int, source: str) -> None:
    """Too few samples is a user error that says how many are needed."""
    if count < needed:
        raise EdgefabError(f"{source} has {count} samples; int8 calibration needs at least {needed}")


def split_held_out(feeds: list[Feeds], calibration_samples: int) -> tuple[list[Feeds], list[Feeds]]:
    """(calibration, held-out): a quarter (at least 8) is held out to check agreement afterwards."""
    needed = MIN_CALIBRATION_SAMPLES + MIN_HELD_OUT_SAMPLES
    if len(feeds) < needed:
        raise EdgefabError(
            f"calibration data has {len(feeds)} samples; int8 needs at least {needed} "
            f"({MIN_CALIBRATION_SAMPLES} to calibrate, {MIN_HELD_OUT_SAMPLES} held out to check accuracy)"
        )
    held = max(MIN_HELD_OUT_SAMPLES, len(feeds) // 4)
    return feeds[: len(feeds) - held][:calibration_samples], feeds[len(feeds) - held :]


def synthetic_feeds(signature: list[dict], count: int, seed: int = 0) -> list[Feeds]:
    """Seeded standard-normal samples (when no calibration data is given; the manifest says so)."""
    from edgefab.export.graph import random_inputs

    return [random_inputs(signature, seed=seed + i) for i in range(count)]

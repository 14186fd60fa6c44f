"""Data sources: the embedded MNIST digits, .npz files, image folders and torchvision datasets.

Every loader returns a :class:`Dataset` with uint8 NCHW images and int64 labels, so the rest of
edgefab never sees where the data came from. Anything the user can fix is an :class:`EdgefabError`.
"""

from __future__ import annotations

import importlib
import os
from collections import Counter
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import numpy as np
import platformdirs
from PIL import Image

from edgefab.errors import EdgefabError

SOURCES_HINT = "use mnist, a .npz file, an image folder, or torchvision:NAME"
# Same extensions as torchvision's ImageFolder, so a folder reads the same in both.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# Pillow modes that carry a single grey level (alpha, if any, is dropped on conversion).
GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
CHANNELS = (1, 3)


@dataclass
class Dataset:
    """Images and labels ready for training: ``images`` uint8 (N, C, H, W), ``labels`` int64 (N,)."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    classes: list[str]

    def __post_init__(self) -> None:
        # Checked once here so every source (and subset) gives the same guarantees.
        n, m = len(self.images), len(self.labels)
        if n != m:
            raise EdgefabError(f"{self.name}: {n} images but {m} labels; give exactly one label per image")
        if n == 0:
            raise EdgefabError(f"{self.name}: the dataset is empty; give at least one image per class")
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[1] not in CHANNELS:
            raise EdgefabError(
                f"{self.name}: images must be uint8 (N, C, H, W) with C 1 or 3, "
                f"got {self.images.dtype} {self.images.shape}"
            )
        if self.labels.dtype != np.int64 or self.labels.ndim != 1:
            raise EdgefabError(f"{self.name}: labels must be int64 (N,), got {self.labels.dtype}")
        low, high = int(self.labels.min()), int(self.labels.max())
        if low < 0 or high >= len(self.classes):
            raise EdgefabError(
                f"{self.name}: labels run {low}..{high} but there are {len(self.classes)} class names; "
                "labels must be class indices 0..len(classes)-1"
            )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """One sample's shape, (C, H, W)."""
        _, c, h, w = self.images.shape
        return (c, h, w)

    def subset(self, indices: np.ndarray | list[int]) -> Dataset:
        """A new dataset with the given samples (copied), keeping name and classes."""
        idx = np.asarray(indices, dtype=np.int64)
        return Dataset(self.name, self.images[idx], self.labels[idx], list(self.classes))


def load_dataset(spec: str, size: tuple[int, int] | None = None) -> Dataset:
    """Load a dataset from a spec: ``mnist``, a ``.npz`` path, a folder path (or ``imagefolder:PATH``),
    or ``torchvision:NAME[:ROOT]``.

    ``size=(H, W)`` resizes decoded images (image folders, torchvision); array sources must already
    have that size. "mnist" always means the embedded digits: write ``./mnist`` for a folder of that name.
    """
    spec = spec.strip()
    if spec == "mnist":
        dataset = load_mnist()
    elif spec.startswith("torchvision:"):
        return load_torchvision(spec, size)
    elif spec.startswith("imagefolder:"):
        return load_image_folder(Path(spec.removeprefix("imagefolder:")).expanduser(), size)
    else:
        path = Path(spec.removeprefix("npz:")).expanduser()
        looks_like_path = path.suffix.lower() == ".npz" or os.sep in spec or "/" in spec
        if path.is_dir():
            return load_image_folder(path, size)
        if path.is_file() and path.suffix.lower() == ".npz":
            dataset = load_npz(path)
        elif looks_like_path and not path.exists():
            raise EdgefabError(f"data path {path} does not exist; give a .npz file or an image folder")
        else:
            raise EdgefabError(f"unknown data source '{spec}'; {SOURCES_HINT}")
    if size is not None and dataset.input_shape[1:] != tuple(size):
        raise EdgefabError(
            f"{dataset.name} images are {dataset.input_shape[1]}x{dataset.input_shape[2]}, not "
            f"{size[0]}x{size[1]}; size= resizes decoded images only, so resize the arrays before saving"
        )
    return dataset


def load_mnist() -> Dataset:
    """The 8,000 embedded MNIST digits, as (8000, 1, 28, 28) uint8 with classes "0".."9"."""
    # as_file gives a real path even when edgefab runs from a zip; np.load needs a seekable file.
    with resources.as_file(resources.files("edgefab.data") / "mnist8k.npz") as path:
        dataset = load_npz(path)
    dataset.name = "mnist"
    return dataset


def load_npz(path: Path) -> Dataset:
    """Load arrays ``images``/``x`` and ``labels``/``y`` (and optional ``classes``) from a .npz file."""
    if not path.is_file():
        raise EdgefabError(f"data file {path} does not exist; give the path to a .npz file")
    name = f"npz:{path.stem}"
    try:
        # Never unpickle: a data file must not be able to run code.
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (ValueError, OSError, EOFError) as err:
        # Object arrays need pickle, which we refuse: tell the user how to save class names without it.
        pickled = "allow_pickle" in str(err)
        hint = "save class names as np.array(names, dtype=str)" if pickled else "save it with numpy.savez"
        raise EdgefabError(f"cannot read {path} as a .npz file ({_first_line(err)}); {hint}") from None
    images, labels = _pick(arrays, path, "images", "x"), _pick(arrays, path, "labels", "y")
    images = _to_nchw(_to_uint8(images, f"{path}: images"), f"{path}: images")
    labels = _to_labels(labels, f"{path}: labels")
    names = arrays.get("classes")
    classes = [str(c) for c in names.ravel()] if names is not None else _default_classes(labels)
    return Dataset(name, images, labels, classes)


def load_image_folder(root: Path, size: tuple[int, int] | None = None) -> Dataset:
    """Load an ImageFolder tree ``root/<class_name>/<images>``; classes sorted by folder name.

    Images are converted to "L" if all are grey, else "RGB". They must share one size unless
    ``size=(H, W)`` is given, in which case every image is resized (bilinear) to it.
    """
    if not root.is_dir():
        raise EdgefabError(f"image folder {root} does not exist; give a folder of <class_name>/<images>")
    return from_map_dataset(ImageFiles(root), f"imagefolder:{root.resolve().name}", size)


class ImageFiles:
    """A map-style dataset over an image folder, shaped like torchvision's ImageFolder
    (``classes``, ``samples`` as (path, label)), yielding (PIL image, label)."""

    def __init__(self, root: Path):
        self.classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
        if not self.classes:
            raise EdgefabError(f"image folder {root} has no class subfolders; put images in {root}/<class>/")
        self.samples: list[tuple[Path, int]] = []
        for label, name in enumerate(self.classes):
            files = _image_files(root / name)
            if not files:
                raise EdgefabError(
                    f"class folder {root / name} has no images ({', '.join(IMAGE_EXTENSIONS)}); "
                    "add images or remove the folder"
                )
            self.samples += [(file, label) for file in files]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        path, label = self.samples[index]
        try:
            with Image.open(path) as img:
                img.load()
                return img.copy(), label  # a copy outlives the closed file
        except Exception as err:  # decoders raise OSError, SyntaxError, ValueError... all mean "bad file"
            reason = _first_line(err)
            raise EdgefabError(f"cannot read image {path} ({reason}); delete or replace the file") from None


def from_map_dataset(ds: Any, name: str, size: tuple[int, int] | None = None) -> Dataset:
    """Convert any map-style dataset (``len(ds)``, ``ds[i] -> (image, label)``) to a :class:`Dataset`.

    An image may be a PIL image, an ndarray or a tensor, (H, W), (C, H, W) or (H, W, C), uint8 or
    float in [0, 1]. Class names come from ``ds.classes`` when present, else "0", "1", ...
    """
    pictures, labels = [], []
    for index in range(len(ds)):
        item = ds[index]
        if not (isinstance(item, tuple | list) and len(item) == 2):
            raise EdgefabError(f"{name}: sample {index} is not an (image, label) pair")
        picture, label = item
        pictures.append(_sample_to_hwc(picture, size, f"{name}: {_describe(ds, index)}"))
        labels.append(int(label))
    if not pictures:
        raise EdgefabError(f"{name}: the dataset is empty; give at least one image per class")
    _check_one_size(pictures, ds, name)
    if any(p.shape[2] == 3 for p in pictures):
        # Mixed grey and colour: grey becomes RGB by repeating the level, as Pillow's convert does.
        pictures = [np.repeat(p, 3, axis=2) if p.shape[2] == 1 else p for p in pictures]
    images = np.stack([p.transpose(2, 0, 1) for p in pictures])
    label_array = np.asarray(labels, dtype=np.int64)
    names = getattr(ds, "classes", None)
    classes = [str(c) for c in names] if names is not None else _default_classes(label_array)
    return Dataset(name, images, label_array, classes)


def load_torchvision(spec: str, size: tuple[int, int] | None = None) -> Dataset:
    """``torchvision:NAME[:ROOT]``: the train split of torchvision.datasets.NAME, downloaded to ROOT
    (default: edgefab's user cache directory)."""
    _, _, rest = spec.partition(":")
    wanted, _, root = rest.partition(":")  # ROOT keeps any further ':' (e.g. C:\data)
    try:
        datasets = importlib.import_module("torchvision.datasets")
    except Exception as err:  # a mismatched build fails with RuntimeError/OSError, not only ImportError
        raise EdgefabError(
            f"torchvision is not usable ({type(err).__name__}: {_first_line(err)}); install torchvision "
            f"matching your torch {metadata.version('torch')}, or save the data as .npz"
        ) from None
    by_lower = {n.lower(): n for n in dir(datasets) if not n.startswith("_")}
    if wanted.lower() not in by_lower:
        raise EdgefabError(f"torchvision has no dataset '{wanted}'; use e.g. torchvision:MNIST or :CIFAR10")
    cls_name = by_lower[wanted.lower()]
    root = root or str(Path(platformdirs.user_cache_dir("edgefab"), "torchvision"))
    try:
        ds = getattr(datasets, cls_name)(root=root, train=True, download=True)
    except TypeError as err:
        raise EdgefabError(
            f"torchvision.datasets.{cls_name} does not take root/train/download ({_first_line(err)}); "
            "build it in Python and call edgefab.data.from_map_dataset"
        ) from None
    except Exception as err:  # download errors come as URLError, RuntimeError, OSError...
        raise EdgefabError(
            f"cannot download torchvision dataset {cls_name} to {root} ({_first_line(err)}); "
            "check the network, or put the files there yourself"
        ) from None
    return from_map_dataset(ds, f"torchvision:{cls_name}", size)


# --- helpers -------------------------------------------------------------------------------------------


def _pick(arrays: dict[str, np.ndarray], path: Path, *keys: str) -> np.ndarray:
    for key in keys:
        if key in arrays:
            return arrays[key]
    found = ", ".join(arrays) or "none"
    raise EdgefabError(f"{path} has no array '{keys[0]}' (or '{keys[1]}'), only {found}; save images, labels")


def _to_uint8(array: np.ndarray, what: str) -> np.ndarray:
    """uint8 as is; integers in 0..255 cast; floats in [0, 1] scaled by 255 and rounded."""
    if array.dtype == np.uint8 or array.size == 0:  # empty data is reported by Dataset
        return array.astype(np.uint8, copy=False)
    if np.issubdtype(array.dtype, np.floating):
        if not (np.isfinite(array).all() and array.min() >= 0.0 and array.max() <= 1.0):
            raise EdgefabError(f"{what}: float values must lie in [0, 1]; save uint8 0..255 or floats 0..1")
        return np.rint(array * 255.0).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        if array.min() < 0 or array.max() > 255:
            raise EdgefabError(f"{what}: integer values must lie in 0..255; save uint8 images")
        return array.astype(np.uint8)
    raise EdgefabError(f"{what}: expected uint8 or float pixels, got {array.dtype} {array.shape}")


def _to_nchw(images: np.ndarray, what: str) -> np.ndarray:
    """(N, H, W) -> (N, 1, H, W); (N, C, H, W) kept; (N, H, W, C) transposed. C is 1 or 3."""
    if images.ndim == 3:
        return images[:, None]
    if images.ndim == 4 and images.shape[1] in CHANNELS:  # channel-first wins when both fit
        return images
    if images.ndim == 4 and images.shape[3] in CHANNELS:
        return np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    raise EdgefabError(
        f"{what}: expected (N, H, W), (N, H, W, C) or (N, C, H, W), C 1 or 3; not {images.shape}"
    )


def _to_labels(labels: np.ndarray, what: str) -> np.ndarray:
    if not np.issubdtype(labels.dtype, np.integer) or labels.squeeze().ndim > 1:
        raise EdgefabError(f"{what}: expected integer class indices (N,), got {labels.dtype} {labels.shape}")
    return labels.reshape(-1).astype(np.int64)


def _image_files(folder: Path) -> list[Path]:
    """Image files under ``folder``, recursively, in a fixed order (torchvision's walk order)."""
    found = []
    for dirpath, _, filenames in sorted(os.walk(folder, followlinks=True)):
        found += [Path(dirpath, f) for f in sorted(filenames) if f.lower().endswith(IMAGE_EXTENSIONS)]
    return found


def _default_classes(labels: np.ndarray) -> list[str]:
    return [str(i) for i in range(int(labels.max()) + 1)] if labels.size else []


def _sample_to_hwc(picture: Any, size: tuple[int, int] | None, what: str) -> np.ndarray:
    """One image (PIL, ndarray or tensor) -> uint8 (H, W, C), resized to ``size`` if given."""
    if isinstance(picture, Image.Image):
        image = picture.convert("L" if picture.mode in GREY_MODES else "RGB")
    else:
        if hasattr(picture, "detach"):  # a torch tensor, without importing torch here
            picture = picture.detach().cpu().numpy()
        array = np.asarray(picture)
        if array.ndim not in (2, 3):
            raise EdgefabError(f"{what}: expected an image of 2 or 3 dimensions, got shape {array.shape}")
        array = _to_nchw(_to_uint8(array[None], what), what)[0].transpose(1, 2, 0)
        if size is None or array.shape[:2] == tuple(size):
            return array
        image = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    if size is not None and image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)  # Pillow sizes are (W, H)
    array = np.asarray(image)
    return array[:, :, None] if array.ndim == 2 else array


def _check_one_size(pictures: list[np.ndarray], ds: Any, name: str) -> None:
    sizes = Counter(p.shape[:2] for p in pictures)
    if len(sizes) == 1:
        return
    (h, w), _ = sizes.most_common(1)[0]
    index = next(i for i, p in enumerate(pictures) if p.shape[:2] != (h, w))
    ph, pw = pictures[index].shape[:2]
    raise EdgefabError(
        f"{name}: {_describe(ds, index)} is {ph}x{pw} (height x width) but most images are {h}x{w}; "
        f"resize the images to one size, or pass size=({h}, {w}) to resize on load"
    )


def _describe(ds: Any, index: int) -> str:
    # torchvision's folder datasets (and ImageFiles) keep (path, label) in .samples: name the file.
    samples = getattr(ds, "samples", None)
    return f"image {samples[index][0]}" if isinstance(samples, list) else f"sample {index}"


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]

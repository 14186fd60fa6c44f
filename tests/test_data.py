"""Tests for edgefab.data: the embedded digits, .npz files, image folders, map-style datasets,
the stratified split and the normalisation."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from PIL import Image

from edgefab.data import (
    Dataset,
    from_map_dataset,
    load_dataset,
    normalization,
    to_float,
    train_val_split,
)
from edgefab.errors import EdgefabError


@pytest.fixture(scope="module")
def mnist() -> Dataset:
    return load_dataset("mnist")


def indexed_dataset(counts: list[int]) -> Dataset:
    """A dataset whose sample i carries i in its two pixels (high, low byte), to trace the split."""
    labels = np.repeat(np.arange(len(counts)), counts).astype(np.int64)
    index = np.arange(len(labels))
    images = np.stack([index // 256, index % 256], axis=1).astype(np.uint8).reshape(-1, 1, 2, 1)
    return Dataset("indexed", images, labels, [f"c{i}" for i in range(len(counts))])


def sample_ids(ds: Dataset) -> set[int]:
    return set((ds.images[:, 0, 0, 0].astype(int) * 256 + ds.images[:, 0, 1, 0]).tolist())


def write_image(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def grey(value: int, h: int = 8, w: int = 6) -> np.ndarray:
    return np.full((h, w), value, dtype=np.uint8)


# --- embedded digits, split, normalisation ---------------------------------------------------------


def test_embedded_mnist_loads_as_uint8_nchw(mnist: Dataset) -> None:
    assert mnist.name == "mnist"
    assert mnist.images.shape == (8000, 1, 28, 28) and mnist.images.dtype == np.uint8
    assert mnist.labels.shape == (8000,) and mnist.labels.dtype == np.int64
    assert mnist.classes == [str(d) for d in range(10)] and mnist.num_classes == 10
    assert mnist.input_shape == (1, 28, 28) and len(mnist) == 8000
    assert set(np.unique(mnist.labels)) == set(range(10))


def test_split_is_stratified_disjoint_and_complete() -> None:
    ds = indexed_dataset([500, 120, 37, 3])
    train, val = train_val_split(ds, val_fraction=0.25, seed=1)
    assert np.bincount(val.labels).tolist() == [125, 30, 9, 1]
    assert np.bincount(train.labels).tolist() == [375, 90, 28, 2]
    assert sample_ids(train).isdisjoint(sample_ids(val))
    assert sample_ids(train) | sample_ids(val) == set(range(len(ds)))
    assert train.classes == val.classes == ds.classes


def test_split_is_deterministic_per_seed(mnist: Dataset) -> None:
    first, again = train_val_split(mnist, seed=0), train_val_split(mnist, seed=0)
    other = train_val_split(mnist, seed=1)
    assert np.array_equal(first[1].images, again[1].images)
    assert not np.array_equal(first[1].images, other[1].images)
    # Each class gives 20 % (rounded) to validation: 802 -> 160, 907 -> 181, ...
    expected = np.floor(np.bincount(mnist.labels) * 0.2 + 0.5).astype(int)
    assert np.bincount(first[1].labels).tolist() == expected.tolist()
    assert len(first[0]) + len(first[1]) == 8000


def test_split_pinned_for_seed_0() -> None:
    # Pins numpy's PCG64 stream: a change here would silently change every model's validation set.
    _, val = train_val_split(indexed_dataset([10, 10]), val_fraction=0.3, seed=0)
    assert sorted(sample_ids(val)) == [2, 4, 6, 12, 13, 19]


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_rejects_fraction_outside_0_1(fraction: float) -> None:
    with pytest.raises(EdgefabError, match="val_fraction"):
        train_val_split(indexed_dataset([10, 10]), val_fraction=fraction)


def test_split_rejects_too_few_samples() -> None:
    with pytest.raises(EdgefabError, match="too few"):
        train_val_split(indexed_dataset([1, 1]), val_fraction=0.2)


def test_normalization_of_digits_is_sensible_and_json(mnist: Dataset) -> None:
    train, _ = train_val_split(mnist)
    prep = normalization(train)
    assert json.loads(json.dumps(prep)) == prep
    assert prep["layout"] == "NCHW" and prep["scale"] == pytest.approx(1 / 255)
    assert prep["mean"][0] == pytest.approx(0.13, abs=0.01)  # MNIST's well-known 0.1307 / 0.3081
    assert prep["std"][0] == pytest.approx(0.31, abs=0.01)
    x = to_float(train.images, prep)
    assert x.dtype == np.float32 and x.shape == train.images.shape
    assert float(x.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(x.std()) == pytest.approx(1.0, abs=1e-3)


def test_normalization_per_channel_and_constant_channel() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(50, 3, 4, 4), dtype=np.uint8)
    images[:, 2] = 255  # a constant channel must not divide by zero
    prep = normalization(Dataset("rgb", images, np.zeros(50, dtype=np.int64), ["a"]))
    assert len(prep["mean"]) == len(prep["std"]) == 3
    assert prep["mean"][2] == pytest.approx(1.0) and prep["std"][2] == 1.0
    expected = (images[:, 0].astype(np.float64) / 255).std()
    assert prep["std"][0] == pytest.approx(expected)
    assert np.isfinite(to_float(images, prep)).all()


def test_to_float_rejects_wrong_channel_count(mnist: Dataset) -> None:
    prep = {"layout": "NCHW", "scale": 1 / 255, "mean": [0.5] * 3, "std": [0.5] * 3}
    with pytest.raises(EdgefabError, match=r"expects \(N, 3, H, W\)"):
        to_float(mnist.images[:4], prep)


def test_subset_copies_selected_samples(mnist: Dataset) -> None:
    part = mnist.subset([3, 1])
    assert len(part) == 2 and part.labels.tolist() == [mnist.labels[3], mnist.labels[1]]
    assert part.classes == mnist.classes


# --- .npz files -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, channels",
    [((6, 5, 4), 1), ((6, 5, 4, 1), 1), ((6, 5, 4, 3), 3), ((6, 3, 5, 4), 3), ((6, 1, 5, 4), 1)],
)
def test_npz_layouts(tmp_path: Path, shape: tuple[int, ...], channels: int) -> None:
    images = np.arange(np.prod(shape)).reshape(shape).astype(np.uint8)
    np.savez(tmp_path / "digits.npz", images=images, labels=np.array([0, 1, 2, 0, 1, 2]))
    ds = load_dataset(str(tmp_path / "digits.npz"))
    assert ds.name == "npz:digits" and ds.images.shape == (6, channels, 5, 4)
    assert ds.classes == ["0", "1", "2"] and ds.labels.dtype == np.int64
    if len(shape) == 4 and shape[3] == 3:  # NHWC must be transposed, not reshaped
        assert np.array_equal(ds.images, images.transpose(0, 3, 1, 2))


def test_npz_float_images_x_y_keys_and_class_names(tmp_path: Path) -> None:
    x = np.array([[[0.0, 0.5], [1.0, 0.2]]] * 2, dtype=np.float32)
    np.savez(tmp_path / "f.npz", x=x, y=np.array([1, 0], dtype=np.uint8), classes=np.array(["cat", "dog"]))
    ds = load_dataset(f"npz:{tmp_path / 'f.npz'}")
    assert ds.images[0, 0].tolist() == [[0, 128], [255, 51]]
    assert ds.classes == ["cat", "dog"] and ds.labels.tolist() == [1, 0]


def test_missing_npz_path(tmp_path: Path) -> None:
    with pytest.raises(EdgefabError, match="does not exist"):
        load_dataset(str(tmp_path / "nope.npz"))
    with pytest.raises(EdgefabError, match="does not exist"):
        load_dataset(str(tmp_path / "nope" / "folder"))


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"images": np.zeros((3, 4, 4), np.uint8)}, "no array 'labels'"),
        ({"pixels": np.zeros((3, 4, 4), np.uint8), "labels": np.zeros(3, int)}, "no array 'images'"),
        ({"images": np.zeros((3, 4, 4), np.uint8), "labels": np.zeros(2, int)}, "3 images but 2 labels"),
        ({"images": np.full((3, 4, 4), 2.0), "labels": np.zeros(3, int)}, r"lie in \[0, 1\]"),
        ({"images": np.zeros((3, 4, 4), np.uint8), "labels": np.full(3, 0.5)}, "integer class indices"),
        ({"images": np.zeros((3, 4, 4, 5), np.uint8), "labels": np.zeros(3, int)}, "C 1 or 3"),
        ({"images": np.zeros((0, 4, 4), np.uint8), "labels": np.zeros(0, int)}, "empty"),
        (
            {"images": np.zeros((2, 4, 4), np.uint8), "labels": np.array([0, 2]), "classes": np.array(["a"])},
            "class names",
        ),
    ],
)
def test_npz_without_usable_arrays(tmp_path: Path, arrays: dict, message: str) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(EdgefabError, match=message):
        load_dataset(str(tmp_path / "bad.npz"))


def test_npz_is_never_unpickled(tmp_path: Path) -> None:
    classes = np.array(["a", "b"], dtype=object)  # object arrays are stored with pickle
    np.savez(tmp_path / "obj.npz", images=np.zeros((2, 4, 4), np.uint8), labels=[0, 1], classes=classes)
    with pytest.raises(EdgefabError, match="dtype=str"):
        load_dataset(str(tmp_path / "obj.npz"))


def test_npz_that_is_not_a_zip(tmp_path: Path) -> None:
    (tmp_path / "junk.npz").write_text("not numpy")
    with pytest.raises(EdgefabError, match="cannot read .*junk.npz"):
        load_dataset(str(tmp_path / "junk.npz"))


def test_unknown_spec() -> None:
    with pytest.raises(EdgefabError, match="unknown data source 'cifar'; use mnist, a .npz file"):
        load_dataset("cifar")


# --- image folders ----------------------------------------------------------------------------------


def test_image_folder_grey_png(tmp_path: Path) -> None:
    root = tmp_path / "shapes"
    write_image(root / "zebra" / "a.png", grey(200))
    write_image(root / "apple" / "b.png", grey(10))
    write_image(root / "apple" / "nested" / "c.PNG", grey(20))
    (root / "apple" / "notes.txt").write_text("ignored: not an image")
    ds = load_dataset(str(root))
    assert ds.name == "imagefolder:shapes" and ds.classes == ["apple", "zebra"]
    assert ds.images.shape == (3, 1, 8, 6) and ds.labels.tolist() == [0, 0, 1]
    assert ds.images[:, 0, 0, 0].tolist() == [10, 20, 200]  # lossless PNG, torchvision's walk order


def test_image_folder_mixed_grey_and_colour_jpeg(tmp_path: Path) -> None:
    write_image(tmp_path / "red" / "r.jpg", np.tile(np.array([250, 0, 0], np.uint8), (8, 6, 1)))
    write_image(tmp_path / "grey" / "g.png", grey(90))
    ds = load_dataset(f"imagefolder:{tmp_path}")
    assert ds.images.shape == (2, 3, 8, 6) and ds.classes == ["grey", "red"]
    assert ds.images[0, :, 0, 0].tolist() == [90, 90, 90]  # grey repeated into RGB
    assert abs(int(ds.images[1, 0, 4, 3]) - 250) < 8 and ds.images[1, 1, 4, 3] < 8  # JPEG is lossy


def test_image_folder_of_different_sizes_names_a_file(tmp_path: Path) -> None:
    for i in range(3):
        write_image(tmp_path / "a" / f"{i}.png", grey(i))
    write_image(tmp_path / "b" / "odd.png", grey(5, h=10, w=7))
    with pytest.raises(EdgefabError, match=r"odd.png is 10x7 .* most images are 8x6.*size=\(8, 6\)"):
        load_dataset(str(tmp_path))
    ds = load_dataset(str(tmp_path), size=(8, 6))
    assert ds.images.shape == (4, 1, 8, 6) and ds.images[3].min() == ds.images[3].max() == 5


def test_image_folder_unreadable_image_names_the_file(tmp_path: Path) -> None:
    write_image(tmp_path / "a" / "good.png", grey(1))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(EdgefabError, match="cannot read image .*broken.jpg"):
        load_dataset(str(tmp_path))


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(EdgefabError, match="no class subfolders"):
        load_dataset(str(tmp_path))


def test_folder_of_images_without_class_subfolders(tmp_path: Path) -> None:
    write_image(tmp_path / "loose.png", grey(1))
    with pytest.raises(EdgefabError, match="no class subfolders"):
        load_dataset(f"imagefolder:{tmp_path}")


def test_class_folder_without_images(tmp_path: Path) -> None:
    write_image(tmp_path / "a" / "x.png", grey(1))
    (tmp_path / "b").mkdir()
    with pytest.raises(EdgefabError, match=r"class folder .*b has no images"):
        load_dataset(str(tmp_path))


def test_missing_image_folder(tmp_path: Path) -> None:
    with pytest.raises(EdgefabError, match="does not exist"):
        load_dataset(f"imagefolder:{tmp_path / 'gone'}")


def test_size_for_array_source_must_match(tmp_path: Path) -> None:
    with pytest.raises(EdgefabError, match="resize the arrays"):
        load_dataset("mnist", size=(32, 32))


# --- map-style datasets and torchvision -------------------------------------------------------------


class Stripes:
    """A small real map-style dataset: PIL images of vertical or horizontal stripes."""

    classes = ["vertical", "horizontal"]

    def __init__(self, n: int = 6, odd_size_at: int | None = None):
        self.n, self.odd_size_at = n, odd_size_at

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        label = index % 2
        side = 9 if index == self.odd_size_at else 8
        pattern = (np.indices((side, side))[label] % 2 * 255).astype(np.uint8)
        return Image.fromarray(pattern, mode="L"), label


def test_from_map_dataset_with_pil_images() -> None:
    ds = from_map_dataset(Stripes(), "stripes")
    assert ds.images.shape == (6, 1, 8, 8) and ds.classes == ["vertical", "horizontal"]
    assert ds.labels.tolist() == [0, 1, 0, 1, 0, 1]
    assert ds.images[0, 0, :, 0].tolist() == [0, 255] * 4  # rows alternate for label 0


def test_from_map_dataset_with_arrays_and_tensors() -> None:
    hwc = np.zeros((5, 4, 3), np.uint8)
    hwc[..., 1] = 7
    chw = torch.full((3, 5, 4), 1.0)  # ToTensor-style float in [0, 1]
    ds = from_map_dataset([(hwc, 0), (chw, torch.tensor(2))], "arrays")
    assert ds.images.shape == (2, 3, 5, 4) and ds.classes == ["0", "1", "2"]
    assert ds.images[0, :, 0, 0].tolist() == [0, 7, 0] and ds.images[1].min() == 255
    assert ds.labels.tolist() == [0, 2]


def test_from_map_dataset_rejects_mixed_sizes_and_bad_items() -> None:
    with pytest.raises(EdgefabError, match=r"sample 3 is 9x9"):
        from_map_dataset(Stripes(odd_size_at=3), "stripes")
    assert from_map_dataset(Stripes(odd_size_at=3), "stripes", size=(8, 8)).images.shape == (6, 1, 8, 8)
    with pytest.raises(EdgefabError, match="not an \\(image, label\\) pair"):
        from_map_dataset([np.zeros((4, 4), np.uint8)], "bare")


def test_torchvision_missing_is_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)  # as if not installed, even where it is
    with pytest.raises(EdgefabError, match="install torchvision matching your torch") as info:
        load_dataset("torchvision:MNIST")
    assert "\n" not in str(info.value)


def fake_torchvision(monkeypatch: pytest.MonkeyPatch, **classes: type) -> None:
    """Install a stand-in torchvision.datasets holding ``classes`` (the real one cannot be imported here)."""
    package, datasets = types.ModuleType("torchvision"), types.ModuleType("torchvision.datasets")
    for name, cls in classes.items():
        setattr(datasets, name, cls)
    package.datasets = datasets
    monkeypatch.setitem(sys.modules, "torchvision", package)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", datasets)


def test_torchvision_download_failure_is_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    class Offline:
        def __init__(self, root: str, train: bool, download: bool):
            raise URLError("[Errno -3] Temporary failure in name resolution\nmore detail")

    fake_torchvision(monkeypatch, Offline=Offline)
    with pytest.raises(EdgefabError, match="cannot download torchvision dataset Offline to /data") as info:
        load_dataset("torchvision:offline:/data")
    assert "\n" not in str(info.value)
    with pytest.raises(EdgefabError, match="no dataset 'Nope'"):
        load_dataset("torchvision:Nope")


def test_torchvision_dataset_goes_through_from_map_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}

    class TinyStripes(Stripes):
        def __init__(self, root: str, train: bool, download: bool):
            super().__init__(n=4)
            seen.update(root=root, train=train, download=download)

    fake_torchvision(monkeypatch, TinyStripes=TinyStripes)
    ds = load_dataset("torchvision:TinyStripes:C:\\data")
    assert seen == {"root": "C:\\data", "train": True, "download": True}
    assert ds.name == "torchvision:TinyStripes" and ds.images.shape == (4, 1, 8, 8)

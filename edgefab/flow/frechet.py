"""Frechet distance between image sets, on the features of a classifier edgefab trains itself.

FID's Inception weights cannot be downloaded here, so the features are the 128-d penultimate
layer of a small CNN trained on the flow's own labelled data (a few epochs, seconds on the
digits), cached by a fingerprint of the data. Distances from different feature networks are not
comparable with each other nor with published FIDs: compare models under one network, and against
the real-vs-real floor (two disjoint real sets of the same size), which is what sample noise alone
gives.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from edgefab.cache import cache_dir
from edgefab.data import Dataset
from edgefab.errors import EdgefabError
from edgefab.flow.data import to_unit_range

FEATURES = 128
VERSION = 1  # bump when the classifier or its training changes: old cache entries are then ignored


class DigitFeatures(nn.Module):
    """conv32-pool-conv64-pool-fc128-fc(classes); ``features`` is the 128-d layer."""

    def __init__(self, image_shape: tuple[int, int, int], classes: int):
        super().__init__()
        channels, height, width = image_shape
        self.conv1 = nn.Conv2d(channels, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc = nn.Linear(64 * (height // 4) * (width // 4), FEATURES)
        self.out = nn.Linear(FEATURES, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        return F.relu(self.fc(h.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))


@dataclass
class FeatureNet:
    """The trained classifier, its validation accuracy and whether it came from the cache."""

    model: DigitFeatures
    accuracy: float
    cached: bool

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> np.ndarray:
        """Features of images in [-1, 1] (clipped first, as a shipped generator's output is)."""
        parts = [self.model.features(chunk.clamp(-1, 1)) for chunk in images.split(512)]
        return torch.cat(parts).double().numpy()


def _fingerprint(data: Dataset) -> str:
    digest = hashlib.sha256(data.images.tobytes())
    digest.update(data.labels.tobytes())
    return f"v{VERSION}-{digest.hexdigest()[:16]}"


def feature_net(data: Dataset, epochs: int = 3, seed: int = 0) -> FeatureNet:
    """The feature classifier for ``data`` (trained on 90 %, scored on the rest), cached."""
    if data.num_classes < 2:
        raise EdgefabError(
            f"{data.name} has one class; the Frechet-distance classifier needs labelled classes"
        )
    model = DigitFeatures(data.input_shape, data.num_classes)
    path = cache_dir() / "flow-frechet" / f"{_fingerprint(data)}-e{epochs}-s{seed}.safetensors"
    images, labels = to_unit_range(data.images), torch.from_numpy(data.labels)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    cut = int(0.9 * len(images))
    train, held = order[:cut], order[cut:]
    cached = path.is_file()
    if cached:
        model.load_state_dict(load_file(str(path)))
    else:
        fit_classifier(model, images[train], labels[train], epochs, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        save_file(model.state_dict(), str(partial))
        partial.replace(path)
    model.eval()
    with torch.no_grad():
        accuracy = float((model(images[held]).argmax(1) == labels[held]).float().mean()) if len(held) else 0.0
    return FeatureNet(model, accuracy, cached)


def fit_classifier(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    epochs: int,
    seed: int,
    lr: float = 1e-3,
    batch: int = 128,
) -> None:
    """Train ``model`` on ``images`` with cross-entropy and Adam, batches in a seeded order."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        for index in torch.randperm(len(images), generator=generator).split(batch):
            loss = F.cross_entropy(model(images[index]), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2) of two feature sets (rows are samples)."""
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():  # a singular product (few samples) is handled just below
        warnings.simplefilter("ignore")
        root = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(root).all():  # a singular product: nudge both diagonals, as pytorch-fid does
        offset = np.eye(len(cov_a)) * 1e-6
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            root = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    root = root.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def real_floor(net: FeatureNet, images: torch.Tensor, count: int, seed: int = 0) -> float:
    """Frechet distance between two disjoint random real sets of ``count`` images each."""
    if 2 * count > len(images):
        raise EdgefabError(f"the real-vs-real floor needs {2 * count} images; the data has {len(images)}")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed + 1))
    return frechet_distance(net.embed(images[order[:count]]), net.embed(images[order[count : 2 * count]]))


def reference_features(net: FeatureNet, images: torch.Tensor, count: int, seed: int = 0) -> np.ndarray:
    """Features of ``count`` real images (the first half of the floor's draw) to score samples against."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed + 1))
    return net.embed(images[order[:count]])

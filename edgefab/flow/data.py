"""Images for flows: any edgefab data source, as float tensors in [-1, 1].

Labels are kept only for the Frechet-distance classifier (:mod:`edgefab.flow.frechet`); a flow
itself never sees them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from edgefab.data import Dataset, load_dataset
from edgefab.errors import EdgefabError


@dataclass
class FlowData:
    """Images scaled to [-1, 1], (N, C, H, W) float32, with the dataset they came from."""

    name: str
    images: torch.Tensor
    dataset: Dataset

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """One image's (C, H, W)."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]


def to_unit_range(images: np.ndarray) -> torch.Tensor:
    """uint8 images -> float32 in [-1, 1] (what the flows model)."""
    return torch.from_numpy(images.astype(np.float32) / 127.5 - 1.0)


def to_uint8(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """Images in [-1, 1] (clipped) -> uint8 0..255."""
    array = np.asarray(images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else images)
    return np.rint((np.clip(array, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def load_flow_data(spec: str) -> FlowData:
    """Load ``spec`` (mnist, .npz, image folder, torchvision:NAME) for a flow.

    Data without images (a .npz holding only labels or other arrays) is refused by the loader
    with a message naming the missing array; images of fewer than 16 are refused here.
    """
    try:
        dataset = load_dataset(spec)
    except EdgefabError as exc:
        raise EdgefabError(f"{exc} (a flow learns to generate images: the data must hold images)") from None
    if len(dataset) < 16:
        raise EdgefabError(f"{dataset.name} has {len(dataset)} images; a flow needs at least 16")
    return FlowData(dataset.name, to_unit_range(dataset.images), dataset)


def batches(images: torch.Tensor, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """One random batch (with replacement across calls, without within a batch)."""
    index = torch.randperm(len(images), generator=generator)[:batch_size]
    return images[index]


def random_flip(*tensors: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Flip the same half (at random) of every tensor's rows left-right.

    Applied to both ends of a reflow pair, so a flipped pair stays a pair (the teacher's flow is
    assumed mirror-equivariant, as SlimFlow assumes for CIFAR-10). Off by default for digits: a
    mirrored 2 or 7 is not a digit, so flipping would teach the student non-digits.
    """
    mask = torch.rand(len(tensors[0]), generator=generator) < 0.5
    return tuple(torch.where(mask[:, None, None, None], t.flip(-1), t) for t in tensors)

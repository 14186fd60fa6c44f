"""An LPIPS-style perceptual distance from a network edgefab trains itself (for flow-guided distillation).

LPIPS (Zhang et al., 2018) compares two images through a pretrained network: at several layers the
features are unit-normalised along the channels at every position, and the squared differences are
averaged over positions and summed over layers. Its VGG/AlexNet weights cannot be downloaded here,
so the network is :class:`PerceptualNet`, a small strided-conv classifier trained on the flow's
own labelled data (seeded, about half a minute on the digits at one thread), cached by a
fingerprint of the data and copied into the SlimFlow checkpoint. The layers are weighted equally
(LPIPS's learned per-channel weights need human judgements).

It is deliberately NOT the Frechet-distance classifier (:mod:`edgefab.flow.frechet`): another
architecture (strided SiLU convs, 16-32-64-64 channels, global pooling, against conv32-pool-conv64-
pool-fc128), another seed and another split order, so training on this distance does not optimise
the metric that scores the result.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from edgefab.cache import cache_dir
from edgefab.data import Dataset
from edgefab.errors import EdgefabError
from edgefab.flow.data import to_unit_range
from edgefab.flow.frechet import fit_classifier

CHANNELS = (16, 32, 64, 64)  # the four layers the distance reads (28, 14, 7, 7 on the digits)
STRIDES = (1, 2, 2, 1)
SEED = 7  # not the Frechet classifier's seed (0)
EPOCHS = 3
VERSION = 1  # bump when the network or its training changes: old cache entries are then ignored
EPS = 1e-10


class PerceptualNet(nn.Module):
    """Four 3x3 conv-SiLU layers (strides 1, 2, 2, 1), global average pool, linear classifier."""

    def __init__(self, image_channels: int, classes: int):
        super().__init__()
        layers, cin = [], image_channels
        for cout, stride in zip(CHANNELS, STRIDES, strict=True):
            layers.append(nn.Conv2d(cin, cout, 3, stride=stride, padding=1))
            cin = cout
        self.layers = nn.ModuleList(layers)
        self.out = nn.Linear(cin, classes)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The activations of every conv layer, for images in [-1, 1]."""
        found = []
        for layer in self.layers:
            x = F.silu(layer(x))
            found.append(x)
        return found

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x)[-1].mean((2, 3)))


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / torch.sqrt(x.pow(2).sum(1, keepdim=True) + EPS)


class PerceptualDistance(nn.Module):
    """d(a, b) per image: sum over layers of the mean over positions of ||u(f(a)) - u(f(b))||^2.

    u normalises each position's channel vector to unit length (as LPIPS). The network is frozen;
    gradients flow to the images.
    """

    def __init__(self, net: PerceptualNet):
        super().__init__()
        self.net = net.eval().requires_grad_(False)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Distances of image pairs (N, C, H, W) -> (N,)."""
        total = torch.zeros(len(a), dtype=a.dtype, device=a.device)
        for fa, fb in zip(self.net.features(a), self.net.features(b), strict=True):
            total = total + (_unit(fa) - _unit(fb)).pow(2).sum(1).mean((1, 2))
        return total


@dataclass
class TrainedPerceptual:
    """The network, its held-out accuracy, where it is cached and whether it came from there."""

    net: PerceptualNet
    accuracy: float
    path: str
    cached: bool


def _fingerprint(data: Dataset, seed: int) -> str:
    digest = hashlib.sha256(data.images.tobytes())
    digest.update(data.labels.tobytes())
    return f"v{VERSION}-{digest.hexdigest()[:16]}-e{EPOCHS}-s{seed}"


def perceptual_net(data: Dataset, seed: int = SEED) -> TrainedPerceptual:
    """The perceptual network for ``data`` (trained on 90 % from ``seed``, scored on the rest), cached.

    Loaded only from safetensors; a cache file that does not fit is retrained over.
    """
    if data.num_classes < 2:
        raise EdgefabError(
            f"{data.name} has one class; the perceptual distance's network is a classifier and needs "
            "labelled classes: use --loss pseudo-huber"
        )
    images, labels = to_unit_range(data.images), torch.from_numpy(data.labels)
    net = PerceptualNet(images.shape[1], data.num_classes)
    path = cache_dir() / "flow-perceptual" / f"{_fingerprint(data, seed)}.safetensors"
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    cut = int(0.9 * len(images))
    train, held = order[:cut], order[cut:]
    cached = _load(net, path)
    if not cached:
        torch.manual_seed(seed)
        net = PerceptualNet(images.shape[1], data.num_classes)  # seeded initialisation
        _train(net, images[train], labels[train], seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(partial))
        partial.replace(path)
    net.eval()
    with torch.no_grad():
        accuracy = float((net(images[held]).argmax(1) == labels[held]).float().mean()) if len(held) else 0.0
    return TrainedPerceptual(net, accuracy, str(path), cached)


def load_perceptual(path: str, image_channels: int, classes: int) -> PerceptualNet:
    """A saved :class:`PerceptualNet` (safetensors only: nothing is unpickled)."""
    net = PerceptualNet(image_channels, classes)
    if not _load(net, path):
        raise EdgefabError(f"{path} is not a perceptual network's weights; run edgefab flow slim again")
    return net.eval()


def _load(net: nn.Module, path) -> bool:
    try:
        net.load_state_dict(load_file(str(path)))
    except (OSError, SafetensorError, RuntimeError):
        return False
    return True


def _train(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, seed: int) -> None:
    fit_classifier(net, images, labels, EPOCHS, seed, lr=2e-3, batch=64)
    net.zero_grad(set_to_none=True)  # no stale gradients on a network that is then frozen

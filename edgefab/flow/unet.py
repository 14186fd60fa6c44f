"""A small UNet velocity model v(x, t) for rectified flow on small images (1x28x28 digits).

The image is first folded 2x2 into channels (pixel unshuffle: 1x28x28 -> 4x14x14, unfolded again
at the end), since full-resolution convolutions cost 4x as much and two shared CPU cores must
train this in minutes. Then two levels (14 and 7), one residual block per level down and up plus
one in the middle, skips by concatenation, and a sinusoidal time embedding that scales and shifts
every block (FiLM). ``width`` multiplies every channel count: SlimFlow's students are the same network at a
smaller width, so each scaled count must be a whole multiple of the group-norm group count.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from edgefab.errors import EdgefabError

BASE_CHANNELS = (32, 64, 64)  # level 14, level 7, middle at width 1; width 0.5 gives (16, 32, 32)
GROUP_SIZE = 4  # channels per group-norm group: every scaled count must be a multiple of it
TIME_FREQUENCIES = 16


@dataclass(frozen=True)
class UNetConfig:
    """Shape of a velocity UNet: image (C, H, W), channels per level at width 1, width multiplier."""

    image_shape: tuple[int, int, int] = (1, 28, 28)
    base_channels: tuple[int, ...] = BASE_CHANNELS
    width: float = 1.0

    @property
    def channels(self) -> tuple[int, ...]:
        """Channels per level at this width (checked by :func:`check_config`)."""
        return tuple(round(c * self.width) for c in self.base_channels)

    def to_dict(self) -> dict:
        """Plain data for a checkpoint's JSON."""
        data = asdict(self)
        return {**data, "image_shape": list(self.image_shape), "base_channels": list(self.base_channels)}

    @classmethod
    def from_dict(cls, data: dict) -> UNetConfig:
        """The inverse of :meth:`to_dict`."""
        return cls(tuple(data["image_shape"]), tuple(data["base_channels"]), float(data["width"]))


def check_config(config: UNetConfig) -> None:
    """Refuse a width that does not divide the channels, or an image the UNet cannot halve twice."""
    if not 0 < config.width <= 4:
        raise EdgefabError(f"width must lie in (0, 4], got {config.width:g}")
    for base in config.base_channels:
        scaled = base * config.width
        if abs(scaled - round(scaled)) > 1e-6 or round(scaled) % GROUP_SIZE or round(scaled) == 0:
            raise EdgefabError(
                f"width {config.width:g} does not divide the channels {list(config.base_channels)}: "
                f"{base} x {config.width:g} = {scaled:g} is not a whole multiple of {GROUP_SIZE}; "
                "use e.g. 0.5, 0.25 or 0.75"
            )
    channels, height, width = config.image_shape
    if channels not in (1, 3) or height % 4 or width % 4:
        raise EdgefabError(
            f"images of shape {list(config.image_shape)} do not fit the flow UNet: it needs 1 or 3 "
            "channels and a height and width divisible by 4"
        )


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(channels // GROUP_SIZE, channels)


class ResBlock(nn.Module):
    """norm-SiLU-conv, FiLM by the time embedding, norm-SiLU-conv, plus a (1x1 where needed) skip."""

    def __init__(self, cin: int, cout: int, time_dim: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.film = nn.Linear(time_dim, 2 * cout)
        self.norm2, self.conv2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        film = self.film(emb)[:, :, None, None]
        half = film.shape[1] // 2  # slices, not chunk: the exporter warns about folding a Split
        scale, shift = film[:, :half], film[:, half:]
        h = h * (1 + scale) + shift
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(x)


def time_features(t: torch.Tensor, count: int = TIME_FREQUENCIES) -> torch.Tensor:
    """Sinusoidal features of t in [0, 1] (N,) -> (N, 2 * count), frequencies 1..1000 rad."""
    freqs = torch.exp(torch.linspace(0, math.log(1000.0), count, device=t.device, dtype=t.dtype))
    angles = t[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class VelocityUNet(nn.Module):
    """v(x, t): the velocity field of a rectified flow from noise (t = 0) to data (t = 1)."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        check_config(config)
        self.config = config
        c0, c1, c2 = config.channels
        folded = 4 * config.image_shape[0]  # channels after the 2x2 pixel unshuffle
        time_dim = 2 * c0
        self.time = nn.Sequential(
            nn.Linear(2 * TIME_FREQUENCIES, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim)
        )
        self.stem = nn.Conv2d(folded, c0, 3, padding=1)
        self.down0 = ResBlock(c0, c0, time_dim)
        self.pool = nn.Conv2d(c0, c1, 3, stride=2, padding=1)
        self.down1 = ResBlock(c1, c1, time_dim)
        self.mid = ResBlock(c1, c2, time_dim)
        self.dec1 = ResBlock(c2 + c1, c1, time_dim)
        self.up = nn.ConvTranspose2d(c1, c1, 2, stride=2)
        self.dec0 = ResBlock(c1 + c0, c0, time_dim)
        self.head = nn.Sequential(_norm(c0), nn.SiLU(), nn.Conv2d(c0, folded, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Velocity at images ``x`` (N, C, H, W) and times ``t`` (N,) or a scalar."""
        emb = self.time(time_features(t.to(x.dtype).reshape(-1).expand(x.shape[0])))
        h0 = self.down0(self.stem(F.pixel_unshuffle(x, 2)), emb)
        h1 = self.down1(self.pool(h0), emb)
        h = self.mid(h1, emb)
        h = self.dec1(torch.cat([h, h1], dim=1), emb)
        h = self.dec0(torch.cat([self.up(h), h0], dim=1), emb)
        return F.pixel_shuffle(self.head(h), 2)


def parameter_count(model: nn.Module) -> int:
    """Number of trainable weights."""
    return sum(p.numel() for p in model.parameters())

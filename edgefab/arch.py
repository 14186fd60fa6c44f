"""ArchSpec: the architecture description shared by factory, search and targets.

Plain, JSON-serialisable data (no torch): a stem convolution, a list of MBConv blocks and a
classifier head. Latency models read it, the factory and the searches write it, and
``edgefab.factory.network.build_network`` turns it into a PyTorch module.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

ACTIVATIONS = ("relu6", "hswish")
_BLOCK_DEFAULTS = {"se": False, "activation": "relu6"}


@dataclass(frozen=True)
class BlockSpec:
    """One MBConv block: 1x1 expand, kxk depthwise, 1x1 project (+ residual when shapes allow)."""

    out_channels: int
    kernel: int = 3
    expand: int = 3
    stride: int = 1
    skip: bool = False  # the block is removed (only where its input and output shapes agree)
    se: bool = False  # squeeze-and-excitation on the middle channels (reduced to a quarter, as MobileNetV3)
    activation: str = "relu6"  # "relu6" or "hswish" (hard-swish), after the expand and depthwise convs

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"BlockSpec.activation must be one of {ACTIVATIONS}, got {self.activation!r}")

    def notation(self) -> str:
        """Single-Path NAS style name of the choice, e.g. ``k5_e6``, ``k3_e4_se_hs`` or ``skip``."""
        if self.skip:
            return "skip"
        return (
            f"k{self.kernel}_e{self.expand}"
            + ("_se" if self.se else "")
            + ("_hs" if self.activation == "hswish" else "")
        )

    def se_channels(self, cin: int) -> int:
        """Channels inside the squeeze-and-excitation bottleneck (a quarter of the middle, rounded to 8)."""
        return round_channels(cin * self.expand / 4)


@dataclass(frozen=True)
class ArchSpec:
    """A whole classifier: stem, MBConv blocks, 1x1 head, global pool, linear logits."""

    input_shape: tuple[int, int, int]  # C, H, W
    num_classes: int
    stem_channels: int
    blocks: tuple[BlockSpec, ...]
    head_channels: int
    stem_stride: int = 1
    name: str = "mbconv"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain data."""
        data = asdict(self)
        data["input_shape"] = list(self.input_shape)
        for block in data["blocks"]:  # optional fields at their defaults stay out: older JSON stays equal
            for key, default in _BLOCK_DEFAULTS.items():
                if block[key] == default:
                    del block[key]
        return data

    def to_json(self) -> str:
        """The spec as canonical JSON (sorted keys: equal specs give equal strings)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchSpec:
        """Inverse of :meth:`to_dict`."""
        values = dict(data)
        values["input_shape"] = tuple(values["input_shape"])
        values["blocks"] = tuple(BlockSpec(**b) for b in values["blocks"])
        return cls(**values)

    def notation(self) -> list[str]:
        """Per-block choices, e.g. ``["k3_e3", "skip", "k5_e6"]``."""
        return [b.notation() for b in self.blocks]

    def macs(self) -> int:
        """Multiply-accumulates of one inference, from the shapes alone (no torch, microseconds)."""
        channels, height, width = self.input_shape
        height, width = _strided(height, self.stem_stride), _strided(width, self.stem_stride)
        total = height * width * self.stem_channels * channels * 9
        cin = self.stem_channels
        for block in self.blocks:
            if block.skip:
                continue
            mid = cin * block.expand
            expand = height * width * cin * mid if block.expand != 1 else 0
            height, width = _strided(height, block.stride), _strided(width, block.stride)
            depthwise = height * width * mid * block.kernel**2
            total += expand + depthwise + height * width * mid * block.out_channels
            if block.se:  # two 1x1 convs on the pooled middle channels
                total += 2 * mid * block.se_channels(cin)
            cin = block.out_channels
        return total + height * width * cin * self.head_channels + self.head_channels * self.num_classes

    def scaled(self, width: float) -> ArchSpec:
        """The same network with every channel count multiplied by ``width`` (rounded to 8); width 1
        gives the spec itself, so its trained weights are found in caches under the same key."""
        if width == 1:
            return self
        blocks = tuple(replace(b, out_channels=round_channels(b.out_channels * width)) for b in self.blocks)
        return replace(
            self,
            stem_channels=round_channels(self.stem_channels * width),
            blocks=blocks,
            head_channels=round_channels(self.head_channels * width),
            name=f"{self.name}-w{width:g}",
        )


def same_graph(a: ArchSpec, b: ArchSpec) -> bool:
    """Whether two specs build the same network: skipped blocks build nothing, names do not run."""

    def graph(spec: ArchSpec) -> tuple:
        blocks = tuple(block for block in spec.blocks if not block.skip)
        stem = (spec.stem_channels, spec.stem_stride)
        return spec.input_shape, spec.num_classes, stem, blocks, spec.head_channels

    return graph(a) == graph(b)


def _strided(size: int, stride: int) -> int:
    """Output size of a "same"-padded convolution."""
    return (size + stride - 1) // stride


def round_channels(channels: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor`` (never below it), as MobileNet does."""
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * channels:  # never lose more than 10 % of the width by rounding
        rounded += divisor
    return rounded

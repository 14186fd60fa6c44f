"""PyTorch networks built from an :class:`~edgefab.arch.ArchSpec`.

One MBConv implementation (MobileNetV2 inverted residual) serves every network edgefab builds from
a spec; the searches' superkernel block extends the same layout.
"""

from __future__ import annotations

import torch
from torch import nn

from edgefab.arch import ArchSpec, BlockSpec
from edgefab.errors import EdgefabError


def conv_bn_act(
    cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True
) -> nn.Sequential:
    """Convolution, batch norm and (optionally) ReLU6, the unit every MBConv is made of."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, kxk depthwise, 1x1 linear projection."""

    def __init__(self, cin: int, spec: BlockSpec):
        super().__init__()
        if spec.se or spec.activation != "relu6":
            raise EdgefabError(
                f"block {spec.notation()}: squeeze-excitation and hard-swish are not built by the factory yet"
            )
        mid = cin * spec.expand
        layers: list[nn.Module] = []
        if spec.expand != 1:
            layers.append(conv_bn_act(cin, mid, 1))
        layers.append(conv_bn_act(mid, mid, spec.kernel, spec.stride, groups=mid))
        layers.append(conv_bn_act(mid, spec.out_channels, 1, act=False))
        self.body = nn.Sequential(*layers)
        self.residual = spec.stride == 1 and cin == spec.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.residual else out


class Network(nn.Module):
    """Stem, MBConv blocks, 1x1 head, global average pool and linear classifier."""

    def __init__(self, spec: ArchSpec):
        super().__init__()
        channels, height, width = spec.input_shape
        self.stem = conv_bn_act(channels, spec.stem_channels, 3, spec.stem_stride)
        blocks: list[nn.Module] = []
        cin = spec.stem_channels
        for block in spec.blocks:
            if block.skip:
                if block.stride != 1 or cin != block.out_channels:
                    raise ValueError(f"block {block} cannot be skipped: its input and output shapes differ")
                continue
            blocks.append(MBConv(cin, block))
            cin = block.out_channels
        self.blocks = nn.Sequential(*blocks)
        self.head = conv_bn_act(cin, spec.head_channels, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(spec.head_channels, spec.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))


def build_network(spec: ArchSpec) -> Network:
    """A freshly initialised network for ``spec``."""
    return Network(spec)

"""A search space as one PyTorch network of superkernel layers, and its differentiable runtime.

``SuperNet`` mirrors :class:`edgefab.factory.network.Network` (stem, blocks, head, classifier) so
that a searched architecture is extracted with its weights as a standalone network.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from edgefab.arch import ArchSpec
from edgefab.factory.network import Network, build_network, conv_bn_act
from edgefab.factory.superkernel import SuperMBConv, super_blocks
from edgefab.spaces import CHOICES, SKIP, SearchSpace


@dataclass(frozen=True)
class CostTable:
    """Per-layer latency of every choice on a target, plus the part no choice changes.

    ``layers[i]`` maps each choice of searchable slot ``i`` to milliseconds (``skip`` costs 0);
    ``fixed_ms`` covers stem, head, classifier, fixed layers and the per-network overhead.
    """

    fixed_ms: float
    layers: dict[int, dict[str, float]]
    source: str

    def total(self, choices: list[str]) -> float:
        """Latency of one architecture, in the table's terms."""
        return self.fixed_ms + sum(
            costs[choices[i]] if choices[i] != SKIP else 0.0 for i, costs in self.layers.items()
        )


class SuperNet(nn.Module):
    """Every searchable slot of ``space`` as a :class:`SuperMBConv`; fixed slots as plain MBConv."""

    def __init__(self, space: SearchSpace, num_classes: int):
        super().__init__()
        self.space = space
        self.num_classes = num_classes
        channels = space.input_shape[0]
        self.stem = conv_bn_act(channels, space.stem_channels, 3, space.stem_stride)
        self.blocks = super_blocks(space)
        self.head = conv_bn_act(space.slots[-1].out_channels, space.head_channels, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(space.head_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.classifier(torch.flatten(self.pool(self.head(x)), 1))

    def super_layers(self) -> dict[int, SuperMBConv]:
        """Searchable layers by slot index."""
        return {i: b for i, b in enumerate(self.blocks) if isinstance(b, SuperMBConv)}

    def thresholds(self) -> list[nn.Parameter]:
        """The architecture parameters (all thresholds)."""
        return [p for name, p in self.named_parameters() if name.rsplit(".", 1)[-1].startswith("t_")]

    def weights(self) -> list[nn.Parameter]:
        """Every parameter that is not a threshold."""
        ids = {id(p) for p in self.thresholds()}
        return [p for p in self.parameters() if id(p) not in ids]

    def choices(self) -> list[str]:
        """The current decision of every slot."""
        return [
            b.choice() if isinstance(b, SuperMBConv) else slot.fixed
            for b, slot in zip(self.blocks, self.space.slots, strict=True)
        ]

    def runtime(self, table: CostTable) -> torch.Tensor:
        """Differentiable latency: each layer's table costs combined by its indicators (paper eq. 5)."""
        total = torch.tensor(table.fixed_ms)
        for index, layer in self.super_layers().items():
            cost, flags = table.layers[index], layer.indicators()
            k5, e6 = flags["k5"], flags["e6"]
            c33, c36, c53, c56 = (cost[c] for c in CHOICES)
            layer_ms = c33 + k5 * (c53 - c33) + e6 * (c36 - c33) + k5 * e6 * (c56 - c53 - c36 + c33)
            total = total + flags["keep"] * layer_ms
        return total

    @torch.no_grad()
    def extract(self, choices: list[str] | None = None) -> tuple[ArchSpec, Network]:
        """The chosen architecture as a standalone network with the supernet's weights."""
        choices = choices or self.choices()
        spec = self.space.arch(choices, self.num_classes)
        network = build_network(spec)
        network.stem.load_state_dict(self.stem.state_dict())
        standalone = iter(network.blocks)
        for block, choice in zip(self.blocks, choices, strict=True):
            if choice == SKIP:
                continue
            target = next(standalone)
            source = block.extract(choice) if isinstance(block, SuperMBConv) else block
            target.load_state_dict(source.state_dict())
        network.head.load_state_dict(self.head.state_dict())
        network.classifier.load_state_dict(self.classifier.state_dict())
        return spec, network.eval()

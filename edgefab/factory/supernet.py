"""The factory's modular supernet: weight-sharing superkernel layers that run any module selection.

Built on the same :class:`~edgefab.factory.superkernel.SuperMBConv` as Single-Path NAS: each
searchable layer holds one 5x5, 6x-expanded kernel whose centre and first channels are the smaller
ops, and a stage's narrower widths are its first output channels. ``forward(x, selection)`` runs
one sub-network; :meth:`ModularSupernet.extract` copies it out as a standalone
:class:`~edgefab.factory.network.Network` (then only its batch norms need recalibrating).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgefab.arch import ArchSpec
from edgefab.factory.network import Network, build_network, conv_bn_act
from edgefab.factory.space import FactorySpace, ModuleSelection
from edgefab.factory.superkernel import SuperMBConv, sliced_batch_norm, super_blocks


class ModularSupernet(nn.Module):
    """Stem, superkernel layers (fixed slots as plain MBConv), head and the all-classes classifier."""

    def __init__(self, fspace: FactorySpace, num_classes: int):
        super().__init__()
        space = fspace.space
        self.fspace, self.num_classes = fspace, num_classes
        self.stem = conv_bn_act(space.input_shape[0], space.stem_channels, 3, space.stem_stride)
        self.blocks = super_blocks(space)
        self.head = conv_bn_act(space.slots[-1].out_channels, space.head_channels, 1)
        self.classifier = nn.Linear(space.head_channels, num_classes)
        self._stage_of = fspace.stage_of()

    def features(self, x: torch.Tensor, selection: ModuleSelection) -> torch.Tensor:
        """Pooled head features of the sub-network ``selection`` (before the classifier)."""
        x = self.stem(x)
        for index, (block, choice) in enumerate(zip(self.blocks, selection.choices, strict=True)):
            if isinstance(block, SuperMBConv):
                x = block.forward_choice(x, choice, selection.widths[self._stage_of[index]])
            else:
                x = block(x)
        conv, norm = self.head[0], self.head[1]
        x = F.relu6(sliced_batch_norm(F.conv2d(x, conv.weight[:, : x.shape[1]]), norm, self.training))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, x: torch.Tensor, selection: ModuleSelection) -> torch.Tensor:
        """All-class logits of the sub-network ``selection``."""
        return self.classifier(self.features(x, selection))

    @torch.no_grad()
    def extract(self, selection: ModuleSelection) -> tuple[ArchSpec, Network]:
        """``selection`` as a standalone network with the supernet's weights (all-class classifier)."""
        spec = self.fspace.arch(selection, self.num_classes)
        network = build_network(spec)
        network.stem.load_state_dict(self.stem.state_dict())
        standalone = iter(network.blocks)
        cin = self.fspace.space.stem_channels
        for block, choice, arch_block in zip(self.blocks, selection.choices, spec.blocks, strict=True):
            if choice == "skip":
                continue
            target = next(standalone)
            if isinstance(block, SuperMBConv):
                source = block.extract(choice, cin, arch_block.out_channels)
            else:
                source = block
            target.load_state_dict(source.state_dict())
            cin = arch_block.out_channels
        network.head[0].weight.copy_(self.head[0].weight[:, :cin])
        network.head[1].load_state_dict(self.head[1].state_dict())
        network.classifier.load_state_dict(self.classifier.state_dict())
        return spec, network.eval()

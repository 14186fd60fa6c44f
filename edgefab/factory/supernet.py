"""The factory's modular supernet: weight-sharing superkernel layers that run any module selection.

Built on the same :class:`~edgefab.factory.superkernel.SuperMBConv` as Single-Path NAS: each
searchable layer holds one 5x5, 6x-expanded kernel whose centre and first channels are the smaller
ops, and a stage's (or an elastic stem's or head's) narrower widths are its first output channels;
fixed layers and the classifier are sliced the same way (:func:`sliced_unit`); where the space can
drop its last stage, a second head reads the stage before. ``forward(x, selection)`` runs
one sub-network; :meth:`ModularSupernet.extract` copies it out as a standalone
:class:`~edgefab.factory.network.Network` (then only its batch norms need recalibrating).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgefab.arch import ArchSpec
from edgefab.factory.network import MBConv, Network, build_network, conv_bn_act
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
        if fspace.droppable:
            # The head of the sub-networks without the last stage, with weights of its own: the one
            # head's first input channels would have to read two unrelated sets of features.
            before = space.slots[fspace.stages()[-2][-1]].out_channels
            self.short_head = conv_bn_act(before, space.head_channels, 1)
        self.classifier = nn.Linear(space.head_channels, num_classes)
        self._stage_of = fspace.stage_of()
        self._last_stage = set(fspace.stages()[-1])

    def _dropped(self, selection: ModuleSelection) -> bool:
        return selection.widths[-1] == 0

    def _head(self, selection: ModuleSelection) -> nn.Sequential:
        return self.short_head if self._dropped(selection) else self.head

    def features(self, x: torch.Tensor, selection: ModuleSelection) -> torch.Tensor:
        """Pooled head features of the sub-network ``selection`` (before the classifier)."""
        stem = selection.stem or self.fspace.space.stem_channels
        x = sliced_unit(self.stem, x, stem, self.training)
        dropped = self._dropped(selection)
        for index, (block, choice) in enumerate(zip(self.blocks, selection.choices, strict=True)):
            if dropped and index in self._last_stage:
                continue
            if isinstance(block, SuperMBConv):
                x = block.forward_choice(x, choice, selection.widths[self._stage_of[index]])
            else:  # a fixed layer before the first stage: as wide as the stem
                x = sliced_mbconv(block, x, stem, self.training)
        head = selection.head or self.fspace.space.head_channels
        x = sliced_unit(self._head(selection), x, head, self.training)
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, x: torch.Tensor, selection: ModuleSelection) -> torch.Tensor:
        """All-class logits of the sub-network ``selection`` (a narrow head reads the classifier's
        first columns)."""
        features = self.features(x, selection)
        return F.linear(features, self.classifier.weight[:, : features.shape[1]], self.classifier.bias)

    @torch.no_grad()
    def extract(self, selection: ModuleSelection) -> tuple[ArchSpec, Network]:
        """``selection`` as a standalone network with the supernet's weights (all-class classifier)."""
        spec = self.fspace.arch(selection, self.num_classes)
        network = build_network(spec)
        load_first_channels(network.stem, self.stem)
        standalone = iter(network.blocks)
        cin = spec.stem_channels
        for block, choice, arch_block in zip(self.blocks, selection.choices, spec.blocks, strict=True):
            if arch_block.skip:
                continue
            target = next(standalone)
            if isinstance(block, SuperMBConv):
                target.load_state_dict(block.extract(choice, cin, arch_block.out_channels).state_dict())
            else:
                load_first_channels(target, block)
            cin = arch_block.out_channels
        load_first_channels(network.head, self._head(selection))
        load_first_channels(network.classifier, self.classifier)
        return spec, network.eval()


def sliced_unit(unit: nn.Sequential, x: torch.Tensor, cout: int, training: bool) -> torch.Tensor:
    """One :func:`conv_bn_act` unit on the first ``x.shape[1]`` input and ``cout`` output channels
    (a depthwise unit keeps as many channels as it gets)."""
    conv, norm = unit[0], unit[1]
    cin = x.shape[1]
    depthwise = conv.groups > 1
    weight = conv.weight[:cin] if depthwise else conv.weight[:cout, :cin]
    x = F.conv2d(x, weight, None, conv.stride, conv.padding, 1, cin if depthwise else 1)
    x = sliced_batch_norm(x, norm, training)
    return F.relu6(x) if len(unit) > 2 else x


def sliced_mbconv(block: MBConv, x: torch.Tensor, cout: int, training: bool) -> torch.Tensor:
    """A plain MBConv on the first channels of its weights: ``cout`` out, its expansion ratio kept."""
    out = x
    for index, unit in enumerate(block.body):
        ratio = unit[0].out_channels // unit[0].in_channels  # the expansion; 1 for a depthwise unit
        out = sliced_unit(unit, out, cout if index == len(block.body) - 1 else out.shape[1] * ratio, training)
    return x + out if block.residual else out


@torch.no_grad()
def load_first_channels(target: nn.Module, source: nn.Module) -> None:
    """Copy into ``target`` the leading slice of each of ``source``'s tensors (same names, each
    dimension cut to the target's size): a narrower copy sharing the first channels."""
    sources = source.state_dict()
    for name, tensor in target.state_dict().items():
        tensor.copy_(sources[name][tuple(slice(0, size) for size in tensor.shape)])

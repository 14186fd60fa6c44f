"""The Single-Path superkernel MBConv, shared by Single-Path NAS and the factory's supernet.

One 5x5 depthwise kernel holds the 3x3 choice in its centre; one expanded width of 6x holds the
3x expansion in its first half. Learnable thresholds decide, from group norms of the kernel
weights, whether the outer 5x5 ring is used, whether the second channel half is used, and (where
the stage allows it) whether the layer is kept at all (Stamoulis et al., 2019, eq. 2-4). The
decisions are hard indicators in the forward pass and sigmoids in the backward pass.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from edgefab.arch import BlockSpec
from edgefab.factory.network import MBConv, conv_bn_act
from edgefab.spaces import SearchSpace

MAX_KERNEL = 5
MAX_EXPAND = 6


def indicator(value: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """1[value > threshold] forward, d sigmoid(value - threshold) backward (straight-through)."""
    soft = torch.sigmoid(value - threshold)
    hard = (value > threshold).to(value.dtype)
    return hard + soft - soft.detach()


class SuperMBConv(nn.Module):
    """An MBConv layer whose kernel (3/5), expansion (3/6) and presence are learnt."""

    def __init__(self, cin: int, cout: int, stride: int, skippable: bool):
        super().__init__()
        if skippable and (stride != 1 or cin != cout):
            raise ValueError("only a layer whose input and output shapes agree can be skipped")
        self.cin, self.cout, self.stride, self.skippable = cin, cout, stride, skippable
        mid = cin * MAX_EXPAND
        self.expand = conv_bn_act(cin, mid, 1)
        self.depthwise = nn.Conv2d(mid, mid, MAX_KERNEL, stride, MAX_KERNEL // 2, groups=mid, bias=False)
        self.depthwise_bn = nn.BatchNorm2d(mid)
        self.project = conv_bn_act(mid, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout
        # Thresholds start at 0: every group norm is above it, so the search starts from the largest layer.
        self.t_kernel = nn.Parameter(torch.zeros(()))
        self.t_expand = nn.Parameter(torch.zeros(()))
        self.t_keep = nn.Parameter(torch.zeros(())) if skippable else None
        centre = torch.zeros(1, 1, MAX_KERNEL, MAX_KERNEL)
        centre[..., 1:4, 1:4] = 1.0
        self.register_buffer("centre_mask", centre, persistent=False)

    def group_norms(self, kernel: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Root-mean-square of each weight group a decision reads: the 5x5 ring, the second channel
        half, the first channel half. (RMS rather than the plain norm keeps one threshold scale for
        layers of any width.)"""
        weight = self.depthwise.weight if kernel is None else kernel
        half = weight.shape[0] // 2
        ring = weight * (1 - self.centre_mask)
        ring_rms = ring.norm() / math.sqrt(weight.shape[0] * (MAX_KERNEL**2 - 9))
        return {"k5": ring_rms, "e6": _rms(weight[half:]), "keep": _rms(weight[:half])}

    def indicators(self) -> dict[str, torch.Tensor]:
        """The layer's decisions as (straight-through) indicators: ``k5``, ``e6``, ``keep``."""
        weight = self.depthwise.weight
        k5 = indicator(self.group_norms()["k5"], self.t_kernel)
        kernel = weight * self.centre_mask + k5 * weight * (1 - self.centre_mask)
        norms = self.group_norms(kernel)
        e6 = indicator(norms["e6"], self.t_expand)
        keep = indicator(norms["keep"], self.t_keep) if self.t_keep is not None else weight.new_ones(())
        return {"k5": k5, "e6": e6, "keep": keep, "kernel": kernel}

    @torch.no_grad()
    def margins(self) -> dict[str, float]:
        """How far each decision is from flipping: |group norm - threshold| (inf where fixed)."""
        norms = self.group_norms()
        thresholds = {"k5": self.t_kernel, "e6": self.t_expand, "keep": self.t_keep}
        return {k: abs(float(norms[k] - t)) if t is not None else math.inf for k, t in thresholds.items()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        decision = self.indicators()
        half = self.depthwise.weight.shape[0] // 2
        channel_mask = torch.cat([decision["e6"].new_ones(half), decision["e6"].expand(half)])
        padding = MAX_KERNEL // 2
        hidden = F.conv2d(self.expand(x), decision["kernel"], None, self.stride, padding, groups=2 * half)
        hidden = F.relu6(self.depthwise_bn(hidden)) * channel_mask.view(1, -1, 1, 1)
        out = self.project(hidden) * decision["keep"]
        return x + out if self.residual else out

    @torch.no_grad()
    def choice(self) -> str:
        """The current decision in the paper's notation (``k5_e6``, ``k3_e3``, ``skip`` ...)."""
        decision = self.indicators()
        if float(decision["keep"]) < 0.5:
            return "skip"
        return f"k{5 if float(decision['k5']) > 0.5 else 3}_e{6 if float(decision['e6']) > 0.5 else 3}"

    def forward_choice(self, x: torch.Tensor, choice: str, out_channels: int | None = None) -> torch.Tensor:
        """The layer run as one fixed choice (``k3_e6``, ``skip``, ...) on the first ``x.shape[1]``
        input and ``out_channels`` output channels of the shared weights (the factory's sub-networks).

        Batch norms use the batch's statistics while training and their (sliced) running statistics
        otherwise; an extracted sub-network gets its own by recalibration.
        """
        if choice == "skip":
            return x
        kernel, expand = (int(part[1:]) for part in choice.split("_"))
        cin, cout = x.shape[1], out_channels or self.cout
        used, offset = cin * expand, (MAX_KERNEL - kernel) // 2
        window = slice(offset, offset + kernel)
        hidden = F.conv2d(x, self.expand[0].weight[:used, :cin])
        hidden = F.relu6(sliced_batch_norm(hidden, self.expand[1], self.training))
        depthwise = self.depthwise.weight[:used, :, window, window]
        hidden = F.conv2d(hidden, depthwise, None, self.stride, kernel // 2, groups=used)
        hidden = F.relu6(sliced_batch_norm(hidden, self.depthwise_bn, self.training))
        out = sliced_batch_norm(
            F.conv2d(hidden, self.project[0].weight[:cout, :used]), self.project[1], self.training
        )
        return x + out if self.stride == 1 and cin == cout else out

    @torch.no_grad()
    def extract(self, choice: str, in_channels: int | None = None, out_channels: int | None = None) -> MBConv:
        """A standalone MBConv of ``choice`` carrying this layer's (inherited) weights, on the first
        ``in_channels`` / ``out_channels`` channels (default: all)."""
        cin, cout = in_channels or self.cin, out_channels or self.cout
        kernel, expand = (int(part[1:]) for part in choice.split("_"))
        block = MBConv(cin, BlockSpec(cout, kernel=kernel, expand=expand, stride=self.stride))
        used = cin * expand
        offset = (MAX_KERNEL - kernel) // 2
        expand_conv, dw_conv, project_conv = block.body
        expand_conv[0].weight.copy_(self.expand[0].weight[:used, :cin])
        _copy_bn(expand_conv[1], self.expand[1], used)
        window = slice(offset, offset + kernel)
        dw_conv[0].weight.copy_(self.depthwise.weight[:used, :, window, window])
        _copy_bn(dw_conv[1], self.depthwise_bn, used)
        project_conv[0].weight.copy_(self.project[0].weight[:cout, :used])
        _copy_bn(project_conv[1], self.project[1], cout)
        return block


def _rms(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.norm() / math.sqrt(tensor.numel())


def _copy_bn(target: nn.BatchNorm2d, source: nn.BatchNorm2d, count: int) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(target, name).copy_(getattr(source, name)[:count])


def sliced_batch_norm(x: torch.Tensor, norm: nn.BatchNorm2d, training: bool) -> torch.Tensor:
    """``norm`` applied to the first ``x.shape[1]`` channels; while training, only batch statistics
    are used (running statistics of a weight-sharing supernet mix every sub-network's)."""
    n = x.shape[1]
    if training:
        return F.batch_norm(x, None, None, norm.weight[:n], norm.bias[:n], True, 0.0, norm.eps)
    return F.batch_norm(
        x, norm.running_mean[:n], norm.running_var[:n], norm.weight[:n], norm.bias[:n], False, 0.0, norm.eps
    )


def super_blocks(space: SearchSpace) -> nn.ModuleList:
    """The layers of ``space``: a :class:`SuperMBConv` per searchable slot, a plain MBConv per fixed
    one (Single-Path NAS's supernet and the factory's modular supernet both hold these)."""
    layers: list[nn.Module] = []
    cin = space.stem_channels
    for slot in space.slots:
        if slot.fixed:
            kernel, expand = (int(p[1:]) for p in slot.fixed.split("_"))
            layers.append(MBConv(cin, BlockSpec(slot.out_channels, kernel, expand, slot.stride)))
        else:
            layers.append(SuperMBConv(cin, slot.out_channels, slot.stride, slot.skippable))
        cin = slot.out_channels
    return nn.ModuleList(layers)

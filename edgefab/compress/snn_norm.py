"""Training-time batch norm for IIR-SNN stages, folded back into the convolutions after each stage.

The converter folds the ANN's batch norm into the convolutions (the method's "batch norm folded
first"), so every LIF layer is driven by a plain convolution. Training a network of binary (T=1) or
near-binary (small T) activations through that convolution alone is slow: a layer's input current
drifts as the layers before it change, and neurons whose current sits far below the threshold get
no surrogate gradient. While a stage trains, each LIF layer therefore gets a batch norm on its input
current again (one per layer, shared by all timesteps, its statistics taken per timestep), started
as the identity on the stage's data; after the stage it is folded back into the convolution with its
running statistics. A batch norm in eval mode is a per-channel affine map of the current, so the
folded network computes exactly what the normed one does in eval mode, at any T: the exported graph
keeps its form (convolution, compare, cast) and the next stage starts from a plain network again.
"""

from __future__ import annotations

import torch
from torch import nn

from edgefab.compress.snn import SpikingNetwork, fold_batchnorm


@torch.no_grad()
def attach_norms(net: SpikingNetwork, images: torch.Tensor, batch: int = 128) -> None:
    """Give every LIF layer a batch norm on its input current that starts as the identity on ``images``.

    The current's mean and variance per channel (over samples, positions and ``net.timesteps`` steps)
    become both the running statistics and the affine parameters, so ``norm(I) = I`` in eval mode
    and about ``I`` in training mode (batch statistics instead of these).
    """
    units = net.units()
    moments: dict[str, list] = {name: [0.0, 0.0, 0] for name in units}  # sum, sum of squares, count

    def hook(name: str):
        def record(module, args, output):
            moments[name][0] = moments[name][0] + output.sum(dim=(0, 2, 3))
            moments[name][1] = moments[name][1] + (output**2).sum(dim=(0, 2, 3))
            moments[name][2] += output.numel() // output.shape[1]

        return record

    handles = [unit.conv.register_forward_hook(hook(name)) for name, unit in units.items()]
    training = net.training
    net.eval()
    try:
        for start in range(0, len(images), batch):
            net(images[start : start + batch])
    finally:
        for handle in handles:
            handle.remove()
        net.train(training)
    for name, unit in units.items():
        total, squares, count = moments[name]
        mean = total / count
        var = (squares / count - mean**2).clamp(min=0.0)
        norm = nn.BatchNorm2d(unit.conv.out_channels)
        norm.running_mean.copy_(mean)
        norm.running_var.copy_(var)
        norm.weight.copy_(torch.sqrt(var + norm.eps))
        norm.bias.copy_(mean)
        unit.norm = norm.train(training)


def fold_norms(net: SpikingNetwork) -> None:
    """Fold every LIF layer's training-time batch norm (running statistics) into its convolution."""
    for unit in net.units().values():
        if unit.norm is not None:
            unit.conv = fold_batchnorm(unit.conv, unit.norm.eval())
            unit.norm = None

"""Flow-Guided Distillation (SlimFlow section 3.3): the annealed 2-flow becomes a one-step generator.

The student starts from the 2-flow; a frozen copy of the 2-flow is the guide. Each step:

- one-step distillation: D(z + v_s(z, 0), x) on a reflow pair (z, x);
- two-step guidance: the student's own jump to t' ~ U[0.2, 0.8], x_t' = z + t' v_s(z, 0), then the
  guide's velocity from there, target = x_t' + (1 - t') v_g(x_t', t'), detached; loss
  D(z + v_s(z, 0), target). It keeps the one-step map close to what the flow itself would reach.

D is chosen by ``DistillOptions.loss``: ``pseudo-huber``, sqrt(||a - b||^2 + c^2) - c with
c = 0.00054 sqrt(dims) (as in improved consistency training); ``lpips``, the LPIPS-style distance of
:mod:`edgefab.flow.perceptual` (a network edgefab trains itself: LPIPS's VGG/AlexNet weights cannot
be downloaded here); or ``lpips+pseudo-huber``, their sum.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from edgefab.devices import model_device
from edgefab.errors import EdgefabError
from edgefab.flow.checkpoint import clone_weights
from edgefab.flow.data import random_flip
from edgefab.flow.rectified import OptimOptions, optimize
from edgefab.flow.reflow import Pairs
from edgefab.flow.unet import VelocityUNet

DISTILL_LR = 1e-3  # 2e-4 gave 140 against 127; 2e-3 128.7 against 131.3, within noise (BENCHMARKS.md)


@dataclass(frozen=True)
class DistillOptions:
    """Distillation: optimisation, guidance weight, range of the guidance time t'."""

    optim: OptimOptions = OptimOptions(steps=2000, lr=DISTILL_LR, warmup=50)
    guide_weight: float = 1.0
    t_low: float = 0.2
    t_high: float = 0.8
    flip: bool = False
    loss: str = "pseudo-huber"  # one of LOSSES


LOSSES = ("pseudo-huber", "lpips", "lpips+pseudo-huber")
Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def check_loss(loss: str) -> None:
    """Refuse an unknown distillation distance before any work."""
    if loss not in LOSSES:
        raise EdgefabError(f"unknown --loss '{loss}'; use one of {', '.join(LOSSES)}")


def make_distance(loss: str, perceptual: nn.Module | None = None) -> Distance:
    """The batch-mean distance D(a, b) for ``loss``; ``perceptual`` (a
    :class:`~edgefab.flow.perceptual.PerceptualDistance`) is needed by the lpips ones."""
    check_loss(loss)
    if loss == "pseudo-huber":
        return pseudo_huber
    if perceptual is None:
        raise EdgefabError(f"--loss {loss} needs the perceptual network; none was given")
    if loss == "lpips":
        return lambda a, b: perceptual(a, b).mean()
    return lambda a, b: perceptual(a, b).mean() + pseudo_huber(a, b)


def pseudo_huber(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of sqrt(||a - b||^2 + c^2) - c, c = 0.00054 sqrt(dims)."""
    dims = a[0].numel()
    c = 0.00054 * math.sqrt(dims)
    return (torch.sqrt((a - b).pow(2).flatten(1).sum(1) + c * c) - c).mean()


def flow_guided_distill(
    two_flow: VelocityUNet,
    pairs: Pairs,
    options: DistillOptions,
    on_step: Callable[[int, int], None] | None = None,
    distance: Distance | None = None,
) -> tuple[nn.Module, list[float]]:
    """A one-step student from ``two_flow`` (left untouched: its frozen copy guides); returns the EMA.

    ``distance`` is D (default pseudo-Huber; :func:`make_distance` builds the others)."""
    distance = distance or pseudo_huber
    student = clone_weights(two_flow)
    guide = clone_weights(two_flow).eval().requires_grad_(False)
    device = model_device(two_flow)

    def loss(step: int, generator: torch.Generator) -> torch.Tensor:
        index = torch.randint(len(pairs.noise), (options.optim.batch_size,), generator=generator)
        z, x = pairs.noise[index], pairs.images[index]
        if options.flip:
            z, x = random_flip(z, x, generator=generator)
        z, x = z.to(device), x.to(device)
        zeros = torch.zeros(len(z), device=device)
        velocity = student(z, zeros)
        one_step = z + velocity
        with torch.no_grad():
            t = torch.rand(len(z), generator=generator).to(device)
            t = options.t_low + (options.t_high - options.t_low) * t
            jump = z + t[:, None, None, None] * velocity
            target = jump + (1 - t)[:, None, None, None] * guide(jump, t)
        return distance(one_step, x) + options.guide_weight * distance(one_step, target)

    return optimize(student, loss, options.optim, on_step)

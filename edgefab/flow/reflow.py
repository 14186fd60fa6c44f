"""Reflow pairs and Annealing Reflow (SlimFlow, Zhu, Liu and Liu, ECCV 2024, section 3.2).

Reflow trains a new flow on (z, x) pairs where x is the teacher's ODE solution from z, which
straightens the paths. A student narrower than the teacher, trained from random initialisation,
learns these pairs poorly from the start; Annealing Reflow starts it on independent noise (plain
rectified flow on the teacher's images) and moves to the teacher's coupling gradually: the noise of
a pair becomes sqrt(1 - b^2) z + b e, e fresh N(0, I), with b annealed from 1 to 0 over a set
number of steps (linear, exponential or cosine) and 0 after that.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgefab.devices import model_device
from edgefab.errors import EdgefabError
from edgefab.flow.data import random_flip
from edgefab.flow.rectified import SAMPLE_BATCH, OptimOptions, noise_like, optimize, sample, velocity_loss

SCHEDULES = ("linear", "exp", "cos")
EXP_RATE = 5.0  # exp schedule: b = (e^(-5 s) - e^-5) / (1 - e^-5), s = step / anneal steps


@dataclass
class Pairs:
    """Reflow pairs: ``noise`` z and the teacher's ``images`` x = ODE(z), both (N, C, H, W)."""

    noise: torch.Tensor
    images: torch.Tensor
    solver: str
    evaluations: float  # teacher evaluations per pair

    def save(self, path: Path) -> Path:
        """Write as .npz (float32 arrays; read back without pickle)."""
        np.savez(
            path,
            noise=self.noise.numpy(),
            images=self.images.numpy(),
            solver=np.array(self.solver),
            evaluations=np.array(self.evaluations),
        )
        return path

    @classmethod
    def load(cls, path: Path) -> Pairs:
        """Read pairs written by :meth:`save`."""
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(
                    torch.from_numpy(data["noise"]),
                    torch.from_numpy(data["images"]),
                    str(data["solver"]),
                    float(data["evaluations"]),
                )
        except (OSError, KeyError, ValueError) as exc:
            raise EdgefabError(
                f"cannot read reflow pairs {path} ({exc}); run edgefab flow slim again"
            ) from None


def parse_solver(text: str) -> tuple[str, int]:
    """``euler:N`` (N fixed steps) or ``rk45`` -> (solver, steps)."""
    name, _, steps = text.partition(":")
    if name == "rk45" and not steps:
        return "rk45", 0
    if name == "euler" and steps.isdigit() and int(steps) > 0:
        return "euler", int(steps)
    raise EdgefabError(f"unknown solver '{text}'; use euler:N (e.g. euler:32) or rk45")


def generate_pairs(
    teacher: nn.Module,
    count: int,
    image_shape: tuple[int, ...],
    solver: str,
    steps: int,
    seed: int,
    on_batch: Callable[[int, int], None] | None = None,
) -> Pairs:
    """``count`` seeded noises and the teacher's samples from them."""
    noise = noise_like(count, image_shape, seed)
    images, evaluations = [], []
    for chunk in noise.split(SAMPLE_BATCH):
        result, nfe = sample(teacher, chunk, solver, steps)
        images.append(result)
        evaluations.append(nfe)
        if on_batch:
            on_batch(sum(len(i) for i in images), count)
    return Pairs(
        noise,
        torch.cat(images),
        solver if solver == "rk45" else f"euler:{steps}",
        float(np.mean(evaluations)),
    )


def anneal_beta(step: int, anneal_steps: int, schedule: str = "linear") -> float:
    """b at ``step``: 1 at step 0, falling to 0 at ``anneal_steps`` by ``schedule``, 0 after."""
    if schedule not in SCHEDULES:
        raise EdgefabError(f"unknown schedule '{schedule}'; use one of {', '.join(SCHEDULES)}")
    if anneal_steps <= 0 or step >= anneal_steps:
        return 0.0
    s = step / anneal_steps
    if schedule == "linear":
        return 1.0 - s
    if schedule == "exp":
        return (math.exp(-EXP_RATE * s) - math.exp(-EXP_RATE)) / (1 - math.exp(-EXP_RATE))
    return 0.5 * (1 + math.cos(math.pi * s))


def annealed_noise(z: torch.Tensor, beta: float, generator: torch.Generator) -> torch.Tensor:
    """sqrt(1 - b^2) z + b e: still N(0, I), coupled to the pair's image by sqrt(1 - b^2)."""
    fresh = torch.randn(z.shape, generator=generator)
    return math.sqrt(1.0 - beta * beta) * z + beta * fresh


@dataclass(frozen=True)
class AnnealOptions:
    """Annealing Reflow: optimisation, anneal length and schedule, whether pairs are flipped."""

    optim: OptimOptions = OptimOptions(steps=3000, lr=2e-3)
    anneal_steps: int = 1500
    schedule: str = "linear"
    flip: bool = False


def annealing_reflow(
    student: nn.Module,
    pairs: Pairs,
    options: AnnealOptions,
    on_step: Callable[[int, int], None] | None = None,
) -> tuple[nn.Module, list[float]]:
    """Train ``student`` (randomly initialised, on any device; ``pairs`` stay on the CPU) on
    ``pairs`` with annealed noise; returns its EMA."""
    anneal_beta(0, options.anneal_steps, options.schedule)  # refuse an unknown schedule before training
    device = model_device(student)

    def loss(step: int, generator: torch.Generator) -> torch.Tensor:
        index = torch.randint(len(pairs.noise), (options.optim.batch_size,), generator=generator)
        z, x = pairs.noise[index], pairs.images[index]
        if options.flip:
            z, x = random_flip(z, x, generator=generator)
        x0 = annealed_noise(z, anneal_beta(step, options.anneal_steps, options.schedule), generator)
        return velocity_loss(student, x0.to(device), x.to(device), generator)

    return optimize(student, loss, options.optim, on_step)

"""Rectified flow: interpolation, velocity regression, an optimisation loop, Euler and RK45 sampling.

A rectified flow moves noise x0 ~ N(0, I) (t = 0) to data x1 (t = 1) along
x_t = t x1 + (1 - t) x0, and learns v(x_t, t) ~ x1 - x0 by least squares (Liu et al., 2023).
Samples come from integrating dx/dt = v(x, t) from t = 0 to 1: with fixed Euler steps, or with
SciPy's adaptive RK45 (Dormand-Prince) over the whole batch as one state vector.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from edgefab.devices import model_device

SAMPLE_BATCH = 256


@dataclass(frozen=True)
class OptimOptions:
    """One optimisation stage: steps, batch, Adam learning rate (warm-up then cosine), EMA, seed."""

    steps: int = 3000
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 100
    ema_decay: float = 0.999
    seed: int = 0


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = t x1 + (1 - t) x0, with t (N,)."""
    t = t[:, None, None, None]
    return t * x1 + (1 - t) * x0


def velocity_loss(model: nn.Module, x0: torch.Tensor, x1: torch.Tensor, generator: torch.Generator):
    """Mean squared error of v(x_t, t) against x1 - x0 at uniform random t (drawn on the CPU's
    ``generator``, then moved to the images' device)."""
    t = torch.rand(len(x0), generator=generator).to(x0.device)
    return (model(interpolate(x0, x1, t), t) - (x1 - x0)).pow(2).mean()


def optimize(
    model: nn.Module,
    loss_fn: Callable[[int, torch.Generator], torch.Tensor],
    options: OptimOptions,
    on_step: Callable[[int, int], None] | None = None,
) -> tuple[nn.Module, list[float]]:
    """Minimise ``loss_fn(step, generator)`` over ``model``'s weights; returns the EMA copy and the
    loss every step. The EMA of the weights gives visibly cleaner samples than the last step."""
    generator = torch.Generator().manual_seed(options.seed)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.Adam(model.parameters(), lr=options.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, options))
    model.train()
    averaged, current = list(ema.parameters()), list(model.parameters())
    losses = []
    for step in range(options.steps):
        loss = loss_fn(step, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # rare large steps early on would spoil the EMA
        optimizer.step()
        schedule.step()
        decay = min(options.ema_decay, (1 + step) / (10 + step))  # short runs: the EMA must not lag
        with torch.no_grad():  # one fused update of all weights (one kernel per tensor costs a GPU dearly)
            torch._foreach_lerp_(averaged, current, 1 - decay)
        losses.append(loss.detach())  # no float() here: it would wait for a GPU every step
        if on_step:
            on_step(step + 1, options.steps)
    model.eval()
    return ema, torch.stack(losses).cpu().tolist() if losses else []


def _lr_factor(step: int, options: OptimOptions) -> float:
    if step < options.warmup:
        return (step + 1) / options.warmup
    progress = (step - options.warmup) / max(1, options.steps - options.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * min(1.0, progress)))


@torch.no_grad()
def euler_sample(model: nn.Module, noise: torch.Tensor, steps: int) -> torch.Tensor:
    """Integrate from t = 0 to 1 in ``steps`` equal Euler steps (1 step: x0 + v(x0, 0)); the
    samples come back on the CPU, whatever ``model``'s device."""
    model.eval()
    device = model_device(model)
    out = []
    for chunk in noise.split(SAMPLE_BATCH):
        x = chunk.to(device)
        for i in range(steps):
            t = torch.full((len(x),), i / steps, device=device)
            x = x + model(x, t) / steps
        out.append(x.cpu())
    return torch.cat(out)


@torch.no_grad()
def rk45_sample(model: nn.Module, noise: torch.Tensor, rtol: float = 1e-3, atol: float = 1e-3):
    """Integrate with SciPy's adaptive RK45; returns (samples, model evaluations per sample)."""
    from scipy.integrate import solve_ivp

    model.eval()
    device = model_device(model)
    out, evaluations = [], []
    for chunk in noise.split(SAMPLE_BATCH):
        shape = chunk.shape

        def field(t: float, y: np.ndarray, shape=shape) -> np.ndarray:
            x = torch.from_numpy(y.astype(np.float32)).reshape(shape).to(device)
            velocity = model(x, torch.full((shape[0],), float(t), device=device))
            return velocity.reshape(-1).double().cpu().numpy()

        solution = solve_ivp(
            field, (0.0, 1.0), chunk.reshape(-1).double().numpy(), "RK45", rtol=rtol, atol=atol
        )
        out.append(torch.from_numpy(solution.y[:, -1].astype(np.float32)).reshape(shape))
        evaluations.append(solution.nfev)
    return torch.cat(out), float(np.mean(evaluations))


def sample(model: nn.Module, noise: torch.Tensor, solver: str = "euler", steps: int = 1):
    """Samples and evaluations per sample for ``solver`` ``euler`` (``steps``) or ``rk45``."""
    if solver == "rk45":
        return rk45_sample(model, noise)
    return euler_sample(model, noise, steps), float(steps)


def noise_like(count: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """``count`` standard normal images of ``shape``, seeded."""
    return torch.randn((count, *shape), generator=torch.Generator().manual_seed(seed))

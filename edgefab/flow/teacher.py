"""``edgefab flow train``: a rectified-flow teacher (velocity UNet) on image data."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from edgefab.devices import deterministic_kernels, resolve_device
from edgefab.flow.checkpoint import TEACHER, check_checkpoint_folder, save_checkpoint
from edgefab.flow.data import batches, load_flow_data
from edgefab.flow.evaluate import real_grid, save_grid
from edgefab.flow.rectified import OptimOptions, optimize, velocity_loss
from edgefab.flow.unet import BASE_CHANNELS, UNetConfig, VelocityUNet, check_config, parameter_count
from edgefab.threads import torch_threads


@dataclass(frozen=True)
class TeacherOptions:
    """What ``edgefab flow train`` was asked for."""

    data: str = "mnist"
    out: Path = Path("flows/teacher")
    width: float = 1.0
    base_channels: tuple[int, ...] = BASE_CHANNELS
    optim: OptimOptions = field(default_factory=lambda: OptimOptions(steps=1500, lr=2e-3))
    grid_steps: int = 32  # Euler steps of the sample grid written beside the weights
    threads: int = 1  # small convolutions on a shared 2-core machine: one thread is fastest
    device: str = "cpu"  # auto, cpu, cuda or cuda:N (edgefab.devices)


def train_teacher(options: TeacherOptions, progress: Any) -> tuple[Path, dict[str, Any]]:
    """Train a teacher on ``options.data`` and write its checkpoint; returns (folder, summary)."""
    progress.stage(f"loading data {options.data}")
    data = load_flow_data(options.data)
    config = UNetConfig(data.image_shape, tuple(options.base_channels), options.width)
    check_config(config)
    check_checkpoint_folder(options.out)
    device = resolve_device(options.device)
    torch.manual_seed(options.optim.seed)
    model = VelocityUNet(config).to(device)  # initialised on the CPU: the same weights on any device
    with torch_threads(options.threads), deterministic_kernels(device):
        progress.stage(f"training the teacher ({options.optim.steps} steps, {device})")
        start = time.perf_counter()

        def loss(step: int, generator: torch.Generator) -> torch.Tensor:
            x1 = batches(data.images, options.optim.batch_size, generator)
            x0 = torch.randn(x1.shape, generator=generator)
            return velocity_loss(model, x0.to(device), x1.to(device), generator)

        ema, losses = optimize(model, loss, options.optim, progress.advance)
        ema = ema.cpu()
        seconds = time.perf_counter() - start
    summary = {
        "data": {
            "spec": options.data,
            "name": data.name,
            "image_shape": list(data.image_shape),
            "count": len(data.images),
        },
        "training": {
            **options.optim.__dict__,
            "device": str(device),
            "seconds": round(seconds, 1),
            "loss_first_100": round(sum(losses[:100]) / len(losses[:100]), 4),
            "loss_last_100": round(sum(losses[-100:]) / len(losses[-100:]), 4),
        },
        "parameters": parameter_count(ema),
        "grid": {"file": "samples.png", "solver": f"euler:{options.grid_steps}"},
    }
    progress.stage("writing the checkpoint and a sample grid")
    with tempfile.TemporaryDirectory(prefix="edgefab-flow-") as work, torch_threads(options.threads):
        extra = {
            "samples.png": save_grid(ema, Path(work) / "samples.png", "euler", options.grid_steps),
            "real.png": real_grid(data, Path(work) / "real.png"),
        }
        path = save_checkpoint(options.out, TEACHER, {"velocity": ema}, summary, extra)
    return path, summary

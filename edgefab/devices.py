"""Which torch device a training command runs on: ``--device auto|cpu|cuda[:N]``.

``auto`` takes the first CUDA GPU when torch sees one and the CPU otherwise, as a PyTorch user
expects. Randomness (batches, noise, time steps) is always drawn from seeded CPU generators and
moved to the device, so a seed selects the same batches on every device; only the arithmetic
differs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from edgefab.errors import EdgefabError

DEVICES = "auto, cpu, cuda or cuda:N"


def resolve_device(name: str) -> torch.device:
    """The torch device for ``name``; a clear error when it is unknown or absent here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise EdgefabError(f"unknown --device '{name}'; use {DEVICES}") from None
    if device.type not in ("cpu", "cuda"):
        raise EdgefabError(f"unknown --device '{name}'; use {DEVICES}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise EdgefabError(f"--device {name}: torch sees no CUDA GPU here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise EdgefabError(
                f"--device {name}: only {torch.cuda.device_count()} CUDA GPU(s) here; use cuda:0"
            )
    return device


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (the CPU for a model without any)."""
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


@contextmanager
def deterministic_kernels(device: torch.device) -> Iterator[None]:
    """On a CUDA device, run the block with torch's deterministic kernels, so that a seed gives the
    same weights run after run; the previous setting is restored after. Nothing changes on a CPU.

    Why: on an NVIDIA H200 two 3-epoch factory trainings from one seed ended with different weights
    (pool medians 96.65 % and 96.15 %), and identical ones with these kernels, at about 10 % more
    training time (BENCHMARKS.md, "The supernet on a GPU"); so did SlimFlow's teacher and student at
    the default widths (BENCHMARKS.md, SlimFlow, "Training on a GPU"). cuBLAS reads its workspace setting when
    its first handle is made, so the variable is set before any CUDA work of the block."""
    if device.type != "cuda":
        yield
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    was = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    was_benchmark = torch.backends.cudnn.benchmark
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was[0], warn_only=was[1])
        torch.backends.cudnn.benchmark = was_benchmark

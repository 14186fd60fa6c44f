"""Training the modular supernet once, so that every sub-network works without retraining.

The sandwich rule with in-place distillation (BigNAS / Once-for-All style): each step trains the
largest sub-network on the labels, then the smallest and ``random_subnets`` random ones on the
largest's softened predictions (and so the ``anchors``, if any, at every step, with the labels
too if ``anchor_label_weight`` says so), and applies the summed gradients (``spread_subnets`` of
the random ones drawn from an end of the space rather than uniformly). Afterwards any sub-network
only needs its batch norms recalibrated.

It trains on the CPU or a CUDA GPU (:func:`training_device`). Many processes: start the same
command with ``torchrun --nproc_per_node N``. Each process takes its shard of every batch and
gradients are averaged with ``torch.distributed.all_reduce``: over NCCL with one GPU per process
(``cuda:LOCAL_RANK``), over gloo on CPUs. Batches, random shifts (of the whole batch, before each rank
takes its shard) and random sub-networks are drawn from the same seeded CPU generators on every rank
and device, so all ranks train the same sub-networks in a step.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import distributed as dist

from edgefab.data import Dataset, to_float
from edgefab.data.augment import random_shift
from edgefab.devices import deterministic_kernels, resolve_device
from edgefab.errors import EdgefabError
from edgefab.factory.space import ModuleSelection
from edgefab.factory.supernet import ModularSupernet

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class SupernetTrainConfig:
    """Settings of supernet training."""

    epochs: int = 20
    # Small batches, high rate: a weight-sharing supernet needs many more steps than one network
    # (measured over 5 epochs on the digits: batch 128 at lr 4e-3 -> 94.8 % mean over six
    # sub-networks, lr 1e-2 -> 95.7 %, batch 64 -> 97.1 %).
    batch_size: int = 32
    lr: float = 1e-2
    weight_decay: float = 1e-4
    label_smoothing: float = 0.05
    shift: int = 0  # random shifts of up to this many pixels (edgefab.data.augment); 0: none
    random_subnets: int = 2
    # Of the random sub-networks, how many are drawn at a random distance from the smallest or the
    # largest (FactorySpace.sample_from_end) instead of uniformly: uniform draws almost never visit
    # the cheap end that tight budgets pick from, except through the smallest.
    spread_subnets: int = 0
    # Sub-networks trained at every step beside the smallest (ModuleSelection.to_dict() form): a
    # sub-network the sandwich trains every step scores like one trained alone, those it only meets
    # among the random draws do not (BENCHMARKS.md, issue 5, "A droppable third stage and anchors").
    anchors: tuple[dict, ...] = ()
    # Weight of the label loss added to each anchor's distillation loss (0: distillation alone, as
    # the other sub-networks): a scratch network learns from the labels, and an anchor distilled
    # alone ends a little under the largest it copies.
    anchor_label_weight: float = 0.0
    seed: int = 0


def world() -> tuple[int, int]:
    """(rank, world size): (0, 1) unless started by torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def training_device(name: str) -> torch.device:
    """The device ``--device`` names; under ``torchrun`` a CUDA choice means this process's own GPU
    (``cuda:LOCAL_RANK``), as ``torchrun --nproc_per_node`` with one process per GPU expects."""
    device = resolve_device(name)
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        per_machine, gpus = int(os.environ.get("LOCAL_WORLD_SIZE", "1")), torch.cuda.device_count()
        if per_machine > gpus:  # every process checks, so none waits for a partner that failed
            raise EdgefabError(
                f"torchrun started {per_machine} processes on a machine with {gpus} CUDA GPU(s): "
                f"use --nproc_per_node {gpus} (one process per GPU) or --device cpu"
            )
        device = resolve_device(f"cuda:{os.environ['LOCAL_RANK']}")
    return device


def init_distributed(device: torch.device) -> None:
    """Join the process group when started by ``torchrun`` (it sets ``WORLD_SIZE``): NCCL for
    gradients on GPUs, gloo for gradients on CPUs (NCCL refuses CPU tensors)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def train_supernet(
    supernet: ModularSupernet,
    train: Dataset,
    prep: dict,
    config: SupernetTrainConfig,
    progress: ProgressFn | None = None,
    device: torch.device | None = None,
) -> float:
    """Train ``supernet`` in place with the sandwich rule on ``device`` (default the CPU); it is back
    on the CPU afterwards. Returns the wall-clock seconds."""
    device = device or torch.device("cpu")
    with deterministic_kernels(device):
        return _train_supernet(supernet, train, prep, config, progress, device)


def _train_supernet(supernet, train, prep, config: SupernetTrainConfig, progress, device) -> float:
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    rank, size = world()
    supernet.to(device)
    images = torch.from_numpy(to_float(train.images, prep)).to(device)  # about 20 MB for the digits
    labels = torch.from_numpy(train.labels.astype(np.int64)).to(device)
    steps = max(1, len(labels) // config.batch_size)
    optimizer = torch.optim.AdamW(supernet.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=config.epochs * steps)
    order_rng = torch.Generator().manual_seed(config.seed)
    arch_rng = np.random.default_rng(config.seed)
    shift_rng = torch.Generator().manual_seed(config.seed + 1)  # of the whole batch: every rank alike
    space = supernet.fspace
    anchors = [space.canonical(ModuleSelection.from_dict(anchor)) for anchor in config.anchors]
    for anchor in anchors:
        space.check(anchor)
    if config.anchor_label_weight < 0:
        raise EdgefabError(f"anchor_label_weight {config.anchor_label_weight}: give 0 or more")
    supernet.train()
    for epoch in range(config.epochs):
        order = torch.randperm(len(labels), generator=order_rng)
        for step in range(steps):
            batch = order[step * config.batch_size : (step + 1) * config.batch_size]
            inputs = random_shift(images[batch.to(device)], config.shift, shift_rng)[rank::size]
            batch = batch[rank::size].to(device)
            randoms = [
                space.sample_from_end(arch_rng) if i < config.spread_subnets else space.sample(arch_rng)
                for i in range(config.random_subnets)
            ]
            optimizer.zero_grad(set_to_none=True)
            _sandwich_step(supernet, inputs, labels[batch], anchors, randoms, config)
            _average_gradients(supernet, size)
            optimizer.step()
            schedule.step()
        if progress:
            progress(epoch + 1, config.epochs)
    supernet.cpu().eval()
    return time.perf_counter() - start


def _sandwich_step(supernet, x, y, anchors, randoms, config: SupernetTrainConfig) -> None:
    space = supernet.fspace
    logits = supernet(x, space.largest())
    F.cross_entropy(logits, y, label_smoothing=config.label_smoothing).backward()
    teacher = F.softmax(logits.detach(), dim=1)
    label_weights = [0.0] + [config.anchor_label_weight] * len(anchors) + [0.0] * len(randoms)
    for selection, label_weight in zip([space.smallest(), *anchors, *randoms], label_weights, strict=True):
        logits = supernet(x, selection)
        loss = F.kl_div(F.log_softmax(logits, dim=1), teacher, reduction="batchmean")
        if label_weight:
            loss = loss + label_weight * F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
        loss.backward()


def _average_gradients(supernet: torch.nn.Module, size: int) -> None:
    if size == 1:
        return
    for param in supernet.parameters():
        if param.grad is None:  # unused by this step's sub-networks on every rank alike
            param.grad = torch.zeros_like(param)
        dist.all_reduce(param.grad)
        param.grad /= size

"""Train a network from an ArchSpec, with a disk cache keyed by everything that changes the result.

A second ``edgefab build`` with the same data, spec and settings loads the weights instead of
training again. Weights are stored with safetensors, never pickled.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import edgefab
from edgefab.arch import ArchSpec
from edgefab.cache import cache_dir
from edgefab.data import Dataset, to_float
from edgefab.data.augment import random_shift
from edgefab.factory.network import build_network

ProgressFn = Callable[[int, int], None]  # (epochs done, epochs in all)


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one supervised training run."""

    epochs: int = 4
    batch_size: int = 128
    lr: float = 1e-2
    weight_decay: float = 1e-4
    label_smoothing: float = 0.05
    shift: int = 0  # random shifts of up to this many pixels (edgefab.data.augment); 0: none
    seed: int = 0


@dataclass
class TrainResult:
    """A trained network and how it came to be."""

    model: nn.Module
    cached: bool
    cache_key: str
    train_seconds: float


def dataset_fingerprint(data: Dataset) -> str:
    """A short hash of the images and labels: same data, same fingerprint."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(data.images).tobytes())
    digest.update(np.ascontiguousarray(data.labels).tobytes())
    return digest.hexdigest()[:16]


def _cache_key(spec: ArchSpec, data: Dataset, prep: dict, config: TrainConfig) -> str:
    key = {
        "spec": spec.to_dict(),
        "data": dataset_fingerprint(data),
        "prep": prep,
        "config": asdict(config),
        "torch": torch.__version__,
        "edgefab": edgefab.__version__,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def fit(
    model: nn.Module, data: Dataset, prep: dict, config: TrainConfig, progress: ProgressFn | None = None
) -> None:
    """Train ``model`` in place: AdamW, one-cycle schedule, label smoothing, random shifts if
    ``config.shift``; ends in eval mode."""
    torch.manual_seed(config.seed)
    images = torch.from_numpy(to_float(data.images, prep))
    labels = torch.from_numpy(data.labels.astype(np.int64))
    steps_per_epoch = max(1, len(labels) // config.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    generator = torch.Generator().manual_seed(config.seed)
    shifts = torch.Generator().manual_seed(config.seed + 1)  # its own stream: batches as without
    model.train()
    for epoch in range(config.epochs):
        order = torch.randperm(len(labels), generator=generator)
        for step in range(steps_per_epoch):
            batch = order[step * config.batch_size : (step + 1) * config.batch_size]
            optimizer.zero_grad(set_to_none=True)
            inputs = random_shift(images[batch], config.shift, shifts)
            loss_fn(model(inputs), labels[batch]).backward()
            optimizer.step()
            schedule.step()
        if progress:
            progress(epoch + 1, config.epochs)
    model.eval()


def train_classifier(
    spec: ArchSpec,
    train: Dataset,
    prep: dict,
    config: TrainConfig | None = None,
    progress: ProgressFn | None = None,
    use_cache: bool = True,
) -> TrainResult:
    """Train ``spec`` on ``train`` (preprocessed with ``prep``), or load it from the cache."""
    import time

    config = config or TrainConfig()
    key = _cache_key(spec, train, prep, config)
    path = cache_dir() / "models" / f"{key}.safetensors"
    torch.manual_seed(config.seed)  # the initial weights too: the same seed gives the same model
    model = build_network(spec)
    if use_cache and path.is_file():
        model.load_state_dict(load_file(str(path)))
        model.eval()
        return TrainResult(model, cached=True, cache_key=key, train_seconds=0.0)
    start = time.perf_counter()
    fit(model, train, prep, config, progress)
    seconds = time.perf_counter() - start
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(partial))
        partial.replace(path)  # atomic: a concurrent build never reads half a file
    return TrainResult(model, cached=False, cache_key=key, train_seconds=seconds)


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, data: Dataset, prep: dict, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on ``data``, in [0, 1]."""
    model.eval()
    correct = 0
    for start in range(0, len(data.labels), batch_size):
        images = torch.from_numpy(to_float(data.images[start : start + batch_size], prep))
        predicted = model(images).argmax(1).numpy()
        correct += int((predicted == data.labels[start : start + batch_size]).sum())
    return correct / max(1, len(data.labels))


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module, data: Dataset, prep: dict, samples: int = 2048, batch_size: int = 256
) -> None:
    """Re-estimate every batch-norm's running statistics on ``data`` (as Once-for-All does for a
    sub-network taken from a supernet, whose inherited statistics belong to the whole supernet)."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the batches below
    model.train()
    # A seeded random sample: data ordered by class (image folders) must not calibrate on one class.
    chosen = np.sort(np.random.default_rng(0).permutation(len(data.images))[:samples])
    images = to_float(data.images[chosen], prep)
    for start in range(0, len(images), batch_size):
        model(torch.from_numpy(images[start : start + batch_size]))
    for norm in norms:
        norm.momentum = 0.1
    model.eval()

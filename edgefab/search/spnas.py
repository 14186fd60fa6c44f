"""Single-Path NAS (Stamoulis et al., 2019): one superkernel network, thresholds learnt with a
latency-aware loss ``CE + lambda * log(runtime)``, then the chosen network fine-tuned.

The search trains weights and thresholds jointly (single level, as the paper does), with warm-up
epochs on cross-entropy alone. ``lambda`` is either given or steered automatically (dual ascent
on ``runtime / budget``) so that the decisions settle at the budget. Last, a budget repair step
walks the table so the result is at or under the budget and, where the table's granularity
allows, within 10 % of it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from edgefab.arch import ArchSpec
from edgefab.data import Dataset, to_float
from edgefab.errors import EdgefabError
from edgefab.factory.network import Network
from edgefab.factory.train import TrainConfig, evaluate_accuracy, fit, recalibrate_batchnorm
from edgefab.search.supernet import CostTable, SuperNet
from edgefab.spaces import CHOICES, SKIP, SearchSpace

ProgressFn = Callable[[int, int], None]
# Cheaper alternatives of each choice, for the budget repair (costs decide the order).
_ORDER = (SKIP, "k3_e3", "k3_e6", "k5_e3", "k5_e6")
LAMBDA_RATE = 0.05  # per step: lambda changes by at most exp(0.025), about 2.5 %


@dataclass(frozen=True)
class SpnasOptions:
    """Settings of one search."""

    budget_ms: float
    epochs: int = 8
    warmup_epochs: int = 2
    finetune_epochs: int = 4
    latency_lambda: float | None = None  # None: steered automatically to the budget
    batch_size: int = 128
    lr: float = 1e-2
    threshold_lr: float = 5e-3
    seed: int = 0


@dataclass
class SpnasResult:
    """The chosen architecture, its weights, and how the search got there."""

    spec: ArchSpec
    network: Network
    choices: list[str]
    predicted_ms: float
    history: list[dict] = field(default_factory=list)
    search_choices: list[str] = field(default_factory=list)  # before the budget repair
    accuracy: float = 0.0
    search_seconds: float = 0.0
    finetune_seconds: float = 0.0


def check_budget(space: SearchSpace, table: CostTable, budget_ms: float) -> None:
    """A budget below the space's smallest network is an error naming what the smallest costs."""
    smallest = table.total(space.smallest())
    if budget_ms < smallest:
        raise EdgefabError(
            f"budget {budget_ms:g} ms is below the smallest network of {space.name} "
            f"({smallest:.3f} ms on this target); raise --latency-ms"
        )


def _search_epoch(
    net: SuperNet,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    optimizers: list[torch.optim.Optimizer],
    table: CostTable,
    options: SpnasOptions,
    lam: float | None,
) -> tuple[float, float]:
    loss_fn = nn.CrossEntropyLoss()
    total = 0.0
    for images, labels in batches:
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(net(images), labels)
        if lam is not None:
            runtime = net.runtime(table)
            loss = loss + lam * torch.log(runtime)
            if options.latency_lambda is None:  # dual ascent: raise lambda while over budget, lower it under
                excess = min(0.5, max(-0.5, float(runtime.detach()) / options.budget_ms - 1.0))
                lam *= math.exp(LAMBDA_RATE * excess)
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
        total += float(loss.detach())
    return total / max(1, len(batches)), lam if lam is not None else 0.0


def _batches(
    data: Dataset, prep: dict, size: int, generator: torch.Generator
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    images = torch.from_numpy(to_float(data.images, prep))
    labels = torch.from_numpy(data.labels.astype(np.int64))
    order = torch.randperm(len(labels), generator=generator)
    return [
        (images[order[i : i + size]], labels[order[i : i + size]])
        for i in range(0, len(labels) - size + 1, size)
    ]


def margins(net: SuperNet) -> dict[int, dict[str, float]]:
    """How far each decision is from flipping, per searchable slot."""
    return {index: layer.margins() for index, layer in net.super_layers().items()}


def _flips(old: str, new: str) -> list[str]:
    if SKIP in (old, new):
        return ["keep"]
    return [name for name, a, b in (("k5", old[:2], new[:2]), ("e6", old[3:], new[3:])) if a != b]


def repair_budget(
    space: SearchSpace,
    table: CostTable,
    choices: list[str],
    budget_ms: float,
    margin: dict[int, dict[str, float]],
) -> list[str]:
    """Change the fewest, least certain decisions until the table total is <= budget and, where
    possible, >= 90 % of it."""
    choices = list(choices)

    def options_for(index: int) -> list[str]:
        return [c for c in _ORDER if c in space.slots[index].options()]

    def certainty(index: int, new: str) -> float:
        return sum(margin[index][flag] for flag in _flips(choices[index], new)) + 1e-9

    while table.total(choices) > budget_ms:  # downgrade: most ms saved per unit of certainty lost
        moves = [
            (
                (table.layers[i][choices[i]] - (table.layers[i][c] if c != SKIP else 0.0)) / certainty(i, c),
                i,
                c,
            )
            for i in table.layers
            for c in options_for(i)
            if (table.layers[i][c] if c != SKIP else 0.0) < table.layers[i].get(choices[i], 0.0)
        ]
        if not moves:
            break
        _, index, choice = max(moves)
        choices[index] = choice
    while table.total(choices) < 0.9 * budget_ms:  # upgrade: least certain decision that still fits
        current = table.total(choices)
        moves = [
            (certainty(i, c), i, c)
            for i in table.layers
            for c in options_for(i)
            if c != SKIP
            and table.layers[i][c] > (table.layers[i][choices[i]] if choices[i] != SKIP else 0.0)
            and current - (table.layers[i][choices[i]] if choices[i] != SKIP else 0.0) + table.layers[i][c]
            <= budget_ms
        ]
        if not moves:
            break
        _, index, choice = min(moves)
        choices[index] = choice
    return choices


def search(
    space: SearchSpace,
    table: CostTable,
    train: Dataset,
    prep: dict,
    options: SpnasOptions,
    progress: ProgressFn | None = None,
    validation: Dataset | None = None,
) -> SpnasResult:
    """Search ``space`` for ``options.budget_ms`` on the costs of ``table``; fine-tune the result."""
    check_budget(space, table, options.budget_ms)
    torch.manual_seed(options.seed)
    net = SuperNet(space, len(train.classes))
    optimizers = [
        torch.optim.AdamW(net.weights(), lr=options.lr, weight_decay=1e-4),
        torch.optim.Adam(net.thresholds(), lr=options.threshold_lr),
    ]
    generator = torch.Generator().manual_seed(options.seed)
    lam = options.latency_lambda if options.latency_lambda is not None else 0.05
    history = []
    start = time.perf_counter()
    for epoch in range(options.epochs):
        net.train()
        warm = epoch < options.warmup_epochs
        batches = _batches(train, prep, options.batch_size, generator)
        loss, lam_used = _search_epoch(net, batches, optimizers, table, options, None if warm else lam)
        lam = lam_used if not warm else lam
        choices = net.choices()
        history.append(
            {
                "epoch": epoch + 1,
                "loss": round(loss, 4),
                "lambda": None if warm else lam,
                "choices": choices,
                "predicted_ms": round(table.total(choices), 4),
            }
        )
        if progress:
            progress(epoch + 1, options.epochs + options.finetune_epochs)
    searched = net.choices()
    final = repair_budget(space, table, searched, options.budget_ms, margins(net))
    search_seconds = time.perf_counter() - start
    spec, network = net.extract(final)
    recalibrate_batchnorm(network, train, prep)
    start = time.perf_counter()
    if options.finetune_epochs:
        config = TrainConfig(epochs=options.finetune_epochs, lr=options.lr / 2, seed=options.seed)
        fit(
            network,
            train,
            prep,
            config,
            (lambda d, t: progress(options.epochs + d, options.epochs + t)) if progress else None,
        )
    accuracy = evaluate_accuracy(network, validation, prep) if validation is not None else 0.0
    return SpnasResult(
        spec=spec,
        network=network,
        choices=final,
        predicted_ms=table.total(final),
        history=history,
        search_choices=searched,
        accuracy=accuracy,
        search_seconds=search_seconds,
        finetune_seconds=time.perf_counter() - start,
    )


__all__ = ["CHOICES", "SpnasOptions", "SpnasResult", "check_budget", "repair_budget", "search"]

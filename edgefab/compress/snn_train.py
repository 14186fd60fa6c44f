"""IIR-SNN training: convert a trained ANN, train through time at the longest T, then at each shorter
T starting from the previous stage's network, down to the last (usually T=1).

Each stage is backpropagation through time over the unrolled timesteps (surrogate gradients, see
:mod:`edgefab.compress.snn`), AdamW on weights, thresholds and leaks with a cosine schedule (leaks
and thresholds projected back into their ranges after every step), then validation accuracy and
per-layer spike rates at that T, and the energy estimate (:mod:`edgefab.compress.snn_energy`).
The loss is cross-entropy mixed with distillation from the ANN (Hinton's soft targets); a T=1 stage
trains with a batch norm on every LIF layer's input current that is folded back into the
convolutions afterwards (:mod:`edgefab.compress.snn_norm`), so the shipped graph keeps its form.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from edgefab.compress.snn import (
    MIN_THRESHOLD,
    SURROGATE_ALPHA,
    THRESHOLD_PERCENTILE,
    SpikingNetwork,
    SynapticLayer,
    convert,
    synaptic_layers,
)
from edgefab.compress.snn_energy import energy_summary
from edgefab.compress.snn_norm import attach_norms, fold_norms
from edgefab.data import Dataset, to_float
from edgefab.errors import EdgefabError

StageFn = Callable[[str], None]
AdvanceFn = Callable[[int, int], None]


@dataclass(frozen=True)
class SnnOptions:
    """Settings of an IIR-SNN conversion and training."""

    timesteps: tuple[int, ...] = (5, 3, 2, 1)  # strictly decreasing; the last is the one shipped
    epochs_per_stage: int = 1
    last_stage_epochs: int | None = 20  # the shipped (shortest, cheapest) T trains longer; None: as the rest
    lr: float = 1e-2  # digits, T=1 from the same T=2 network, 6 epochs: 93.7 % at 3e-3, 94.6 % at 1e-2
    threshold_lr_scale: float = 10.0  # thresholds and leaks learn this much faster than weights
    surrogate_alpha: float = SURROGATE_ALPHA
    batch_size: int = 64
    weight_decay: float = 1e-4
    percentile: float = THRESHOLD_PERCENTILE  # of pre-activations, for the initial thresholds
    calibration_samples: int = 512  # training images the thresholds are set on
    rate_samples: int = 512  # validation images the spike rates are measured on
    # Batch norm on each LIF layer's input current while a T=1 stage trains, folded back after it
    # (edgefab.compress.snn_norm). At T>1 the steps share one norm, which sees per-step batch
    # statistics in training but their average once folded: T=5 fell to 10 % with it, so T>1 trains without.
    train_norm: bool = True
    distill: float = 0.7  # weight of the distillation loss from the ANN's soft targets (0: labels only)
    temperature: float = 4.0  # of the distillation
    seed: int = 0

    def __post_init__(self) -> None:
        check_timesteps(self.timesteps)
        if self.epochs_per_stage < 0:
            raise EdgefabError(f"epochs per stage must be 0 or more, got {self.epochs_per_stage}")
        if not 0.0 <= self.distill <= 1.0 or self.temperature <= 0:
            raise EdgefabError(
                f"distillation weight must be in [0, 1] and temperature above 0, got {self.distill} and "
                f"{self.temperature}"
            )

    def epochs_for(self, timesteps: int) -> int:
        """Training epochs of the stage at ``timesteps``."""
        last = timesteps == self.timesteps[-1] and self.last_stage_epochs is not None
        return self.last_stage_epochs if last else self.epochs_per_stage


def check_timesteps(timesteps: tuple[int, ...]) -> tuple[int, ...]:
    """``timesteps`` if it is a strictly decreasing sequence of integers >= 1, else an EdgefabError."""
    values = tuple(timesteps)
    if not values:
        raise EdgefabError("--timesteps is empty; give a decreasing list such as 5,3,2,1")
    if any(not isinstance(t, int) or isinstance(t, bool) or t < 1 for t in values):
        raise EdgefabError(f"timesteps must be integers of 1 or more, got {','.join(map(str, values))}")
    if any(b >= a for a, b in zip(values, values[1:], strict=False)):
        raise EdgefabError(
            f"timesteps must be strictly decreasing (each stage starts from the longer one before it), "
            f"got {','.join(map(str, values))}; e.g. 5,3,2,1"
        )
    return values


def parse_timesteps(text: str) -> tuple[int, ...]:
    """``"5,3,2,1"`` -> ``(5, 3, 2, 1)``, checked."""
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise EdgefabError(
            f"--timesteps takes comma-separated integers such as 5,3,2,1, got '{text}'"
        ) from None
    return check_timesteps(values)


@dataclass
class StageResult:
    """One timestep count: accuracy before and after its training, spike rates, energy."""

    timesteps: int
    start_accuracy: float  # converted (first stage) or inherited from the previous stage
    accuracy: float
    spike_rates: dict[str, float]
    energy: dict[str, Any]
    seconds: float
    state: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The stage as plain data (weights left out)."""
        data = asdict(self)
        del data["state"]
        data["mean_spike_rate"] = float(np.mean(list(self.spike_rates.values())))
        return data


@dataclass
class SnnResult:
    """What :func:`convert_and_train` produced: the last stage's network and every stage's figures."""

    network: SpikingNetwork
    ann_accuracy: float
    stages: list[StageResult]
    layers: list[SynapticLayer]
    initial_thresholds: dict[str, float]
    options: SnnOptions

    def network_at(self, timesteps: int) -> SpikingNetwork:
        """A copy of the network as trained at ``timesteps`` (to export any stage)."""
        for stage in self.stages:
            if stage.timesteps == timesteps:
                net = copy.deepcopy(self.network)
                net.load_state_dict(stage.state)
                net.timesteps = timesteps
                return net.eval()
        raise EdgefabError(f"no stage ran at T={timesteps}; stages: {[s.timesteps for s in self.stages]}")

    def to_dict(self) -> dict[str, Any]:
        """Everything but the weights, as JSON-able data (``snn.json``)."""
        return {
            "method": "IIR-SNN (Chowdhury, Rathi, Roy): BPTT at each T, initialised from the previous T",
            "options": {**asdict(self.options), "timesteps": list(self.options.timesteps)},
            "ann_accuracy": self.ann_accuracy,
            "initial_thresholds": self.initial_thresholds,
            "thresholds": {n: u.lif.threshold.item() for n, u in self.network.units().items()},
            "leaks": {n: u.lif.leak.clamp(0, 1).item() for n, u in self.network.units().items()},
            "synaptic_layers": [asdict(layer) for layer in self.layers],
            "stages": [stage.to_dict() for stage in self.stages],
        }


def _tensors(data: Dataset, prep: dict) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(to_float(data.images, prep)), torch.from_numpy(data.labels.astype(np.int64))


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 256) -> float:
    """Top-1 accuracy in [0, 1] (eval mode)."""
    model.eval()
    correct = sum(
        int((model(images[i : i + batch]).argmax(1) == labels[i : i + batch]).sum())
        for i in range(0, len(labels), batch)
    )
    return correct / max(1, len(labels))


@torch.no_grad()
def measure_spike_rates(net: SpikingNetwork, images: torch.Tensor, batch: int = 256) -> dict[str, float]:
    """Per-layer fraction of neurons firing per timestep on ``images`` (eval mode)."""
    net.eval()
    net.record_spikes(True)
    try:
        for i in range(0, len(images), batch):
            net(images[i : i + batch])
        return net.spike_rates()
    finally:
        net.record_spikes(False)


@torch.no_grad()
def project_neurons(net: SpikingNetwork) -> None:
    """Put every leak back into [0, 1] and every threshold above ``MIN_THRESHOLD`` after a step.

    The forward pass clamps them too, but a clamp passes no gradient outside its range: a raw leak
    that one step pushed above 1 would stay there for good (measured: every leak stuck at 1.1-1.2
    after the first stage), so the leak never learned. Projecting the parameters keeps them live.
    """
    for unit in net.units().values():
        unit.lif.leak.clamp_(0.0, 1.0)
        unit.lif.threshold.clamp_(min=MIN_THRESHOLD)


def train_stage(
    net: SpikingNetwork,
    images: torch.Tensor,
    labels: torch.Tensor,
    options: SnnOptions,
    epochs: int,
    advance: AdvanceFn | None = None,
    teacher: nn.Module | None = None,
) -> None:
    """Backpropagation through ``net.timesteps`` unrolled steps, ``epochs`` epochs.

    With ``options.distill`` > 0 and a ``teacher`` (the ANN), the loss mixes in its soft targets.
    """
    steps_per_epoch = max(1, len(labels) // options.batch_size)
    total = epochs * steps_per_epoch
    if total == 0:
        return
    if options.train_norm and net.timesteps == 1:  # see SnnOptions.train_norm
        attach_norms(net, images[: options.calibration_samples])
    neuron = [p for n, p in net.named_parameters() if n.endswith(("lif.threshold", "lif.leak"))]
    weights = [p for n, p in net.named_parameters() if not n.endswith(("lif.threshold", "lif.leak"))]
    optimizer = torch.optim.AdamW(
        [
            {"params": weights, "weight_decay": options.weight_decay},
            {"params": neuron, "lr": options.lr * options.threshold_lr_scale, "weight_decay": 0.0},
        ],
        lr=options.lr,
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / total))
    )
    generator = torch.Generator().manual_seed(options.seed + net.timesteps)
    loss_fn = nn.CrossEntropyLoss()
    net.train()
    done = 0
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=generator)
        for step in range(steps_per_epoch):
            batch = order[step * options.batch_size : (step + 1) * options.batch_size]
            optimizer.zero_grad(set_to_none=True)
            logits = net(images[batch])
            loss = loss_fn(logits, labels[batch])
            if teacher is not None and options.distill > 0:
                with torch.no_grad():
                    targets = teacher.eval()(images[batch])
                soft = distillation_loss(logits, targets, options.temperature)
                loss = (1 - options.distill) * loss + options.distill * soft
            loss.backward()
            optimizer.step()
            project_neurons(net)
            schedule.step()
            done += 1
            if advance and (done % 10 == 0 or done == total):
                advance(done, total)
    fold_norms(net)
    net.eval()


def distillation_loss(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's distillation loss: KL divergence from the teacher's ``targets`` (logits) at
    ``temperature``, scaled by its square so its gradients keep the cross-entropy's size."""
    teacher = nn.functional.softmax(targets / temperature, dim=1)
    student = nn.functional.log_softmax(logits / temperature, dim=1)
    return nn.functional.kl_div(student, teacher, reduction="batchmean") * temperature**2


def convert_and_train(
    network: nn.Module,
    train: Dataset,
    val: Dataset,
    prep: dict,
    options: SnnOptions | None = None,
    stage: StageFn | None = None,
    advance: AdvanceFn | None = None,
) -> SnnResult:
    """Convert the trained ``network`` and train it at each of ``options.timesteps`` in turn.

    ``stage(text)`` is told when a stage begins and ``advance(done, total)`` how far its training got.
    """
    options = options or SnnOptions()
    torch.manual_seed(options.seed)
    train_x, train_y = _tensors(train, prep)
    val_x, val_y = _tensors(val, prep)
    ann_accuracy = accuracy(network, val_x, val_y)
    calibration = train_x[torch.randperm(len(train_x))[: options.calibration_samples]]
    net = convert(network, calibration, options.percentile, options.surrogate_alpha)
    initial = {name: unit.lif.threshold.item() for name, unit in net.units().items()}
    layers = synaptic_layers(net, tuple(train_x.shape[1:]))
    stages = []
    for timesteps in options.timesteps:
        epochs = options.epochs_for(timesteps)
        if stage:
            stage(f"SNN: training through time at T={timesteps} ({epochs} epoch(s))")
        start = time.perf_counter()
        net.timesteps = timesteps
        start_accuracy = accuracy(net, val_x, val_y)
        train_stage(net, train_x, train_y, options, epochs, advance, teacher=network)
        rates = measure_spike_rates(net, val_x[: options.rate_samples])
        stages.append(
            StageResult(
                timesteps,
                start_accuracy,
                accuracy(net, val_x, val_y),
                rates,
                energy_summary(layers, rates, timesteps),
                time.perf_counter() - start,
                copy.deepcopy(net.state_dict()),
            )
        )
    return SnnResult(net, ann_accuracy, stages, layers, initial, options)

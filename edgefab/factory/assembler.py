"""The generative module assembler: (task, budget) -> a distribution over every module choice.

A small MLP reads a task encoding (which classes the task uses and how they are grouped) and the
budget as a position between the space's smallest and largest latency on the target (log scale:
0 = only the smallest sub-network fits, 1 = all fit). It outputs, per decision (each layer's op,
each stage's width), a categorical distribution; sampling it gives candidate selections in
microseconds.

Training (:func:`train_assembler`): a pool of sub-networks is scored once on validation data
(all-class logits, so any task's accuracy is a cheap read-out, see :mod:`edgefab.factory.scoring`)
and costed with the latency models of some targets. For sampled scenarios (random subsets and
groupings of the classes, random budgets, a random target), the best feasible pool members,
weighted by accuracy, are the targets of a cross-entropy loss on the assembler's distribution.

The accuracies are first denoised (:func:`predicted_accuracy`): on a few hundred images, pool
members differ by noise as much as by design (on the shipped factory's 600 images the rank
correlation of accuracy with latency was 0.12, on the other 997 validation images 0.43), so, as
Once-for-All does with its accuracy predictor, each scenario's accuracies are replaced by a ridge
regression on the module choices, and the assembler learns the trend instead of the noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from edgefab.data.tasks import Task
from edgefab.factory.scoring import task_accuracy
from edgefab.factory.space import FactorySpace, ModuleSelection
from edgefab.threads import torch_threads


def encode_task(task: Task, num_classes: int) -> np.ndarray:
    """Per class: used (0/1) and its group's size / classes; then groups / classes, used / classes."""
    used = np.zeros(num_classes, np.float32)
    size = np.zeros(num_classes, np.float32)
    for _, members in task.groups:
        used[list(members)] = 1.0
        size[list(members)] = len(members) / num_classes
    extra = [len(task.groups) / num_classes, used.sum() / num_classes]
    return np.concatenate([used, size, np.asarray(extra, np.float32)])


def relative_budget(budget_ms: float, smallest_ms: float, largest_ms: float) -> float:
    """Where ``budget_ms`` lies between the smallest and largest sub-network, on a log scale."""
    span = np.log(largest_ms) - np.log(smallest_ms)
    return float(np.clip((np.log(budget_ms) - np.log(smallest_ms)) / max(span, 1e-9), 0.0, 1.0))


class Assembler(nn.Module):
    """MLP: task encoding + relative budget -> logits of every decision, concatenated."""

    def __init__(self, num_classes: int, option_counts: list[int], hidden: int = 128):
        super().__init__()
        self.num_classes, self.option_counts = num_classes, list(option_counts)
        self.net = nn.Sequential(
            nn.Linear(2 * num_classes + 3, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, sum(option_counts)),
        )  # fmt: skip

    def forward(self, task_code: torch.Tensor, budget: torch.Tensor) -> list[torch.Tensor]:
        """Per decision, log-probabilities (batch, options)."""
        logits = self.net(torch.cat([task_code, budget[:, None]], dim=1))
        return [part.log_softmax(-1) for part in logits.split(self.option_counts, dim=1)]

    @torch.no_grad()
    def distribution(self, task: Task, budget: float) -> list[np.ndarray]:
        """Per decision, the probabilities of its options for one scenario."""
        code = torch.from_numpy(encode_task(task, self.num_classes))[None]
        return [part.exp()[0].numpy() for part in self(code, torch.tensor([budget], dtype=torch.float32))]


def sample_selections(
    space: FactorySpace, probabilities: list[np.ndarray], count: int, rng: np.random.Generator
) -> list[tuple[ModuleSelection, float]]:
    """``count`` selections drawn from the assembler's distribution (plus its mode), unique, each with
    its log-probability, most probable first."""
    options = [opts for _, opts in space.decisions()]
    drawn = [rng.choice(len(p), size=count, p=p / p.sum()) for p in probabilities]
    indices = {tuple(int(p.argmax()) for p in probabilities)} | set(zip(*drawn, strict=True))
    scored = []
    for index in indices:
        logp = float(sum(np.log(max(p[i], 1e-12)) for p, i in zip(probabilities, index, strict=True)))
        values = [opts[i] for opts, i in zip(options, index, strict=True)]
        scored.append((space.selection(values), logp))
    return sorted(scored, key=lambda item: -item[1])


@dataclass(frozen=True)
class AssemblerConfig:
    """Settings of assembler training."""

    scenarios: int = 1500
    steps: int = 1500
    batch: int = 64
    top: int = 8  # best feasible pool members a scenario's target is made of
    temperature: float = 0.01  # accuracy difference (fraction) that weighs e-fold less
    lr: float = 3e-3
    seed: int = 0
    denoise: bool = True  # targets from the ridge fit of accuracy on module choices (predicted_accuracy)


RIDGE_PENALTIES = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0)


def module_features(space: FactorySpace, pool: list[ModuleSelection]) -> np.ndarray:
    """(pool, options) one-hot of every decision's chosen option: the accuracy predictor's inputs."""
    values = np.array([space.values(s) for s in pool], dtype=object)
    columns = []
    for d, (_, opts) in enumerate(space.decisions()):
        columns += [values[:, d] == option for option in opts]
    return np.stack(columns, axis=1).astype(np.float64)


def predicted_accuracy(
    features: np.ndarray, accuracy: np.ndarray, penalties: tuple[float, ...] = RIDGE_PENALTIES
) -> tuple[np.ndarray, float]:
    """``accuracy`` (scenarios, pool) replaced by a ridge regression on ``features`` (pool, k), one
    fit per scenario, all with the penalty of least leave-one-out error (closed form from the hat
    matrix, so no refits). Returns the fitted accuracies and the penalty."""
    centred = features - features.mean(0)  # the intercept (mean accuracy) is not penalised
    best = None
    for penalty in penalties:
        gram = centred.T @ centred + penalty * np.eye(features.shape[1])
        hat = centred @ np.linalg.solve(gram, centred.T) + 1.0 / len(features)
        fitted = accuracy @ hat  # hat is symmetric
        loo = float(np.mean(((accuracy - fitted) / np.maximum(1.0 - np.diag(hat), 1e-9)) ** 2))
        if best is None or loo < best[0]:
            best = (loo, penalty, fitted)
    return best[2], best[1]


def random_task(num_classes: int, rng: np.random.Generator) -> Task:
    """A random subset (half the time) or grouping of 2 or more classes."""
    used = rng.permutation(num_classes)[: rng.integers(2, num_classes + 1)]
    if rng.random() < 0.5:
        return Task(tuple((str(c), (int(c),)) for c in sorted(used)), "sampled subset")
    groups = int(rng.integers(2, min(4, len(used)) + 1))
    cuts = np.sort(rng.choice(np.arange(1, len(used)), size=groups - 1, replace=False))
    parts = np.split(used, cuts)
    return Task(tuple((f"g{i}", tuple(int(c) for c in p)) for i, p in enumerate(parts)), "sampled grouping")


def train_assembler(
    space: FactorySpace,
    pool: list[ModuleSelection],
    pool_logits: np.ndarray,
    labels: np.ndarray,
    latencies: dict[str, np.ndarray],
    config: AssemblerConfig,
) -> tuple[Assembler, dict]:
    """Fit an assembler to the pool's scores: ``pool_logits`` (pool, samples, classes) on ``labels``,
    ``latencies`` per target name (pool,) in ms (the pool's first two members must be the space's
    smallest and largest). Returns the assembler and a summary of its training."""
    with torch_threads(1):
        return _train_assembler(space, pool, pool_logits, labels, latencies, config)


def _train_assembler(space, pool, pool_logits, labels, latencies, config) -> tuple[Assembler, dict]:
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    num_classes = pool_logits.shape[-1]
    options = [opts for _, opts in space.decisions()]
    chosen = torch.tensor(
        [[opts.index(v) for opts, v in zip(options, space.values(s), strict=True)] for s in pool]
    )
    tasks = [random_task(num_classes, rng) for _ in range(config.scenarios)]
    codes = torch.from_numpy(np.stack([encode_task(t, num_classes) for t in tasks]))
    accuracy = np.stack([task_accuracy(pool_logits, labels, t) for t in tasks])  # (scenarios, pool)
    penalty = None
    if config.denoise:
        accuracy, penalty = predicted_accuracy(module_features(space, pool), accuracy)
    names = sorted(latencies)
    model = Assembler(num_classes, [len(o) for o in options])
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    losses = []
    for _ in range(config.steps):
        rows = rng.integers(len(tasks), size=config.batch)
        budgets = rng.random(config.batch)
        weights = np.stack([_targets(accuracy[r], latencies[names[rng.integers(len(names))]], b, config)
                            for r, b in zip(rows, budgets, strict=True)])  # fmt: skip
        logps = model(codes[rows], torch.from_numpy(budgets.astype(np.float32)))
        pool_logp = sum(lp[:, chosen[:, d]] for d, lp in enumerate(logps))  # (batch, pool)
        loss = -(torch.from_numpy(weights) * pool_logp).sum(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    summary = {**config.__dict__, "final_loss": round(float(np.mean(losses[-50:])), 4), "targets": names,
               "ridge_penalty": penalty}  # fmt: skip
    return model.eval(), summary


def _targets(accuracy: np.ndarray, latency: np.ndarray, budget: float, config: AssemblerConfig) -> np.ndarray:
    """Weights over the pool for one scenario: the best ``top`` members within the budget."""
    smallest, largest = latency[0], latency[1]
    limit = np.exp(np.log(smallest) + budget * (np.log(largest) - np.log(smallest)))
    feasible = np.flatnonzero(latency <= limit * (1 + 1e-9))
    best = feasible[np.argsort(-accuracy[feasible])[: config.top]]
    weights = np.zeros(len(accuracy), np.float32)
    scaled = (accuracy[best] - accuracy[best].max()) / config.temperature
    weights[best] = np.exp(scaled) / np.exp(scaled).sum()
    return weights

"""Customising: (task, budget, target) -> a standalone network, in seconds, without training.

1. the assembler gives a distribution over every module choice for the task and the budget;
2. candidates are sampled from it (milliseconds) and costed with the target's latency model;
3. of the candidates within budget, those that use the most of it (``rank="latency"``; the
   assembler's most probable with ``rank="probability"``) are scored on the task's validation data
   with inherited weights and recalibrated batch norms; the best is kept. Cheaper budgets score more
   candidates on more images (:func:`scoring_effort`). Ranking by probability
   left half the budget unused at mid budgets: the assembler's distribution is a product of
   per-decision marginals, and its most probable joint choices gather at the cheap options; with
   the same assembler, ranking by latency raised the pick's held-out accuracy by 0.2 point on
   average (BENCHMARKS.md, factory part (c), rows D and F);
4. its task module is fitted: a linear head on the shared features, fitted to the task's training
   data (a few hundred L-BFGS steps), or the inherited classifier where it scores at least as well
   on the validation data (and always for the task of all the data's classes, which is the one it
   was trained for): for a plain subset its class rows, for a grouping the whole all-class
   classifier read through :class:`GroupHead` (a group's logit is the log-sum-exp of its classes'
   logits, which no linear head on the features can express; on the digits' validation split it
   beat the fitted head by 0.1-0.6 point in 11 of 12 (grouping, budget) pairs and tied in the
   other); an optional short fine-tune follows.

``sampler="random"`` replaces step 1 with uniform sampling (the benchmarks' baseline).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgefab.arch import ArchSpec
from edgefab.data import Dataset, to_float
from edgefab.data.tasks import Task, apply_task
from edgefab.errors import EdgefabError
from edgefab.factory.assembler import relative_budget, sample_selections
from edgefab.factory.network import Network
from edgefab.factory.scoring import score
from edgefab.factory.space import ModuleSelection
from edgefab.factory.store import Factory
from edgefab.factory.train import TrainConfig, fit
from edgefab.targets.model import LatencyModel
from edgefab.threads import torch_threads

SAMPLERS = ("assembler", "random")
RANKS = ("latency", "probability")


@dataclass(frozen=True)
class CustomizeOptions:
    """Settings of one customisation."""

    candidates: int = 256  # sampled from the assembler (or uniformly)
    scored: int = 3  # feasible candidates scored on validation data (at the largest sub-network's cost)
    sampler: str = "assembler"
    rank: str = "latency"  # which feasible candidates are scored: the costliest, or the most probable
    val_samples: int = 500
    scale_scoring: bool = True  # cheaper budgets: more candidates and images (see scoring_effort)
    head_samples: int = 1000
    finetune_epochs: int = 0
    finetune_shift: int = 0  # random shifts of the fine-tune's images (pixels; edgefab.data.augment)
    group_head: bool = True  # a grouping may keep the all-class classifier (off: always linear)
    seed: int = 0


@dataclass
class Customized:
    """The chosen sub-network for a task, ready to export."""

    selection: ModuleSelection
    spec: ArchSpec  # with the task's outputs
    network: Network
    accuracy: float  # task accuracy on the validation data, final head
    predicted_ms: float
    relative_budget: float
    candidates: list[dict] = field(default_factory=list)  # the scored ones
    seconds: dict[str, float] = field(default_factory=dict)
    head: str = "fitted"  # the task module: "fitted" (linear), "inherited rows" or "grouped classes"


class GroupHead(nn.Module):
    """The all-class classifier read as a grouping: the output is the log of each group's summed
    class probabilities (equal, up to a per-sample constant, to the log-sum-exp of its classes'
    logits). Softmax, a MatMul by the 0/1 class-to-group matrix, Clip and Log: ops that ONNX
    Runtime's quantization shape inference knows (it fails on ReduceLogSumExp), and few of them,
    since on the smallest sub-networks every op counts (a Gather and ReduceSum per group, as
    before, made the network 1.09x as slow as with a linear head; this form 1.06x)."""

    def __init__(self, classifier: nn.Linear, groups: list[list[int]]):
        super().__init__()
        self.linear = classifier
        self.groups = [list(members) for members in groups]
        membership = torch.zeros(classifier.out_features, len(self.groups))
        for index, members in enumerate(self.groups):
            membership[members, index] = 1.0
        self.register_buffer("membership", membership, persistent=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return (self.linear(features).softmax(1) @ self.membership).clamp_min(1e-30).log()


def restrict(data: Dataset, task: Task) -> Dataset:
    """The samples of the classes ``task`` uses, keeping the all-class labels."""
    return data.subset(np.flatnonzero(task.group_of(data.num_classes)[data.labels] >= 0))


def latency_range(factory: Factory, model: LatencyModel) -> tuple[float, float]:
    """Predicted ms of the space's smallest and largest sub-network on the model's target."""
    space, classes = factory.space, len(factory.classes)
    return model.total_ms(space.arch(space.smallest(), classes)), model.total_ms(
        space.arch(space.largest(), classes)
    )


def customize(
    factory: Factory,
    task: Task,
    model: LatencyModel,
    budget_ms: float | None,
    train: Dataset,
    val: Dataset,
    options: CustomizeOptions | None = None,
    proposals: list[ModuleSelection] | None = None,
) -> Customized:
    """Pick, score and extract the factory's best sub-network for ``task`` within ``budget_ms``
    (``train`` and ``val`` carry the data's own labels). ``proposals`` replaces sampling with
    given selections (e.g. a search's result), which are then scored and extracted the same way."""
    options = options or CustomizeOptions()
    if options.sampler not in SAMPLERS:
        raise EdgefabError(f"unknown sampler '{options.sampler}'; use one of {', '.join(SAMPLERS)}")
    if options.rank not in RANKS:
        raise EdgefabError(f"unknown candidate ranking '{options.rank}'; use one of {', '.join(RANKS)}")
    clock = time.perf_counter()
    smallest_ms, largest_ms = latency_range(factory, model)
    if budget_ms is not None and budget_ms < smallest_ms:
        raise EdgefabError(
            f"no sub-network of the factory meets {budget_ms:g} ms on {model.target.name}: the smallest "
            f"costs {smallest_ms:.3f} ms ({model.kind}); raise --latency-ms"
        )
    budget = relative_budget(budget_ms, smallest_ms, largest_ms) if budget_ms is not None else 1.0
    options = scoring_effort(options, budget_ms, largest_ms)
    if proposals is None:
        ranked = propose(factory, task, model, budget_ms, options)
    else:
        ranked = [(s, model.total_ms(factory.space.arch(s, len(factory.classes))), 0.0) for s in proposals]
    seconds = {"assemble": time.perf_counter() - clock}
    task_train, task_val = restrict(train, task), restrict(val, task)
    rng = np.random.default_rng(options.seed)
    if len(task_val) > options.val_samples:
        task_val = task_val.subset(np.sort(rng.permutation(len(task_val))[: options.val_samples]))
    clock = time.perf_counter()
    results = []
    for selection, ms, logp in ranked:
        accuracy, network = score(factory.supernet, selection, task_train, task_val, factory.prep, task)
        results.append(
            {"selection": selection, "ms": ms, "logp": logp, "accuracy": accuracy, "network": network}
        )
    best = best_candidate(results, set(anchor_selections(factory)), len(task_val))
    seconds["score"] = time.perf_counter() - clock
    clock = time.perf_counter()
    network, accuracy, head = _task_network(best, task, task_train, task_val, factory.prep, options)
    spec = factory.space.arch(best["selection"], len(task.groups))
    seconds["head"] = time.perf_counter() - clock
    if options.finetune_epochs:
        clock = time.perf_counter()
        relabelled = apply_task(task_train, task)
        config = TrainConfig(
            epochs=options.finetune_epochs, lr=2e-3, shift=options.finetune_shift, seed=options.seed
        )
        fit(network, relabelled, factory.prep, config)
        accuracy = _head_accuracy(network, task_val, task, factory.prep)
        seconds["finetune"] = time.perf_counter() - clock
    rows = [_row(r) for r in results]
    return Customized(best["selection"], spec, network, accuracy, best["ms"], budget, rows, seconds, head)


def scoring_effort(options: CustomizeOptions, budget_ms: float | None, largest_ms: float) -> CustomizeOptions:
    """``options`` with more candidates scored on more images where the budget is below the largest
    sub-network's cost: ``scored`` and ``val_samples`` are meant for the largest, and cheaper candidates
    are scored faster, so up to 4x as many (at most 1000 images) take about the same time.

    Why: at the tightest budgets the feasible sub-networks differ by tenths of a point, about the
    noise of 500 images, so the best of 3 was often not the best (all ten digits at 0.047-0.049 ms:
    97.9-98.6 % over seeds with 3 on 500; 98.4-98.6 % with 10 on 1000; BENCHMARKS.md, factory, sixth
    part). At the largest budgets 10 on 1000 took 7-11 s and picked no better."""
    if not options.scale_scoring or budget_ms is None:
        return options
    scale = min(4.0, max(1.0, largest_ms / budget_ms))
    images = max(options.val_samples, min(1000, round(options.val_samples * scale)))
    return replace(options, scored=round(options.scored * scale), val_samples=images)


def _row(result: dict) -> dict:
    return {
        "modules": result["selection"].to_dict(),
        "predicted_ms": round(result["ms"], 4),
        "log_probability": round(result["logp"], 3),
        "accuracy": round(result["accuracy"], 5),
    }


def propose(
    factory: Factory, task: Task, model: LatencyModel, budget_ms: float | None, options: CustomizeOptions
) -> list[tuple[ModuleSelection, float, float]]:
    """The ``options.scored`` candidates to evaluate, (selection, predicted ms, log-probability):
    of those sampled from the assembler (or uniformly) within budget, the costliest (``rank="latency"``)
    or the most probable (``rank="probability"``)."""
    space, classes = factory.space, len(factory.classes)
    rng = np.random.default_rng(options.seed)
    if options.sampler == "assembler":
        budget = relative_budget(budget_ms, *latency_range(factory, model)) if budget_ms is not None else 1.0
        sampled = sample_selections(
            space, factory.assembler.distribution(task, budget), options.candidates, rng
        )
    else:
        sampled = [(space.sample(rng), 0.0) for _ in range(options.candidates)]
    sampled.append((space.smallest(), -np.inf))  # always one that fits
    seen, ranked = set(), []
    for selection, logp in sampled:
        if selection in seen:
            continue
        seen.add(selection)
        ms = model.total_ms(space.arch(selection, classes))
        if budget_ms is None or ms <= budget_ms:
            ranked.append((selection, ms, logp))
        if len(ranked) == options.scored and options.rank == "probability":
            break
    if options.rank == "latency":
        ranked = sorted(ranked, key=lambda item: (-item[1], -item[2]))[: options.scored]
    anchor = costliest_anchor(factory, model, budget_ms)
    if anchor is not None and anchor[0] not in {selection for selection, _, _ in ranked}:
        ranked.append(anchor)
    return ranked


def costliest_anchor(
    factory: Factory, model: LatencyModel, budget_ms: float | None
) -> tuple[ModuleSelection, float, float] | None:
    """The costliest of the sub-networks the supernet trained at every step (its anchors) within
    budget, as (selection, predicted ms, log-probability -inf), or None. Always scored: an anchor
    scores like a network trained alone, while sampled neighbours a few decisions away score up to a
    point lower (BENCHMARKS.md, issue 5, "A droppable third stage and anchors"), and ranking by
    latency may not reach it."""
    space, classes = factory.space, len(factory.classes)
    fitting = []
    for selection in anchor_selections(factory):
        ms = model.total_ms(space.arch(selection, classes))
        if budget_ms is None or ms <= budget_ms:
            fitting.append((selection, ms, -np.inf))
    return max(fitting, key=lambda item: item[1], default=None)


def anchor_selections(factory: Factory) -> list[ModuleSelection]:
    """The sub-networks the factory's supernet trained at every step (none for most factories)."""
    anchors = factory.meta.get("training", {}).get("anchors", ())
    return [factory.space.canonical(ModuleSelection.from_dict(data)) for data in anchors]


def best_candidate(results: list[dict], anchors: set[ModuleSelection], images: int) -> dict:
    """The candidate with the best score (the cheaper on a tie); an anchor loses only to one that
    beats it by more than a binomial standard error on the ``images`` scored. Why: judged on 62,597
    digits an anchor scores up to a point above the neighbours sampled around it, while on 1,000
    images their scores differ by noise of half a point, so the best of a dozen neighbours often
    outscores it by luck (BENCHMARKS.md, issue 5, "A droppable third stage and anchors")."""
    best = max(results, key=lambda r: (r["accuracy"], -r["ms"]))
    scored_anchors = [r for r in results if r["selection"] in anchors]
    if not scored_anchors or best in scored_anchors:
        return best
    anchor = max(scored_anchors, key=lambda r: (r["accuracy"], -r["ms"]))
    error = math.sqrt(max(anchor["accuracy"] * (1 - anchor["accuracy"]), 1e-4) / max(images, 1))
    return anchor if best["accuracy"] - anchor["accuracy"] <= error else best


def _task_network(
    best: dict, task: Task, train: Dataset, val: Dataset, prep: dict, options: CustomizeOptions
):
    """The best candidate's network with its task head, the head's accuracy and kind (see the module
    docstring, step 4); ``best["accuracy"]`` is the inherited classifier's task accuracy on ``val``."""
    network: Network = best["network"]
    inherited = network.classifier
    rows = [list(members) for _, members in task.groups]
    if rows == [[c] for c in range(inherited.out_features)]:
        # Every class, in order: the inherited classifier is this task's, trained on all the training
        # images; refitted on a thousand, the head judged on 62,597 digits was no better (-0.02
        # point, 9 sub-networks) and cost an anchor 0.19 point (BENCHMARKS.md, issue 5, "A
        # droppable third stage and anchors"). On a subset the refit gained (+0.04 point, 7 of 7).
        return network.eval(), best["accuracy"], "inherited rows"
    features, labels = _features(network, train, prep, options.head_samples, task)
    init_w = torch.stack([inherited.weight[r].mean(0) for r in rows]).detach()
    init_b = torch.stack([inherited.bias[r].mean() for r in rows]).detach()
    head = _fit_linear(features, labels, init_w, init_b)
    network.classifier = head
    accuracy = _head_accuracy(network, val, task, prep)
    if all(len(r) == 1 for r in rows):
        if best["accuracy"] > accuracy:  # a subset: the inherited rows won
            network.classifier = _linear(init_w, init_b)
            return network.eval(), best["accuracy"], "inherited rows"
    elif options.group_head and best["accuracy"] >= accuracy:  # ties too: it won 11 of 12 measured
        network.classifier = GroupHead(inherited, rows)
        return network.eval(), best["accuracy"], "grouped classes"
    return network.eval(), accuracy, "fitted"


@torch.no_grad()
def _features(network: Network, data: Dataset, prep: dict, limit: int, task: Task):
    chosen = np.sort(np.random.default_rng(0).permutation(len(data))[:limit])
    images = torch.from_numpy(to_float(data.images[chosen], prep))
    classifier, network.classifier = network.classifier, nn.Identity()
    try:
        features = torch.cat([network(images[i : i + 512]) for i in range(0, len(images), 512)])
    finally:
        network.classifier = classifier
    labels = torch.from_numpy(task.group_of(data.num_classes)[data.labels[chosen]])
    return features, labels


def _fit_linear(
    features: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> nn.Linear:
    """Multinomial logistic regression (L2 1e-3) by L-BFGS, from the given start."""
    with torch_threads(1):
        return _lbfgs_linear(features, labels, weight, bias)


def _lbfgs_linear(features: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor):
    w, b = weight.clone().requires_grad_(True), bias.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=100, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(features @ w.T + b, labels) + 1e-3 * (w**2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return _linear(w.detach(), b.detach())


def _linear(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    return layer


@torch.no_grad()
def _head_accuracy(network: Network, val: Dataset, task: Task, prep: dict) -> float:
    network.eval()
    logits = network(torch.from_numpy(to_float(val.images, prep))).numpy()
    group_of = task.group_of(val.num_classes)
    return float((logits.argmax(1) == group_of[val.labels]).mean())

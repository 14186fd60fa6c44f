"""Scoring sub-networks of the supernet on a task: inherited weights, recalibrated batch norms.

A task's accuracy is read from the all-class logits: a group's logit is the log-sum-exp of its
classes' logits (for a plain subset, the class's own logit), so one evaluation of a sub-network
serves every task at once. The factory's assembler is trained on such scores, and customisation
and the optuna search rank their candidates by them.
"""

from __future__ import annotations

import numpy as np
import torch

from edgefab.data import Dataset, to_float
from edgefab.data.tasks import Task
from edgefab.factory.network import Network
from edgefab.factory.space import ModuleSelection
from edgefab.factory.supernet import ModularSupernet
from edgefab.factory.train import recalibrate_batchnorm

BN_SAMPLES = 512  # images the batch norms of a sub-network are recalibrated on


def group_logits(logits: np.ndarray, task: Task) -> np.ndarray:
    """(..., classes) all-class logits -> (..., groups) task logits (log-sum-exp per group)."""
    columns = [np.logaddexp.reduce(logits[..., list(members)], axis=-1) for _, members in task.groups]
    return np.stack(columns, axis=-1)


def task_accuracy(logits: np.ndarray, labels: np.ndarray, task: Task) -> float | np.ndarray:
    """Top-1 task accuracy of all-class ``logits`` (..., N, classes) on all-class ``labels`` (N,);
    samples of classes the task leaves out are not counted."""
    group_of = task.group_of(logits.shape[-1])
    keep = group_of[labels] >= 0
    predicted = group_logits(logits[..., keep, :], task).argmax(-1)
    return (predicted == group_of[labels[keep]]).mean(-1)


@torch.no_grad()
def all_class_logits(
    network: torch.nn.Module, images: np.ndarray, prep: dict, batch: int = 512
) -> np.ndarray:
    """Logits of ``network`` on uint8 ``images``, float32 (N, classes)."""
    network.eval()
    parts = [
        network(torch.from_numpy(to_float(images[i : i + batch], prep))) for i in range(0, len(images), batch)
    ]
    return torch.cat(parts).numpy()


def subnetwork(
    supernet: ModularSupernet, selection: ModuleSelection, calibration: Dataset, prep: dict
) -> Network:
    """``selection`` extracted with the supernet's weights and its batch norms recalibrated."""
    _, network = supernet.extract(selection)
    recalibrate_batchnorm(network, calibration, prep, samples=BN_SAMPLES)
    return network


def score(
    supernet: ModularSupernet,
    selection: ModuleSelection,
    calibration: Dataset,
    val: Dataset,
    prep: dict,
    task: Task,
) -> tuple[float, Network]:
    """Task accuracy of ``selection`` on ``val`` (all-class labels) and the recalibrated network."""
    network = subnetwork(supernet, selection, calibration, prep)
    return float(task_accuracy(all_class_logits(network, val.images, prep), val.labels, task)), network

"""Scoring flows: Frechet distance of their samples against real images, and sample grids."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgefab.errors import EdgefabError
from edgefab.flow.data import FlowData
from edgefab.flow.frechet import FeatureNet, feature_net, frechet_distance, real_floor, reference_features
from edgefab.flow.rectified import noise_like, sample
from edgefab.runtime.grid import save_png_grid

GRID_SAMPLES = 64
NOISE_SEED = 12345  # every model is scored on the same noise, never on the reflow pairs' noise


@dataclass
class Scorer:
    """Features of real images and the floor, computed once, to score many models against."""

    net: FeatureNet
    reference: np.ndarray
    floor: float
    count: int

    def to_dict(self) -> dict[str, Any]:
        """What the scores were measured with."""
        return {
            "feature_net": "edgefab DigitFeatures (conv32-conv64-fc128), trained on the flow's data",
            "feature_net_accuracy": round(self.net.accuracy, 4),
            "samples": self.count,
            "real_vs_real_floor": round(self.floor, 3),
        }


def make_scorer(data: FlowData, count: int, seed: int = 0) -> Scorer:
    """Train (or load) the feature net for ``data``; ``count`` real images per set (two for the floor)."""
    if count < 2:
        raise EdgefabError(f"scoring needs at least 2 samples, got {count}")
    count = min(count, len(data.images) // 2)
    net = feature_net(data.dataset, seed=seed)
    return Scorer(
        net,
        reference_features(net, data.images, count, seed),
        real_floor(net, data.images, count, seed),
        count,
    )


def score(scorer: Scorer, model: nn.Module, solver: str = "euler", steps: int = 1) -> dict[str, Any]:
    """Frechet distance of ``scorer.count`` samples of ``model`` (fixed noise), and evaluations per sample."""
    noise = noise_like(scorer.count, model.config.image_shape, NOISE_SEED)
    samples, evaluations = sample(model, noise, solver, steps)
    distance = frechet_distance(scorer.net.embed(samples), scorer.reference)
    return {"frechet_distance": round(distance, 3), "evaluations": evaluations, "samples": samples}


def save_grid(model: nn.Module, path: Path, solver: str = "euler", steps: int = 1) -> Path:
    """A PNG grid of 64 samples (the first 64 of the scoring noise)."""
    noise = noise_like(GRID_SAMPLES, model.config.image_shape, NOISE_SEED)
    samples, _ = sample(model, noise, solver, steps)
    return save_png_grid(((samples.clamp(-1, 1) + 1) / 2).numpy(), path, columns=8)


def real_grid(data: FlowData, path: Path) -> Path:
    """A PNG grid of 64 real images, for comparison."""
    images = data.images[
        torch.randperm(len(data.images), generator=torch.Generator().manual_seed(0))[:GRID_SAMPLES]
    ]
    return save_png_grid(((images + 1) / 2).numpy(), path, columns=8)

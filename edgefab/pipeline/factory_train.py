"""``edgefab factory train``: data -> a factory folder (supernet + assembler), written atomically.

1. the modular supernet is trained with the sandwich rule (:mod:`edgefab.factory.supertrain`);
2. a pool of sub-networks spread over the latency range (the smallest, the largest and random ones
   between them) is scored on validation data with recalibrated batch norms, and costed with the
   latency models of ``assembler_targets``;
3. the assembler is trained on sampled (task, budget, target) scenarios over that pool.

Started by ``torchrun``, step 1 runs in every process and rank 0 does the rest and writes.
``edgefab factory assemble`` (:func:`assemble_factory`) redoes steps 2 and 3 on an existing factory.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

import edgefab
from edgefab.data import load_dataset, normalization, train_val_split
from edgefab.data.tasks import all_classes
from edgefab.errors import EdgefabError
from edgefab.factory.assembler import AssemblerConfig, train_assembler
from edgefab.factory.presets import family_in_space
from edgefab.factory.scoring import all_class_logits, subnetwork, task_accuracy
from edgefab.factory.space import FactorySpace, ModuleSelection, factory_space, space_for_shape
from edgefab.factory.store import META_FILE, Factory, load_factory, save_factory
from edgefab.factory.supernet import ModularSupernet
from edgefab.factory.supertrain import (
    SupernetTrainConfig,
    init_distributed,
    train_supernet,
    training_device,
    world,
)
from edgefab.factory.train import dataset_fingerprint
from edgefab.pipeline.common import Progress, SilentProgress
from edgefab.pipeline.factory_build import space_latency_model
from edgefab.runtime.package import staged_folder
from edgefab.targets import Target, load_target

ASSEMBLER_TARGETS = ("pixel", "note10")


@dataclass(frozen=True)
class FactoryJob:
    """What ``edgefab factory train`` was asked for."""

    data: str = "mnist"
    out: Path = Path("factories/mnist")
    space: str | None = None  # default: the built-in space for the data's image shape
    # 40: with shifts, twice the epochs lifted 60 random sub-networks of the digits space by 0.5 point
    # on unseen digits, the smallest by 0.6 (BENCHMARKS.md, issue 5, "Forty epochs with shifts").
    epochs: int = 40
    random_subnets: int = 2
    # Of those, drawn from an end of the space (SupernetTrainConfig); 1 on the digits: no gain, both
    # ends 0.07 point lower on one seed (BENCHMARKS.md, issue 5, "Why the factory is behind").
    spread_subnets: int = 0
    # Train the simple family's members that the space holds at every step (SupernetTrainConfig's
    # anchors) and put them in the pool. Off by default: they then score about what they score
    # trained alone, the networks between them do not, and with four anchors the factory was still
    # behind at two of three scratch latencies (BENCHMARKS.md, issue 5, "A droppable third stage
    # and anchors").
    anchors: bool = False
    # More anchors, named (ModuleSelection.to_dict form): for a space that holds few of the family's
    # members, sub-networks at their latencies (benchmarks/factory_anchors.py).
    extra_anchors: tuple[dict, ...] = ()
    anchor_label_weight: float = 0.0  # the anchors' label loss beside distillation (SupernetTrainConfig)
    # Training images randomly shifted by up to this many pixels (0: not at all). On the digits,
    # 2 lifted the sub-networks by 0.3 point on unseen digits (BENCHMARKS.md, issue 5, "Random shifts").
    shift: int = 2
    # 384: the digits space has 162 width assignments (18 before its elastic stem and head); a pool
    # of 192 left the assembler no better than uniform sampling there (BENCHMARKS.md, issue 5 (c))
    pool: int = 384
    pool_samples: int = 1000  # validation images each pool member is scored on (of 1597 for digits)
    assembler_targets: tuple[str, ...] = ASSEMBLER_TARGETS  # latency models whose budgets it learns
    assembler_steps: int = 1500
    seed: int = 0  # of the initialisation, batches, sampled sub-networks, pool, assembler
    split_seed: int | None = None  # of the train/validation split; None: ``seed``
    train_samples: int | None = None  # a subset, for quick runs and tests
    device: str = "auto"  # where the supernet trains (auto, cpu, cuda, cuda:N); the rest runs on the CPU


def train_factory(job: FactoryJob, progress: Progress | None = None) -> tuple[Path, dict[str, Any]]:
    """Train and write the factory folder ``job.out``; returns it and its ``factory.json``."""
    progress = progress or SilentProgress()
    targets = [load_target(name) for name in job.assembler_targets]  # a bad name fails before training
    out = Path(job.out)
    if out.exists() and not (out / META_FILE).is_file():
        raise EdgefabError(f"{out} exists and is not a factory folder; remove it or choose another --out")
    device = training_device(job.device)  # an absent GPU fails here, before any work
    init_distributed(device)
    rank, size = world()
    progress.stage(f"loading data {job.data}")
    data = load_dataset(job.data)
    fspace = factory_space(job.space) if job.space else space_for_shape(data.input_shape)
    if tuple(fspace.space.input_shape) != data.input_shape:
        raise EdgefabError(f"space {fspace.name} takes {fspace.space.input_shape} images, the data has "
                           f"{data.input_shape}; choose another --space")  # fmt: skip
    split_seed = job.seed if job.split_seed is None else job.split_seed
    train, val = train_val_split(data, seed=split_seed)
    if job.train_samples:
        train = train.subset(np.random.default_rng(split_seed).permutation(len(train))[: job.train_samples])
    prep = normalization(train)
    config = SupernetTrainConfig(
        epochs=job.epochs,
        random_subnets=job.random_subnets,
        spread_subnets=job.spread_subnets,
        anchors=job_anchors(job, fspace, data.num_classes),
        anchor_label_weight=job.anchor_label_weight,
        shift=job.shift,
        seed=job.seed,
    )
    torch.manual_seed(job.seed)
    supernet = ModularSupernet(fspace, data.num_classes)
    progress.stage(
        f"training the supernet ({job.epochs} epochs, sandwich rule, {size} process(es), {device})"
    )
    seconds = train_supernet(supernet, train, prep, config, progress.advance, device)
    if rank != 0:
        return out, {}
    sections = pool_and_assembler(supernet, train, val, prep, job, targets, progress, config.anchors)
    assembler = sections.pop("model")
    meta = {
        "edgefab": edgefab.__version__,
        "torch": torch.__version__,
        "space": fspace.name,
        "widths": [list(w) for w in fspace.widths],
        "stem_widths": list(fspace.stem_widths),
        "head_widths": list(fspace.head_widths),
        "data": {
            "spec": job.data,
            "name": data.name,
            "classes": list(data.classes),
            "input_shape": list(data.input_shape),
            "fingerprint": dataset_fingerprint(data),
            "train_samples": len(train),
            "split_seed": split_seed,
        },  # fmt: skip
        "preprocessing": prep,
        "training": {
            **asdict(config),
            "processes": size,
            "device": str(device),
            "seconds": round(seconds, 1),
        },
        **sections,
    }
    progress.stage(f"writing {out}")
    with staged_folder(out) as staging:
        save_factory(staging, Factory(meta, supernet, assembler))
    return out, {**meta}


def job_anchors(job: FactoryJob, fspace: FactorySpace, num_classes: int) -> tuple[dict, ...]:
    """The anchors ``job`` asks for: the family's members in the space (``job.anchors``), then
    ``job.extra_anchors``, each once, in canonical form."""
    family = family_in_space(fspace, num_classes) if job.anchors else []
    named = [fspace.canonical(ModuleSelection.from_dict(a)) for a in job.extra_anchors]
    return tuple(a.to_dict() for a in dict.fromkeys([*family, *named]))


def assemble_factory(
    path: Path, job: FactoryJob | None = None, progress: Progress | None = None
) -> tuple[Path, dict[str, Any]]:
    """Retrain the assembler of the factory at ``path`` in place (steps 2 and 3 only, the supernet
    kept): on the data, split and seed it was trained with, with ``job``'s pool settings (its data,
    space, epochs and seed are ignored). As ``train_factory`` would with today's code, in minutes."""
    progress = progress or SilentProgress()
    job = job or FactoryJob()
    targets = [load_target(name) for name in job.assembler_targets]  # a bad name fails before the scoring
    factory = load_factory(path)
    meta, info = factory.meta, factory.meta["data"]
    progress.stage(f"loading data {info['spec']}")
    data = load_dataset(info["spec"])
    if dataset_fingerprint(data) != info["fingerprint"]:
        raise EdgefabError(f"data {info['spec']} is not what factory {path} was trained on (fingerprint "
                           f"differs); retrain it with edgefab factory train")  # fmt: skip
    seed = info["split_seed"]
    train, val = train_val_split(data, seed=seed)
    if info["train_samples"] < len(train):
        train = train.subset(np.random.default_rng(seed).permutation(len(train))[: info["train_samples"]])
    job = replace(job, seed=meta["training"]["seed"])
    anchors = meta["training"].get("anchors", ())
    sections = pool_and_assembler(factory.supernet, train, val, factory.prep, job, targets, progress, anchors)
    assembler = sections.pop("model")
    meta = {**meta, "edgefab": edgefab.__version__, **sections}
    progress.stage(f"writing {path}")
    with staged_folder(Path(path)) as staging:
        save_factory(staging, Factory(meta, factory.supernet, assembler))
    return Path(path), load_factory(path).meta


def pool_and_assembler(
    supernet, train, val, prep, job: FactoryJob, targets: list[Target], progress: Progress, anchors=()
) -> dict[str, Any]:
    """Steps 2 and 3: score the pool (the training's ``anchors`` in it), cost it on ``targets``
    (``job.assembler_targets`` loaded), train the assembler on it. Returns the ``model`` and
    factory.json's ``pool`` and ``assembler`` sections."""
    start = time.perf_counter()
    fspace, num_classes = supernet.fspace, supernet.num_classes
    val_sample = val.subset(pool_images(len(val), job.seed, job.pool_samples))
    pool, logits = score_pool(supernet, train, val_sample, prep, job.pool, job.seed, progress, anchors)
    progress.stage(f"costing the pool on {', '.join(job.assembler_targets)}")
    latencies = {}
    for name, target in zip(job.assembler_targets, targets, strict=True):
        model = space_latency_model(target, fspace, num_classes, progress)
        latencies[name] = np.array([model.total_ms(fspace.arch(s, num_classes)) for s in pool])
    progress.stage(f"training the assembler ({job.assembler_steps} steps)")
    config = AssemblerConfig(steps=job.assembler_steps, seed=job.seed)
    assembler, summary = train_assembler(fspace, pool, logits, val_sample.labels, latencies, config)
    accuracy = task_accuracy(logits, val_sample.labels, all_classes([str(c) for c in range(num_classes)]))
    pool_meta = {
        "size": len(pool),
        "scored_on": len(val_sample),
        "seconds": round(time.perf_counter() - start, 1),
        "accuracy_smallest": round(float(accuracy[0]), 4),
        "accuracy_largest": round(float(accuracy[1]), 4),
        "accuracy_median": round(float(np.median(accuracy)), 4),
    }
    return {"model": assembler, "pool": pool_meta, "assembler": summary}


def pool_images(val_size: int, seed: int, count: int) -> np.ndarray:
    """Indices of the validation images a factory's pool is scored on (``pool.scored_on`` of them,
    from the training seed), so that a benchmark can judge picks on images the assembler never saw."""
    return np.random.default_rng(seed).permutation(val_size)[:count]


def score_pool(supernet, train, val, prep, count: int, seed: int, progress: Progress, anchors=()):
    """The smallest, the largest, the ``anchors`` (selection dicts) and sub-networks between them
    (:meth:`FactorySpace.sample_from_end`), ``count`` in all, with their all-class logits on ``val``
    (pool, samples, classes)."""
    fspace = supernet.fspace
    rng = np.random.default_rng(seed + 1)
    pool = [fspace.smallest(), fspace.largest()]
    pool += [s for s in (ModuleSelection.from_dict(a) for a in anchors) if s not in pool][: count - 2]
    seen = set(pool)
    while len(pool) < count:
        selection = fspace.sample_from_end(rng)
        if selection not in seen:
            seen.add(selection)
            pool.append(selection)
    progress.stage(f"scoring {count} sub-networks on {len(val)} validation images")
    logits = []
    for done, selection in enumerate(pool, 1):
        logits.append(all_class_logits(subnetwork(supernet, selection, train, prep), val.images, prep))
        progress.advance(done, len(pool))
    return pool, np.stack(logits)

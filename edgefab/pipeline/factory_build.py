"""The factory step of ``edgefab build``: pick a factory for the data, customise it for the task.

``--factory`` unset uses the shipped digits factory when the data is the data it was trained on
(same fingerprint), and otherwise falls back to training the simple family; ``--factory PATH``
insists (a factory for other data or another input shape is an error); ``--factory none`` always
trains the simple family. On a target that is this machine the latency model is a measured table:
the factory's layer shapes are measured once (cached) before customising.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgefab.arch import ArchSpec
from edgefab.data import Dataset, train_val_split
from edgefab.data.tasks import Task, apply_task
from edgefab.errors import EdgefabError
from edgefab.factory.customize import CustomizeOptions, customize, latency_range
from edgefab.factory.scoring import subnetwork
from edgefab.factory.space import FactorySpace
from edgefab.factory.store import SHIPPED, Factory, load_factory
from edgefab.factory.train import dataset_fingerprint
from edgefab.pipeline.common import Progress
from edgefab.spaces import CHOICES
from edgefab.targets import Target
from edgefab.targets.latency import latency_model
from edgefab.targets.layers import Layer, spec_layers
from edgefab.targets.model import LatencyModel

PROFILE_NETWORKS = 10  # random sub-networks the host's per-network overhead is fitted on
MEASURED_TRIES = 4  # customisations tried where a measured latency can overrule the prediction


def resolve_factory(option: str | None, data: Dataset) -> tuple[Factory | None, str]:
    """The factory ``build`` customises (or None) and why."""
    if option == "none":
        return None, "--factory none"
    if option is None:
        if not SHIPPED.is_dir():
            return None, "no factory is shipped with this installation"
        factory = load_factory(SHIPPED)
        mismatch = _mismatch(factory, data)
        if mismatch:
            return None, f"the shipped factory does not fit this data ({mismatch})"
        return factory, "shipped factory"
    factory = load_factory(Path(option))
    mismatch = _mismatch(factory, data)
    if mismatch:
        raise EdgefabError(f"factory {option} does not fit this data: {mismatch}; train one for it with "
                           f"edgefab factory train --data {data.name} --out FOLDER")  # fmt: skip
    return factory, str(option)


def factory_split(factory: Factory, data: Dataset) -> tuple[Dataset, Dataset]:
    """(train, validation) of ``data`` as ``factory`` split it (its own split seed), whatever seed the
    caller was given: customisation scores candidates on the validation images, and with another
    split some of them would be images the supernet was trained on (its picks would read higher than
    they are)."""
    return train_val_split(data, seed=int(factory.meta["data"].get("split_seed", 0)))


def _mismatch(factory: Factory, data: Dataset) -> str | None:
    trained = factory.meta["data"]
    if tuple(trained["input_shape"]) != tuple(data.input_shape):
        return f"it takes {'x'.join(map(str, trained['input_shape']))} images, the data has " + "x".join(
            map(str, data.input_shape)
        )
    if list(trained["classes"]) != list(data.classes):
        return f"it knows classes {trained['classes'][:10]}, the data has {list(data.classes)[:10]}"
    if trained["fingerprint"] != dataset_fingerprint(data):
        return f"it was trained on {trained['name']}, not on {data.name} (the images differ)"
    return None


def space_layers(space: FactorySpace, classes: int) -> tuple[list[Layer], list]:
    """Every distinct layer any sub-network of ``space`` can have, and a few random sub-networks' specs.

    A layer's shape depends on its op, its stage's width and the previous stage's (or the stem's)
    width, the head's on the last stage's and its own; skipping keeps shapes. So every op on every
    slot, under every combination of stage, stem and head widths, covers them.
    """
    searchable = space.space.searchable()
    layers: dict[str, Layer] = {}
    elastic = [options for options in (space.stem_widths, space.head_widths) if options]
    for widths in itertools.product(*space.widths, *elastic):
        for op in CHOICES:
            values = [op] * len(searchable) + [int(w) for w in widths]
            for layer in spec_layers(space.arch(space.selection(values), classes)):
                layers.setdefault(layer.key(), layer)
    rng = np.random.default_rng(0)
    specs = [space.arch(space.sample(rng), classes) for _ in range(PROFILE_NETWORKS)]
    return list(layers.values()), specs


def factory_latency_model(target: Target, factory: Factory, progress: Progress) -> LatencyModel:
    """The target's latency model, with the factory's layers measured first where it is this machine."""
    return space_latency_model(target, factory.space, len(factory.classes), progress)


def space_latency_model(
    target: Target, space: FactorySpace, classes: int, progress: Progress
) -> LatencyModel:
    """The target's latency model, with the space's layers measured first where it is this machine."""
    model = latency_model(target)
    if not (target.runs_here and model.measure is not None):
        return model
    from edgefab.targets.measured import MeasuredTable, resolve_threads, table_path
    from edgefab.targets.profiling import profile_layers

    layers, specs = space_layers(space, classes)
    path = table_path(target, "onnxruntime", resolve_threads(target, None))
    saved = MeasuredTable.load(path).layers if path.is_file() else {}
    missing = [layer for layer in layers if layer.key() not in saved]
    if missing:
        progress.stage(f"measuring the factory's {len(missing)} layer shapes on this machine (once, cached)")
        profile_layers(target, missing, specs, progress=progress, rounds=2)
        model = latency_model(target)
    return model


@dataclass
class ChosenModel:
    """The network ``build`` exports, the task's data splits it is measured on, and how it came to be."""

    model: torch.nn.Module
    spec: ArchSpec
    train: Dataset  # labelled by the task's outputs
    val: Dataset
    prep: dict
    info: dict[str, Any]


def customize_for_build(
    factory: Factory,
    why: str,
    task: Task,
    target: Target,
    budget_ms: float | None,
    train: Dataset,
    val: Dataset,
    options: CustomizeOptions,
    progress: Progress,
) -> ChosenModel:
    """Customise ``factory`` for the task and budget on ``target`` (``train``/``val``: all-class labels)."""
    model = factory_latency_model(target, factory, progress)
    progress.stage(f"customising the factory for task '{task.text}' on {target.name}")
    chosen = customize(factory, task, model, budget_ms, train, val, options)
    checks: list[dict[str, float]] = []
    if target.runs_here and budget_ms is not None:
        progress.stage(f"measuring the choice on this machine against {budget_ms:g} ms")
        chosen, checks = meet_measured_budget(factory, task, model, budget_ms, train, val, options, chosen)
    info = {
        "model": "factory",
        "factory": {
            "path": "shipped" if factory.path == SHIPPED else str(factory.path),
            "why": why,
            "space": factory.space.name,
            "modules": chosen.selection.to_dict(),
            "predicted_ms": round(chosen.predicted_ms, 4),
            "latency_model": f"{model.kind}: {model.method}",
            "relative_budget": round(chosen.relative_budget, 4),
            "task_accuracy_validation": round(chosen.accuracy, 5),
            "task_head": chosen.head,
            "candidates_scored": chosen.candidates,
            "seconds": {k: round(v, 3) for k, v in chosen.seconds.items()},
            "finetune_epochs": options.finetune_epochs,
            "finetune_shift": options.finetune_shift,
            "measured_checks": checks,
        },
    }
    return ChosenModel(
        chosen.network, chosen.spec, apply_task(train, task), apply_task(val, task), factory.prep, info
    )


def meet_measured_budget(
    factory, task, model, budget_ms, train, val, options, chosen, tries: int = MEASURED_TRIES
):
    """Where the target is this machine, the prediction is checked by measurement: while the chosen
    network measures over budget, customise again under a predicted limit tightened by the measured
    excess. Returns the final choice and each check.

    This machine's speed drifts by up to 2x over seconds (a shared virtual machine: one network timed
    0.10-0.31 ms within a minute, at 1 and 2 threads alike), which sent every pick near the budget
    over it. So each candidate is timed in interleaved rounds with a reference, the factory's
    smallest sub-network, and its time is scaled by the reference's predicted / measured ms: the
    candidate's latency at the speed the latency table was measured at. The check then asks whether
    the table is wrong about the candidate, not whether the machine is slow just now."""
    limit, checks = budget_ms, []
    smallest, _ = latency_range(factory, model)
    reference_ms = smallest  # the reference is the smallest sub-network; this is its prediction
    reference_spec = factory.space.arch(factory.space.smallest(), len(factory.classes))
    reference = subnetwork(factory.supernet, factory.space.smallest(), train, factory.prep)
    for _ in range(tries):
        measured, reference_measured = measure_networks(
            [(chosen.network, chosen.spec), (reference, reference_spec)], model.target
        )
        scaled = measured * reference_ms / reference_measured
        checks.append({"limit_ms": round(limit, 4), "predicted_ms": round(chosen.predicted_ms, 4),
                       "measured_ms": round(measured, 4), "scaled_ms": round(scaled, 4),
                       "reference_predicted_ms": round(reference_ms, 4),
                       "reference_measured_ms": round(reference_measured, 4)})  # fmt: skip
        if scaled <= budget_ms:
            return chosen, checks
        limit *= budget_ms / scaled
        if limit < smallest:
            break
        chosen = customize(factory, task, model, limit, train, val, options)
    raise EdgefabError(
        f"no sub-network of the factory measured within {budget_ms:g} ms on {model.target.name} (the last "
        f"measured {checks[-1]['scaled_ms']:.3f} ms at the latency table's speed, predicted "
        f"{checks[-1]['predicted_ms']:.3f} ms); raise --latency-ms"
    )


def measure_networks(
    networks: list[tuple[torch.nn.Module, ArchSpec]], target: Target, rounds: int = 5
) -> list[float]:
    """ONNX Runtime milliseconds of each network here, exported as the package will be: timed in
    ``rounds`` interleaved rounds (a median of 40 calls each), the lowest round of each, because other
    processes on a shared machine only ever add time."""
    import tempfile

    from edgefab.export.onnx_export import INPUT_NAME, export_onnx
    from edgefab.targets.latency import measure_onnx

    with tempfile.TemporaryDirectory(prefix="edgefab-measure-") as folder:
        runs = []
        for index, (network, spec) in enumerate(networks):
            shape = (1, *spec.input_shape)
            feeds = {INPUT_NAME: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
            path = Path(folder) / f"candidate{index}.onnx"
            export_onnx(network, shape, path)
            runs.append((path, feeds))
        times: list[list[float]] = [[] for _ in networks]
        for _ in range(rounds):
            for index, (path, feeds) in enumerate(runs):
                times[index].append(measure_onnx(path, feeds, threads=target.threads, runs=40).ms)
        return [min(samples) for samples in times]

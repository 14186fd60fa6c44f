"""``edgefab tune --space``: tune every distinct layer shape of a search space into the target's database.

Any network of a space is assembled from its slots' choices, and a slot's kernel shapes do not
depend on the other slots' choices (a slot's input and output channels are fixed; a skipped layer
is an identity). So the networks with every searchable slot at one choice (``k3_e3``, ``k3_e6``,
...) together hold every (slot, choice) kernel the space can produce; their distinct fused kernels
are MetaSchedule's tasks. Once they are in the target's database (``edgefab.export.tuning``), every
later factory, search or build output of that space compiles tuned, with no trials of its own.

The factory also narrows each stage and, in some spaces, the stem and the head
(``edgefab.factory.space``): the first layer of a stage (and the head) then maps the previous
stage's (or the stem's) width to its own, so every pair of neighbouring widths must occur in some
network; a few width assignments per choice cover them all.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edgefab.arch import ArchSpec
from edgefab.errors import EdgefabError
from edgefab.export.layout import LayoutNotApplied, to_blocked_layout
from edgefab.export.measure import tuning_target
from edgefab.export.onnx_export import export_onnx
from edgefab.export.shipped_tuning import export_database, seed_from_shipped, shipped_database
from edgefab.export.tuning import (
    database_dir,
    database_summary,
    extract_tasks,
    open_database,
    trials_in_database,
    tune,
)
from edgefab.export.tvm_compile import check_layout, import_onnx, resolve_tvm_target
from edgefab.factory.network import build_network
from edgefab.factory.space import FACTORY_SPACES, ModuleSelection
from edgefab.pipeline.common import Progress, SilentProgress, tune_options, work_folder
from edgefab.spaces import CHOICES, SearchSpace, get_space
from edgefab.targets import load_target


@dataclass(frozen=True)
class SpaceTuneJob:
    """What ``edgefab tune --space`` was asked for."""

    target: str = "host"
    space: str = "digits-28"
    trials: int = 64
    num_classes: int = 10
    seed: int = 0
    rpc: str | None = None  # HOST:PORT of a TVM RPC tracker: measure on the device registered there
    key: str | None = None  # that device's key
    export: Path | None = None  # write the database here afterwards, in edgefab's shipped format
    only_untuned: bool = False  # spend the trials on kernels without a tuned record only
    layout: str | None = None  # the CPU library's inner layout to tune the kernels in; None: the target's


def space_networks(space: SearchSpace, num_classes: int) -> list[ArchSpec]:
    """Networks that together hold every kernel of ``space`` and of its factory space, if any."""
    factory = FACTORY_SPACES.get(space.name)
    if factory is None:
        return [space.arch([slot.fixed or choice for slot in space.slots], num_classes) for choice in CHOICES]
    # an elastic stem counts as a stage before the first, an elastic head as one after the last
    stem = (factory.stem_widths,) if factory.stem_widths else ()
    head = (factory.head_widths,) if factory.head_widths else ()
    stages = slice(len(stem), len(stem) + len(factory.widths))
    specs = []
    for choice in CHOICES:
        choices = tuple(slot.fixed or choice for slot in space.slots)
        for widths in covering_widths(stem + factory.widths + head):
            selection = ModuleSelection(
                choices, widths[stages], widths[0] if stem else None, widths[-1] if head else None
            )
            specs.append(factory.arch(factory.canonical(selection), num_classes))
    return specs


def covering_widths(options: tuple[tuple[int, ...], ...]) -> list[tuple[int, ...]]:
    """Per-stage width assignments in which every (input width, stage s width) pair occurs; a stage
    at width 0 (dropped) passes its input on, so the stage after it reads the one before."""
    wanted = set().union(*(_pairs(w) for w in itertools.product(*options)))
    chosen = []
    while wanted:  # greedy set cover over all assignments: few stages and widths, so cheap
        best = max(itertools.product(*options), key=lambda w: len(_pairs(w) & wanted))
        chosen.append(best)
        wanted -= _pairs(best)
    return chosen


def _pairs(widths: tuple[int, ...]) -> set:
    pairs, before = set(), None
    for stage, width in enumerate(widths):
        if width:
            pairs.add((stage, before, width))
            before = width
    return pairs


def unique_tasks(task_lists: list[list]) -> list:
    """MetaSchedule tasks with structurally equal kernels merged (the database keys them that way)."""
    from tvm_ffi import structural_equal, structural_hash

    seen: dict[int, list] = {}
    unique = []
    for task in (t for tasks in task_lists for t in tasks):
        mod = task.dispatched[0]
        bucket = seen.setdefault(structural_hash(mod), [])
        if not any(structural_equal(mod, other) for other in bucket):
            bucket.append(mod)
            unique.append(task)
    return unique


def trained_like(network: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """``network`` with random batch-norm statistics and affine parameters, like a trained one.

    A fresh batch norm has a zero shift, which is folded away before TVM sees the graph: a fresh
    network's fused kernels (conv without bias add) then differ from every trained network's, and
    their tuning records would never be used (measured: 3 of a factory model's 26 kernels matched).
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                for tensor, low, high in (
                    (module.weight, 0.5, 1.5),
                    (module.bias, -0.5, 0.5),
                    (module.running_mean, -0.5, 0.5),
                    (module.running_var, 0.5, 1.5),
                ):
                    tensor.uniform_(low, high, generator=generator)
    return network


def space_tasks(
    space: SearchSpace, num_classes: int, tvm_target: dict[str, Any], progress: Progress, layout: str = "NCHW"
) -> list:
    """The distinct MetaSchedule tasks (fused kernels) of every network of ``space``, with their
    convolutions in ``layout`` (a blocked layout's kernels are other kernels than NCHW's)."""
    block = check_layout(layout, tvm_target)
    specs = space_networks(space, num_classes)
    progress.stage(f"extracting the layer shapes of {space.name} ({len(specs)} networks)")
    task_lists = []
    with work_folder() as work:
        for index, spec in enumerate(specs):
            path = work / f"net{index}.onnx"
            model = export_onnx(trained_like(build_network(spec), index), (1, *spec.input_shape), path)
            mod = import_onnx(model)
            if block:
                mod = blocked_or_plain(mod, block)
            task_lists.append(extract_tasks(mod, tvm_target))
            progress.advance(index + 1, len(specs))
    return unique_tasks(task_lists)


def blocked_or_plain(mod, block: int):
    """``mod`` in the blocked layout, or as it is where the layout does not apply: a build falls back
    to NCHW the same way, so those kernels are the ones it will look up."""
    try:
        return to_blocked_layout(mod, block)
    except LayoutNotApplied:
        return mod


def untuned_tasks(tasks: list, folder: Path) -> list:
    """The ``tasks`` whose kernel has no tuned record in the database at ``folder``: what a space's
    new widths added, so they can be tuned without topping up the kernels tuned before (a plain
    ``tune`` spreads its trials over every kernel below its share)."""
    database = open_database(folder, create=True)
    return [task for task in tasks if trials_in_database(database, task) == 0]


def check_export_path(path: Path | None) -> None:
    """Refuse an ``--export`` path that cannot hold a shipped database, before any tuning."""
    if path is None:
        return
    if not Path(path).name.endswith(".json.gz"):
        raise EdgefabError(f"--export {path}: the format is gzipped JSON; give a path ending in .json.gz")
    if Path(path).is_dir():
        raise EdgefabError(f"--export {path} is a folder; give a file path ending in .json.gz")


def tune_space(job: SpaceTuneJob, progress: Progress | None = None) -> dict[str, Any]:
    """Tune the space's distinct kernels for the target; returns a summary."""
    progress = progress or SilentProgress()
    target = load_target(job.target)
    options = tune_options(target, job.trials, job.rpc, job.key, job.seed)
    space = get_space(job.space)
    tvm_target = resolve_tvm_target(target)
    check_export_path(job.export)
    layout = job.layout or target.layout
    tasks = space_tasks(space, job.num_classes, tvm_target, progress, layout)
    folder = database_dir(target.name, tvm_target)
    seeded = None
    if options.device is None and shipped_database(target.name):
        progress.stage("seeding from edgefab's shipped tuning database")
        seeded = seed_from_shipped(tasks, folder, target.name, tvm_target, progress.advance)
    chosen = untuned_tasks(tasks, folder) if job.only_untuned else tasks
    progress.stage(f"tuning {len(chosen)} kernels, up to {job.trials} trials")
    report = tune(chosen, folder, options, progress.advance)
    summary = {
        "target": target.name,
        "space": space.name,
        "layout": layout,
        "networks": [" ".join(spec.notation()) for spec in space_networks(space, job.num_classes)],
        "kernels": len(tasks),
        "kernels_chosen": len(chosen),
        **report.to_dict(),
        "shipped_database": seeded.to_dict() if seeded else None,
        "database": database_summary(folder),
        "exported": None,
    }
    if job.export is not None:
        about = {"space": space.name, "layout": layout, "trials": job.trials}
        about["made"] = time.strftime("%Y-%m-%d")
        measured_on = options.device.describe() if options.device is not None else None
        records = export_database(folder, Path(job.export), tuning_target(tvm_target), about, measured_on)
        summary["exported"] = {"path": str(job.export), "records": records}
    return summary

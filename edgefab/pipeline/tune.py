"""``edgefab tune --space``: tune every distinct layer shape of a search space into the target's database.

Any network of a space is assembled from its slots' choices, and a slot's kernel shapes do not
depend on the other slots' choices (a slot's input and output channels are fixed; a skipped layer
is an identity). So the networks with every searchable slot at one choice (``k3_e3``, ``k3_e6``,
...) together hold every (slot, choice) kernel the space can produce; their distinct fused kernels
are MetaSchedule's tasks. Once they are in the target's database (``edgefab.export.tuning``), every
later factory, search or build output of that space compiles tuned, with no trials of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgefab.arch import ArchSpec
from edgefab.export.onnx_export import export_onnx
from edgefab.export.tuning import TuneOptions, database_dir, database_summary, extract_tasks, tune
from edgefab.export.tvm_compile import check_compilable, import_onnx, resolve_tvm_target
from edgefab.factory.network import build_network
from edgefab.pipeline.common import Progress, SilentProgress, work_folder
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


def space_networks(space: SearchSpace, num_classes: int) -> list[ArchSpec]:
    """Networks that together hold every (slot, choice) kernel of ``space``: one per choice."""
    specs = []
    for choice in CHOICES:
        choices = [slot.fixed or choice for slot in space.slots]
        specs.append(space.arch(choices, num_classes))
    return specs


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


def tune_space(job: SpaceTuneJob, progress: Progress | None = None) -> dict[str, Any]:
    """Tune the space's distinct kernels for the target; returns a summary."""
    progress = progress or SilentProgress()
    target = load_target(job.target)
    check_compilable(target, tune=True)
    space = get_space(job.space)
    tvm_target = resolve_tvm_target(target)
    specs = space_networks(space, job.num_classes)
    progress.stage(f"extracting the layer shapes of {space.name} ({len(specs)} networks)")
    task_lists = []
    with work_folder() as work:
        for index, spec in enumerate(specs):
            path = work / f"net{index}.onnx"
            model = export_onnx(build_network(spec), (1, *spec.input_shape), path)
            task_lists.append(extract_tasks(import_onnx(model), tvm_target))
            progress.advance(index + 1, len(specs))
    tasks = unique_tasks(task_lists)
    folder = database_dir(target.name, tvm_target)
    progress.stage(f"tuning {len(tasks)} kernels, up to {job.trials} trials")
    report = tune(tasks, folder, TuneOptions(trials=job.trials, seed=job.seed), progress.advance)
    return {
        "target": target.name,
        "space": space.name,
        "networks": [" ".join(spec.notation()) for spec in specs],
        "kernels": len(tasks),
        **report.to_dict(),
        "database": database_summary(folder),
    }

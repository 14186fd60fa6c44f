"""``edgefab search optuna``: the factory's space searched with optuna for a task, target and budget.

The run folder (written to a temporary folder, renamed into place) holds ``pareto.json`` (the
feasible Pareto front of the whole shared study), ``pareto.png`` and ``summary.json`` (the best
trial within budget, the study's storage and size). The study itself stays in its storage, so a
second run, or many processes at once, continue it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefab.data import load_dataset
from edgefab.data.tasks import parse_task
from edgefab.errors import EdgefabError
from edgefab.factory.customize import latency_range
from edgefab.pipeline.common import Progress, SilentProgress
from edgefab.pipeline.factory_build import factory_latency_model, factory_split, resolve_factory
from edgefab.runtime.package import staged_folder
from edgefab.search.optuna_search import OptunaOptions, best_within_budget, pareto_front, plot_front, search
from edgefab.targets import load_target


@dataclass(frozen=True)
class OptunaJob:
    """What ``edgefab search optuna`` was asked for."""

    target: str
    budget_ms: float | None
    data: str = "mnist"
    task: str | None = None
    factory: str | None = None
    trials: int = 50
    storage: str | None = None  # default: <out>.journal
    study: str = "edgefab"
    out: Path = Path("runs/optuna")
    seed: int = 0


def run_optuna(job: OptunaJob, progress: Progress | None = None) -> tuple[Path, dict[str, Any]]:
    """Run this process's trials and write the run folder; returns it and the summary."""
    progress = progress or SilentProgress()
    if job.budget_ms is not None and job.budget_ms <= 0:
        raise EdgefabError(f"--latency-ms must be positive, got {job.budget_ms}")
    out = Path(job.out)
    if out.exists() and not (out / "summary.json").is_file():
        raise EdgefabError(f"{out} exists and is not a search run folder; remove it or choose another --out")
    target = load_target(job.target)
    progress.stage(f"loading data {job.data}")
    data = load_dataset(job.data)
    task = parse_task(job.task, data.classes)
    factory, why = resolve_factory(job.factory, data)
    if factory is None:
        raise EdgefabError(f"the optuna search runs over a factory's space and none fits ({why}); "
                           f"train one: edgefab factory train --data {job.data} --out FOLDER")  # fmt: skip
    train, val = factory_split(factory, data)
    model = factory_latency_model(target, factory, progress)
    smallest, _ = latency_range(factory, model)
    if job.budget_ms is not None and job.budget_ms < smallest:
        raise EdgefabError(f"no sub-network meets {job.budget_ms:g} ms on {target.name}: the smallest costs "
                           f"{smallest:.3f} ms ({model.kind}); raise --latency-ms")  # fmt: skip
    storage = job.storage or str(out.with_suffix(".journal"))
    options = OptunaOptions(job.budget_ms, job.trials, storage, job.study, job.seed)
    progress.stage(f"{job.trials} trials of study '{job.study}' ({storage})")
    start = time.perf_counter()
    study = search(factory, task, model, train, val, options, progress.advance)
    seconds = time.perf_counter() - start
    best = best_within_budget(study)
    summary = {
        "target": target.name,
        "budget_ms": job.budget_ms,
        "task": task.to_dict(),
        "space": factory.space.name,
        "latency_model": f"{model.kind}: {model.method}",
        "storage": storage,
        "study": job.study,
        "trials_in_study": len(study.trials),
        "trials_this_process": job.trials,
        "seconds_this_process": round(seconds, 1),
        "best": best[1] if best else None,
        "pareto_size": len(pareto_front(study)),
    }
    progress.stage(f"writing {out}")
    _write(out, study, summary)
    return out, summary


def _write(out: Path, study, summary: dict[str, Any]) -> None:
    with staged_folder(out) as staging:
        (staging / "pareto.json").write_text(json.dumps(pareto_front(study), indent=2) + "\n")
        (staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        plot_front(study, staging / "pareto.png")

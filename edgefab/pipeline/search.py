"""``edgefab search spnas``: data + target + budget -> searched, fine-tuned network in a run folder.

The run folder holds ``arch.json`` (the ArchSpec, the paper's per-layer notation, predicted and,
on a target that runs here, measured latency, accuracy), ``history.json`` (per-epoch decisions),
``weights.safetensors`` and ``model.onnx``. It is written to a temporary folder and renamed into
place at the end.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from edgefab.data import load_dataset, normalization, train_val_split
from edgefab.errors import EdgefabError
from edgefab.export.onnx_export import INPUT_NAME, export_onnx
from edgefab.pipeline.common import Progress, SilentProgress
from edgefab.runtime.package import staged_folder
from edgefab.search.costs import cost_table
from edgefab.search.spnas import SpnasOptions, SpnasResult, search
from edgefab.spaces import get_space
from edgefab.targets import Target, load_target
from edgefab.targets.latency import latency_model, measure_onnx


@dataclass(frozen=True)
class SpnasJob:
    """What ``edgefab search spnas`` was asked for."""

    target: str
    budget_ms: float
    space: str = "digits-28"
    data: str = "mnist"
    out: Path = Path("runs/spnas")
    epochs: int = 8
    warmup_epochs: int = 2
    finetune_epochs: int = 4
    latency_lambda: float | None = None
    seed: int = 0
    train_samples: int | None = None  # a subset, for quick runs


def _check_data_fits(space_shape: tuple[int, ...], data_shape: tuple[int, ...], space: str) -> None:
    if tuple(space_shape) != tuple(data_shape):
        raise EdgefabError(
            f"data images are {'x'.join(map(str, data_shape))} (C x H x W) but space {space} takes "
            f"{'x'.join(map(str, space_shape))}; choose a space for this data (e.g. digits-28, cifar-32)"
        )


def run_spnas(job: SpnasJob, progress: Progress | None = None) -> tuple[Path, dict[str, Any]]:
    """Run the search and write the run folder; returns it and the summary (``arch.json``)."""
    progress = progress or SilentProgress()
    if job.budget_ms <= 0:
        raise EdgefabError(f"--latency-ms must be positive, got {job.budget_ms}")
    space = get_space(job.space)
    target = load_target(job.target)
    out = Path(job.out)
    if out.exists() and not (out / "arch.json").is_file():
        raise EdgefabError(f"{out} exists and is not a search run folder; remove it or choose another --out")
    progress.stage(f"loading data {job.data}")
    data = load_dataset(job.data)
    _check_data_fits(space.input_shape, data.input_shape, space.name)
    train, val = train_val_split(data, seed=job.seed)
    if job.train_samples:
        train = train.subset(list(range(min(job.train_samples, len(train)))))
    prep = normalization(train)
    progress.stage(f"reading {target.name}'s latency model")
    model = latency_model(target)
    table = cost_table(space, data.num_classes, model)
    options = SpnasOptions(
        budget_ms=job.budget_ms,
        epochs=job.epochs,
        warmup_epochs=job.warmup_epochs,
        finetune_epochs=job.finetune_epochs,
        latency_lambda=job.latency_lambda,
        seed=job.seed,
    )
    progress.stage(f"searching {space.name} for {job.budget_ms:g} ms on {target.name}")
    result = search(space, table, train, prep, options, progress.advance, validation=val)
    return _write_run(job, target, result, table.source, options, progress)


def _write_run(job: SpnasJob, target: Target, result: SpnasResult, source: str, options, progress: Progress):
    out = Path(job.out)
    with staged_folder(out) as staging:  # an earlier run folder (checked before the search) is replaced
        progress.stage(f"writing {out}")
        onnx_path = staging / "model.onnx"
        export_onnx(result.network, (1, *result.spec.input_shape), onnx_path)
        measured = None
        if target.runs_here:
            shape = (1, *result.spec.input_shape)
            import numpy as np

            feeds = {INPUT_NAME: np.random.default_rng(0).standard_normal(shape).astype("float32")}
            # with the target's threads: the figure the latency model predicts
            measured = measure_onnx(onnx_path, feeds, threads=target.threads).to_dict()
        state = {k: v.contiguous() for k, v in result.network.state_dict().items()}
        save_file(state, str(staging / "weights.safetensors"))
        summary = {
            "method": "single-path-nas",
            "space": job.space,
            "target": job.target,
            "budget_ms": job.budget_ms,
            "architecture": result.spec.to_dict(),
            "notation": result.choices,
            "searched_notation": result.search_choices,
            "predicted_ms": round(result.predicted_ms, 4),
            "latency_source": source,
            "measured": measured,
            "accuracy": round(result.accuracy, 5),
            "search_seconds": round(result.search_seconds, 1),
            "finetune_seconds": round(result.finetune_seconds, 1),
            "options": asdict(options),
        }
        (staging / "arch.json").write_text(json.dumps(summary, indent=2) + "\n")
        (staging / "history.json").write_text(json.dumps(result.history, indent=2) + "\n")
    return out, summary

"""Command-line pieces for the searches: ``edgefab search spnas``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgefab.console import JsonOption, RichProgress, TargetOption, emit, key_value_table, user_errors

search_app = typer.Typer(
    help="Architecture searches for a target and a latency budget.", no_args_is_help=True
)


@search_app.command("spnas")
@user_errors
def spnas(
    latency_ms: Annotated[float, typer.Option("--latency-ms", help="Latency budget on the target.")],
    target: TargetOption = "host",
    space: Annotated[str, typer.Option(help="Search space: digits-28, cifar-32, mnasnet-224.")] = "digits-28",
    data: Annotated[
        str, typer.Option(help="mnist, a .npz file, an image folder, or torchvision:NAME.")
    ] = "mnist",
    epochs: Annotated[int, typer.Option(min=1, help="Search epochs (warm-up included).")] = 8,
    warmup_epochs: Annotated[int, typer.Option(min=0, help="Epochs without the latency term.")] = 2,
    finetune_epochs: Annotated[int, typer.Option(min=0, help="Epochs of training the chosen network.")] = 4,
    latency_lambda: Annotated[
        float | None, typer.Option("--lambda", help="Fixed latency weight (default: steered to the budget).")
    ] = None,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the split, initialisation and batches.")] = 0,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder to write.")] = Path("runs/spnas"),
    as_json: JsonOption = False,
) -> None:
    """Single-Path NAS: search, fine-tune, and write the chosen architecture and its weights."""
    from edgefab.pipeline.search import SpnasJob, run_spnas

    if warmup_epochs >= epochs:
        from edgefab.console import fail

        fail(f"--warmup-epochs ({warmup_epochs}) must be below --epochs ({epochs})")
    job = SpnasJob(
        target, latency_ms, space, data, out, epochs, warmup_epochs, finetune_epochs, latency_lambda, seed
    )
    with RichProgress(enabled=not as_json) as progress:
        path, summary = run_spnas(job, progress)
    measured = summary["measured"]
    rows = [
        ("run folder", path),
        ("architecture", " ".join(summary["notation"])),
        ("predicted latency", f"{summary['predicted_ms']:.3f} ms (budget {summary['budget_ms']:g} ms)"),
        ("measured latency", f"{measured['ms']:.3f} ms ({measured['method']})" if measured else None),
        ("latency model", summary["latency_source"]),
        ("accuracy (validation)", f"{100 * summary['accuracy']:.2f} %"),
        ("search / fine-tune", f"{summary['search_seconds']:.0f} s / {summary['finetune_seconds']:.0f} s"),
    ]
    emit({"run": str(path), **summary}, as_json, key_value_table("edgefab search spnas", rows))


@search_app.command("optuna")
@user_errors
def optuna_search(
    latency_ms: Annotated[
        float | None, typer.Option("--latency-ms", help="Latency budget on the target (a constraint).")
    ] = None,
    target: TargetOption = "host",
    trials: Annotated[int, typer.Option(min=1, help="Trials this process runs.")] = 50,
    storage: Annotated[
        str | None,
        typer.Option(
            help="Journal file or RDB URL (sqlite:///s.db, postgresql://...); default <out>.journal."
        ),
    ] = None,
    study: Annotated[
        str, typer.Option(help="Study name inside the storage (shared by processes).")
    ] = "edgefab",
    data: Annotated[
        str, typer.Option(help="mnist, a .npz file, an image folder, or torchvision:NAME.")
    ] = "mnist",
    task: Annotated[str | None, typer.Option(help="classes=A,B,... or groups=NAME:A,B/NAME:C,D.")] = None,
    factory: Annotated[str | None, typer.Option(help="Factory folder (default: the shipped one).")] = None,
    seed: Annotated[
        int, typer.Option(min=0, help="Seed of the sampler (the split is the factory's own).")
    ] = 0,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder to write.")] = Path("runs/optuna"),
    as_json: JsonOption = False,
) -> None:
    """Multi-objective (accuracy, latency) optuna search over the factory's space, budget as a constraint."""
    from edgefab.pipeline.optuna_job import OptunaJob, run_optuna

    job = OptunaJob(target, latency_ms, data, task, factory, trials, storage, study, out, seed)
    with RichProgress(enabled=not as_json) as progress:
        path, summary = run_optuna(job, progress)
    best = summary["best"]
    rows = [
        ("run folder", path),
        ("study", f"{summary['study']} in {summary['storage']}: {summary['trials_in_study']} trials"),
        ("this process", f"{job.trials} trials in {summary['seconds_this_process']:.0f} s"),
        ("Pareto front", f"{summary['pareto_size']} feasible trials (pareto.json, pareto.png)"),
        (
            "best within budget",
            f"{100 * best['accuracy']:.2f} % at {best['latency_ms']:.3f} ms" if best else None,
        ),
        ("latency model", summary["latency_model"]),
    ]
    emit({"run": str(path), **summary}, as_json, key_value_table("edgefab search optuna", rows))

"""Command-line pieces for flows: ``edgefab flow train|slim|report`` and generator package rows."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from edgefab.console import JsonOption, RichProgress, emit, key_value_table, user_errors

flow_app = typer.Typer(
    help="Rectified flows and SlimFlow one-step generators (train, slim, report).", no_args_is_help=True
)

SeedOption = Annotated[int, typer.Option(min=0, help="Seed of initialisation, batches and noise.")]
ThreadsOption = Annotated[int, typer.Option(min=1, help="Torch threads (1 is fastest on a shared machine).")]
DeviceOption = Annotated[
    str, typer.Option(help="Where to train: auto (a CUDA GPU if torch sees one), cpu, cuda or cuda:N.")
]


def _fd(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


@flow_app.command("train")
@user_errors
def train(
    data: Annotated[
        str, typer.Option(help="mnist (embedded), a .npz file, an image folder, torchvision:NAME.")
    ] = "mnist",
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint folder to write.")] = Path(
        "flows/teacher"
    ),
    width: Annotated[float, typer.Option(help="Width multiplier of the UNet's channels (32, 64, 64).")] = 1.0,
    steps: Annotated[int, typer.Option(min=1, help="Optimisation steps.")] = 1500,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per step.")] = 64,
    lr: Annotated[float, typer.Option(help="Peak Adam learning rate (warm-up, then cosine).")] = 2e-3,
    grid_steps: Annotated[int, typer.Option("--grid-steps", min=1, help="Euler steps of samples.png.")] = 32,
    seed: SeedOption = 0,
    threads: ThreadsOption = 1,
    device: DeviceOption = "auto",
    as_json: JsonOption = False,
) -> None:
    """Train a rectified-flow teacher (velocity UNet; sample with Euler or RK45)."""
    from edgefab.flow.rectified import OptimOptions
    from edgefab.flow.teacher import TeacherOptions, train_teacher

    options = TeacherOptions(
        data,
        out,
        width,
        optim=OptimOptions(steps, batch_size, lr, seed=seed),
        grid_steps=grid_steps,
        threads=threads,
        device=device,
    )
    with RichProgress(enabled=not as_json) as progress:
        path, summary = train_teacher(options, progress)
    training = summary["training"]
    rows = [
        ("checkpoint", f"{path} (rectified-flow)"),
        (
            "data",
            f"{summary['data']['name']}: {summary['data']['count']} images {summary['data']['image_shape']}",
        ),
        ("parameters", f"{summary['parameters']:,} (width {width:g})"),
        (
            "training",
            f"{training['steps']} steps x {training['batch_size']} in {training['seconds']:.0f} s "
            f"on {training['device']}",
        ),
        ("loss (first / last 100 steps)", f"{training['loss_first_100']} / {training['loss_last_100']}"),
        ("samples", f"{path / 'samples.png'} ({summary['grid']['solver']}); real: {path / 'real.png'}"),
    ]
    emit({"checkpoint": str(path), **summary}, as_json, key_value_table("edgefab flow train", rows))


@flow_app.command("slim")
@user_errors
def slim(
    teacher: Annotated[Path, typer.Argument(help="Teacher checkpoint folder (edgefab flow train).")],
    width: Annotated[float, typer.Option(help="Student width multiplier (must divide the channels).")] = 0.5,
    first_width: Annotated[
        float,
        typer.Option("--first-width", help="Width multiplier of the first (highest-resolution) level."),
    ] = 0.75,  # edgefab.flow.slim.FIRST_WIDTH
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint folder to write.")] = Path(
        "flows/slim"
    ),
    pairs: Annotated[
        int, typer.Option(min=1, help="Reflow pairs drawn from the teacher.")
    ] = 3000,  # edgefab.flow.slim.PAIRS (the CLI imports no torch at start-up)
    solver: Annotated[
        str, typer.Option(help="Teacher's solver for the pairs: euler:N or rk45.")
    ] = "rk45",  # edgefab.flow.slim.SOLVER
    reflow_steps: Annotated[
        int, typer.Option("--reflow-steps", min=1, help="Annealing reflow steps.")
    ] = 3000,
    anneal_steps: Annotated[
        int, typer.Option("--anneal-steps", min=0, help="Steps over which b goes 1 -> 0.")
    ] = 1500,
    schedule: Annotated[str, typer.Option(help="Annealing of b: linear, exp or cos.")] = "linear",
    distill_steps: Annotated[
        int, typer.Option("--distill-steps", min=1, help="Flow-guided distillation steps.")
    ] = 2000,
    guide_weight: Annotated[
        float, typer.Option("--guide-weight", help="Weight of the two-step guidance.")
    ] = 1.0,
    loss: Annotated[
        str,
        typer.Option(
            help="Distillation distance: pseudo-huber, lpips (LPIPS-style, on a network edgefab trains "
            "on the data; measured no better on digits) or lpips+pseudo-huber."
        ),
    ] = "pseudo-huber",  # edgefab.flow.distill.DistillOptions.loss
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Pairs per step.")] = 64,
    flip: Annotated[
        bool,
        typer.Option(
            "--flip/--no-flip", help="Flip both ends of pairs left-right (off: digits are not symmetric)."
        ),
    ] = False,
    eval_samples: Annotated[
        int, typer.Option("--eval-samples", min=0, help="Samples per Frechet set (0: skip).")
    ] = 1000,
    seed: SeedOption = 0,
    threads: ThreadsOption = 1,
    device: DeviceOption = "auto",
    as_json: JsonOption = False,
) -> None:
    """SlimFlow: annealing reflow of a smaller student, then flow-guided distillation to one step."""
    from edgefab.flow.distill import DISTILL_LR, DistillOptions, check_loss
    from edgefab.flow.rectified import OptimOptions
    from edgefab.flow.reflow import AnnealOptions, anneal_beta, parse_solver
    from edgefab.flow.slim import SlimOptions
    from edgefab.flow.slim import slim as run_slim

    anneal_beta(0, 1, schedule)  # an unknown schedule or solver fails before the teacher loads
    parse_solver(solver)
    check_loss(loss)
    anneal = AnnealOptions(
        OptimOptions(reflow_steps, batch_size, 2e-3, seed=seed), anneal_steps, schedule, flip
    )
    distill = DistillOptions(
        OptimOptions(distill_steps, batch_size, DISTILL_LR, warmup=50, seed=seed),
        guide_weight,
        flip=flip,
        loss=loss,
    )
    options = SlimOptions(
        teacher, out, width, first_width, pairs, solver, anneal, distill, eval_samples, seed, threads, device
    )
    with RichProgress(enabled=not as_json) as progress:
        path, summary = run_slim(options, progress)
    emit(
        {"checkpoint": str(path), **summary},
        as_json,
        key_value_table("edgefab flow slim", slim_rows(path, summary)),
    )


def slim_rows(path: Path, summary: dict[str, Any]) -> list[tuple[str, Any]]:
    """Summary-table rows of ``flow slim``."""
    params, seconds, frechet = summary["parameters"], summary["seconds"], summary["frechet"]
    reflow, distill = summary["annealing_reflow"], summary["distillation"]
    one_step = frechet.get("one_step", {})
    rows = [
        ("checkpoint", f"{path} (slimflow)"),
        ("teacher", summary["teacher"]["path"]),
        (
            "parameters",
            f"{params['one_step']:,} (channels {summary.get('channels')}) vs teacher {params['teacher']:,}",
        ),
        (
            "reflow pairs",
            f"{summary['pairs']['count']} ({summary['pairs']['solver']}) in {seconds['pairs']:.0f} s",
        ),
        (
            "annealing reflow",
            f"{reflow['steps']} steps, b 1 -> 0 over {reflow['anneal_steps']} ({reflow['schedule']}), "
            f"flip {'on' if reflow['flip'] else 'off'}, {seconds['annealing_reflow']:.0f} s "
            f"on {summary.get('device', 'cpu')}",
        ),
        (
            "distillation",
            f"{distill['steps']} steps, {distill.get('loss', 'pseudo-huber')}, t' in {distill['t_range']}, "
            f"{seconds['distill']:.0f} s",
        ),
    ]
    if one_step:
        rows += [
            (
                "Frechet distance, 1 step",
                f"2-flow {_fd(one_step['two_flow'])}, SlimFlow {_fd(one_step['one_step'])}",
            ),
            (
                "real-vs-real floor",
                f"{_fd(frechet['real_vs_real_floor'])} ({frechet['samples']} samples per set)",
            ),
        ]
    rows.append(("grids", f"{path / 'two_flow.png'}, {path / 'one_step.png'}"))
    return rows


@flow_app.command("report")
@user_errors
def report(
    path: Annotated[Path, typer.Argument(help="Flow checkpoint folder (teacher or slimflow).")],
    samples: Annotated[int, typer.Option(min=2, help="Samples per Frechet set.")] = 1000,
    many_steps: Annotated[
        int, typer.Option("--many-steps", min=2, help="Euler steps of the teacher's many-step row.")
    ] = 32,
    rk45: Annotated[bool, typer.Option("--rk45", help="Also score the teacher with adaptive RK45.")] = False,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for grids and report.json.")] = None,
    threads: ThreadsOption = 1,
    as_json: JsonOption = False,
) -> None:
    """Sample grids, Frechet distance, parameters, MACs and host latency; SlimFlow's goals, met or not."""
    from edgefab.console import stdout
    from edgefab.pipeline.flow_report import ReportOptions, flow_report

    with RichProgress(enabled=not as_json) as progress:
        data = flow_report(ReportOptions(path, samples, many_steps, rk45, out, threads), progress)
    if as_json:
        emit(data, True)
        return
    stdout.print(report_table(data))
    scoring = data["scoring"]
    rows = [
        ("report folder", data["folder"]),
        ("real-vs-real floor", f"{scoring['real_vs_real_floor']:.2f} ({scoring['samples']} samples per set)"),
        (
            "feature classifier",
            f"{scoring['feature_net']}, accuracy {100 * scoring['feature_net_accuracy']:.1f} %",
        ),
        ("latency", data["latency_method"]),
    ]
    for goal, value in (data["goals"] or {}).items():
        rows.append((goal.replace("_", " "), f"{'met' if value['met'] else 'NOT met'} ({_goal_text(value)})"))
    emit(data, False, key_value_table("edgefab flow report", rows))


def _goal_text(value: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in value.items() if k != "met")


def report_table(data: dict[str, Any]) -> Table:
    """One row per model and solver."""
    table = Table(title=f"flows of {data['checkpoint']}", title_justify="left")
    for column in (
        "model",
        "solver",
        "evals",
        "Frechet distance",
        "parameters",
        "MACs / sample",
        "host ms / sample",
    ):
        table.add_column(column)
    for row in data["rows"]:
        table.add_row(
            row["model"], row["solver"], f"{row['evaluations']:g}", _fd(row["frechet_distance"]),
            f"{row['parameters']:,}", f"{row['macs_per_sample']:,}", f"{row['host_ms_per_sample']:.3f}",
        )  # fmt: skip
    return table


def generator_rows(manifest: dict[str, Any]) -> list[tuple[str, Any]]:
    """Summary-table rows for a generator package (none for another)."""
    section = manifest.get("generator")
    if manifest.get("kind") != "generator" or not section:
        return []
    figures = manifest.get("figures", {})
    shapes = f"{section['input_noise_shape']} N(0, I) -> {section['output_image_shape']}"
    rows = [("generator", section["method"]), ("noise -> image", f"{shapes} in {section['value_range']}")]
    if figures.get("frechet_distance") is not None:
        floor = _fd(figures.get("frechet_real_floor"))
        rows.append(("Frechet distance", f"{_fd(figures['frechet_distance'])} (real-vs-real floor {floor})"))
    return rows

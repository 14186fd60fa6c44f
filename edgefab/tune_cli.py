"""Command-line pieces for tuning: ``edgefab tune --space`` and ``edgefab compile --tune N``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from edgefab.console import JsonOption, RichProgress, TargetOption, emit, key_value_table, stderr, user_errors

TuneOption = Annotated[
    int | None,
    typer.Option(
        "--tune",
        min=1,
        help="Tune with MetaSchedule: N trials spread over the model's kernels, counting the records the "
        "target's tuning database (kept in the cache, reused by later builds) already holds. Host targets, "
        "or any CPU target with --rpc.",
    ),
]
RpcOption = Annotated[
    str | None,
    typer.Option("--rpc", help="TVM RPC tracker HOST:PORT: measure tuning candidates on the device there."),
]
KeyOption = Annotated[
    str | None, typer.Option("--key", help="With --rpc: the key the device's RPC server registered with.")
]


def tuning_rows(report: dict[str, Any]) -> list[tuple[str, Any]]:
    """Summary rows of a tuning run."""
    database = report["database"]
    return [
        ("kernels", f"{report['tasks']} ({report['tasks_in_database']} had records already)"),
        ("tuned now", f"{report['tasks_tuned']} kernels, {report['new_trials']} trials measured"),
        ("measured on", report["measured_on"]),
        ("cost model", report["cost_model"] or "-"),
        ("tuning time", f"{report['seconds']:.1f} s"),
        ("database", f"{database['path']} ({database['records']} records, TVM {database['tvm_version']})"),
    ]


def shipped_row(seed: dict[str, Any]) -> str:
    """How the shipped tuning database was used, in one line."""
    if seed["kernels_copied"]:
        return f"{seed['kernels_copied']} kernels as measured on this CPU ({seed['measured_on']})"
    return f"{seed['kernels_remeasured']} kernels re-measured here (shipped from {seed['measured_on']})"


@user_errors
def tune_command(
    space: Annotated[str, typer.Option(help="Search space whose layer shapes to tune.")] = "digits-28",
    target: TargetOption = "host",
    trials: Annotated[
        int, typer.Option(min=1, help="Trials in all, spread over the kernels (records already held count).")
    ] = 64,
    num_classes: Annotated[int, typer.Option(min=2, help="Classes of the head layer.")] = 10,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the search.")] = 0,
    rpc: RpcOption = None,
    key: KeyOption = None,
    export: Annotated[
        Path | None,
        typer.Option(help="Afterwards write the database here in edgefab's shipped format (.json.gz)."),
    ] = None,
    only_untuned: Annotated[
        bool,
        typer.Option(
            "--only-untuned",
            help="Tune only the kernels without a tuned record (e.g. after the space gained widths); "
            "--trials are spread over those.",
        ),
    ] = False,
    layout: Annotated[
        str | None,
        typer.Option(
            help="Inner layout of the CPU library whose kernels to tune: NCHW, or channels in blocks "
            "(NCHW4c, NCHW8c, NCHW16c), as `compile --layout` builds them. Default: the target's.",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Tune every distinct layer shape of a search space into the target's tuning database.

    Later builds of any network of that space (factory, search, build) compile tuned at no cost.
    Interrupting keeps the trials measured so far. With --rpc and --key the candidates are measured
    on the device behind a TVM RPC tracker (any CPU target: pixel, note10, rpi4, ...).
    """
    from edgefab.pipeline.tune import SpaceTuneJob, tune_space

    job = SpaceTuneJob(target, space, trials, num_classes, seed, rpc, key, export, only_untuned, layout)
    try:
        with RichProgress(enabled=not as_json) as progress:
            report = tune_space(job, progress)
    except KeyboardInterrupt:
        stderr.print("[bold red]interrupted:[/] the trials measured so far stay in the tuning database")
        raise typer.Exit(130) from None
    for note in report["warnings"]:
        stderr.print(f"[yellow]warning:[/] {note}", highlight=False)
    rows = [("target", report["target"]), ("space", report["space"]), ("layout", report["layout"])]
    rows += tuning_rows(report)
    if only_untuned:
        rows.insert(
            3, ("chosen", f"{report['kernels_chosen']} of {report['kernels']} kernels had no tuned record")
        )
    if report["shipped_database"] and report["shipped_database"]["records"]:
        rows.insert(3, ("shipped database", shipped_row(report["shipped_database"])))
    if report["exported"]:
        rows.append(("exported", f"{report['exported']['path']} ({report['exported']['records']} records)"))
    emit(report, as_json, key_value_table("edgefab tune", rows))

"""``edgefab targets``, ``edgefab latency`` and ``edgefab profile``: device profiles and latency models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgefab.console import JsonOption, RichProgress, TargetOption, emit, fail, key_value_table, user_errors

targets_app = typer.Typer(help="Device profiles.", no_args_is_help=True)


@targets_app.command("list")
@user_errors
def targets_list(as_json: JsonOption = False) -> None:
    """List the built-in targets: device, runtime, where latency figures come from."""
    from edgefab.targets import list_targets
    from edgefab.targets.reports import target_row

    rows = [target_row(t) for t in list_targets()]
    table = Table(title="targets", title_justify="left")
    for column in rows[0]:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*map(str, row.values()))
    emit([t.to_dict() for t in list_targets()], as_json, table)


@targets_app.command("show")
@user_errors
def targets_show(
    name: Annotated[str, typer.Argument(help="Target name, alias or .toml path.")],
    as_json: JsonOption = False,
) -> None:
    """Show one target's profile."""
    from edgefab.targets import load_target

    data = load_target(name).to_dict()
    emit(data, as_json, key_value_table(f"target {data['name']}", list(data.items())))


@user_errors
def latency_command(
    model: Annotated[Path, typer.Argument(help="ONNX model file (static shapes).")],
    target: TargetOption = "pixel",
    measure: Annotated[bool, typer.Option("--measure", help="Also time it here (host only).")] = False,
    threads: Annotated[int | None, typer.Option(help="Threads (default: the target's).")] = None,
    inputs: Annotated[
        list[str] | None, typer.Option("--input", "-i", help="NAME:D1,D2,... fixes an input's shape.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Predicted latency of a model on a target: total, per layer, and where the figure comes from."""
    from edgefab.targets.reports import latency_report, summary_rows

    with RichProgress(enabled=not as_json) as progress:
        progress.stage(f"costing {model.name} on {target}")
        report = latency_report(model, target, measure, threads, inputs or [])
    table = Table(title=f"edgefab latency: {report['target']}", title_justify="left")
    for column in ("layer", "shape", "ms", "source"):
        table.add_column(column, overflow="fold")
    for layer in report["layers"]:
        table.add_row(layer["name"], layer["layer"], f"{layer['ms']:.3f}", layer["source"])
    if not as_json:
        emit(report, False, table)
    emit(report, as_json, key_value_table("summary", summary_rows(report)))


@user_errors
def profile_command(
    target: TargetOption = "host",
    rpc: Annotated[str | None, typer.Option(help="TVM RPC tracker HOST:PORT of the device.")] = None,
    key: Annotated[str | None, typer.Option(help="Key the device's RPC server registered with.")] = None,
    runtime: Annotated[str, typer.Option(help="onnxruntime or tvm (always tvm over --rpc).")] = "onnxruntime",
    space: Annotated[
        str, typer.Option(help="Space to measure: spnas, mobilenetv2, or a search space (digits-28, ...).")
    ] = "spnas",
    resolution: Annotated[int, typer.Option(help="Input resolution of the space.")] = 224,
    threads: Annotated[int | None, typer.Option(help="Threads (default: the target's; 0: all).")] = None,
    networks: Annotated[int, typer.Option(min=2, help="Whole networks timed to fit the overhead.")] = 10,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the RPC tracker.")] = 10.0,
    seconds: Annotated[
        float | None,
        typer.Option(min=0, help="Time over at least this long (default 30: outlasts a slow phase)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Build or refresh a target's per-layer latency table by measurement (here, or over TVM RPC)."""
    from edgefab.spaces import SPACES
    from edgefab.targets import load_target
    from edgefab.targets.measured import PROFILE_SECONDS
    from edgefab.targets.profiling import profile as run_profile
    from edgefab.targets.reports import PROFILE_SPACES, profile_base, profile_report

    profile_target = load_target(target)
    if space in SPACES:  # a search space: its largest network (10 classes) spans every layer shape
        base = SPACES[space].arch(SPACES[space].largest(), 10)
    elif space in PROFILE_SPACES:
        base = profile_base(space, resolution)
    else:
        fail(f"unknown space '{space}'; use one of {', '.join((*PROFILE_SPACES, *SPACES))}")
    build = None
    if (runtime == "tvm" and profile_target.runs_here) or rpc:  # the kernels a package ships
        from edgefab.export.tvm_compile import layer_build

        build = layer_build(profile_target)
    with RichProgress(enabled=not as_json) as progress:
        table, path = run_profile(profile_target, base, runtime, threads, rpc, key, networks=networks,
                                  progress=progress, timeout_s=timeout, build=build,
                                  min_seconds=PROFILE_SECONDS if seconds is None else seconds)  # fmt: skip
    report = profile_report(table, path)
    emit(report, as_json, key_value_table(f"edgefab profile: {table.target}", list(report.items())))

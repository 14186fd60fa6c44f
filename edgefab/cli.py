"""The ``edgefab`` command line.

Heavy imports (torch, TVM) happen inside the commands that need them, so ``edgefab targets list``
and ``edgefab package verify`` start quickly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from edgefab.bench_cli import bench_command
from edgefab.console import JsonOption, RichProgress, TargetOption, emit, fail, key_value_table, user_errors
from edgefab.factory_cli import factory_app
from edgefab.flow_cli import flow_app, generator_rows
from edgefab.quantize_cli import (
    ActOrderOption,
    CalibrationDataOption,
    CalibrationOption,
    ExcludeOption,
    GroupSizeOption,
    MaxDropOption,
    QuantizeOption,
    quantization_rows,
    quantize_app,
)
from edgefab.search_cli import search_app
from edgefab.snn_cli import CompressOption, SnnEpochsOption, TimestepsOption, snn_app, snn_rows
from edgefab.targets_cli import latency_command, profile_command, targets_app
from edgefab.tune_cli import KeyOption, RpcOption, TuneOption, shipped_row, tune_command

app = typer.Typer(
    help="Turn a task and a device budget into a verified on-device runtime package.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
package_app = typer.Typer(help="Inspect, verify and run packages.", no_args_is_help=True)
app.add_typer(targets_app, name="targets")
app.add_typer(package_app, name="package")
app.add_typer(quantize_app, name="quantize")
app.add_typer(search_app, name="search")
app.add_typer(factory_app, name="factory")
app.add_typer(snn_app, name="snn")
app.add_typer(flow_app, name="flow")

OutOption = Annotated[Path, typer.Option("--out", "-o", help="Folder the package is written into.")]
ArchiveOption = Annotated[bool, typer.Option("--archive", help="Also write <package>.tar.gz.")]


def _latency_text(figure: dict[str, Any] | None) -> str | None:
    if not figure:
        return None
    return f"{figure['ms']:.3f} ms ({figure['source']}: {figure['method']})"


def _model_text(build: dict[str, Any]) -> str:
    notation = " ".join(build.get("notation", []))
    if build["model"] != "factory":
        return f"{build['model']} ({build.get('why')}): {notation}"
    factory = build["factory"]
    seconds = sum(factory["seconds"].values())
    modules = factory["modules"]
    stem = "".join(f", {key} {modules[key]}" for key in ("stem", "head") if modules.get(key) is not None)
    return (
        f"factory {factory['path']}, task {build['task']['text']}: {notation}, widths "
        f"{modules['widths']}{stem}; customised in {seconds:.1f} s"
    )


def _tuning_rows(tvm: dict[str, Any]) -> list[tuple[str, Any]]:
    """How much of the TVM library the target's tuning database covered (nothing when there is none)."""
    if not tvm.get("kernels_in_database"):
        return []
    fallback = len(tvm.get("default_schedule_kernels", []))
    text = f"{tvm['kernels_in_database']} kernels in the database; {fallback} run TVM's default schedule"
    rows = [("TVM tuning", text)]
    if tvm.get("shipped_database"):
        rows.append(("shipped tuning db", shipped_row(tvm["shipped_database"])))
    return rows


def _package_rows(path: Path, manifest: dict[str, Any]) -> list[tuple[str, Any]]:
    figures = manifest.get("figures", {})
    tvm = manifest["engines"].get("tvm", {})
    tvm_text = tvm.get("error") or f"{tvm.get('file')} ({tvm.get('format')})"
    if tvm.get("layout"):  # CPU libraries: their inner layout, and why not the one asked for
        note = tvm.get("layout_note")
        tvm_text += f", layout {tvm['layout']}" + (f" ({note})" if note else "")
    rows: list[tuple[str, Any]] = [
        ("package", path),
        ("target", f"{manifest['target']['name']}: {manifest['target']['device']}"),
        ("inputs", ", ".join(f"{i['name']} {i['shape']} {i['dtype']}" for i in manifest["inputs"])),
        ("outputs", ", ".join(f"{o['name']} {o['shape']} {o['dtype']}" for o in manifest["outputs"])),
    ]
    if manifest.get("build", {}).get("model"):
        rows.append(("model", _model_text(manifest["build"])))
    if "accuracy" in figures:
        rows.append(("accuracy (validation)", f"{100 * figures['accuracy']:.2f} %"))
    rows += [
        ("parameters", f"{figures.get('parameters', 0):,}"),
        ("MACs", f"{figures.get('macs', 0):,}"),
        ("model bytes", f"{figures.get('model_bytes', 0):,}"),
        ("latency", _latency_text(figures.get("latency"))),
        ("TVM latency", _latency_text(figures.get("tvm_latency"))),
        ("TVM library", tvm_text),
        *_tuning_rows(tvm),
        (
            "recommended engine",
            f"{manifest.get('recommended_engine')} ({manifest.get('recommended_because')})",
        ),
    ]
    return rows + quantization_rows(manifest) + snn_rows(manifest) + generator_rows(manifest)


@app.command()
@user_errors
def build(
    target: TargetOption = "pixel",
    data: Annotated[
        str | None,
        typer.Option(help="mnist (embedded, default), a .npz file, an image folder, or torchvision:NAME."),
    ] = None,
    latency_ms: Annotated[
        float | None, typer.Option("--latency-ms", help="Latency budget on the target.")
    ] = None,
    task: Annotated[
        str | None,
        typer.Option(help="classes=A,B,... or groups=NAME:A,B/NAME:C,D (default: every class of the data)."),
    ] = None,
    factory: Annotated[
        str | None,
        typer.Option(help="Factory folder; 'none' trains the simple family (default: shipped, if it fits)."),
    ] = None,
    finetune_epochs: Annotated[
        int, typer.Option("--finetune-epochs", min=0, help="Epochs of fine-tuning after customising.")
    ] = 0,
    model: Annotated[
        Path | None,
        typer.Option("--model", help="A SlimFlow checkpoint (edgefab flow slim): a generator package."),
    ] = None,
    out: OutOption = Path("build"),
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs (simple family, no factory).")] = 4,
    shift: Annotated[
        int,
        typer.Option(
            min=0,
            help="Shift training images randomly by up to this many pixels (simple family, "
            "--finetune-epochs; 0: off).",
        ),
    ] = 0,
    seed: Annotated[int, typer.Option(min=0, help="Split and training seed (a factory: its split).")] = 0,
    archive: ArchiveOption = False,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Train again even if a cached model exists.")
    ] = False,
    quantize: QuantizeOption = None,
    max_accuracy_drop: MaxDropOption = 1.0,
    calibration: CalibrationOption = "minmax",
    exclude_nodes: ExcludeOption = None,
    calibration_data: CalibrationDataOption = None,
    group_size: GroupSizeOption = None,
    act_order: ActOrderOption = False,
    compress: CompressOption = None,
    timesteps: TimestepsOption = "5,3,2,1",
    snn_epochs: SnnEpochsOption = None,
    as_json: JsonOption = False,
) -> None:
    """Customise the factory (or train a model) for the task and budget, and package it for the target."""
    from edgefab.pipeline.build import BuildOptions
    from edgefab.pipeline.build import build as run_build

    if model is not None and data is not None:
        fail("--data does not apply to --model FLOW (the generator needs no data); leave it out")
    options = BuildOptions(
        target, data or "mnist", out, latency_ms, epochs, seed, archive, use_cache=not no_cache,
        quantize=quantize,
        max_accuracy_drop=max_accuracy_drop, calibration=calibration,
        exclude_nodes=tuple(exclude_nodes or ()), calibration_data=calibration_data,
        group_size=group_size, act_order=act_order,
        task=task, factory=factory, finetune_epochs=finetune_epochs, shift=shift,
        compress=compress, timesteps=timesteps, snn_epochs=snn_epochs, model=model,
    )  # fmt: skip
    with RichProgress(enabled=not as_json) as progress:
        path, manifest = run_build(options, progress)
    emit(
        {"package": str(path), "manifest": manifest},
        as_json,
        key_value_table("edgefab build", _package_rows(path, manifest)),
    )


@app.command("compile")
@user_errors
def compile_command(
    model: Annotated[Path, typer.Argument(help="ONNX model file.")],
    target: TargetOption = "host",
    inputs: Annotated[
        list[str] | None,
        typer.Option("--input", "-i", help="NAME:D1,D2,... fixes an input's shape; NAME=V binds a constant."),
    ] = None,
    out: OutOption = Path("build"),
    name: Annotated[str | None, typer.Option(help="Package name (default: <model>-<target>).")] = None,
    archive: ArchiveOption = False,
    quantize: QuantizeOption = None,
    max_accuracy_drop: MaxDropOption = 1.0,
    calibration: CalibrationOption = "minmax",
    exclude_nodes: ExcludeOption = None,
    calibration_data: CalibrationDataOption = None,
    group_size: GroupSizeOption = None,
    act_order: ActOrderOption = False,
    tune: TuneOption = None,
    rpc: RpcOption = None,
    key: KeyOption = None,
    layout: Annotated[
        str | None,
        typer.Option(
            help="Inner layout of the CPU library: NCHW, or channels in blocks (NCHW4c, NCHW8c, NCHW16c) "
            "as ONNX Runtime's x86 kernels use; inputs and outputs keep the model's layout. "
            "Default: the target's (`targets show`).",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Compile any ONNX model for a target: fix shapes, simplify, verify, TVM, package."""
    from edgefab.pipeline.compile import CompileOptions, compile_model

    options = CompileOptions(
        model, target, list(inputs or []), out, name, archive, quantize=quantize,
        max_accuracy_drop=max_accuracy_drop, calibration=calibration,
        exclude_nodes=tuple(exclude_nodes or ()), calibration_data=calibration_data,
        group_size=group_size, act_order=act_order, tune=tune, rpc=rpc, key=key, layout=layout,
    )  # fmt: skip
    with RichProgress(enabled=not as_json) as progress:
        path, manifest = compile_model(options, progress)
    emit(
        {"package": str(path), "manifest": manifest},
        as_json,
        key_value_table("edgefab compile", _package_rows(path, manifest)),
    )


# After build and compile, so that --help lists the main commands first.
app.command("tune")(tune_command)
app.command("bench")(bench_command)
app.command("latency")(latency_command)
app.command("profile")(profile_command)


@package_app.command("inspect")
@user_errors
def package_inspect(
    path: Annotated[Path, typer.Argument(help="Package folder.")], as_json: JsonOption = False
) -> None:
    """Show a package's manifest, files and figures (hashes are checked too)."""
    from edgefab.runtime.package import verify_package

    manifest = verify_package(path)
    rows = _package_rows(path, manifest) + [
        (f"file {n}", f"sha256 {h[:16]}...") for n, h in manifest["files"].items()
    ]
    emit(manifest, as_json, key_value_table(f"package {manifest['name']}", rows))


@package_app.command("verify")
@user_errors
def package_verify(
    path: Annotated[Path, typer.Argument(help="Package folder.")], as_json: JsonOption = False
) -> None:
    """Check every file of a package against the manifest's sha256."""
    from edgefab.runtime.package import verify_package

    manifest = verify_package(path)
    result = {"package": str(path), "ok": True, "files": len(manifest["files"])}
    emit(
        result,
        as_json,
        key_value_table(
            "package verify", [("package", path), ("files checked", result["files"]), ("ok", True)]
        ),
    )


@package_app.command("run")
@user_errors
def package_run(
    path: Annotated[Path, typer.Argument(help="Package folder.")],
    input_file: Annotated[
        Path | None,
        typer.Option("--input", "-i", help=".npy (images or the model's input) or .npz (named inputs)."),
    ] = None,
    engine: Annotated[str, typer.Option(help="auto, onnxruntime or tvm.")] = "auto",
    out: Annotated[
        Path | None, typer.Option(help="Write the outputs to this .npz file (a generator: a .png grid).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Run a package on inputs from a file and print the results."""
    from edgefab.runtime.runner import run_file

    result = run_file(path, input_file, engine, out)
    table = Table(title=f"edgefab package run ({result['engine']})", title_justify="left")
    for column in result["columns"]:
        table.add_column(column)
    for row in result["rows"][:20]:
        table.add_row(*map(str, row))
    emit(result, as_json, table)


def main() -> None:
    """Console-script entry point."""
    app()

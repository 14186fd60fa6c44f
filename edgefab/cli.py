"""The ``edgefab`` command line.

Heavy imports (torch, TVM) happen inside the commands that need them, so ``edgefab targets list``
and ``edgefab package verify`` start quickly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from edgefab.console import RichProgress, emit, key_value_table, user_errors

app = typer.Typer(
    help="Turn a task and a device budget into a verified on-device runtime package.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
targets_app = typer.Typer(help="Device profiles.", no_args_is_help=True)
package_app = typer.Typer(help="Inspect, verify and run packages.", no_args_is_help=True)
app.add_typer(targets_app, name="targets")
app.add_typer(package_app, name="package")

JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")]
TargetOption = Annotated[str, typer.Option("--target", "-t", help="Target name or path to a target .toml.")]
OutOption = Annotated[Path, typer.Option("--out", "-o", help="Folder the package is written into.")]
ArchiveOption = Annotated[bool, typer.Option("--archive", help="Also write <package>.tar.gz.")]


def _latency_text(figure: dict[str, Any] | None) -> str | None:
    if not figure:
        return None
    return f"{figure['ms']:.3f} ms ({figure['source']}: {figure['method']})"


def _package_rows(path: Path, manifest: dict[str, Any]) -> list[tuple[str, Any]]:
    figures = manifest.get("figures", {})
    tvm = manifest["engines"].get("tvm", {})
    tvm_text = tvm.get("error") or f"{tvm.get('file')} ({tvm.get('format')})"
    rows: list[tuple[str, Any]] = [
        ("package", path),
        ("target", f"{manifest['target']['name']}: {manifest['target']['device']}"),
        ("inputs", ", ".join(f"{i['name']} {i['shape']} {i['dtype']}" for i in manifest["inputs"])),
        ("outputs", ", ".join(f"{o['name']} {o['shape']} {o['dtype']}" for o in manifest["outputs"])),
    ]
    if "accuracy" in figures:
        rows.append(("accuracy (validation)", f"{100 * figures['accuracy']:.2f} %"))
    rows += [
        ("parameters", f"{figures.get('parameters', 0):,}"),
        ("MACs", f"{figures.get('macs', 0):,}"),
        ("model bytes", f"{figures.get('model_bytes', 0):,}"),
        ("latency", _latency_text(figures.get("latency"))),
        ("TVM latency", _latency_text(figures.get("tvm_latency"))),
        ("TVM library", tvm_text),
        (
            "recommended engine",
            f"{manifest.get('recommended_engine')} ({manifest.get('recommended_because')})",
        ),
    ]
    return rows


@app.command()
@user_errors
def build(
    target: TargetOption = "pixel",
    data: Annotated[
        str, typer.Option(help="mnist (embedded), a .npz file, an image folder, or torchvision:NAME.")
    ] = "mnist",
    latency_ms: Annotated[
        float | None, typer.Option("--latency-ms", help="Latency budget on the target.")
    ] = None,
    out: OutOption = Path("build"),
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed of the split and the training.")] = 0,
    archive: ArchiveOption = False,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Train again even if a cached model exists.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Train (or load) a model for the task and package it for the target."""
    from edgefab.pipeline.build import BuildOptions
    from edgefab.pipeline.build import build as run_build

    options = BuildOptions(target, data, out, latency_ms, epochs, seed, archive, use_cache=not no_cache)
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
    as_json: JsonOption = False,
) -> None:
    """Compile any ONNX model for a target: fix shapes, simplify, verify, TVM, package."""
    from edgefab.pipeline.compile import CompileOptions, compile_model

    options = CompileOptions(model, target, list(inputs or []), out, name, archive)
    with RichProgress(enabled=not as_json) as progress:
        path, manifest = compile_model(options, progress)
    emit(
        {"package": str(path), "manifest": manifest},
        as_json,
        key_value_table("edgefab compile", _package_rows(path, manifest)),
    )


@targets_app.command("list")
@user_errors
def targets_list(as_json: JsonOption = False) -> None:
    """List the built-in targets."""
    from edgefab.targets import list_targets

    targets = list_targets()
    table = Table(title="targets", title_justify="left")
    for column in ("name", "aliases", "device", "processor", "TVM target", "latency"):
        table.add_column(column, overflow="fold")
    for t in targets:
        latency = f"{t.latency.get('source', '-')}: {t.latency.get('provenance', '')}"
        table.add_row(t.name, ", ".join(t.aliases), t.device, t.processor, str(t.tvm), latency)
    emit([t.to_dict() for t in targets], as_json, table)


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
        Path, typer.Option("--input", "-i", help=".npy (images or the model's input) or .npz (named inputs).")
    ],
    engine: Annotated[str, typer.Option(help="auto, onnxruntime or tvm.")] = "auto",
    out: Annotated[Path | None, typer.Option(help="Write the outputs to this .npz file.")] = None,
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

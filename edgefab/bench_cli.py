"""``edgefab bench PACKAGE``: the package's engines timed side by side on the same inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgefab.console import JsonOption, RichProgress, emit, user_errors


@user_errors
def bench_command(
    package: Annotated[Path, typer.Argument(help="Package folder.")],
    runs: Annotated[int, typer.Option(min=1, help="Timed runs per engine.")] = 50,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed runs first.")] = 10,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the random inputs.")] = 0,
    as_json: JsonOption = False,
) -> None:
    """Time ONNX Runtime, TVM and PyTorch eager on the package's model: median and spread (IQR),
    same inputs. PyTorch runs the architecture the manifest records, where there is one."""
    from edgefab.pipeline.torch_bench import pytorch_entry
    from edgefab.runtime.bench import BenchOptions, bench_package, fastest_engine
    from edgefab.runtime.package import read_manifest

    options = BenchOptions(runs, warmup, seed)
    with RichProgress(enabled=not as_json) as progress:
        progress.stage(f"timing the engines of {package} ({runs} runs each)")
        report = bench_package(package, options)
        report["engines"]["pytorch"] = pytorch_entry(read_manifest(package), options)
        report["fastest"] = fastest_engine(report["engines"])
    table = Table(title=f"edgefab bench: {package}", title_justify="left")
    for column in ("engine", "median ms", "IQR ms", "min ms", "max abs diff vs ORT", "note"):
        table.add_column(column, overflow="fold")
    for engine, result in report["engines"].items():
        if "skipped" in result:
            table.add_row(engine, "-", "-", "-", "-", result["skipped"])
            continue
        diff = result.get("max_abs_diff_vs_onnxruntime")
        note = {True: "tuned", False: "untuned"}.get(result.get("tuned"), "")
        if engine == "pytorch":
            note = "eager, fresh weights"
        if engine == report["fastest"]:
            note = f"{note}, fastest".strip(", ")
        table.add_row(
            engine,
            f"{result['median_ms']:.3f}",
            f"{result['iqr_ms']:.3f}",
            f"{result['min_ms']:.3f}",
            "-" if diff is None else f"{diff:.2g}",
            note,
        )
    emit(report, as_json, table)

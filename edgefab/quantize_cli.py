"""Command-line pieces for quantization: the ``--quantize`` options of ``build``/``compile``, their
summary rows, and the ``edgefab quantize`` sub-commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from edgefab.console import JsonOption, emit, user_errors

quantize_app = typer.Typer(help="Quantized packages: reports.", no_args_is_help=True)

QuantizeOption = Annotated[
    str | None,
    typer.Option(
        "--quantize",
        help="Quantize the model: int8 (static, QDQ, ONNX Runtime), or w4/w8 (weight-only GPTQ).",
    ),
]
MaxDropOption = Annotated[
    float,
    typer.Option(
        "--max-accuracy-drop", help="Fail if int8 loses more accuracy (or agreement) than this, in points."
    ),
]
CalibrationOption = Annotated[
    str, typer.Option("--calibration", help="Calibration method: minmax, entropy or percentile.")
]
ExcludeOption = Annotated[
    list[str] | None,
    typer.Option("--exclude-nodes", help="Node names to keep in float (repeat, or comma-separated)."),
]
CalibrationDataOption = Annotated[
    Path | None,
    typer.Option(
        "--calibration-data",
        help=".npz with one array per input (or .npy for one input): N preprocessed float samples.",
    ),
]
GroupSizeOption = Annotated[
    str | None,
    typer.Option(
        "--group-size",
        help="w4/w8: weight columns per scale (default 128), 'channel', or 'auto' (FineQuant, per matrix).",
    ),
]
ActOrderOption = Annotated[
    bool, typer.Option("--act-order", help="w4/w8: GPTQ quantizes columns by decreasing activation energy.")
]


def quantization_rows(manifest: dict[str, Any]) -> list[tuple[str, Any]]:
    """Summary-table rows for a quantized package (none for a float one)."""
    from edgefab.compress.weight_report import is_weight_only, summary_rows

    section = manifest.get("quantization")
    if not section:
        return []
    if is_weight_only(section):
        tvm = manifest.get("engines", {}).get("tvm", {})
        extra = [("TVM arithmetic", tvm["arithmetic"])] if tvm.get("arithmetic") else []
        return [*summary_rows(section), *extra]
    settings, acc, size = section["settings"], section["accuracy"], section["bytes"]
    latency = section["latency"]
    rows: list[tuple[str, Any]] = [
        (
            "quantization",
            f"int8 {settings['format']}, {settings['activation_type']} activations / "
            f"{settings['weight_type']} weights, {settings['calibration']} calibration "
            f"({settings['calibration_data']})",
        ),
        ("int8 types because", settings["why"]),
        (
            "int8 accuracy",
            f"{100 * acc['fp32']:.2f} % -> {100 * acc['int8']:.2f} % ({-acc['drop_points']:+.2f} points, "
            f"limit {acc['max_drop_points']:g}; {acc['metric']})",
        ),
        ("int8 bytes", f"{size['fp32']:,} -> {size['int8']:,} (x{size['ratio']:.3f})"),
        (
            "int8 host latency",
            f"{latency['fp32_ms']:.4f} -> {latency['int8_ms']:.4f} ms "
            f"(x{latency['ratio']:.2f}, ONNX Runtime)",
        ),
    ]
    tvm = manifest.get("engines", {}).get("tvm", {})
    if tvm.get("arithmetic"):
        rows.append(("TVM arithmetic", tvm["arithmetic"]))
    return rows


@quantize_app.command("report")
@user_errors
def report(
    path: Annotated[Path, typer.Argument(help="Quantized package folder.")],
    rows: Annotated[int | None, typer.Option("--rows", min=1, help="Show only the largest N layers.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Per-layer error table and accuracy/size/latency before and after quantization."""
    from rich.console import Group

    from edgefab.compress import weight_report
    from edgefab.compress.report import layer_table, read_report, summary_table
    from edgefab.console import stdout

    data = read_report(path)
    if as_json:
        emit(data, as_json)
        return
    if weight_report.is_weight_only(data):
        tables = weight_report.summary_table(data), weight_report.layer_table(data["layers"], rows)
        stdout.print(Group(*tables))
        return
    stdout.print(Group(summary_table(data), layer_table(data["layers"], rows)))

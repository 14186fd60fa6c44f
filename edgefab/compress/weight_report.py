"""Tables of a weight-only (w4/w8) quantization report: ``edgefab quantize report`` and the summaries.

The report (``quantization.json``, written by :mod:`edgefab.pipeline.weight_only`) holds the
settings, accuracy and bytes before/after, host latency, the GPTQ vs round-to-nearest output
error of the whole model, and one row per layer: group size, bytes before/after and the layer's
own output error with GPTQ and with round-to-nearest on the same (quantized-prefix) inputs.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table


def is_weight_only(report: dict[str, Any]) -> bool:
    """Whether a quantization section or report is a weight-only one."""
    return report.get("settings", {}).get("method") in ("gptq", "rtn")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"


def describe(settings: dict[str, Any]) -> str:
    """One line: method, bits, group sizes."""
    sizes = settings["group_sizes_used"]
    given = settings["group_size"]
    used = ", ".join(map(str, sizes)) if len(sizes) <= 6 else f"{min(sizes)}..{max(sizes)}"
    order = ", act-order" if settings["act_order"] else ""
    return (
        f"{settings['label']} {settings['method'].upper()}{order}: uint{settings['bits']} weights, "
        f"group size {given} (used: {used}), activations float32"
    )


def summary_rows(section: dict[str, Any]) -> list[tuple[str, str]]:
    """(figure, text) rows shared by the build/compile summary and the report."""
    acc, size, latency, errors = (
        section["accuracy"],
        section["bytes"],
        section["latency"],
        section["output_error"],
    )
    label = section["settings"]["label"]
    rows = [
        ("quantization", f"{describe(section['settings'])} ({section['settings']['calibration_data']})"),
        (
            f"{label} accuracy",
            f"{100 * acc['fp32']:.2f} % -> {100 * acc['quantized']:.2f} % "
            f"({-acc['drop_points']:+.2f} points, limit {acc['max_drop_points']:g}; {acc['metric']})",
        ),
        (
            f"{label} bytes",
            f"{size['fp32']:,} -> {size['quantized']:,} (x{size['ratio']:.3f}); quantized weights "
            f"{size['weights_fp32']:,} -> {size['weights_quantized']:,}",
        ),
        (
            f"{label} host latency",
            f"{latency['fp32_ms']:.4f} -> {latency['quantized_ms']:.4f} ms "
            f"(x{latency['ratio']:.2f}, ONNX Runtime)",
        ),
    ]
    compared = [f"{name.upper()} {_pct(errors[name])}" for name in ("gptq", "rtn") if name in errors]
    rows.append(("output error vs fp32", f"{' vs '.join(compared)} ({errors['metric']})"))
    return rows


def summary_table(report: dict[str, Any]) -> Table:
    """Before/after figures of a weight-only report."""
    table = Table(title=f"quantization of {report['name']}", title_justify="left")
    table.add_column("figure")
    table.add_column("value", overflow="fold")
    for name, value in summary_rows(report):
        table.add_row(name, value)
    return table


def layer_table(rows: list[dict[str, Any]], limit: int | None = None) -> Table:
    """Per-layer rows, largest GPTQ (else round-to-nearest) output error first."""
    key = "gptq_error" if any(r["gptq_error"] is not None for r in rows) else "rtn_error"
    ordered = sorted(rows, key=lambda r: r[key] or 0.0, reverse=True)
    shown = ordered if limit is None else ordered[:limit]
    title = f"per-layer output error, largest first ({len(shown)} of {len(rows)} quantized layers)"
    table = Table(title=title, title_justify="left")
    for column in ("node", "op", "weight", "group", "bytes fp32 -> q", "GPTQ error", "RTN error"):
        table.add_column(column, overflow="fold")
    for r in shown:
        table.add_row(
            r["node"],
            r["op"],
            "x".join(map(str, r["shape"])),
            "channel" if r["per_channel"] else str(r["group_size"]),
            f"{r['bytes_fp32']:,} -> {r['bytes_quantized']:,}",
            _pct(r["gptq_error"]),
            _pct(r["rtn_error"]),
        )
    return table

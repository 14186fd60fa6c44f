"""What ``edgefab latency`` and ``edgefab profile`` report: plain data for tables and ``--json``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgefab.arch import ArchSpec
from edgefab.errors import EdgefabError
from edgefab.targets import Target, load_target
from edgefab.targets.latency import latency_model
from edgefab.targets.measured import MeasuredTable
from edgefab.targets.model import fix_input_shapes, load_onnx

PROFILE_SPACES = ("spnas", "mobilenetv2")


def target_row(target: Target) -> dict[str, Any]:
    """One line of ``edgefab targets list``."""
    latency = target.latency
    return {
        "name": target.name,
        "aliases": ", ".join(target.aliases),
        "device": target.device,
        "runtime": target.runtime,
        "latency source": f"{latency.get('model', '-')} ({latency.get('source', '-')})",
        "how calibrated": latency.get("calibrated", latency.get("provenance", "-")),
    }


def latency_report(
    path: Path,
    target_name: str,
    measure: bool = False,
    threads: int | None = None,
    inputs: Sequence[str] = (),
) -> dict[str, Any]:
    """Predicted latency of an ONNX file on a target, per layer, and (``measure``) measured here."""
    target = load_target(target_name)
    if measure and not target.runs_here:
        raise EdgefabError(f"--measure times the model on this machine; target {target.name} is not it")
    model = fix_input_shapes(load_onnx(Path(path)), inputs)
    prediction = latency_model(target, threads=threads).predict_onnx(model)
    report = {"model": str(path), **prediction.to_dict()}
    if measure:
        from edgefab.targets.measured import measure_model, resolve_threads

        measured = measure_model(model, resolve_threads(target, threads))
        report["measured_ms"] = round(measured, 4)
        report["error_percent"] = round(100 * (prediction.ms / measured - 1), 2)
    return report


def summary_rows(report: dict[str, Any]) -> list[tuple[str, Any]]:
    """The key-value summary under a latency report's layer table."""
    rows = [
        ("model", report["model"]),
        ("target", report["target"]),
        ("predicted", f"{report['ms']:.3f} ms"),
        ("of which overhead", f"{report['overhead_ms']:.3f} ms"),
        ("source", f"{report['kind']}: {report['method']}"),
    ]
    if "measured_ms" in report:
        rows.append(("measured", f"{report['measured_ms']:.3f} ms"))
        rows.append(("error", f"{report['error_percent']:+.1f} %"))
    rows.append(("left out", ", ".join(report["left_out"]) or "nothing"))
    return rows


def profile_base(space: str, resolution: int, num_classes: int = 1000) -> ArchSpec:
    """The ArchSpec a profiled space is built around."""
    from edgefab.targets.published import mobilenet_v2_spec, spnas_spec

    if not 32 <= resolution <= 512:
        raise EdgefabError(f"--resolution must be 32-512, got {resolution}")
    if space == "spnas":
        return spnas_spec(resolution=resolution, num_classes=num_classes)
    if space == "mobilenetv2":
        return mobilenet_v2_spec(1.0, resolution, num_classes)
    raise EdgefabError(f"unknown space '{space}'; use one of {', '.join(PROFILE_SPACES)}")


def profile_report(table: MeasuredTable, path: Path) -> dict[str, Any]:
    """Summary of a profiled table."""
    run, share = table.overhead
    errors = [
        abs(run + (1 + share) * n["sum_ms"] - n["measured_ms"]) / n["measured_ms"] for n in table.networks
    ]
    return {
        "target": table.target, "runtime": table.runtime, "threads": table.threads, "device": table.device,
        "statistic": table.statistic,
        **({"build": table.build} if table.build else {}),
        "layers": len(table.layers), "networks": len(table.networks), "table": str(path),
        "run_call_ms": round(table.overhead[0], 4), "network_overhead_share": round(table.overhead[1], 4),
        "fit_max_error_percent": round(100 * max(errors, default=0.0), 2),
    }  # fmt: skip

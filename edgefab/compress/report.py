"""Per-layer quantization error, and the ``edgefab quantize report`` tables.

Per-layer errors come from ONNX Runtime's ``qdq_loss_debug``: every float tensor of the float
model and of the QDQ model becomes an output, both run on calibration samples (exact arithmetic,
no fused kernels), and each quantized tensor is compared with its float counterpart. Errors are
relative RMS errors in percent (``100 * 10**(-SQNR/20)``, SQNR as ``qdq_loss_debug`` computes it):

- ``error_vs_fp32``: the node's output in the QDQ model vs the float model (all errors up to here);
- ``added_error``: that minus the same figure for the node's inputs: what this node adds;
- ``weight_error``: the node's dequantized weight vs its float weight.

Rows are sorted by added error, largest first: the top rows are the nodes worth keeping in float
with ``--exclude-nodes``.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper
from rich.table import Table

from edgefab.compress.calibration import Feeds, FeedsReader
from edgefab.errors import EdgefabError

REPORT_FILE = "quantization.json"


def _percent(sqnr_db: float | None) -> float | None:
    if sqnr_db is None or math.isnan(sqnr_db):
        return None
    return round(100.0 * 10 ** (-sqnr_db / 20.0), 4)


def layer_errors(float_path: Path, qdq_path: Path, feeds: list[Feeds]) -> list[dict[str, Any]]:
    """The per-layer error table (rows, largest added error first).

    ``qdq_path`` is the quantizer's own output (``Int8Result.debug_path``): the matching relies on
    the tensor names it gives.
    """
    from onnxruntime.quantization import qdq_loss_debug as debug

    with tempfile.TemporaryDirectory(prefix="edgefab-qdq-") as folder:
        float_aug, qdq_aug = Path(folder) / "float.onnx", Path(folder) / "qdq.onnx"
        debug.modify_model_output_intermediate_tensors(str(float_path), str(float_aug))
        debug.modify_model_output_intermediate_tensors(str(qdq_path), str(qdq_aug))
        float_acts = debug.collect_activations(str(float_aug), FeedsReader(feeds))
        qdq_acts = debug.collect_activations(str(qdq_aug), FeedsReader(feeds))
    matched = debug.create_activation_matching(qdq_acts, float_acts)
    activations = debug.compute_activation_error({k: v for k, v in matched.items() if "float" in v})
    float_model = onnx.load(str(float_path))
    qdq_model = onnx.load(str(qdq_path))
    return _rows(qdq_model, activations, weight_errors(float_model, qdq_model))


def weight_errors(float_model: onnx.ModelProto, qdq_model: onnx.ModelProto) -> dict[str, float]:
    """SQNR (dB) of every dequantized constant vs its float original, by float tensor name.

    ``qdq_loss_debug.create_weight_matching`` subtracts zero points in the weights' own dtype, which
    wraps around for uint8 weights, so the dequantization is done here in float64.
    """
    from onnxruntime.quantization.qdq_loss_debug import compute_signal_to_quantization_noice_ratio as sqnr

    floats = {init.name: init for init in float_model.graph.initializer}
    consts = {init.name: numpy_helper.to_array(init) for init in qdq_model.graph.initializer}
    errors = {}
    for node in qdq_model.graph.node:
        name = node.input[0].removesuffix("_quantized")
        if node.op_type != "DequantizeLinear" or node.input[0] not in consts or name not in floats:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        values = consts[node.input[0]].astype(np.float64)
        scale = consts[node.input[1]].astype(np.float64)
        zero = consts[node.input[2]].astype(np.float64) if len(node.input) > 2 else np.zeros_like(scale)
        if scale.size > 1:  # per channel: broadcast along the axis
            shape = [1] * values.ndim
            shape[axis] = scale.size
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        original = np.atleast_1d(numpy_helper.to_array(floats[name]).astype(np.float64))
        errors[name] = sqnr(original, np.atleast_1d((values - zero) * scale))
    return errors


_DQ_SUFFIXES = ("_DequantizeLinear_Output_1", "_DequantizeLinear_Output")


def _activation_name(tensor: str) -> str:
    for suffix in _DQ_SUFFIXES:
        if tensor.endswith(suffix):
            return tensor[: -len(suffix)]
    return tensor


def _rows(model: onnx.ModelProto, activations: dict, weights: dict[str, float]) -> list[dict[str, Any]]:
    """One row per compute node of the QDQ ``model`` whose output is quantized.

    The quantizer folds some float nodes (a Clip or Relu after a Conv) into the range of the
    quantized tensor, so rows follow the QDQ graph, where a node's output carries the float name.
    """
    drift = {name: _percent(errors.get("xmodel_err")) for name, errors in activations.items()}
    producers = {out: node for node in model.graph.node for out in node.output}

    def input_drift(tensor: str, seen: frozenset = frozenset()) -> float:
        name = _activation_name(tensor)
        if drift.get(name) is not None:
            return drift[name]
        node = producers.get(name)
        if node is None or name in seen or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            return 0.0
        return max((input_drift(i, seen | {name}) for i in node.input if i), default=0.0)

    rows = []
    for node in model.graph.node:
        output = node.output[0] if node.output else ""
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") or drift.get(output) is None:
            continue
        sources = [_activation_name(i) for i in node.input if i]
        weight = next((weights[name] for name in sources if name in weights), None)
        activations_in = [i for i in node.input if i and _activation_name(i) not in weights]
        before = max((input_drift(i) for i in activations_in), default=0.0)
        rows.append(
            {
                "node": node.name,
                "op": node.op_type,
                "added_error": round(drift[output] - before, 4),
                "error_vs_fp32": drift[output],
                "weight_error": _percent(weight),
            }
        )
    return sorted(rows, key=lambda r: (r["added_error"], r["weight_error"] or 0.0), reverse=True)


def top_rows_text(rows: list[dict[str, Any]], count: int = 3) -> str:
    """The largest errors in one line, for error messages."""
    parts = [f"{r['node']} ({r['op']}) +{r['added_error']:.2f} %" for r in rows[:count]]
    return ", ".join(parts) or "none"


def suggested_exclusions(rows: list[dict[str, Any]], count: int = 2) -> list[str]:
    """Node names worth keeping in float: those with the largest own error."""
    return [r["node"] for r in rows[:count]]


# --- reading a package's report and drawing it -----------------------------------------------------


def read_report(package: Path) -> dict[str, Any]:
    """A package's quantization report (hashes checked first)."""
    from edgefab.runtime.package import verify_package

    manifest = verify_package(Path(package))
    if "quantization" not in manifest or REPORT_FILE not in manifest.get("files", {}):
        raise EdgefabError(
            f"{package} is not a quantized package; build it with --quantize int8 to get a report"
        )
    report = json.loads((Path(package) / REPORT_FILE).read_text())
    return {"package": str(package), "name": manifest["name"], **report}


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}{unit}"
    return f"{value}{unit}"


def summary_table(report: dict[str, Any]) -> Table:
    """Before/after figures: accuracy, bytes, latency."""
    acc, size, latency = report["accuracy"], report["bytes"], report["latency"]
    caption = f"accuracy: {acc['metric']}; latency: {latency['method']}"
    table = Table(title=f"quantization of {report['name']}", title_justify="left", caption=caption)
    for column in ("figure", "fp32", "int8", "change"):
        table.add_column(column, overflow="fold")
    table.add_row(
        "accuracy",
        f"{100 * acc['fp32']:.2f} %",
        f"{100 * acc['int8']:.2f} %",
        f"{-acc['drop_points']:+.2f} points (limit -{acc['max_drop_points']:g})",
    )
    table.add_row("model bytes", f"{size['fp32']:,}", f"{size['int8']:,}", f"x{size['ratio']:.3f}")
    table.add_row(
        "latency",
        _fmt(latency["fp32_ms"], " ms"),
        _fmt(latency["int8_ms"], " ms"),
        f"x{latency['ratio']:.2f}",
    )
    settings = report["settings"]
    table.add_row(
        "settings",
        f"{settings['calibration']} calibration on {settings['calibration_samples']} samples",
        f"{settings['activation_type']} activations, {settings['weight_type']} weights",
        f"{settings['per_channel_weights']} of {settings['quantized_nodes']} weights per-channel "
        f"({settings['granularity']})",
    )
    return table


def layer_table(rows: list[dict[str, Any]], limit: int | None = None) -> Table:
    """The per-layer error table, largest own error first."""
    shown = rows if limit is None else rows[:limit]
    title = f"per-layer error, largest added error first ({len(shown)} of {len(rows)} quantized nodes)"
    table = Table(title=title, title_justify="left")
    for column in ("node", "op", "added error %", "error vs fp32 %", "weight error %"):
        table.add_column(column, overflow="fold")
    for row in shown:
        table.add_row(
            row["node"],
            row["op"],
            _fmt(row["added_error"]),
            _fmt(row["error_vs_fp32"]),
            _fmt(row["weight_error"]),
        )
    return table

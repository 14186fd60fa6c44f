"""The weight-only step of ``build`` and ``compile`` (``--quantize w4`` / ``w8``).

The same contract as the int8 step (:mod:`edgefab.pipeline.quantize`): quantize, measure on data
kept out of calibration, refuse to ship when accuracy (or agreement with fp32) drops more than
``--max-accuracy-drop`` points, and ship ``quantization.json``. What differs:

- the model is quantized with GPTQ (or round-to-nearest with ``--method rtn`` in the library),
  and a round-to-nearest model with the same grid is built beside it, so the report compares
  their output errors (relative RMS of the first output vs fp32 on the held-out samples) as
  well as each layer's;
- ``model.onnx`` holds ``uint4``/``uint8`` weights with DequantizeLinear (opset 21), which ONNX
  Runtime runs; TVM 0.27's importer rejects that form, so the TVM library is compiled from the
  float twin (the dequantized weights as float32: the same arithmetic, float-sized weights), and
  the manifest says so.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgefab.compress.calibration import Feeds, check_sample_count, split_held_out, synthetic_feeds
from edgefab.compress.evaluate import agreement, first_outputs, session, top1_accuracy
from edgefab.compress.report import REPORT_FILE
from edgefab.compress.weight_only import WeightOnlyResult, quantize_weights
from edgefab.errors import EdgefabError
from edgefab.pipeline.quantize import Quantized, QuantizeRequest, calibration_feeds
from edgefab.targets import Target
from edgefab.targets.latency import time_calls

ERROR_SAMPLES = 256  # held-out samples the GPTQ vs round-to-nearest output error is measured on
TVM_WEIGHTS = (
    "float32: TVM 0.27's ONNX importer takes neither 4-bit initializers nor blocked "
    "DequantizeLinear, so the library is compiled from the same graph with the dequantized weights "
    "as float32 constants (the arithmetic ONNX Runtime runs, at float32 size)"
)
TVM_TOLERANCE = 1e-4  # the same float arithmetic: only summation order differs
# ONNX Runtime keeps DequantizeLinear in the graph by default (for QDQ fusion) and runs it on every
# call: measured x4.7 the fp32 latency on the digits model. With QDQ handling off, constant folding
# dequantizes the weights once at load: fp32 speed, small file. The package's loader applies this.
FOLD_CONFIG = {"session.disable_quant_qdq": "1"}


def quantize_classifier_weights(
    request: QuantizeRequest,
    fp32_path: Path,
    target: Target,
    calibration: list[Feeds],
    validation: tuple[np.ndarray, np.ndarray],
    fp32_accuracy: float,
    work: Path,
) -> Quantized:
    """Weight-only quantization of a classifier; the guard uses top-1 on ``validation``."""
    result, rtn = _quantize(request, fp32_path, calibration, work)
    inputs, labels = validation
    name = onnx.load(str(fp32_path)).graph.input[0].name
    accuracy = top1_accuracy(session(result.path), inputs, labels, name)
    metric = f"top-1 on the validation split ({len(labels)} samples)"
    record = _guard(request, fp32_accuracy, accuracy, metric, result)
    held_out = [{name: x[None]} for x in inputs[:ERROR_SAMPLES]]
    return _finish(request, result, rtn, fp32_path, record, held_out, "task data", work)


def quantize_model_weights(
    request: QuantizeRequest, fp32_path: Path, target: Target, signature: list[dict], work: Path
) -> Quantized:
    """Weight-only quantization of any model; the guard uses agreement with fp32 on held-out samples."""
    given = calibration_feeds(request, signature)
    source = str(request.calibration_data) if given is not None else "synthetic (seeded standard normal)"
    feeds = given if given is not None else synthetic_feeds(signature, request.weights.samples + 32)
    calibration, held_out = split_held_out(feeds, request.weights.samples)
    result, rtn = _quantize(request, fp32_path, calibration, work)
    reference = first_outputs(session(fp32_path), held_out)
    agreed = agreement(reference, first_outputs(session(result.path), held_out))
    metric = f"{agreed.metric} with fp32 on {len(held_out)} held-out {'' if given else 'synthetic '}samples"
    record = _guard(request, 1.0, agreed.share, metric, result)
    record["agreement"] = agreed.to_dict()
    return _finish(request, result, rtn, fp32_path, record, held_out, source, work)


def _quantize(
    request: QuantizeRequest, fp32_path: Path, calibration: list[Feeds], work: Path
) -> tuple[WeightOnlyResult, WeightOnlyResult | None]:
    """The requested model, and the round-to-nearest one to compare it with (None if that is it)."""
    options = request.weights
    if options.method == "gptq":
        check_sample_count(len(calibration), 16, "calibration data")
    result = quantize_weights(fp32_path, calibration, options, work / f"model_{request.method}.onnx")
    if options.method == "rtn":
        return result, None
    rtn = quantize_weights(
        fp32_path, [], replace(options, method="rtn"), work / f"model_{request.method}_rtn.onnx"
    )
    return result, rtn


def _worst_layers(result: WeightOnlyResult, count: int = 3) -> list[dict[str, Any]]:
    key = "gptq_error" if result.options.method == "gptq" else "rtn_error"
    return sorted(result.layers, key=lambda row: row[key] or 0.0, reverse=True)[:count]


def _guard(
    request: QuantizeRequest, fp32: float, quantized: float, metric: str, result: WeightOnlyResult
) -> dict[str, Any]:
    """The accuracy record; raises, naming the layers with the largest output error, past the limit."""
    drop = round(100.0 * (fp32 - quantized), 4)
    if drop > request.max_accuracy_drop:
        worst = _worst_layers(result)
        key = "gptq_error" if result.options.method == "gptq" else "rtn_error"
        named = ", ".join(f"{r['node']} ({r['op']}) {100 * (r[key] or 0):.1f} %" for r in worst)
        finer = "--group-size 32, " if result.options.group_size != 32 else ""
        raise EdgefabError(
            f"{request.method} lost {drop:.2f} points ({metric}: {100 * fp32:.2f} % -> "
            f"{100 * quantized:.2f} %, limit {request.max_accuracy_drop:g}); largest layer output errors: "
            f"{named}; try {finer}"
            f"--act-order, --exclude-nodes {','.join(r['node'] for r in worst[:2])}, --quantize w8, or raise "
            "--max-accuracy-drop"
        )
    return {
        "metric": metric,
        "fp32": round(fp32, 5),
        "quantized": round(quantized, 5),
        "drop_points": drop,
        "max_drop_points": request.max_accuracy_drop,
    }


def _output_errors(
    fp32_path: Path, result: WeightOnlyResult, rtn: WeightOnlyResult | None, held_out: list[Feeds]
) -> dict[str, Any]:
    reference = first_outputs(session(fp32_path), held_out)
    errors = {result.options.method: agreement(reference, first_outputs(session(result.path), held_out))}
    if rtn is not None:
        errors["rtn"] = agreement(reference, first_outputs(session(rtn.path), held_out))
    return {
        **{name: round(a.relative_rms, 6) for name, a in errors.items()},
        "metric": f"relative RMS error of the first output vs fp32 on {len(held_out)} held-out samples",
    }


def _finish(
    request: QuantizeRequest,
    result: WeightOnlyResult,
    rtn: WeightOnlyResult | None,
    fp32_path: Path,
    accuracy: dict[str, Any],
    held_out: list[Feeds],
    source: str,
    work: Path,
) -> Quantized:
    """Bytes, latency, output errors: the report file and the manifest section."""
    fp32_bytes, quantized_bytes = fp32_path.stat().st_size, result.path.stat().st_size
    latency = host_latency(fp32_path, result.path, held_out[0], fold=True)
    section = {
        "settings": {**result.settings(), "label": request.method, "calibration_data": source},
        "accuracy": accuracy,
        "bytes": {
            "fp32": fp32_bytes,
            "quantized": quantized_bytes,
            "ratio": round(quantized_bytes / fp32_bytes, 4),
            "weights_fp32": sum(row["bytes_fp32"] for row in result.layers),
            "weights_quantized": sum(row["bytes_quantized"] for row in result.layers),
            "what": "file bytes of model.onnx; weights_*: the quantized layers' weights alone",
        },
        "latency": latency,
        "output_error": _output_errors(fp32_path, result, rtn, held_out),
        "evaluated_as": "ONNX Runtime on this machine (DequantizeLinear, then float32 operators)",
        "report": REPORT_FILE,
    }
    report_path = work / REPORT_FILE
    report_path.write_text(json.dumps({**section, "layers": result.layers}, indent=2) + "\n")
    twin = onnx.load(str(result.twin_path))  # what TVM compiles: see TVM_WEIGHTS
    score = accuracy["quantized"]
    return Quantized(result.path, twin, score, section, report_path, TVM_TOLERANCE, TVM_WEIGHTS, FOLD_CONFIG)


def _session(path: Path, fold: bool = False):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    for key, value in (FOLD_CONFIG if fold else {}).items():
        options.add_session_config_entry(key, value)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def host_latency(
    fp32_path: Path, path: Path, feeds: Feeds, rounds: int = 5, fold: bool = True
) -> dict[str, Any]:
    """ONNX Runtime latency here: fp32, the quantized model as stored, and with weights folded at load."""
    sessions = {"fp32": _session(fp32_path), "stored": _session(path), "folded": _session(path, fold=True)}
    samples: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, sess in sessions.items():
            samples[name].append(statistics.median(time_calls(lambda s=sess: s.run(None, feeds), 5, 20)))
    ms = {name: statistics.median(values) for name, values in samples.items()}
    shipped = ms["folded"] if fold else ms["stored"]
    return {
        "fp32_ms": round(ms["fp32"], 4),
        "quantized_ms": round(shipped, 4),
        "ratio": round(shipped / ms["fp32"], 3),
        "dequantize_every_call_ms": round(ms["stored"], 4),
        "method": f"ONNX Runtime on this machine, batch 1, median of {rounds} interleaved rounds of 20; "
        "quantized: weights dequantized once at load (session.disable_quant_qdq), as the package runs; "
        "dequantize_every_call: ONNX Runtime's default session",
    }

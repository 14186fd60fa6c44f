"""The quantization step of ``build`` and ``compile``: quantize, guard accuracy, report.

The package then ships ``model.onnx`` = the INT8 QDQ model (the float model stays out: it is what
int8 makes smaller) and ``quantization.json`` = settings, figures before/after and the per-layer
error table. The accuracy guard compares the int8 model with the float one on data kept out of
calibration and fails the build (nothing is written) when the drop exceeds ``max_accuracy_drop``
points:

- ``build`` (a classifier): top-1 accuracy on the validation split;
- ``compile`` with ``--calibration-data``: a quarter of the samples (at least 8) is held out, and
  the metric is agreement with the float model (top-1 agreement for outputs with more than one
  value on the last axis, else within 2 % of the float output's spread), 100 % for the float model;
- ``compile`` without data: seeded standard-normal inputs stand in, the manifest says the
  calibration was synthetic, and the same agreement guard runs on synthetic held-out samples.

Where the target runs on this machine, int8 is evaluated as ONNX Runtime runs it here (fused integer
kernels); for other targets, with the exact QDQ arithmetic (no fused kernels) that the device's
kernels reproduce: this machine's x86 kernels may saturate where the device's do not.

``w4``/``w8`` (weight-only GPTQ, ``--group-size``, ``--act-order``) take the same request and the
same guard; their step is :mod:`edgefab.pipeline.weight_only`.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgefab.compress.calibration import (
    Feeds,
    check_sample_count,
    feeds_from_arrays,
    read_calibration_file,
    split_held_out,
    synthetic_feeds,
)
from edgefab.compress.cpu import target_cpu
from edgefab.compress.evaluate import agreement, first_outputs, kernel_check, session, top1_accuracy
from edgefab.compress.int8 import Int8Options, Int8Result, quantize_int8
from edgefab.compress.report import REPORT_FILE, layer_errors, suggested_exclusions, top_rows_text
from edgefab.compress.weight_only import WeightOnlyOptions
from edgefab.data import Dataset, to_float
from edgefab.errors import EdgefabError
from edgefab.targets import Target
from edgefab.targets.latency import time_calls

METHODS = ("int8", "w4", "w8")  # w4/w8: weight-only GPTQ, see edgefab.pipeline.weight_only
LAYER_SAMPLES = 32  # calibration samples the per-layer table is computed on
TVM_ARITHMETIC = (
    "float32: TVM 0.27's ONNX importer dequantizes the QDQ graph (int8 values and scales become "
    "float constants), so the library computes in float what the QDQ graph defines"
)
TVM_STEPS = 8  # TVM vs ONNX Runtime tolerance, in quantization steps of the output


@dataclass(frozen=True)
class QuantizeRequest:
    """What the user asked of quantization (``--quantize`` and its options)."""

    method: str = "int8"
    max_accuracy_drop: float = 1.0  # points
    int8: Int8Options = Int8Options()
    calibration_data: Path | None = None
    weights: WeightOnlyOptions = WeightOnlyOptions()  # w4/w8 settings

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise EdgefabError(f"unknown --quantize '{self.method}'; choose one of {', '.join(METHODS)}")
        if not 0 <= self.max_accuracy_drop <= 100:
            raise EdgefabError(
                f"--max-accuracy-drop is in points between 0 and 100, got {self.max_accuracy_drop:g}"
            )
        if self.calibration_data is not None and not Path(self.calibration_data).is_file():
            raise EdgefabError(f"calibration data {self.calibration_data} does not exist")


def make_request(
    quantize: str | None,
    max_accuracy_drop: float = 1.0,
    calibration: str = "minmax",
    exclude_nodes: tuple[str, ...] | list[str] = (),
    calibration_data: Path | None = None,
    group_size: int | str | None = None,
    act_order: bool = False,
) -> QuantizeRequest | None:
    """A checked request from command-line values; None when ``quantize`` is None."""
    if quantize is None:
        if calibration_data is not None or exclude_nodes:
            raise EdgefabError("--calibration-data and --exclude-nodes need --quantize int8")
        if group_size is not None or act_order:
            raise EdgefabError("--group-size and --act-order need --quantize w4 or w8")
        return None
    names = tuple(n.strip() for item in exclude_nodes for n in item.split(",") if n.strip())
    options = Int8Options(calibration=calibration, exclude_nodes=names)
    if quantize in ("w4", "w8"):
        weights = WeightOnlyOptions(
            bits=int(quantize[1:]), group_size=group_size or 128, act_order=act_order, exclude_nodes=names
        )
        return QuantizeRequest(quantize, max_accuracy_drop, options, calibration_data, weights)
    if group_size is not None or act_order:
        raise EdgefabError("--group-size and --act-order are for weight-only quantization (--quantize w4/w8)")
    return QuantizeRequest(quantize, max_accuracy_drop, options, calibration_data)


@dataclass
class Quantized:
    """The quantized model and what the manifest and package get from the step."""

    path: Path
    model: onnx.ModelProto  # the graph TVM compiles: the QDQ model, or for w4/w8 its float twin
    score: float  # the int8 accuracy or agreement that the guard accepted, 0..1
    section: dict[str, Any]  # manifest["quantization"]
    report_path: Path
    tvm_tolerance: float
    tvm_arithmetic: str = TVM_ARITHMETIC  # what the TVM library computes in, for the manifest
    ort_config: dict[str, str] | None = None  # ONNX Runtime session config entries the package needs

    def annotate(self, manifest: dict[str, Any]) -> None:
        """Add the quantization section, and say what arithmetic the TVM library runs in."""
        manifest["quantization"] = self.section
        if self.ort_config:
            manifest.get("engines", {}).get("onnxruntime", {})["session_config"] = dict(self.ort_config)
        tvm = manifest.get("engines", {}).get("tvm", {})
        if "error" not in tvm:
            tvm["arithmetic"] = self.tvm_arithmetic
            tvm["tolerance_vs_onnxruntime"] = self.tvm_tolerance


def calibration_feeds(request: QuantizeRequest, signature: list[dict]) -> list[Feeds] | None:
    """Feeds from ``--calibration-data``, or None where none was given."""
    if request.calibration_data is None:
        return None
    arrays = read_calibration_file(request.calibration_data)
    return feeds_from_arrays(arrays, signature, f"calibration data {request.calibration_data}")


def classifier_calibration(
    request: QuantizeRequest, signature: list[dict], train: Dataset, prep: dict, seed: int = 0
) -> list[Feeds]:
    """``--calibration-data`` if given, else a seeded sample of the training split, preprocessed."""
    given = calibration_feeds(request, signature)
    if given is not None:
        return given
    count = min(request.int8.samples, len(train))
    picked = np.sort(np.random.default_rng(seed).choice(len(train), count, replace=False))
    inputs = to_float(train.images[picked], prep)
    return [{signature[0]["name"]: inputs[i : i + 1]} for i in range(count)]


def quantize_classifier(
    request: QuantizeRequest,
    fp32_path: Path,
    target: Target,
    calibration: list[Feeds],
    validation: tuple[np.ndarray, np.ndarray],
    fp32_accuracy: float,
    work: Path,
) -> Quantized:
    """Quantize a classifier; the guard uses top-1 accuracy on ``validation`` (inputs, labels)."""
    if request.method != "int8":
        from edgefab.pipeline.weight_only import quantize_classifier_weights

        return quantize_classifier_weights(
            request, fp32_path, target, calibration, validation, fp32_accuracy, work
        )
    result = _quantize(request, fp32_path, target, calibration, work)
    inputs, labels = validation
    name = onnx.load(str(fp32_path)).graph.input[0].name
    int8_accuracy = top1_accuracy(session(result.path, exact=not target.runs_here), inputs, labels, name)
    metric = f"top-1 on the validation split ({len(labels)} samples)"
    accuracy = _guard(request, fp32_accuracy, int8_accuracy, metric, result, calibration)
    feeds = [{name: inputs[:1]}]
    return _finish(request, result, target, fp32_path, calibration, accuracy, feeds, "task data", work)


def quantize_model(
    request: QuantizeRequest, fp32_path: Path, target: Target, signature: list[dict], work: Path
) -> Quantized:
    """Quantize any model; the guard uses agreement with the float model on held-out samples."""
    if request.method != "int8":
        from edgefab.pipeline.weight_only import quantize_model_weights

        return quantize_model_weights(request, fp32_path, target, signature, work)
    given = calibration_feeds(request, signature)
    source = str(request.calibration_data) if given is not None else "synthetic (seeded standard normal)"
    feeds = given if given is not None else synthetic_feeds(signature, request.int8.samples + 32)
    calibration, held_out = split_held_out(feeds, request.int8.samples)
    result = _quantize(request, fp32_path, target, calibration, work)
    reference = first_outputs(session(fp32_path), held_out)
    candidate = first_outputs(session(result.path, exact=not target.runs_here), held_out)
    agreed = agreement(reference, candidate)
    metric = f"{agreed.metric} with fp32 on {len(held_out)} held-out {'' if given else 'synthetic '}samples"
    accuracy = _guard(request, 1.0, agreed.share, metric, result, calibration)
    accuracy["agreement"] = agreed.to_dict()
    return _finish(request, result, target, fp32_path, calibration, accuracy, held_out[:1], source, work)


def _quantize(
    request: QuantizeRequest, fp32_path: Path, target: Target, calibration: list[Feeds], work: Path
) -> Int8Result:
    check_sample_count(len(calibration), 16, "calibration data")
    return quantize_int8(fp32_path, work / "model_int8.onnx", calibration, request.int8, target_cpu(target))


def _guard(
    request: QuantizeRequest,
    fp32: float,
    int8: float,
    metric: str,
    result: Int8Result,
    calibration: list[Feeds],
) -> dict[str, Any]:
    """The accuracy record; raises (with the largest per-layer errors) when the drop is too large."""
    drop = round(100.0 * (fp32 - int8), 4)
    if drop > request.max_accuracy_drop:
        rows = layer_errors(result.float_path, result.debug_path, calibration[:LAYER_SAMPLES])
        raise EdgefabError(
            f"int8 lost {drop:.2f} points ({metric}: {100 * fp32:.2f} % -> {100 * int8:.2f} %, limit "
            f"{request.max_accuracy_drop:g}); largest per-layer errors: {top_rows_text(rows)}; try "
            f"--exclude-nodes {','.join(suggested_exclusions(rows))}, another --calibration, or raise "
            "--max-accuracy-drop"
        )
    return {
        "metric": metric,
        "fp32": round(fp32, 5),
        "int8": round(int8, 5),
        "drop_points": drop,
        "max_drop_points": request.max_accuracy_drop,
    }


def _finish(
    request: QuantizeRequest,
    result: Int8Result,
    target: Target,
    fp32_path: Path,
    calibration: list[Feeds],
    accuracy: dict[str, Any],
    timing_feeds: list[Feeds],
    source: str,
    work: Path,
) -> Quantized:
    """Per-layer table, bytes, latency, kernel check: the report file and the manifest section."""
    rows = layer_errors(result.float_path, result.debug_path, calibration[:LAYER_SAMPLES])
    fp32_bytes, int8_bytes = fp32_path.stat().st_size, result.path.stat().st_size
    section = {
        "settings": {**result.settings(), "calibration_data": source},
        "accuracy": accuracy,
        "bytes": {"fp32": fp32_bytes, "int8": int8_bytes, "ratio": round(int8_bytes / fp32_bytes, 4)},
        "latency": host_latency(fp32_path, result.path, timing_feeds[0]),
        "evaluated_as": "ONNX Runtime on this machine (fused integer kernels)"
        if target.runs_here
        else "exact QDQ arithmetic (ONNX Runtime, graph optimisations off), as the target computes it",
        "report": REPORT_FILE,
    }
    if target.runs_here:
        section["kernel_check"] = kernel_check(result.path, calibration[:LAYER_SAMPLES])
    report_path = work / REPORT_FILE
    report_path.write_text(json.dumps({**section, "layers": rows}, indent=2) + "\n")
    model = onnx.load(str(result.path))
    return Quantized(result.path, model, accuracy["int8"], section, report_path, tvm_tolerance(model))


def host_latency(fp32_path: Path, int8_path: Path, feeds: Feeds, rounds: int = 5) -> dict[str, Any]:
    """ONNX Runtime latency of both models on this machine, interleaved rounds, medians."""
    sessions = {"fp32": session(fp32_path), "int8": session(int8_path)}
    samples: dict[str, list[float]] = {"fp32": [], "int8": []}
    for _ in range(rounds):
        for name, sess in sessions.items():
            samples[name].append(statistics.median(time_calls(lambda s=sess: s.run(None, feeds), 5, 20)))
    fp32_ms, int8_ms = statistics.median(samples["fp32"]), statistics.median(samples["int8"])
    return {
        "fp32_ms": round(fp32_ms, 4),
        "int8_ms": round(int8_ms, 4),
        "ratio": round(int8_ms / fp32_ms, 3),
        "method": f"ONNX Runtime on this machine, batch 1, median of {rounds} interleaved rounds of 20",
    }


def tvm_tolerance(model: onnx.ModelProto) -> float:
    """Allowed TVM vs ONNX Runtime difference: ``TVM_STEPS`` quantization steps of the output.

    TVM computes the QDQ graph in float, ONNX Runtime in integer kernels with the same scales:
    they differ by rounding ties and summation order, each moving a requantized value by one step.
    Measured here: 1 step on the digits model, 4 on ppocr. The step is the scale of the last
    DequantizeLinear before each output (1e-4 where there is none).
    """
    consts = {init.name: onnx.numpy_helper.to_array(init) for init in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    steps = []
    for output in model.graph.output:
        node = producers.get(output.name)
        while node is not None and node.op_type != "DequantizeLinear" and node.input:
            node = producers.get(node.input[0])
        if node is not None and node.op_type == "DequantizeLinear" and node.input[1] in consts:
            steps.append(float(np.max(consts[node.input[1]])))
    return TVM_STEPS * max(steps) if steps else 1e-4

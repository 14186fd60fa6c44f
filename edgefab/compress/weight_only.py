"""Weight-only low-bit quantization of an ONNX model: GPTQ or round-to-nearest, w4 or w8.

One entry function, :func:`quantize_weights` (ONNX Runtime's style), with its settings in
:class:`WeightOnlyOptions`. Activations stay float; every Conv/Gemm/MatMul weight (see
:mod:`edgefab.compress.weight_graph`) becomes ``bits``-bit integers with a scale and zero point
per row and group of columns. Group sizes are fixed (``group_size=N``; capped at the row length),
per-channel (``"channel"``) or chosen per matrix from the weights by FineQuant's rule (``"auto"``,
:mod:`edgefab.compress.finequant`).

GPTQ runs layer by layer on the already-quantized prefix: the float model, with the weights
quantized so far replaced by their dequantized values, runs in ONNX Runtime on the calibration
samples with the next layers' inputs added as graph outputs; their Hessians ``2 X X^T / n`` drive
:func:`edgefab.compress.gptq.gptq`. Layers whose inputs do not depend on each other share one run.
Per layer the result records the GPTQ and round-to-nearest output errors on those same inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edgefab.compress.calibration import MIN_CALIBRATION_SAMPLES, Feeds
from edgefab.compress.finequant import auto_group_size
from edgefab.compress.gptq import QuantizedMatrix, gptq, output_error, rtn
from edgefab.compress.int8 import compact
from edgefab.compress.weight_graph import LAYER_OPS, HessianSum, Layer, find_layers, float_twin, layer_columns
from edgefab.compress.weight_graph import quantized_graph as dequantize_graph
from edgefab.errors import EdgefabError

WEIGHT_METHODS = ("gptq", "rtn")
BITS = (4, 8)
GROUP_WORDS = ("auto", "channel")
MIN_GROUP_SIZE = 8  # below this the float32 scale per group outweighs the saved bits


def parse_group_size(value: int | str) -> int | str:
    """``--group-size`` as given on the command line: a whole number, ``auto`` or ``channel``."""
    text = str(value).strip().lower()
    if text in GROUP_WORDS:
        return text
    if text.isdigit() and int(text) >= MIN_GROUP_SIZE:
        return int(text)
    raise EdgefabError(
        f"unknown --group-size '{value}'; give a whole number of at least {MIN_GROUP_SIZE} (e.g. 128), "
        "'channel' (one scale per output channel) or 'auto' (FineQuant's choice per matrix)"
    )


@dataclass(frozen=True)
class WeightOnlyOptions:
    """Settings of weight-only quantization."""

    bits: int = 4
    group_size: int | str = 128  # columns per scale, "channel" or "auto"
    act_order: bool = False  # GPTQ visits columns by decreasing Hessian diagonal
    damp: float = 0.01  # GPTQ's damping, a fraction of the mean Hessian diagonal
    block: int = 128  # GPTQ's lazy-update block, in columns
    method: str = "gptq"
    samples: int = 128  # calibration samples used at most
    exclude_nodes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.bits not in BITS:
            raise EdgefabError(f"weight-only quantization takes 4 or 8 bits, got {self.bits}")
        if self.method not in WEIGHT_METHODS:
            raise EdgefabError(f"unknown weight-only method '{self.method}'; choose one of gptq, rtn")
        object.__setattr__(self, "group_size", parse_group_size(self.group_size))
        if not 0 < self.damp < 1 or self.block < 1:
            raise EdgefabError(f"GPTQ needs 0 < damp < 1 and block >= 1, got {self.damp:g} and {self.block}")
        if self.samples < MIN_CALIBRATION_SAMPLES:
            raise EdgefabError(
                f"calibration samples must be at least {MIN_CALIBRATION_SAMPLES}, got {self.samples}"
            )

    def group_for(self, matrices: np.ndarray) -> int:
        """The group size of one layer's ``[G, R, C]`` matrices."""
        columns = matrices.shape[-1]
        if self.group_size == "auto":
            return auto_group_size(matrices)
        if self.group_size == "channel":
            return columns
        return min(int(self.group_size), columns)


@dataclass
class WeightOnlyResult:
    """What :func:`quantize_weights` wrote and how each layer fared."""

    path: Path  # integers + DequantizeLinear, opset 21 (what ships)
    twin_path: Path  # the same model with the dequantized weights as float32 (what TVM compiles)
    options: WeightOnlyOptions
    calibration_samples: int
    layers: list[dict[str, Any]] = field(default_factory=list)

    def settings(self) -> dict[str, Any]:
        """The manifest's record of the method and settings."""
        sizes = sorted({row["group_size"] for row in self.layers})
        return {
            "method": self.options.method,
            "bits": self.options.bits,
            "group_size": self.options.group_size,
            "group_sizes_used": sizes,
            "act_order": self.options.act_order,
            "damp": self.options.damp,
            "block": self.options.block,
            "format": f"uint{self.options.bits} weights + DequantizeLinear (opset 21, per group scale/zero)",
            "calibration_samples": self.calibration_samples,
            "exclude_nodes": list(self.options.exclude_nodes),
            "quantized_nodes": len(self.layers),
        }


def _check_layers(model: onnx.ModelProto, options: WeightOnlyOptions) -> list[Layer]:
    names = {node.name for node in model.graph.node}
    unknown = [name for name in options.exclude_nodes if name not in names]
    layers = find_layers(model, options.exclude_nodes)
    if unknown:
        examples = ", ".join(layer.node for layer in layers[:5]) or "none"
        raise EdgefabError(
            f"--exclude-nodes names unknown node '{unknown[0]}'; quantizable nodes: {examples}"
        )
    if not layers:
        why = "every quantizable node is excluded" if options.exclude_nodes else "it has none"
        raise EdgefabError(
            f"the model has no {'/'.join(LAYER_OPS)} node with a constant float weight to quantize "
            f"({why}); weight-only quantization would change nothing: drop --quantize"
        )
    return layers


def _upstream(model: onnx.ModelProto, layers: list[Layer]) -> dict[str, set[str]]:
    """For each layer's input tensor, the layers (by node name) it depends on."""
    by_node = {layer.node for layer in layers}
    deps: dict[str, set[str]] = {}
    for node in model.graph.node:
        found = set().union(*(deps.get(name, set()) for name in node.input))
        if node.name in by_node:
            found = found | {node.name}
        for out in node.output:
            deps[out] = found
    return {layer.node: deps.get(layer.input, set()) for layer in layers}


def _hessians(model: onnx.ModelProto, layers: list[Layer], feeds: list[Feeds]) -> dict[str, np.ndarray]:
    """Each layer's Hessian from running ``model`` (the quantized prefix) on ``feeds``."""
    import onnxruntime as ort

    inputs = {v.name for v in model.graph.input}
    wanted = sorted({layer.input for layer in layers} - inputs)
    run = onnx.ModelProto()
    run.CopyFrom(model)
    known = {o.name for o in run.graph.output}
    run.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in wanted if n not in known)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(run.SerializeToString(), options, providers=["CPUExecutionProvider"])
    sums = {layer.node: HessianSum() for layer in layers}
    for feed in feeds:
        values = dict(zip(wanted, session.run(wanted, feed), strict=True)) if wanted else {}
        values.update(feed)
        for layer in layers:
            sums[layer.node].add(layer_columns(np.asarray(values[layer.input], np.float32), layer))
    return {name: total.value() for name, total in sums.items()}


def _bytes(q: QuantizedMatrix, bits: int) -> int:
    groups = q.scale.size
    return -(-q.codes.size * bits // 8) + 4 * groups + -(-groups * bits // 8)


def quantize_weights(
    model_path: Path,
    calibration_feeds: list[Feeds],
    options: WeightOnlyOptions | None = None,
    out_path: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> WeightOnlyResult:
    """Quantize the weights of the float model at ``model_path``; write the result to ``out_path``.

    ``calibration_feeds`` are per-sample input dicts (GPTQ uses the first ``options.samples``;
    round-to-nearest needs none). ``progress(done, total)`` is told after each layer.
    """
    from threadpoolctl import threadpool_limits

    # GPTQ multiplies many small matrices: with BLAS threads on a busy machine a 27 x 2304
    # product took 95 ms instead of 0.1 ms here, so BLAS runs on one thread meanwhile.
    with threadpool_limits(limits=1, user_api="blas"):
        return _quantize_weights(
            Path(model_path), calibration_feeds, options or WeightOnlyOptions(), out_path, progress
        )


def _quantize_weights(
    model_path: Path,
    calibration_feeds: list[Feeds],
    options: WeightOnlyOptions,
    out_path: Path | None,
    progress: Callable[[int, int], None] | None,
) -> WeightOnlyResult:
    out_path = Path(out_path or model_path.with_name(model_path.stem + f"_w{options.bits}.onnx"))
    model = onnx.load(str(model_path))
    layers = _check_layers(model, options)
    feeds = list(calibration_feeds)[: options.samples]
    if options.method == "gptq" and len(feeds) < MIN_CALIBRATION_SAMPLES:
        raise EdgefabError(
            f"calibration data has {len(feeds)} samples; GPTQ needs at least {MIN_CALIBRATION_SAMPLES}"
        )
    weights = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    upstream = _upstream(model, layers)
    dequantized: dict[str, np.ndarray] = {}
    results: dict[str, tuple[Layer, QuantizedMatrix]] = {}
    rows: list[dict[str, Any]] = []
    pending = list(layers)
    while pending:
        waiting = {layer.node for layer in pending}
        ready = [layer for layer in pending if not upstream[layer.node] & waiting]
        pending = [layer for layer in pending if layer not in ready]
        gptq_run = options.method == "gptq"
        hessians = _hessians(float_twin(model, dequantized), ready, feeds) if gptq_run else {}
        for layer in ready:
            q, row = _quantize_layer(layer, weights[layer.weight], hessians.get(layer.node), options)
            dequantized[layer.weight] = layer.weight_from(q.dequantize())
            results[layer.weight] = (layer, q)
            rows.append(row)
            if progress:
                progress(len(rows), len(layers))
    onnx.save(compact(dequantize_graph(model, results, options.bits)), str(out_path))
    twin_path = out_path.with_name(out_path.stem + "_float_twin.onnx")
    onnx.save(float_twin(model, dequantized), str(twin_path))
    return WeightOnlyResult(out_path, twin_path, options, len(feeds), rows)


def _quantize_layer(
    layer: Layer, weight: np.ndarray, hessian: np.ndarray | None, options: WeightOnlyOptions
) -> tuple[QuantizedMatrix, dict[str, Any]]:
    """One layer: its codes, and its row of the per-layer table."""
    matrices = layer.matrices(weight)
    size = options.group_for(matrices)
    nearest = rtn(matrices, options.bits, size)
    if options.method == "gptq" and hessian is not None:
        q = gptq(matrices, hessian, options.bits, size, options.damp, options.block, options.act_order)
    else:
        q = nearest
    row = {
        "node": layer.node,
        "op": layer.op,
        "shape": list(layer.shape),
        "group_size": size,
        "per_channel": size >= matrices.shape[-1],
        "bytes_fp32": 4 * weight.size,
        "bytes_quantized": _bytes(q, options.bits),
        "gptq_error": None,
        "rtn_error": None,
    }
    if hessian is not None:  # relative output errors on this layer's calibration inputs
        row["rtn_error"] = round(output_error(matrices, nearest.dequantize(), hessian), 6)
        if options.method == "gptq":
            row["gptq_error"] = round(output_error(matrices, q.dequantize(), hessian), 6)
    return q, row

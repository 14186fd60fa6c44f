"""INT8 static quantization with ONNX Runtime's quantizer, in QDQ form.

One entry function per method (ONNX Runtime's style): :func:`quantize_int8` takes a float ONNX
file, calibration feeds and :class:`Int8Options`, and writes the QDQ model. QDQ is the only int8
form TVM's ONNX importer takes. Steps: opset raised to 13 where older (per-channel DequantizeLinear
needs its ``axis``), ``quant_pre_process`` (shape inference and ORT's basic graph optimisations),
then ``quantize_static(..., quant_format=QuantFormat.QDQ)``. Data types come from the CPU that runs
the model (:mod:`edgefab.compress.cpu`) unless given. Another method (weight-only w4, say) is
another entry function beside this one.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.numpy_helper

from edgefab.compress.calibration import MIN_CALIBRATION_SAMPLES, Feeds, FeedsReader, check_sample_count
from edgefab.compress.cpu import CpuInfo, Int8Types, host_cpu, safe_int8_types
from edgefab.compress.finequant import int8_wants_per_channel
from edgefab.errors import EdgefabError

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
GRANULARITIES = ("auto", "channel", "tensor")  # of the weights' scales; auto: per matrix, see finequant
DATA_TYPES = ("uint8", "int8")
QUANTIZABLE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")  # ops with weights to make int8
PER_CHANNEL_OPSET = 13


@dataclass(frozen=True)
class Int8Options:
    """Settings of INT8 static quantization; None for a data type means "resolved from the CPU"."""

    calibration: str = "minmax"
    granularity: str = "auto"
    samples: int = 128  # calibration samples used at most
    exclude_nodes: tuple[str, ...] = ()
    activation_type: str | None = None
    weight_type: str | None = None
    reduce_range: bool | None = None

    def __post_init__(self) -> None:
        if self.calibration not in CALIBRATION_METHODS:
            raise EdgefabError(
                f"unknown calibration method '{self.calibration}'; "
                f"choose one of {', '.join(CALIBRATION_METHODS)}"
            )
        if self.granularity not in GRANULARITIES:
            raise EdgefabError(
                f"unknown weight granularity '{self.granularity}'; choose one of {', '.join(GRANULARITIES)}"
            )
        for name in ("activation_type", "weight_type"):
            value = getattr(self, name)
            if value is not None and value not in DATA_TYPES:
                raise EdgefabError(f"unknown {name} '{value}'; choose one of {', '.join(DATA_TYPES)}")
        if self.samples < MIN_CALIBRATION_SAMPLES:
            raise EdgefabError(
                f"calibration samples must be at least {MIN_CALIBRATION_SAMPLES}, got {self.samples}"
            )

    def resolve(self, cpu: CpuInfo) -> Int8Types:
        """The data types to use: those given, the rest chosen for ``cpu``."""
        safe = safe_int8_types(cpu)
        given = self.activation_type or self.weight_type or self.reduce_range is not None
        return Int8Types(
            self.activation_type or safe.activation_type,
            self.weight_type or safe.weight_type,
            safe.reduce_range if self.reduce_range is None else self.reduce_range,
            "given explicitly (automatic choice: " + safe.why + ")" if given else safe.why,
        )


@dataclass
class Int8Result:
    """What :func:`quantize_int8` wrote and how."""

    path: Path  # the QDQ model, compacted (what ships)
    float_path: Path  # the pre-processed float model it was quantized from (per-layer reference)
    debug_path: Path  # the QDQ model as the quantizer wrote it (names the per-layer tools rely on)
    types: Int8Types
    options: Int8Options
    calibration_samples: int
    quantized_nodes: list[str] = field(default_factory=list)
    per_channel_weights: list[str] = field(default_factory=list)

    def settings(self) -> dict[str, Any]:
        """The manifest's record of the method and settings."""
        return {
            "method": "static",
            "tool": f"onnxruntime.quantization {_ort_version()}",
            "format": "QDQ",
            "calibration": self.options.calibration,
            "calibration_samples": self.calibration_samples,
            "granularity": self.options.granularity,
            "per_channel_weights": len(self.per_channel_weights),
            "activation_type": self.types.activation_type,
            "weight_type": self.types.weight_type,
            "reduce_range": self.types.reduce_range,
            "why": self.types.why,
            "exclude_nodes": list(self.options.exclude_nodes),
            "quantized_nodes": len(self.quantized_nodes),
        }


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def quantize_int8(
    model_path: Path,
    out_path: Path,
    calibration_feeds: list[Feeds],
    options: Int8Options | None = None,
    cpu: CpuInfo | None = None,
) -> Int8Result:
    """Quantize the float model at ``model_path`` to an INT8 QDQ model at ``out_path``.

    ``calibration_feeds`` are per-sample input dicts (the first ``options.samples`` are used);
    ``cpu`` is where the model will run (default: this machine), which picks the data types.
    """
    options = options or Int8Options()
    out_path = Path(out_path)
    check_sample_count(len(calibration_feeds), MIN_CALIBRATION_SAMPLES, "calibration data")
    float_path = out_path.with_name(out_path.stem + "_float_prepared.onnx")
    _prepare(Path(model_path), float_path)
    float_model = onnx.load(str(float_path))
    nodes = _nodes_to_quantize(float_model, options.exclude_nodes)
    per_channel = per_channel_weights(float_model, nodes, options.granularity)
    types = options.resolve(cpu or host_cpu())
    feeds = calibration_feeds[: options.samples]
    debug_path = out_path.with_name(out_path.stem + "_debug.onnx")
    _run_quantizer(float_path, debug_path, feeds, options, types, per_channel)
    onnx.save(compact(onnx.load(str(debug_path))), str(out_path))
    return Int8Result(
        out_path, float_path, debug_path, types, options, len(feeds), nodes, sorted(per_channel)
    )


def per_channel_weights(model: onnx.ModelProto, nodes: list[str], granularity: str) -> dict[str, int]:
    """The weights of ``nodes`` to quantize per output channel, with their channel axis.

    ``channel``: all of them; ``tensor``: none; ``auto``: those :func:`int8_wants_per_channel` picks
    from the weights alone. Axes follow ONNX Runtime's defaults (Conv 0, Gemm 0 or 1 by ``transB``,
    MatMul 1).
    """
    consts = {init.name: init for init in model.graph.initializer}
    chosen = {}
    for node in model.graph.node:
        if node.name not in nodes or len(node.input) < 2 or node.input[1] not in consts:
            continue  # a weight computed at run time is quantized per tensor, as ORT does
        weights = onnx.numpy_helper.to_array(consts[node.input[1]])
        axis = _channel_axis(node)
        if weights.ndim < 2 or granularity == "tensor":
            continue
        rows = np.moveaxis(weights, axis, 0)
        if granularity == "channel" or int8_wants_per_channel(rows):
            chosen[node.input[1]] = axis
    return chosen


def _channel_axis(node: onnx.NodeProto) -> int:
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return 1  # MatMul's [K, N] and ConvTranspose's [C_in, C_out / group, ...]


def compact(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same QDQ graph in fewer bytes: short tensor names, no debug data.

    Graph inputs and outputs and compute nodes keep their names (``--exclude-nodes`` and the
    per-layer table use them); inner tensors get short names, Q/DQ nodes none; exporter metadata
    (torch's stack traces), doc strings and inferred shapes go; all-zero int32 bias zero points go
    (zero is DequantizeLinear's default).
    """
    graph = model.graph
    keep = {v.name for v in [*graph.input, *graph.output]}
    del graph.value_info[:]
    consts = {init.name: init for init in graph.initializer}
    renames: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        return renames.setdefault(name, f"q{len(renames)}")

    for node in graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            node.name = ""
            _drop_zero_bias_point(node, consts)
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
    used = {n for node in graph.node for n in node.input}
    kept = []
    for init in graph.initializer:
        init.name = short(init.name)
        if init.name in used:  # dropped zero points are no longer used
            kept.append(init)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return model


def _drop_zero_bias_point(node: onnx.NodeProto, consts: dict[str, onnx.TensorProto]) -> None:
    if node.op_type != "DequantizeLinear" or len(node.input) < 3 or node.input[2] not in consts:
        return
    zero = consts[node.input[2]]
    if zero.data_type == onnx.TensorProto.INT32 and not onnx.numpy_helper.to_array(zero).any():
        del node.input[2]


def _prepare(model_path: Path, out_path: Path) -> None:
    """Opset >= 13, then ORT's quantization pre-processing."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = onnx.load(str(model_path))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < PER_CHANNEL_OPSET:
        from onnx import version_converter

        try:
            model = version_converter.convert_version(model, PER_CHANNEL_OPSET)
        except Exception as exc:  # the converter raises bare RuntimeErrors; one line for the user
            raise EdgefabError(
                f"cannot raise the model's opset {opset} to {PER_CHANNEL_OPSET} for QDQ: {_first_line(exc)}"
            ) from None
    try:
        with contextlib.redirect_stdout(sys.stderr):
            quant_pre_process(model, str(out_path))
    except Exception as exc:
        raise EdgefabError(f"ONNX Runtime's quantization pre-processing failed: {_first_line(exc)}") from None


def _nodes_to_quantize(model: onnx.ModelProto, exclude: tuple[str, ...]) -> list[str]:
    """Names of the weighted nodes that will be quantized; checks ``exclude`` names exist."""
    names = [node.name for node in model.graph.node]
    unknown = [name for name in exclude if name not in names]
    if unknown:
        candidates = [n.name for n in model.graph.node if n.op_type in QUANTIZABLE_OPS][:5]
        raise EdgefabError(
            f"--exclude-nodes names unknown node '{unknown[0]}'; nodes are named as in "
            f"`edgefab quantize report`, e.g. {', '.join(candidates) or 'none'}"
        )
    weighted = [n.name for n in model.graph.node if n.op_type in QUANTIZABLE_OPS]
    if not weighted:
        raise EdgefabError(
            f"the model has no quantizable operator ({', '.join(QUANTIZABLE_OPS)}); int8 would make it "
            "neither smaller nor faster: build without --quantize"
        )
    kept = [name for name in weighted if name not in exclude]
    if not kept:
        raise EdgefabError(
            "--exclude-nodes excludes every quantizable node; exclude fewer or drop --quantize"
        )
    return kept


def _run_quantizer(
    float_path: Path,
    out_path: Path,
    feeds: list[Feeds],
    options: Int8Options,
    types: Int8Types,
    per_channel: dict[str, int],
) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[options.calibration]
    qtype = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    try:
        # The calibrators print progress to stdout, which belongs to the CLI's table or JSON.
        with contextlib.redirect_stdout(sys.stderr):
            quantize_static(
                str(float_path),
                str(out_path),
                FeedsReader(feeds),
                quant_format=QuantFormat.QDQ,
                activation_type=qtype[types.activation_type],
                weight_type=qtype[types.weight_type],
                per_channel=False,  # per weight instead, through ORT's tensor overrides
                reduce_range=types.reduce_range,
                calibrate_method=method,
                nodes_to_exclude=list(options.exclude_nodes),
                extra_options={
                    "TensorQuantOverrides": {name: [{"axis": axis}] for name, axis in per_channel.items()}
                },
            )
    except Exception as exc:  # ORT raises many types; the user needs one line
        raise EdgefabError(f"ONNX Runtime's quantizer failed: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

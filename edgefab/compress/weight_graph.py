"""The ONNX side of weight-only quantization: which weights, their Hessians, the exported graph.

A layer is a ``Conv``, ``Gemm`` or ``MatMul`` node whose weight is an initializer used by that
node alone. Its weight is seen as matrices ``W[G, R, C]`` (:mod:`edgefab.compress.gptq`): rows are
output channels, columns the reduction axis (``in/groups * kh * kw`` for a convolution, ``K`` for
a Gemm/MatMul); a convolution with ``group`` groups gives ``G = group`` matrices, each with the
Hessian of its own input channels (depthwise: ``R = 1``).

Export (the ONNX standard way, opset 21): each weight becomes a ``uint4``/``uint8`` initializer
(packed two to a byte for 4 bits) with a float32 scale and a ``uint4``/``uint8`` zero point per
row and group, and a ``DequantizeLinear`` (``axis`` and ``block_size`` for groups, per-axis for
per-channel) feeds the float op; convolution weights are stored as a 2-D matrix and reshaped back.
ONNX Runtime 1.32 runs this graph. TVM 0.27's ONNX importer does not take it (checked:
``TensorCopyFromBytes: size mismatch`` for 4-bit initializers, "DequantizeLinear blocked
quantization is not supported yet" for 8-bit groups), so TVM gets :func:`float_twin`: the same
graph with the dequantized weights as float32 constants, computing exactly what the
DequantizeLinear graph computes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, version_converter

from edgefab.compress.gptq import QuantizedMatrix
from edgefab.errors import EdgefabError

LAYER_OPS = ("Conv", "Gemm", "MatMul")
BLOCKED_OPSET = 21  # DequantizeLinear with block_size and 4-bit types
INT4_IR_VERSION = 10


@dataclass(frozen=True)
class Layer:
    """One quantizable node and how its weight maps to matrices."""

    node: str
    op: str
    weight: str  # initializer name
    input: str  # activation tensor feeding the node
    shape: tuple[int, ...]  # the weight's ONNX shape
    groups: int = 1  # convolution groups
    transposed: bool = False  # weight stored [K, N] (MatMul, Gemm without transB)
    conv: dict | None = None  # kernel, strides, pads, dilations of a convolution

    def matrices(self, weight: np.ndarray) -> np.ndarray:
        """The weight as ``[G, R, C]``."""
        matrix = weight.T if self.transposed else weight.reshape(weight.shape[0], -1)
        return matrix.reshape(self.groups, matrix.shape[0] // self.groups, matrix.shape[1])

    def weight_from(self, matrices: np.ndarray) -> np.ndarray:
        """The ONNX-shaped weight from ``[G, R, C]`` matrices."""
        matrix = matrices.reshape(-1, matrices.shape[-1])
        return matrix.T.copy() if self.transposed else matrix.reshape(self.shape)


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _conv_geometry(node: onnx.NodeProto, shape: tuple[int, ...], input_shape: list[int] | None) -> dict:
    attrs = _attrs(node)
    kernel = list(shape[2:])
    spatial = len(kernel)
    strides = list(attrs.get("strides", [1] * spatial))
    dilations = list(attrs.get("dilations", [1] * spatial))
    pads = list(attrs.get("pads", [0] * 2 * spatial))
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER") and input_shape:
        pads = [0] * 2 * spatial
        for i in range(spatial):
            size = input_shape[2 + i]
            out = -(-size // strides[i])
            total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - size)
            small, large = total // 2, total - total // 2
            pads[i], pads[i + spatial] = (small, large) if auto == "SAME_UPPER" else (large, small)
    return {"kernel": kernel, "strides": strides, "pads": pads, "dilations": dilations}


def find_layers(model: onnx.ModelProto, exclude: tuple[str, ...] = ()) -> list[Layer]:
    """The quantizable layers of ``model`` in graph order (``exclude``: node names kept float)."""
    inits = {init.name: init for init in model.graph.initializer}
    uses = Counter(name for node in model.graph.node for name in node.input)
    shapes = _value_shapes(model)
    layers = []
    for node in model.graph.node:
        if node.op_type not in LAYER_OPS or node.name in exclude or len(node.input) < 2:
            continue
        weight = node.input[1]
        if weight not in inits or uses[weight] != 1 or node.input[0] in inits:
            continue
        shape = tuple(inits[weight].dims)
        attrs = _attrs(node)
        if inits[weight].data_type != TensorProto.FLOAT or len(shape) < 2:
            continue
        if node.op_type == "Conv" and len(shape) in (3, 4):
            geometry = _conv_geometry(node, shape, shapes.get(node.input[0]))
            layers.append(
                Layer(node.name, "Conv", weight, node.input[0], shape, attrs.get("group", 1), conv=geometry)
            )
        elif node.op_type == "Gemm" and not attrs.get("transA", 0):
            layers.append(
                Layer(node.name, "Gemm", weight, node.input[0], shape, transposed=not attrs.get("transB", 0))
            )
        elif node.op_type == "MatMul" and len(shape) == 2:
            layers.append(Layer(node.name, "MatMul", weight, node.input[0], shape, transposed=True))
    return layers


def _value_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # shapes only refine SAME padding; without them explicit pads are used
        inferred = model
    values = [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]
    return {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}


# --- Hessians ---------------------------------------------------------------------------------------


def _patches(x: np.ndarray, layer: Layer) -> np.ndarray:
    """im2col of one sample's convolution input: [G, C_in/G * prod(kernel), positions]."""
    geo = layer.conv
    x = x[0]  # [C_in, *spatial] of a batch-1 sample
    if len(geo["kernel"]) == 1:  # 1-D: a 2-D convolution of height 1
        x = x[:, None, :]
        (begin, end), ones = geo["pads"], [1]
        geo = {
            "kernel": ones + geo["kernel"],
            "strides": ones + geo["strides"],
            "dilations": ones + geo["dilations"],
            "pads": [0, begin, 0, end],
        }
    (kh, kw), (sh, sw), (dh, dw) = geo["kernel"], geo["strides"], geo["dilations"]
    top, left, bottom, right = geo["pads"]
    x = np.pad(x, ((0, 0), (top, bottom), (left, right)))
    out_h = (x.shape[1] - dh * (kh - 1) - 1) // sh + 1
    out_w = (x.shape[2] - dw * (kw - 1) - 1) // sw + 1
    cols = [
        x[:, i * dh : i * dh + sh * (out_h - 1) + 1 : sh, j * dw : j * dw + sw * (out_w - 1) + 1 : sw]
        for i in range(kh)
        for j in range(kw)
    ]
    stacked = np.stack(cols, axis=1)  # [C_in, kh*kw, out_h, out_w]: columns ordered (channel, ki, kj)
    return stacked.reshape(layer.groups, -1, out_h * out_w)


def layer_columns(x: np.ndarray, layer: Layer) -> np.ndarray:
    """One sample's inputs to ``layer`` as columns: [G, C, positions]."""
    if layer.op == "Conv":
        if x.shape[0] != 1:
            return np.concatenate([_patches(sample[None], layer) for sample in x], axis=-1)
        return _patches(x, layer)
    return x.reshape(-1, x.shape[-1]).T[None]


class HessianSum:
    """Running ``H = 2 X X^T / n`` of a layer over calibration samples (float64)."""

    def __init__(self) -> None:
        self.total: np.ndarray | None = None
        self.count = 0

    def add(self, columns: np.ndarray) -> None:
        """Add one sample's input columns [G, C, positions]."""
        cols = np.ascontiguousarray(columns, dtype=np.float32)
        # float32 products (BLAS), summed over samples in float64
        product = (cols @ np.swapaxes(cols, -1, -2)).astype(np.float64)
        self.total = product if self.total is None else self.total + product
        self.count += cols.shape[-1]

    def value(self) -> np.ndarray:
        """The Hessian [G, C, C]."""
        if self.total is None:
            raise EdgefabError("no calibration samples reached a layer; give calibration data")
        return 2.0 * self.total / max(1, self.count)


# --- export -------------------------------------------------------------------------------------------


def _packed(name: str, values: np.ndarray, bits: int) -> onnx.TensorProto:
    """A uint4 (two per byte, low nibble first) or uint8 initializer."""
    flat = values.astype(np.uint8).ravel()
    if bits == 8:
        return numpy_helper.from_array(values.astype(np.uint8), name)
    padded = np.concatenate([flat, np.zeros(len(flat) % 2, np.uint8)])
    raw = (padded[0::2] | (padded[1::2] << 4)).astype(np.uint8).tobytes()
    return helper.make_tensor(name, TensorProto.UINT4, list(values.shape), raw, raw=True)


def _storage(layer: Layer, q: QuantizedMatrix) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(codes, scale, zero, axis) in the orientation the DequantizeLinear stores them."""
    codes = q.codes.reshape(-1, q.codes.shape[-1])
    scale = q.scale.reshape(-1, q.scale.shape[-1])
    zero = q.zero.reshape(-1, q.zero.shape[-1])
    if layer.transposed:
        return codes.T, scale.T, zero.T, 0
    return codes, scale, zero, 1


def dequantize_nodes(
    layer: Layer, q: QuantizedMatrix, bits: int
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes and initializers that produce ``layer.weight`` (float) from the stored integers."""
    codes, scale, zero, axis = _storage(layer, q)
    base = layer.weight
    per_channel = scale.shape[axis] == 1  # one group per row: the standard per-axis form
    if per_channel:
        scale, zero = scale.reshape(-1), zero.reshape(-1)
        attrs = {"axis": 1 - axis}
    else:
        attrs = {"axis": axis, "block_size": q.group_size}
    inits = [
        _packed(f"{base}_q", codes, bits),
        numpy_helper.from_array(scale.astype(np.float32), f"{base}_scale"),
        _packed(f"{base}_zero", zero, bits),
    ]
    matrix_out = base if layer.op != "Conv" else f"{base}_matrix"
    nodes = [helper.make_node("DequantizeLinear", [i.name for i in inits], [matrix_out], **attrs)]
    if layer.op == "Conv":
        inits.append(numpy_helper.from_array(np.array(layer.shape, np.int64), f"{base}_shape"))
        nodes.append(helper.make_node("Reshape", [matrix_out, f"{base}_shape"], [base]))
    return nodes, inits


def quantized_graph(
    model: onnx.ModelProto, results: dict[str, tuple[Layer, QuantizedMatrix]], bits: int
) -> onnx.ModelProto:
    """``model`` (float) with every quantized weight stored as integers plus DequantizeLinear."""
    model = _at_opset(model, BLOCKED_OPSET)
    graph = model.graph
    kept = [init for init in graph.initializer if init.name not in results]
    new_nodes: list[onnx.NodeProto] = []
    for layer, q in results.values():
        nodes, inits = dequantize_nodes(layer, q, bits)
        new_nodes += nodes
        kept += inits
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = [*new_nodes, *graph.node]  # weights first: the graph stays topologically sorted
    del graph.node[:]
    graph.node.extend(nodes)
    model.ir_version = max(model.ir_version, INT4_IR_VERSION)
    return model


def float_twin(model: onnx.ModelProto, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """``model`` with the given initializers replaced by float32 values (the dequantized weights)."""
    twin = onnx.ModelProto()
    twin.CopyFrom(model)
    for init in twin.graph.initializer:
        if init.name in weights:
            init.CopyFrom(numpy_helper.from_array(weights[init.name].astype(np.float32), init.name))
    return twin


def _at_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if current >= opset:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return copy
    try:
        return version_converter.convert_version(model, opset)
    except Exception as exc:  # the converter raises bare RuntimeErrors; one line for the user
        line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise EdgefabError(
            f"cannot raise the model's opset {current} to {opset} (needed for 4-bit DequantizeLinear): {line}"
        ) from None

"""Size and work of an ONNX graph: parameters and multiply-accumulates (MACs).

MACs count the dense arithmetic (Conv, ConvTranspose, Gemm, MatMul, LSTM/GRU gates) from the
shapes ONNX shape inference gives; element-wise ops are not counted, as the MobileNet and
Once-for-All papers do.
"""

from __future__ import annotations

from math import prod

import onnx
from onnx import numpy_helper, shape_inference


def _static_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    inferred = shape_inference.infer_shapes(model)
    graph = inferred.graph
    shapes: dict[str, list[int]] = {}
    for value in list(graph.value_info) + list(graph.input) + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
            shapes[value.name] = [d.dim_value for d in dims]
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def _node_macs(node: onnx.NodeProto, shapes: dict[str, list[int]]) -> int:
    def shape(index: int, outputs: bool = False) -> list[int] | None:
        names = node.output if outputs else node.input
        return shapes.get(names[index]) if index < len(names) else None

    if node.op_type == "Conv":
        weight, out = shape(1), shape(0, outputs=True)
        if weight and out:  # weight (Cout, Cin/groups, k...): each output element costs prod(weight[1:])
            return prod(out) * prod(weight[1:])
    if node.op_type == "ConvTranspose":
        weight, x = shape(1), shape(0)
        if weight and x:  # weight (Cin, Cout/groups, k...): each input element feeds prod(weight[1:])
            return prod(x) * prod(weight[1:])
    if node.op_type in ("Gemm", "MatMul"):
        left, out = shape(0), shape(0, outputs=True)
        if left and out:
            transposed = any(a.name == "transA" and a.i for a in node.attribute)
            inner = left[-2] if transposed and len(left) >= 2 else left[-1]
            return prod(out) * inner
    if node.op_type in ("LSTM", "GRU"):
        weight, recurrence, x = shape(1), shape(2), shape(0)
        if weight and recurrence and x:
            # W (dirs, gates*H, I) and R (dirs, gates*H, H) are applied once per step and batch row
            return x[0] * x[1] * (prod(weight) + prod(recurrence))
    return 0


def count_macs(model: onnx.ModelProto) -> int:
    """Multiply-accumulates of one inference (ops whose shapes inference cannot fix count 0)."""
    shapes = _static_shapes(model)
    total = sum(_node_macs(node, shapes) for node in model.graph.node)
    for node in model.graph.node:  # If/Loop bodies: count their dense ops too
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                total += sum(_node_macs(inner, shapes) for inner in attr.g.node)
    return int(total)


def count_parameters(model: onnx.ModelProto) -> int:
    """Number of floating-point weight elements: initializers and Constant-node tensors."""
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant":
            tensors.extend(a.t for a in node.attribute if a.type == onnx.AttributeProto.TENSOR)
    return int(sum(prod(t.dims) for t in tensors if numpy_helper.to_array(t).dtype.kind == "f"))


def model_stats(model: onnx.ModelProto) -> dict[str, int]:
    """Parameters and MACs, as the manifest's figures record them."""
    return {"parameters": count_parameters(model), "macs": count_macs(model)}

"""ONNX graphs built straight from :class:`~edgefab.targets.layers.Layer` values (no torch).

Profiling measures each fused layer alone, and whole networks to fit the per-network overhead;
both are written here with ``onnx.helper``: convolutions with batch norm already folded into their
bias (as ONNX Runtime and TVM fold it), ReLU6 as ``Clip``, hard-swish as ``HardSwish``,
squeeze-excitation as pool, 1x1 convs and a ``HardSigmoid`` gate.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, shape_inference

from edgefab.targets.layers import Layer, se_channels

OPSET = 18
INPUT = "x"


class _Builder:
    def __init__(self, seed: int = 0):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.rng = np.random.default_rng(seed)
        self.count = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def const(self, array: np.ndarray, prefix: str = "w") -> str:
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def act(self, x: str, act: str) -> str:
        if act == "relu6":
            return self.node("Clip", [x, self.const(np.array(0.0), "c"), self.const(np.array(6.0), "c")])
        if act == "hswish":
            return self.node("HardSwish", [x])
        if act == "swish":
            return self.node("Mul", [x, self.node("Sigmoid", [x])])
        return x

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> str:
        fan_in = cin // groups * k * k
        weight = self.rng.standard_normal((cout, cin // groups, k, k)) / np.sqrt(fan_in)
        bias = self.rng.standard_normal(cout) * 0.01
        pad = k // 2
        return self.node(
            "Conv", [x, self.const(weight), self.const(bias, "b")], kernel_shape=[k, k],
            strides=[stride, stride], pads=[pad] * 4, group=groups,
        )  # fmt: skip

    def mbconv(self, x: str, layer: Layer) -> str:
        y = x
        if layer.mid != layer.cin:
            y = self.act(self.conv(y, layer.cin, layer.mid, 1), layer.act)
        y = self.act(self.conv(y, layer.mid, layer.mid, layer.kernel, layer.stride, layer.mid), layer.act)
        if layer.se:
            squeeze = se_channels(layer.mid)
            s = self.node("GlobalAveragePool", [y])
            s = self.node("Relu", [self.conv(s, layer.mid, squeeze, 1)])
            gate = self.node("HardSigmoid", [self.conv(s, squeeze, layer.mid, 1)], alpha=1 / 6, beta=0.5)
            y = self.node("Mul", [y, gate])
        y = self.conv(y, layer.mid, layer.cout, 1)
        return self.node("Add", [x, y]) if layer.residual else y

    def layer(self, x: str, layer: Layer) -> str:
        if layer.kind == "mbconv":
            return self.mbconv(x, layer)
        if layer.kind in ("conv", "dwconv"):
            groups = layer.cin if layer.kind == "dwconv" else 1
            y = self.conv(x, layer.cin, layer.cout, layer.kernel, layer.stride, groups)
            return self.act(y, layer.act)
        if layer.kind == "pool":
            return self.node("Flatten", [self.node("GlobalAveragePool", [x])])
        if layer.kind == "fc":
            weight = self.rng.standard_normal((layer.cout, layer.cin)) / np.sqrt(layer.cin)
            return self.node("Gemm", [x, self.const(weight), self.const(np.zeros(layer.cout), "b")], transB=1)
        if layer.kind == "eltwise":
            return self.node("Add", [x, x])
        raise ValueError(f"cannot build a graph for layer kind {layer.kind!r}")


def input_shape(layer: Layer) -> list[int]:
    """NCHW (or N x features for a classifier) input of a layer on its own."""
    return [layer.h, layer.cin] if layer.kind == "fc" else [1, layer.cin, layer.h, layer.w]


def layers_graph(layers: Sequence[Layer], seed: int = 0) -> onnx.ModelProto:
    """One ONNX model running ``layers`` in sequence (one layer: that layer alone)."""
    builder = _Builder(seed)
    out = INPUT
    for layer in layers:
        out = builder.layer(out, layer)
    graph = helper.make_graph(
        builder.nodes, "edgefab-layers",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, input_shape(layers[0]))],
        [helper.make_empty_tensor_value_info(out)], builder.inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 9
    inferred = shape_inference.infer_shapes(model)  # gives the output its type and shape
    model.graph.output[0].CopyFrom(inferred.graph.output[0])
    return model


def random_input(layer: Layer, seed: int = 0) -> np.ndarray:
    """A standard-normal input for a graph that starts with ``layer``."""
    return np.random.default_rng(seed).standard_normal(input_shape(layer)).astype(np.float32)

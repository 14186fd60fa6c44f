"""Cut an ONNX graph into fused :class:`~edgefab.targets.layers.Layer` values.

Depthwise convolutions anchor MBConv blocks: the 1x1 convolution feeding one (through its
activation) is the expand, the 1x1 convolution it feeds (through activation and optional
squeeze-excitation) is the projection, and an ``Add`` of the block's input after it the residual.
Every other convolution is a layer of its own with the activation after it fused in. Ops that cost
nothing measurable (reshapes, constants) are passed over; an op no model knows is listed by name.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from math import prod

import onnx
from onnx import shape_inference

from edgefab.targets.layers import Layer

_ACTIVATIONS = {"Relu": "relu6", "Clip": "relu6", "HardSwish": "hswish", "Sigmoid": "swish"}
_FUSED = {"BatchNormalization", "Identity", "Dropout", *_ACTIVATIONS, "HardSigmoid"}
_FREE = {
    "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Constant", "Shape", "Gather", "Concat", "Cast",
    "Softmax", "Transpose", "ConstantOfShape", "Slice", "Range", "Expand",
}  # fmt: skip
_ELTWISE = {"Add", "Mul", "Sub", "Div"}
_POOLS = {"GlobalAveragePool", "ReduceMean", "AveragePool", "MaxPool", "GlobalMaxPool"}


@dataclass
class Decomposition:
    """The layers of a graph, and the ops (``name (OpType)``) that no latency model covers."""

    layers: list[Layer]
    left_out: list[str] = field(default_factory=list)


class _Graph:
    """Producer/consumer maps, static shapes and attributes of a shape-inferred graph."""

    def __init__(self, model: onnx.ModelProto):
        graph = shape_inference.infer_shapes(model).graph
        self.nodes = list(graph.node)
        self.shapes: dict[str, list[int]] = {}
        for value in list(graph.value_info) + list(graph.input) + list(graph.output):
            dims = value.type.tensor_type.shape.dim
            if dims and all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
                self.shapes[value.name] = [d.dim_value for d in dims]
        self.constants = {init.name for init in graph.initializer}
        for init in graph.initializer:
            self.shapes[init.name] = list(init.dims)
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[int]] = defaultdict(list)
        for index, node in enumerate(self.nodes):
            for name in node.output:
                self.producer[name] = index
            for name in node.input:
                self.consumers[name].append(index)
            if node.op_type == "Constant":
                self.constants.update(node.output)
        self.initializers = {init.name: init for init in graph.initializer}
        self.used: set[int] = set()

    def attr(self, index: int, name: str, default):
        for attribute in self.nodes[index].attribute:
            if attribute.name == name:
                return onnx.helper.get_attribute_value(attribute)
        return default

    def conv_kind(self, index: int) -> str | None:
        """ "pw" (1x1), "dw" (depthwise), "dense" or "grouped"; None if the shapes are unknown."""
        node = self.nodes[index]
        x, wt = self.shapes.get(node.input[0]), self.shapes.get(node.input[1])
        if not x or not wt or len(x) != 4 or node.output[0] not in self.shapes:
            return None
        groups = self.attr(index, "group", 1)
        if groups == 1:
            return "pw" if wt[2] == wt[3] == 1 and max(self.attr(index, "strides", [1, 1])) == 1 else "dense"
        return "dw" if groups == x[1] and wt[1] == 1 else "grouped"

    def data_input(self, index: int) -> str:
        """The first input of a node that is not a constant."""
        node = self.nodes[index]
        return next((n for n in node.input if n and n not in self.constants), node.input[0])

    def single_consumer(self, tensor: str) -> int | None:
        users = [i for i in self.consumers.get(tensor, []) if i not in self.used]
        return users[0] if len(users) == 1 else None

    def follow_activations(self, tensor: str) -> tuple[str, str, list[int]]:
        """Walk forward through fused ops; returns the last tensor, the activation and the nodes walked."""
        act, walked = "none", []
        while True:
            users = [i for i in self.consumers.get(tensor, []) if i not in self.used]
            ops = {self.nodes[i].op_type for i in users}
            if len(users) == 1 and ops <= _FUSED and ops != {"HardSigmoid"}:
                act = _ACTIVATIONS.get(self.nodes[users[0]].op_type, act)
            elif len(users) == 2 and ops in ({"Mul", "Sigmoid"}, {"Mul", "HardSigmoid"}):
                gate = next(i for i in users if self.nodes[i].op_type != "Mul")
                mul = next(i for i in users if self.nodes[i].op_type == "Mul")
                if self.nodes[gate].output[0] not in self.nodes[mul].input:
                    break
                act = "hswish" if self.nodes[gate].op_type == "HardSigmoid" else "swish"
                walked.append(gate)
                users = [mul]
            else:
                break
            walked.append(users[0])
            tensor = self.nodes[users[0]].output[0]
        return tensor, act, walked


def _squeeze_excitation(g: _Graph, tensor: str) -> tuple[str, list[int]] | None:
    """If ``tensor`` feeds a pool-conv-conv-gate-Mul branch, the Mul's output and the branch's nodes."""
    users = [i for i in g.consumers.get(tensor, []) if i not in g.used]
    pools = [i for i in users if g.nodes[i].op_type in ("GlobalAveragePool", "ReduceMean")]
    muls = [i for i in users if g.nodes[i].op_type == "Mul"]
    if len(users) != 2 or len(pools) != 1 or len(muls) != 1:
        return None
    branch, frontier = [], [pools[0]]
    while frontier:  # everything between the pool and the Mul belongs to the branch
        index = frontier.pop()
        if index == muls[0] or index in branch:
            continue
        branch.append(index)
        frontier += g.consumers.get(g.nodes[index].output[0], [])
        if len(branch) > 12:
            return None
    return g.nodes[muls[0]].output[0], branch + muls


def _mbconv(g: _Graph, dw: int) -> Layer | None:
    """The MBConv block around depthwise conv ``dw`` (marks its nodes used), or None."""
    walked: list[int] = []
    block_input = g.nodes[dw].input[0]
    back = g.producer.get(block_input)
    while back is not None and g.nodes[back].op_type in _FUSED | {"Mul"} and back not in g.used:
        walked.append(back)
        back = g.producer.get(g.data_input(back))
    is_expand = back is not None and g.nodes[back].op_type == "Conv" and g.conv_kind(back) == "pw"
    if is_expand and back not in g.used:
        block_input = g.nodes[back].input[0]
        walked.append(back)
    else:
        walked = []
    tensor, act, forward = g.follow_activations(g.nodes[dw].output[0])
    se = _squeeze_excitation(g, tensor)
    if se:
        tensor, branch = se
        forward += branch
        tensor, _, more = g.follow_activations(tensor)
        forward += more
    project = g.single_consumer(tensor)
    if project is None or g.nodes[project].op_type != "Conv" or g.conv_kind(project) != "pw":
        return None
    tensor, _, tail = g.follow_activations(g.nodes[project].output[0])
    add = g.single_consumer(tensor)
    residual = add is not None and g.nodes[add].op_type == "Add" and block_input in g.nodes[add].input
    g.used.update(walked + [dw] + forward + [project] + tail + ([add] if residual else []))
    x, mid_shape = g.shapes[block_input], g.shapes[g.nodes[dw].input[0]]
    kernel = g.shapes[g.nodes[dw].input[1]][2]
    return Layer(
        "mbconv", x[2], x[3], x[1], g.shapes[g.nodes[project].output[0]][1], kernel,
        g.attr(dw, "strides", [1, 1])[0], mid=mid_shape[1], se=se is not None, act=_block_act(act),
        residual=residual, name=g.nodes[dw].name or f"node {dw}",
    )  # fmt: skip


def _block_act(act: str) -> str:
    return act if act in ("relu6", "hswish") else "relu6" if act == "none" else act


def _single(g: _Graph, index: int) -> tuple[Layer | None, str | None]:
    """A layer for one remaining node, or the reason it is left out (None, None: costs nothing)."""
    node = g.nodes[index]
    op, name = node.op_type, node.name or f"node {index}"
    if op in _FREE or op in _FUSED or op == "HardSigmoid":
        return None, None
    x, y = g.shapes.get(node.input[0]) if node.input else None, g.shapes.get(node.output[0])
    if op == "Conv":
        kind = g.conv_kind(index)
        if kind in (None, "grouped"):
            return None, f"{name} (Conv, {'unknown shapes' if kind is None else 'grouped'})"
        _, act, walked = g.follow_activations(node.output[0])
        g.used.update(walked)
        k, stride = g.shapes[node.input[1]][2], g.attr(index, "strides", [1, 1])[0]
        layer_kind = "dwconv" if kind == "dw" else "conv"
        return Layer(layer_kind, x[2], x[3], x[1], y[1], k, stride, act=act, name=name), None
    if op in ("Gemm", "MatMul") and x and y:
        rows = prod(x[:-1])
        return Layer("fc", rows, 1, x[-1], y[-1], act="none", name=name), None
    if op in _POOLS and x and len(x) == 4:
        k = g.attr(index, "kernel_shape", [0])[0]
        return Layer("pool", x[2], x[3], x[1], x[1], k, act="none", name=name), None
    if op in _ELTWISE and y and len(y) == 4:
        return Layer("eltwise", y[2], y[3], y[1], y[1], act="none", name=name), None
    return None, f"{name} ({op})"


def onnx_layers(model: onnx.ModelProto) -> Decomposition:
    """The fused layers of a static-shape ONNX graph, in order, and what was left out."""
    g = _Graph(model)
    found: dict[int, Layer] = {}
    for index, node in enumerate(g.nodes):
        if node.op_type == "Conv" and g.conv_kind(index) == "dw" and index not in g.used:
            layer = _mbconv(g, index)
            if layer is not None:
                found[index] = layer
    left_out = []
    for index in range(len(g.nodes)):
        if index in g.used:
            continue
        g.used.add(index)
        layer, reason = _single(g, index)
        if layer is not None:
            found[index] = layer
        if reason:
            left_out.append(reason)
    return Decomposition([found[i] for i in sorted(found)], left_out)

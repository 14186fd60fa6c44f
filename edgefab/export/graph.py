"""ONNX graph utilities: parse input specs, fix shapes, simplify, verify with ONNX Runtime.

Real edge models arrive with dynamic dims and shape arithmetic (Shape/Gather/Concat/Reshape) that
TVM's importer cannot take. The path to a compilable graph is: fix every input shape, optionally
bind constant inputs, let onnxslim fold the shape arithmetic (and any `If` whose condition becomes
constant), then check the result against the original in ONNX Runtime.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import helper, numpy_helper

from edgefab.errors import EdgefabError

_SPEC = re.compile(r"^(?P<name>[^:=\s]+):(?P<dims>.*)$")
_SPEC_FORM = "NAME:D1,D2,... (e.g. x:1,3,48,192), or NAME: / NAME:scalar for a scalar"
_VALUE_FORM = "NAME=V1,V2,... (e.g. sr=16000)"


# --- specs ---------------------------------------------------------------------------------------


def parse_input_specs(specs: list[str]) -> dict[str, list[int]]:
    """Parse ``NAME:D1,D2,...`` specs into ``{name: dims}``; ``NAME:`` or ``NAME:scalar`` is rank 0."""
    shapes: dict[str, list[int]] = {}
    for spec in specs:
        match = _SPEC.match(spec.strip())
        if not match:
            raise EdgefabError(f"bad input spec '{spec}': expected {_SPEC_FORM}")
        name, dims = match["name"], match["dims"].strip()
        if dims in ("", "scalar"):
            shapes[name] = []
            continue
        try:
            values = [int(d) for d in dims.split(",")]
        except ValueError:
            raise EdgefabError(f"bad input spec '{spec}': expected {_SPEC_FORM}") from None
        if any(v <= 0 for v in values):
            raise EdgefabError(f"bad input spec '{spec}': dims must be positive integers")
        shapes[name] = values
    return shapes


def parse_input_values(specs: list[str]) -> dict[str, list[float]]:
    """Parse ``NAME=V1,V2,...`` specs (constant inputs to bind, see :func:`bind_inputs`)."""
    values: dict[str, list[float]] = {}
    for spec in specs:
        name, sep, text = spec.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            values[name.strip()] = [float(v) for v in text.split(",")]
        except ValueError:
            raise EdgefabError(f"bad input value '{spec}': expected {_VALUE_FORM}") from None
    return values


# --- loading and signatures ----------------------------------------------------------------------


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """Load an ONNX model; a missing, unreadable or non-ONNX file is an :class:`EdgefabError`."""
    path = Path(path)
    if not path.is_file():
        raise EdgefabError(f"ONNX file {path} does not exist")
    try:
        model = onnx.load(str(path))
    except (DecodeError, OSError, ValueError) as exc:
        raise EdgefabError(f"{path} is not a valid ONNX file ({type(exc).__name__})") from None
    # Protobuf happily parses some arbitrary bytes into an empty message: demand a real graph.
    if model.ir_version <= 0 or not model.graph.node:
        raise EdgefabError(f"{path} is not a valid ONNX file (no graph)")
    return model


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    """A value's shape: ints for static dims, strings for symbolic ones ('?' when unnamed)."""
    dims: list[int | str] = []
    for dim in value.type.tensor_type.shape.dim:
        if dim.HasField("dim_value") and dim.dim_value > 0:
            dims.append(dim.dim_value)
        else:
            dims.append(dim.dim_param or "?")
    return dims


def _signature(values) -> list[dict]:
    return [
        {
            "name": v.name,
            "shape": _dims(v),
            "dtype": helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
        }
        for v in values
    ]


def _real_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    # Old exporters list initializers as graph inputs too; those are weights, not feeds.
    weights = {init.name for init in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in weights]


def input_signature(model: onnx.ModelProto) -> list[dict]:
    """``[{"name", "shape", "dtype"}]`` for the graph's real inputs (not initializers)."""
    return _signature(_real_inputs(model))


def output_signature(model: onnx.ModelProto) -> list[dict]:
    """``[{"name", "shape", "dtype"}]`` for the graph's outputs."""
    return _signature(model.graph.output)


# --- shape fixing, binding, simplification -------------------------------------------------------


def fix_input_shapes(model: onnx.ModelProto, shapes: dict[str, list[int]]) -> onnx.ModelProto:
    """Return a copy whose inputs have the given static shapes; other inputs must already be static."""
    model = _copy(model)
    inputs = {v.name: v for v in _real_inputs(model)}
    unknown = sorted(set(shapes) - set(inputs))
    if unknown:
        raise EdgefabError(f"unknown input '{unknown[0]}'; the graph's inputs are: {', '.join(inputs)}")
    for name, value in inputs.items():
        current = _dims(value)
        if name not in shapes:
            symbolic = [d for d in current if isinstance(d, str)]
            if symbolic:
                raise EdgefabError(
                    f"input '{name}' has symbolic dims {current}; pass --input {name}:DIMS to fix them"
                )
            continue
        if len(shapes[name]) != len(current):
            raise EdgefabError(
                f"input '{name}' has rank {len(current)} {current}, but the spec gives "
                f"rank {len(shapes[name])} {shapes[name]}"
            )
        for dim, size in zip(value.type.tensor_type.shape.dim, shapes[name], strict=True):
            dim.Clear()
            dim.dim_value = size
    # Shapes inferred from the old symbolic inputs are stale; simplify() infers them again.
    del model.graph.value_info[:]
    return model


def bind_inputs(model: onnx.ModelProto, values: dict[str, np.ndarray | list[float]]) -> onnx.ModelProto:
    """Return a copy where the given inputs become constants (so that branches on them fold away)."""
    model = _copy(model)
    inputs = {v.name: v for v in _real_inputs(model)}
    for name, raw in values.items():
        if name not in inputs:
            raise EdgefabError(f"unknown input '{name}'; the graph's inputs are: {', '.join(inputs)}")
        info = _signature([inputs[name]])[0]
        array = np.asarray(raw, dtype=info["dtype"])
        if info["shape"] == [] and array.size == 1:
            array = array.reshape(())
        if any(isinstance(d, str) for d in info["shape"]) or list(array.shape) != info["shape"]:
            raise EdgefabError(
                f"value for input '{name}' has shape {list(array.shape)}, the input is {info['shape']}"
            )
        model.graph.input.remove(inputs[name])
        model.graph.initializer.append(numpy_helper.from_array(array, name))
    return model


def simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape inference, constant folding and graph simplification with onnxslim."""
    import onnxslim  # heavy import; only the compile path needs it

    try:
        return onnxslim.slim(_copy(model))
    except Exception as exc:  # onnxslim raises many types; the user needs one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EdgefabError(f"onnxslim could not simplify the graph: {first}") from None


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


# --- feeds, ONNX Runtime, verification -----------------------------------------------------------


def random_inputs(
    model_or_signature: onnx.ModelProto | list[dict],
    seed: int = 0,
    values: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Seeded random feeds (standard normal floats, small ints, bools); ``values`` overrides inputs."""
    signature = (
        input_signature(model_or_signature)
        if isinstance(model_or_signature, onnx.ModelProto)
        else model_or_signature
    )
    values = values or {}
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for spec in signature:
        name, dtype = spec["name"], np.dtype(spec["dtype"])
        symbolic = [d for d in spec["shape"] if isinstance(d, str)]
        if name in values:
            feeds[name] = _given_value(name, values[name], dtype, None if symbolic else spec["shape"])
            continue
        if symbolic:
            raise EdgefabError(f"input '{name}' has symbolic dims {spec['shape']}; fix its shape first")
        shape = tuple(spec["shape"])
        if dtype.kind == "f":
            feeds[name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[name] = rng.integers(0, 2, shape).astype(dtype)
        else:
            feeds[name] = rng.integers(0, 10, shape).astype(dtype)
    return feeds


def _given_value(name: str, value, dtype: np.dtype, shape: list[int] | None) -> np.ndarray:
    array = np.asarray(value, dtype=dtype)
    if shape is None or list(array.shape) == shape:
        return array
    # `sr=16000` parses to a one-element list; a scalar input needs it as a 0-d array.
    if array.size == int(np.prod(shape)):
        return array.reshape(shape)
    raise EdgefabError(f"value for input '{name}' has shape {list(array.shape)}, the input is {shape}")


def run_onnxruntime(
    model_or_path: onnx.ModelProto | str | Path,
    feeds: dict[str, np.ndarray],
    threads: int | None = None,
) -> list[np.ndarray]:
    """Run a model on ONNX Runtime's CPU provider; outputs in graph output order."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # warnings about unused initializers are noise here
    if threads:
        options.intra_op_num_threads = threads
    source = (
        model_or_path.SerializeToString()
        if isinstance(model_or_path, onnx.ModelProto)
        else str(model_or_path)
    )
    try:
        session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        return session.run(None, feeds)
    except Exception as exc:  # ORT raises its own exception types; keep it to one line
        first = str(exc).strip().splitlines()[0]
        raise EdgefabError(f"ONNX Runtime failed: {first}") from None


def max_abs_diff(a_outputs: list[np.ndarray], b_outputs: list[np.ndarray]) -> float:
    """Largest absolute difference between two output lists (inf if their count or shapes differ)."""
    if len(a_outputs) != len(b_outputs):
        return float("inf")
    worst = 0.0
    for a, b in zip(a_outputs, b_outputs, strict=True):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            return float("inf")
        if a.size:
            worst = max(worst, float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))))
    return worst


def verify_simplified(
    original: onnx.ModelProto,
    simplified: onnx.ModelProto,
    feeds: dict[str, np.ndarray],
    atol: float = 1e-4,
) -> float:
    """Run both graphs in ONNX Runtime; return the max abs diff, raise if it exceeds ``atol``."""
    # Inputs bound to constants are absent from the simplified graph, so feed it only what it takes.
    wanted = {spec["name"] for spec in input_signature(simplified)}
    diff = max_abs_diff(
        run_onnxruntime(original, feeds),
        run_onnxruntime(simplified, {k: v for k, v in feeds.items() if k in wanted}),
    )
    if diff > atol:
        raise EdgefabError(f"simplified graph differs from the original by {diff:.3g} (> {atol:g})")
    return diff


# --- lowering for TVM ----------------------------------------------------------------------------
# TVM's Relax ONNX frontend has no LSTM converter. Once shapes are static and weights constant, a
# forward LSTM unrolls into MatMul/Add/Sigmoid/Tanh/Mul per time step, which every backend takes.
# Only the plain ONNX form is rewritten; anything exotic stays an LSTM and is reported unsupported.

_DEFAULT_ACTS = [b"Sigmoid", b"Tanh", b"Tanh"]


def decompose_lstm(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy with every plain forward LSTM (static shapes, constant weights) unrolled."""
    model = onnx.shape_inference.infer_shapes(_copy(model))
    consts = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    shapes = {v.name: _dims(v) for v in [*model.graph.input, *model.graph.value_info]}
    nodes: list[onnx.NodeProto] = []
    for index, node in enumerate(model.graph.node):
        unrolled = None
        if node.op_type == "LSTM" and node.domain in ("", "ai.onnx"):
            unrolled = _unroll_lstm(node, consts, shapes.get(node.input[0], []), f"lstm{index}")
        if unrolled is None:
            nodes.append(node)
            continue
        new_nodes, new_consts = unrolled
        nodes.extend(new_nodes)
        model.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in new_consts.items())
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def _is_plain_lstm(node: onnx.NodeProto, consts: dict[str, np.ndarray]) -> bool:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    inputs = list(node.input) + [""] * (8 - len(node.input))
    return (
        attrs.get("direction", b"forward") == b"forward"
        and list(attrs.get("activations", _DEFAULT_ACTS)) == _DEFAULT_ACTS
        and "clip" not in attrs
        and not attrs.get("input_forget", 0)
        and not attrs.get("layout", 0)
        and inputs[1] in consts
        and inputs[2] in consts
        and (inputs[3] == "" or inputs[3] in consts)
        and inputs[4] == ""  # sequence_lens: variable lengths need masking
        and inputs[7] == ""  # peepholes
    )


def _unroll_lstm(node, consts, x_shape, uid):
    """Nodes and constants computing one LSTM step by step; None if it is not a plain LSTM."""
    if not _is_plain_lstm(node, consts) or len(x_shape) != 3 or any(isinstance(d, str) for d in x_shape):
        return None
    steps, batch, _ = x_shape
    inputs = list(node.input) + [""] * (8 - len(node.input))
    outputs = list(node.output) + [""] * (3 - len(node.output))
    w, r = consts[inputs[1]][0], consts[inputs[2]][0]  # [4H, I], [4H, H]
    hidden = r.shape[1]
    bias = consts[inputs[3]][0] if inputs[3] else np.zeros(8 * hidden, w.dtype)
    c = {  # constants, named uniquely for this LSTM
        f"{uid}_wt": np.ascontiguousarray(w.T),
        f"{uid}_rt": np.ascontiguousarray(r.T),
        f"{uid}_b": bias[: 4 * hidden] + bias[4 * hidden :],
        f"{uid}_zero": np.zeros((batch, hidden), w.dtype),
        f"{uid}_i0": np.array(0, np.int64),
        f"{uid}_axis1": np.array([1], np.int64),
        f"{uid}_out": np.array([1, 1, batch, hidden], np.int64),
        f"{uid}_state": np.array([1, batch, hidden], np.int64),
    }
    for k in range(5):
        c[f"{uid}_at{k}"] = np.array([k * hidden], np.int64)
    nodes: list[onnx.NodeProto] = []

    def add(op: str, ins: list[str], out: str, **attrs) -> str:
        nodes.append(helper.make_node(op, ins, [out], name=out, **attrs))
        return out

    def initial(slot: int, tag: str) -> str:
        # initial_h / initial_c are [1, B, H]: take direction 0.
        if not inputs[slot]:
            return f"{uid}_zero"
        return add("Gather", [inputs[slot], f"{uid}_i0"], f"{uid}_{tag}0", axis=0)

    h, cell, ys = initial(5, "h"), initial(6, "c"), []
    for t in range(steps):
        p = f"{uid}_t{t}"
        c[f"{p}_idx"] = np.array(t, np.int64)
        x_t = add("Gather", [inputs[0], f"{p}_idx"], f"{p}_x", axis=0)
        xw = add("MatMul", [x_t, f"{uid}_wt"], f"{p}_xw")
        hr = add("MatMul", [h, f"{uid}_rt"], f"{p}_hr")
        gates = add("Add", [add("Add", [xw, hr], f"{p}_sum"), f"{uid}_b"], f"{p}_gates")
        # ONNX gate order is i, o, f, c.
        parts = [
            add("Slice", [gates, f"{uid}_at{k}", f"{uid}_at{k + 1}", f"{uid}_axis1"], f"{p}_g{k}")
            for k in range(4)
        ]
        i_g, o_g, f_g = (add("Sigmoid", [parts[k]], f"{p}_s{k}") for k in range(3))
        c_g = add("Tanh", [parts[3]], f"{p}_tc")
        keep = add("Mul", [f_g, cell], f"{p}_keep")
        cell = add("Add", [keep, add("Mul", [i_g, c_g], f"{p}_new")], f"{p}_c")
        h = add("Mul", [o_g, add("Tanh", [cell], f"{p}_tanh")], f"{p}_h")
        ys.append(add("Reshape", [h, f"{uid}_out"], f"{p}_y"))
    if outputs[0]:
        add("Concat", ys, outputs[0], axis=0)
    if outputs[1]:
        add("Reshape", [h, f"{uid}_state"], outputs[1])
    if outputs[2]:
        add("Reshape", [cell, f"{uid}_state"], outputs[2])
    return nodes, c

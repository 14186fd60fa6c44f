"""Blocked channel layout passes: real TVM builds, checked against ONNX Runtime."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefab.export.layout import LayoutNotApplied, block_of, clip_as_ops, to_blocked_layout


def _conv(name, x, out, cin, cout, k, stride=1, groups=1, rng=None):
    weight = numpy_helper.from_array(
        rng.standard_normal((cout, cin // groups, k, k)).astype(np.float32) * 0.3, f"{name}_w"
    )
    bias = numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32) * 0.1, f"{name}_b")
    node = helper.make_node(
        "Conv", [x, weight.name, bias.name], [out], group=groups, strides=[stride, stride],
        pads=[k // 2] * 4, kernel_shape=[k, k],
    )  # fmt: skip
    return node, [weight, bias]


def _model() -> onnx.ModelProto:
    """stem 1->16 (one input channel: never blocked), ReLU6, depthwise 5x5 stride 2, ReLU6,
    pointwise 16->24, 3x3 24->12: which convolutions a block size can take differs."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    for args in (
        ("stem", "x", "a", 1, 16, 3, 2),
        ("dw", "a6", "b", 16, 16, 5, 2, 16),
        ("pw", "b6", "c", 16, 24, 1),
        ("last", "c", "y", 24, 12, 3),
    ):
        node, weights = _conv(*args, rng=rng)
        nodes.append(node)
        inits += weights
    inits += [numpy_helper.from_array(np.float32(v), n) for v, n in ((0.0, "lo"), (6.0, "hi"))]
    nodes.insert(1, helper.make_node("Clip", ["a", "lo", "hi"], ["a6"]))
    nodes.insert(3, helper.make_node("Clip", ["b", "lo", "hi"], ["b6"]))
    graph = helper.make_graph(
        nodes, "blocked", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 28, 28])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 12, 7, 7])], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def model_and_reference():
    model = _model()
    x = np.random.default_rng(1).standard_normal((1, 1, 28, 28)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return model, x, session.run(None, {"x": x})[0]


def _kernel_names(mod) -> list[str]:
    return sorted(gv.name_hint for gv in mod.functions)


def test_clip_becomes_relax_ops(model_and_reference):
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    mod = relax.transform.FoldConstant()(from_onnx(model_and_reference[0]))
    assert "call_tir" in mod["main"].script()  # the importer's Clip
    assert "call_tir" not in clip_as_ops(mod)["main"].script()


@pytest.mark.parametrize("block", [4, 8, 16])
def test_blocked_build_matches_onnxruntime(model_and_reference, block):
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    model, x, expected = model_and_reference
    mod = to_blocked_layout(from_onnx(model), block)
    kernels = _kernel_names(mod)
    # the depthwise is blocked at every size, 16->24 by 4 and 8, 24->12 by 4; the stem never
    assert "blocked_depthwise_conv2d" in kernels
    assert sum(name.startswith("blocked_conv2d") for name in kernels) == {4: 2, 8: 1, 16: 0}[block]
    executable = tvm.compile(mod, tvm.target.Target({"kind": "llvm"}))
    out = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_layout_names():
    assert [block_of(name) for name in ("NCHW", "NCHW4c", "NCHW8c", "NCHW16c")] == [0, 4, 8, 16]
    with pytest.raises(ValueError, match="unknown layout 'NHWC'"):
        block_of("NHWC")


def test_nothing_to_block_is_said():
    from tvm.relax.frontend.onnx import from_onnx

    with pytest.raises(LayoutNotApplied, match="no 2-D convolution whose channels divide by 32"):
        to_blocked_layout(from_onnx(_model()), 32)


def test_compile_falls_back_to_nchw_and_says_why(model_and_reference, tmp_path):
    """A layout that fits no convolution still compiles (in NCHW); the manifest details say why."""
    from edgefab.export.tvm_compile import compile_onnx
    from edgefab.runtime.tvm_engine import TVMEngine
    from edgefab.targets import load_target

    model, x, expected = model_and_reference
    blocked = compile_onnx(model, load_target("host"), tmp_path / "b", layout="NCHW16c")
    assert blocked.details["layout"] == "NCHW16c" and "layout_note" not in blocked.details
    thin = onnx.ModelProto()
    thin.CopyFrom(model)  # the stem alone: one input channel, nothing to block
    del thin.graph.node[1:]
    thin.graph.output[0].CopyFrom(helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 16, 14, 14]))
    plain = compile_onnx(thin, load_target("host"), tmp_path / "p", layout="NCHW8c")
    assert plain.details["layout"] == "NCHW"
    assert plain.details["layout_note"].startswith("NCHW8c not applied: no 2-D convolution")
    (out,) = TVMEngine(blocked.path, ["x"]).run({"x": x})
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_layout_errors_name_the_option():
    from edgefab.errors import EdgefabError
    from edgefab.export.tvm_compile import check_layout, resolve_tvm_target
    from edgefab.targets import load_target

    with pytest.raises(EdgefabError, match=r"unknown layout 'NHWC'.*\(--layout\)"):
        check_layout("NHWC", resolve_tvm_target(load_target("host")))
    with pytest.raises(EdgefabError, match="OpenCL code keeps NCHW"):
        check_layout("NCHW8c", resolve_tvm_target(load_target("pixel-gpu")))


def test_the_target_profile_sets_the_default_layout(model_and_reference, tmp_path):
    """A target's ``layout`` field is what a build gets without ``layout``; asking for one wins."""
    from importlib import resources

    from edgefab.export.tvm_compile import compile_onnx
    from edgefab.targets import load_target

    model, _, _ = model_and_reference
    lines = (resources.files("edgefab.targets") / "host.toml").read_text().splitlines()
    text = "\n".join(line for line in lines if not line.startswith("layout"))  # host's own, if any
    profile = tmp_path / "blocked-host.toml"
    profile.write_text('layout = "NCHW4c"\n' + text.replace('name = "host"', 'name = "blocked-host"'))
    target = load_target(profile)
    assert compile_onnx(model, target, tmp_path / "a").details["layout"] == "NCHW4c"
    assert compile_onnx(model, target, tmp_path / "b", layout="NCHW").details["layout"] == "NCHW"

"""Weight-only low-bit quantization (issue 6): GPTQ vs round-to-nearest on real layers, the w4
digits model in ONNX Runtime, FineQuant's group-size choice, the TVM form, the pipeline, bad input."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from edgefab.cli import app
from edgefab.compress.evaluate import agreement, first_outputs, session, top1_accuracy
from edgefab.compress.finequant import auto_group_size
from edgefab.compress.gptq import gptq, output_error, rtn
from edgefab.compress.weight_graph import HessianSum, find_layers, layer_columns
from edgefab.compress.weight_only import WeightOnlyOptions, parse_group_size, quantize_weights
from edgefab.data import load_dataset, normalization, to_float, train_val_split
from edgefab.errors import EdgefabError
from edgefab.pipeline.quantize import make_request

runner = CliRunner()


@pytest.fixture(scope="module")
def digits():
    """(calibration feeds, validation inputs, labels), preprocessed as the host package expects."""
    train, val = train_val_split(load_dataset("mnist"))
    prep = normalization(train)
    calibration = [{"input": x[None]} for x in to_float(train.images[:128], prep)]
    return calibration, to_float(val.images, prep), val.labels


@pytest.fixture(scope="module")
def fp32_model(host_build):
    return host_build[0] / "model.onnx"


@pytest.fixture(scope="module")
def w4(fp32_model, digits, tmp_path_factory):
    """The digits model, GPTQ w4 (group 128), and its round-to-nearest twin."""
    folder = tmp_path_factory.mktemp("w4")
    gptq_result = quantize_weights(fp32_model, digits[0], WeightOnlyOptions(), folder / "gptq.onnx")
    rtn_result = quantize_weights(fp32_model, [], WeightOnlyOptions(method="rtn"), folder / "rtn.onnx")
    return gptq_result, rtn_result


def _model(nodes, inits, x_shape, y_name="y", opset=17) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)
    y = helper.make_tensor_value_info(y_name, TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "g", [x], [y], [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


# --- GPTQ vs round-to-nearest ----------------------------------------------------------------------


def test_gptq_beats_round_to_nearest_on_every_layer(w4, fp32_model):
    """Each layer's output error on its real calibration inputs (quantized prefix), same grid."""
    result, _ = w4
    weighted = [n for n in onnx.load(str(fp32_model)).graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    assert len(result.layers) == len(weighted)  # every Conv (depthwise too) and the classifier
    for row in result.layers:
        assert row["gptq_error"] < row["rtn_error"], row
    mean_gptq = np.mean([r["gptq_error"] for r in result.layers])
    mean_rtn = np.mean([r["rtn_error"] for r in result.layers])
    assert mean_gptq < 0.8 * mean_rtn  # measured here: 0.04 vs 0.06


def test_gptq_lowers_the_model_output_error(w4, fp32_model, digits):
    result, nearest = w4
    feeds = [{"input": x[None]} for x in digits[1][:200]]
    reference = first_outputs(session(fp32_model), feeds)
    gptq_error = agreement(reference, first_outputs(session(result.path), feeds)).relative_rms
    rtn_error = agreement(reference, first_outputs(session(nearest.path), feeds)).relative_rms
    assert gptq_error < 0.85 * rtn_error  # measured here: 0.072 vs 0.100


def test_gptq_math_on_a_real_hessian(fp32_model, digits):
    """gptq() itself, on the Gemm's real inputs; act-order and 8 bits keep the ordering."""
    model = onnx.load(str(fp32_model))
    gemm = next(layer for layer in find_layers(model) if layer.op == "Gemm")
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    probe = model
    probe.graph.output.extend([helper.make_empty_tensor_value_info(gemm.input)])
    sess = session_from(probe)
    total = HessianSum()
    for feed in digits[0]:
        total.add(layer_columns(sess.run([gemm.input], feed)[0], gemm))
    h = total.value()
    w = gemm.matrices(weights[gemm.weight])
    for bits, act_order in ((4, False), (4, True), (8, False)):
        q = gptq(w, h, bits=bits, group_size=64, act_order=act_order)
        assert q.codes.max() <= 2**bits - 1
        assert output_error(w, q.dequantize(), h) < output_error(w, rtn(w, bits, 64).dequantize(), h)


def session_from(model: onnx.ModelProto):
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_conv_columns_match_onnx_runtime(tmp_path):
    """The Hessian's im2col (stride, padding, depthwise groups) matches what Conv computes: the
    output error predicted from H equals the one ONNX Runtime measures."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 1, 3, 3)).astype(np.float32)
    conv = helper.make_node("Conv", ["x", "w"], ["y"], name="dw", group=8, strides=[2, 2], pads=[1, 0, 1, 2])
    path = tmp_path / "dw.onnx"
    onnx.save(_model([conv], {"w": w}, [1, 8, 11, 9]), str(path))
    x = rng.standard_normal((1, 8, 11, 9)).astype(np.float32)
    layer = find_layers(onnx.load(str(path)))[0]
    total = HessianSum()
    total.add(layer_columns(x, layer))
    matrices = layer.matrices(w)
    q = rtn(matrices, 4, 9)
    predicted = output_error(matrices, q.dequantize(), total.value())
    quantized = tmp_path / "q.onnx"
    onnx.save(_model([conv], {"w": layer.weight_from(q.dequantize())}, [1, 8, 11, 9]), str(quantized))
    ref, out = session(path).run(None, {"x": x})[0], session(quantized).run(None, {"x": x})[0]
    measured = np.linalg.norm(out - ref) / np.linalg.norm(ref)
    assert predicted == pytest.approx(measured, rel=1e-3)


# --- the exported model ----------------------------------------------------------------------------


def test_w4_digits_runs_in_onnx_runtime_close_and_smaller(w4, fp32_model, digits):
    result, _ = w4
    model = onnx.load(str(result.path))
    onnx.checker.check_model(model, full_check=True)
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 21
    types = {init.data_type for init in model.graph.initializer}
    assert TensorProto.UINT4 in types
    blocked = [
        n for n in model.graph.node if n.op_type == "DequantizeLinear" and "block_size" in str(n.attribute)
    ]
    assert blocked  # the 144/256-column matrices are stored in groups of 128
    fp32 = top1_accuracy(session(fp32_model), digits[1], digits[2], "input")
    quantized = top1_accuracy(session(result.path), digits[1], digits[2], "input")
    assert fp32 - quantized <= 0.01
    assert result.path.stat().st_size <= 0.25 * fp32_model.stat().st_size  # measured: x0.153
    feeds = [{"input": x[None]} for x in digits[1][:32]]
    dq = first_outputs(session(result.path), feeds)
    twin = first_outputs(session(result.twin_path), feeds)
    assert np.abs(dq - twin).max() < 1e-4  # the float twin computes what DequantizeLinear does


def test_tvm_importer_still_rejects_the_int4_form(w4, tmp_path):
    """Why TVM gets the float twin: if this starts to pass, compile the int4 graph itself."""
    from edgefab.export.tvm_compile import compile_onnx
    from edgefab.targets import load_target

    with pytest.raises(EdgefabError, match="TVM's ONNX importer failed"):
        compile_onnx(onnx.load(str(w4[0].path)), load_target("host"), tmp_path)


# --- FineQuant's group size ------------------------------------------------------------------------


def test_auto_group_size_halves_only_where_outliers_are():
    rng = np.random.default_rng(0)
    smooth = rng.standard_normal((1, 64, 256))
    assert auto_group_size(smooth) == 256  # per-channel: nothing stretches the range
    spiky = smooth.copy()
    spiky[..., ::37] *= 12  # a few large weights per row
    assert auto_group_size(spiky) < 256


def test_auto_group_size_is_chosen_per_matrix(tmp_path):
    rng = np.random.default_rng(1)
    smooth = rng.standard_normal((128, 32)).astype(np.float32)  # MatMul weights are [K, N]
    spiky = rng.standard_normal((32, 16)).astype(np.float32)
    spiky[:3] *= 15  # large weights in the first half of every output's 32 inputs
    nodes = [
        helper.make_node("MatMul", ["x", "a"], ["h"], name="smooth"),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "b"], ["y"], name="spiky"),
    ]
    path = tmp_path / "mlp.onnx"
    onnx.save(_model(nodes, {"a": smooth, "b": spiky}, [1, 128]), str(path))
    feeds = [{"x": rng.standard_normal((1, 128)).astype(np.float32)} for _ in range(32)]
    result = quantize_weights(path, feeds, WeightOnlyOptions(group_size="auto"), tmp_path / "q.onnx")
    sizes = {row["node"]: row["group_size"] for row in result.layers}
    assert sizes == {"smooth": 128, "spiky": 16}
    assert result.settings()["group_sizes_used"] == sorted(set(sizes.values()))
    out = session(result.path).run(None, feeds[0])[0]
    ref = session(path).run(None, feeds[0])[0]
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 0.2


# --- the pipeline ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_w4_build_package_and_report(host_build, tmp_path):
    """`edgefab build --target host --quantize w4 --group-size auto`: guard, TVM twin, report."""
    from edgefab.pipeline.build import BuildOptions, build
    from edgefab.runtime import load

    path, manifest = build(BuildOptions(target="host", out=tmp_path, quantize="w4", group_size="auto"))
    section = manifest["quantization"]
    assert section["settings"]["method"] == "gptq" and section["settings"]["bits"] == 4
    assert section["accuracy"]["drop_points"] <= 1.0
    assert (
        section["bytes"]["quantized"] == manifest["figures"]["model_bytes"] < 0.25 * section["bytes"]["fp32"]
    )
    assert section["output_error"]["gptq"] < section["output_error"]["rtn"]
    assert manifest["engines"]["onnxruntime"]["session_config"] == {"session.disable_quant_qdq": "1"}
    tvm = manifest["engines"]["tvm"]
    assert "dequantized weights as float32" in tvm["arithmetic"] and tvm["max_abs_diff_vs_onnxruntime"] < 1e-4
    images = load_dataset("mnist").images[:32, 0]
    ort_logits = load(path, engine="onnxruntime").predict(images)
    assert np.abs(ort_logits - load(path, engine="tvm").predict(images)).max() < 1e-4
    report = runner.invoke(app, ["quantize", "report", str(path), "--json"])
    assert report.exit_code == 0, report.output
    layers = json.loads(report.output)["layers"]
    assert {"group_size", "bytes_fp32", "bytes_quantized", "gptq_error", "rtn_error"} <= set(layers[0])
    table = runner.invoke(app, ["quantize", "report", str(path), "--rows", "3"])
    assert table.exit_code == 0 and "per-layer output error" in table.output and "GPTQ" in table.output


# --- bad input -------------------------------------------------------------------------------------


def test_unknown_group_size_and_bits():
    assert parse_group_size("64") == 64 and parse_group_size("AUTO") == "auto"
    for bad in ("big", "0", "4", "-8", "12.5"):
        with pytest.raises(EdgefabError, match=f"unknown --group-size '{bad}'; give a whole number"):
            parse_group_size(bad)
    with pytest.raises(EdgefabError, match="takes 4 or 8 bits, got 3"):
        WeightOnlyOptions(bits=3)
    with pytest.raises(EdgefabError, match="unknown weight-only method 'awq'"):
        WeightOnlyOptions(method="awq")
    with pytest.raises(EdgefabError, match="--group-size and --act-order are for weight-only"):
        make_request("int8", group_size="64")
    with pytest.raises(EdgefabError, match="need --quantize w4 or w8"):
        make_request(None, act_order=True)
    assert make_request("w8", group_size="channel").weights.bits == 8


def test_cli_rejects_unknown_group_size(tmp_path):
    args = ["build", "--target", "host", "--quantize", "w4", "--group-size", "big", "--out", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "unknown --group-size 'big'" in result.output
    assert "Traceback" not in result.output


def test_model_without_weights_and_too_few_samples(tmp_path, fp32_model, digits):
    path = tmp_path / "relu.onnx"
    onnx.save(_model([helper.make_node("Relu", ["x"], ["y"], name="relu")], {}, [1, 4]), str(path))
    with pytest.raises(EdgefabError, match="no Conv/Gemm/MatMul node with a constant float weight"):
        quantize_weights(path, [{"x": np.ones((1, 4), np.float32)}] * 16)
    with pytest.raises(EdgefabError, match="has 5 samples; GPTQ needs at least 16"):
        quantize_weights(fp32_model, digits[0][:5], WeightOnlyOptions(), tmp_path / "q.onnx")
    with pytest.raises(EdgefabError, match="--exclude-nodes names unknown node 'nope'"):
        quantize_weights(
            fp32_model, digits[0], WeightOnlyOptions(exclude_nodes=("nope",)), tmp_path / "q.onnx"
        )

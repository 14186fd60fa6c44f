"""INT8 quantization (issue 6): the real digits model through ONNX Runtime's quantizer, the CPU
saturation trap, the accuracy guard, exclusions, TVM on the QDQ graph, and bad input."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from edgefab.cli import app
from edgefab.compress.calibration import feeds_from_arrays, read_calibration_file, split_held_out
from edgefab.compress.cpu import host_cpu, safe_int8_types, target_cpu
from edgefab.compress.evaluate import kernel_check, session, top1_accuracy
from edgefab.compress.finequant import int8_wants_per_channel
from edgefab.compress.int8 import Int8Options, per_channel_weights, quantize_int8
from edgefab.compress.report import layer_errors
from edgefab.data import load_dataset, normalization, to_float, train_val_split
from edgefab.errors import EdgefabError
from edgefab.pipeline.build import BuildOptions, build
from edgefab.pipeline.compile import CompileOptions, compile_model
from edgefab.pipeline.quantize import make_request, tvm_tolerance
from edgefab.runtime import load
from edgefab.targets import load_target

runner = CliRunner()
SIGNATURE = [{"name": "input", "shape": [1, 1, 28, 28], "dtype": "float32"}]


@pytest.fixture(scope="module")
def digits():
    """Preprocessed (train, validation) digits as the host package was trained on them."""
    train, val = train_val_split(load_dataset("mnist"))
    prep = normalization(train)
    return to_float(train.images[:128], prep), to_float(val.images, prep), val.labels


@pytest.fixture(scope="module")
def fp32_model(host_build) -> Path:
    """The float digits model that `edgefab build --target host` ships."""
    return host_build[0] / "model.onnx"


def _feeds(inputs: np.ndarray) -> list[dict[str, np.ndarray]]:
    return [{"input": x[None]} for x in inputs]


def _accuracy(path: Path, digits) -> float:
    _, inputs, labels = digits
    return top1_accuracy(session(path), inputs, labels, "input")


@pytest.fixture(scope="module")
def auto_int8(fp32_model, digits, tmp_path_factory):
    """The digits model quantized with the settings chosen automatically for this CPU."""
    out = tmp_path_factory.mktemp("int8") / "auto.onnx"
    return quantize_int8(fp32_model, out, _feeds(digits[0]), Int8Options())


# --- CPU detection and the saturation trap ---------------------------------------------------------


def test_cpu_flags_pick_the_types(tmp_path):
    vnni, plain = tmp_path / "vnni", tmp_path / "plain"
    vnni.write_text("processor : 0\nflags : fpu sse avx2 avx512f avx512_vnni\n")
    plain.write_text("processor : 0\nflags : fpu sse avx2 fma\n")
    if host_cpu(plain).arch == "x86":
        assert host_cpu(vnni).vnni and not host_cpu(vnni).saturates
        assert safe_int8_types(host_cpu(plain)).weight_type == "uint8"  # u8u8: no int16 pair sums
        assert safe_int8_types(host_cpu(vnni)).weight_type == "int8"
    pixel = target_cpu(load_target("pixel"))
    assert pixel.arch == "arm" and not pixel.saturates
    assert safe_int8_types(pixel).weight_type == "int8" and "pixel" in safe_int8_types(pixel).why


def test_automatic_types_avoid_saturation_on_this_cpu(fp32_model, digits, auto_int8, tmp_path):
    """The regression test: u8s8 per-channel saturates in ORT's x86 kernels without VNNI
    (measured here: mean |logit| error 0.2 vs the exact QDQ arithmetic, 18 of 1597 digits flipped);
    the automatic choice does not."""
    fp32 = _accuracy(fp32_model, digits)
    auto = _accuracy(auto_int8.path, digits)
    assert fp32 - auto <= 0.005  # the goal: within 0.5 point
    validation = _feeds(digits[1])
    auto_kernels = kernel_check(auto_int8.path, validation)
    assert auto_kernels["mean_abs_diff"] < 0.005 and auto_kernels["agreement"] == 1.0
    cpu = host_cpu()
    if not cpu.saturates:
        assert auto_int8.types.weight_type == "int8"
        pytest.skip(f"{cpu.description} has no saturating int8 kernels: nothing to regress")
    unsafe_options = Int8Options(
        activation_type="uint8", weight_type="int8", reduce_range=False, granularity="channel"
    )
    unsafe = quantize_int8(fp32_model, tmp_path / "u8s8.onnx", _feeds(digits[0]), unsafe_options)
    unsafe_kernels = kernel_check(unsafe.path, validation)
    assert unsafe_kernels["mean_abs_diff"] > 20 * auto_kernels["mean_abs_diff"]
    assert unsafe_kernels["agreement"] < 0.999  # clipped kernels flip digits the exact arithmetic keeps
    # (Whether the flips cost accuracy depends on the model: with the factory retrained in
    # session 13 they happened to cancel, 98.50 % as run vs 98.43 % exact, so accuracy is no check.)
    assert auto_int8.types.weight_type == "uint8" and "VNNI" in auto_int8.types.why


# --- the QDQ model, per-layer errors, exclusions ---------------------------------------------------


def test_qdq_model_is_smaller_and_checked(fp32_model, auto_int8):
    model = onnx.load(str(auto_int8.path))
    onnx.checker.check_model(model, full_check=True)
    ops = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops and "QLinearConv" not in ops
    assert auto_int8.path.stat().st_size <= 0.35 * fp32_model.stat().st_size
    assert auto_int8.settings()["format"] == "QDQ" and auto_int8.settings()["granularity"] == "auto"


def test_auto_granularity_keeps_per_channel_where_one_scale_loses_precision(fp32_model, tmp_path):
    """Per matrix, from the weights alone: rows of equal range share one scale; rows whose ranges
    differ 100x keep one scale each. ``channel`` and ``tensor`` force the choice."""
    rng = np.random.default_rng(0)
    even = rng.standard_normal((16, 8, 3, 3))
    assert not int8_wants_per_channel(even)
    spread = even * np.logspace(-2, 0, 16)[:, None, None, None]
    assert int8_wants_per_channel(spread)
    model = onnx.load(str(fp32_model))
    nodes = [n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(per_channel_weights(model, nodes, "channel")) == len(nodes)
    assert per_channel_weights(model, nodes, "tensor") == {}
    with pytest.raises(EdgefabError, match="granularity 'row'"):
        Int8Options(granularity="row")


def test_layer_table_sorted_largest_first(auto_int8, digits):
    rows = layer_errors(auto_int8.float_path, auto_int8.debug_path, _feeds(digits[0][:16]))
    assert len(rows) >= 15 and "Conv" in {r["op"] for r in rows}
    added = [r["added_error"] for r in rows]
    assert added == sorted(added, reverse=True)
    weights = [r["weight_error"] for r in rows if r["weight_error"] is not None]
    assert max(weights) < 2.0  # 8-bit weights: about 0.5 % here


def test_exclude_nodes_keeps_them_float(fp32_model, auto_int8, digits, tmp_path):
    worst = layer_errors(auto_int8.float_path, auto_int8.debug_path, _feeds(digits[0][:16]))[0]["node"]
    options = Int8Options(exclude_nodes=(worst,))
    result = quantize_int8(fp32_model, tmp_path / "ex.onnx", _feeds(digits[0]), options)
    model = onnx.load(str(result.path))
    weights = {init.name for init in model.graph.initializer}
    node = next(n for n in model.graph.node if n.name == worst)
    assert node.input[1] in weights  # its weight stays a float initializer, no DequantizeLinear
    assert worst not in result.quantized_nodes and result.settings()["exclude_nodes"] == [worst]
    rows = {r["node"]: r for r in layer_errors(result.float_path, result.debug_path, _feeds(digits[0][:16]))}
    # Its output may still be quantized as the next layer's input, but its weight is not.
    assert worst not in rows or rows[worst]["weight_error"] is None


# --- TVM on the QDQ graph --------------------------------------------------------------------------


def test_qdq_graph_cross_compiles_for_pixel(auto_int8, tmp_path):
    """TVM takes the QDQ graph for the phone too (host parity: test_int8_build_package)."""
    from edgefab.export.tvm_compile import compile_onnx

    pixel = compile_onnx(onnx.load(str(auto_int8.path)), load_target("pixel"), tmp_path)
    if pixel.format == "shared-library":
        assert pixel.path.read_bytes()[18:20] == (183).to_bytes(2, "little")  # ELF e_machine AArch64
    else:
        with tarfile.open(pixel.path) as archive:
            assert any(m.name.endswith(".o") for m in archive.getmembers())


# --- the pipeline: build, guard, report ------------------------------------------------------------


@pytest.fixture(scope="module")
def int8_build(host_build, tmp_path_factory):
    """`edgefab build --target host --quantize int8` (training comes from the cache)."""
    return build(BuildOptions(target="host", out=tmp_path_factory.mktemp("qbuild"), quantize="int8"))


def test_int8_build_package(int8_build, host_build):
    path, manifest = int8_build
    assert sorted(manifest["files"]) == ["labels.json", "model.onnx", "model.so", "quantization.json"]
    section = manifest["quantization"]
    assert section["accuracy"]["drop_points"] <= 1.0 and section["accuracy"]["fp32"] >= 0.97
    assert section["bytes"]["fp32"] > section["bytes"]["int8"] == manifest["figures"]["model_bytes"]
    assert section["latency"]["fp32_ms"] > 0 and section["latency"]["int8_ms"] > 0
    assert section["settings"]["why"] and section["kernel_check"]["agreement"] == 1.0
    tvm = manifest["engines"]["tvm"]
    assert "float32" in tvm["arithmetic"]
    assert tvm["max_abs_diff_vs_onnxruntime"] <= tvm["tolerance_vs_onnxruntime"]
    # TVM computes the QDQ graph in float, ORT in integer kernels: the gap is rounding ties,
    # measured at one output quantization step; the tolerance is 8 steps (tvm_tolerance).
    images = load_dataset("mnist").images[:64, 0]
    ort_logits = load(path, engine="onnxruntime").predict(images)
    tvm_logits = load(path, engine="tvm").predict(images)
    assert np.abs(ort_logits - tvm_logits).max() <= tvm["tolerance_vs_onnxruntime"]
    assert (ort_logits.argmax(1) == tvm_logits.argmax(1)).all()
    model = onnx.load(str(path / "model.onnx"))
    assert tvm["tolerance_vs_onnxruntime"] == pytest.approx(tvm_tolerance(model))


def test_quantize_report_cli(int8_build):
    path, manifest = int8_build
    result = runner.invoke(app, ["quantize", "report", str(path), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["layers"] and report["bytes"] == manifest["quantization"]["bytes"]
    table = runner.invoke(app, ["quantize", "report", str(path), "--rows", "3"])
    assert table.exit_code == 0 and "per-layer error" in table.output and "model bytes" in table.output


def test_report_of_a_float_package_is_refused(host_build):
    result = runner.invoke(app, ["quantize", "report", str(host_build[0])])
    assert result.exit_code == 2 and "not a quantized package" in result.output


def test_guard_fails_on_unrepresentative_calibration(host_build, digits, tmp_path):
    """Calibrating on inputs at a fifth of their range clips every real activation: the guard,
    measured on the validation split, must refuse to ship it and name the worst layers."""
    bad = tmp_path / "bad.npy"
    np.save(bad, digits[0] * 0.2)
    args = ["build", "--target", "host", "--quantize", "int8", "--calibration-data", str(bad)]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert "int8 lost" in message and "largest per-layer errors" in message and "--exclude-nodes" in message
    assert "Traceback" not in result.output
    assert not (tmp_path / "out" / "mnist-host").exists()


def test_compile_with_calibration_data_for_pixel(fp32_model, digits, tmp_path):
    data = tmp_path / "calib.npz"
    np.savez(data, input=digits[1][:64])
    options = CompileOptions(
        fp32_model, target="pixel", out=tmp_path, quantize="int8", calibration_data=data, name="digits-int8"
    )
    path, manifest = compile_model(options)
    section = manifest["quantization"]
    assert section["settings"]["calibration_data"] == str(data)
    assert section["settings"]["weight_type"] == "int8"  # arm: s8s8
    assert "held-out" in section["accuracy"]["metric"] and section["accuracy"]["drop_points"] <= 1.0
    assert "exact QDQ" in section["evaluated_as"]
    assert manifest["engines"]["tvm"]["file"] in manifest["files"]


# --- bad input -------------------------------------------------------------------------------------


def test_calibration_of_wrong_shape_dtype_or_names():
    with pytest.raises(EdgefabError, match=r"has shape \(30, 3, 32, 32\); input input is \[1, 1, 28, 28\]"):
        feeds_from_arrays({"input": np.zeros((30, 3, 32, 32), np.float32)}, SIGNATURE)
    with pytest.raises(EdgefabError, match="is uint8; input input takes float32: save the samples"):
        feeds_from_arrays({"input": np.zeros((30, 1, 28, 28), np.uint8)}, SIGNATURE)
    with pytest.raises(EdgefabError, match="has arrays images; the model's inputs are input"):
        feeds_from_arrays({"images": np.zeros((30, 1, 28, 28), np.float32)}, SIGNATURE)
    assert len(feeds_from_arrays(np.zeros((30, 1, 28, 28), np.float32), SIGNATURE)) == 30


def test_too_few_calibration_samples_says_how_many(fp32_model, digits, tmp_path):
    feeds = feeds_from_arrays(np.zeros((10, 1, 28, 28), np.float32), SIGNATURE)
    with pytest.raises(EdgefabError, match=r"has 10 samples; int8 needs at least 24 \(16 to calibrate"):
        split_held_out(feeds, 128)
    with pytest.raises(EdgefabError, match="has 10 samples; int8 calibration needs at least 16"):
        quantize_int8(fp32_model, tmp_path / "x.onnx", feeds)


def test_model_without_quantizable_op(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g", [x], [y])
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    feeds = [{"x": np.ones((1, 4), np.float32)}] * 16
    with pytest.raises(EdgefabError, match=r"no quantizable operator \(Conv, ConvTranspose, Gemm, MatMul\)"):
        quantize_int8(path, tmp_path / "q.onnx", feeds)


def test_unknown_option_values(fp32_model, digits, tmp_path):
    with pytest.raises(EdgefabError, match="unknown --quantize 'int4'; choose one of int8"):
        make_request("int4")
    with pytest.raises(EdgefabError, match="unknown calibration method 'kl'; choose one of minmax, entropy"):
        make_request("int8", calibration="kl")
    with pytest.raises(EdgefabError, match="--max-accuracy-drop is in points between 0 and 100"):
        make_request("int8", max_accuracy_drop=-1)
    with pytest.raises(EdgefabError, match="need --quantize int8"):
        make_request(None, exclude_nodes=["a"])
    with pytest.raises(EdgefabError, match="--exclude-nodes names unknown node 'nope'"):
        options = Int8Options(exclude_nodes=("nope",))
        quantize_int8(fp32_model, tmp_path / "x.onnx", _feeds(digits[0]), options)
    result = runner.invoke(app, ["build", "--target", "host", "--quantize", "int4", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "unknown --quantize 'int4'" in result.output
    assert "Traceback" not in result.output


def test_calibration_file_errors(tmp_path):
    with pytest.raises(EdgefabError, match="calibration data .*missing.npz does not exist"):
        read_calibration_file(tmp_path / "missing.npz")
    text = tmp_path / "data.txt"
    text.write_text("1 2 3")
    with pytest.raises(EdgefabError, match=r"must be a \.npz .* or \.npy"):
        read_calibration_file(text)

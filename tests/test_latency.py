"""Latency models: published tables (pixel, note10), estimates, and ArchSpec / ONNX decomposition."""

import json
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgefab.arch import ArchSpec, BlockSpec
from edgefab.errors import EdgefabError
from edgefab.targets import load_target
from edgefab.targets.graphs import layers_graph
from edgefab.targets.latency import latency_model
from edgefab.targets.layers import Layer, spec_layers
from edgefab.targets.onnx_layers import onnx_layers
from edgefab.targets.published import (
    MOBILENET_V2_PIXEL1,
    SPNAS_FIXED_MS,
    _layer_from_ofa,
    mobilenet_v2_spec,
    note10_table,
    pixel_tables,
    spnas_spec,
    spnas_table,
)

CHOICES = ("k3_e3", "k3_e6", "k5_e3", "k5_e6")


@pytest.fixture(scope="module")
def pixel():
    return latency_model("pixel")


def test_pixel_reproduces_the_single_path_nas_formula(pixel):
    assert pixel.total_ms(spnas_spec(["k3_e3"] * 20)) == pytest.approx(65.6914, abs=1e-6)  # paper: 65.7
    assert pixel.total_ms(spnas_spec(["k5_e6"] * 20)) == pytest.approx(131.4578, abs=1e-6)  # paper: 131.5
    rng = np.random.default_rng(0)
    table = spnas_table()
    for _ in range(20):
        skippable = (1, 2, 5, 6, 7, 9, 10, 11, 13, 14, 15, 17, 18, 19)  # layers 2-4, 6-8, ... (0-based: -1)
        choices = [str(rng.choice(CHOICES + ("skip",) if i in skippable else CHOICES)) for i in range(20)]
        expected = SPNAS_FIXED_MS + sum(table[i + 1][c] for i, c in enumerate(choices) if c != "skip")
        assert pixel.total_ms(spnas_spec(choices)) == pytest.approx(expected, abs=1e-6)


def test_layer_costs_give_each_candidate(pixel):
    spec = spnas_spec()
    costs = pixel.layer_costs(spec, 3)  # layer 3: 56x56x24, stride 1, skippable
    assert costs == {**{c: pytest.approx(spnas_table()[3][c]) for c in CHOICES}, "skip": 0.0}
    assert "skip" not in pixel.layer_costs(spec, 1)  # stride 2: cannot be skipped
    assert pixel.block_ms(spec, 3, BlockSpec(24, 5, 6, 1)) == pytest.approx(spnas_table()[3]["k5_e6"])
    with pytest.raises(EdgefabError, match="outside"):
        pixel.layer_costs(spec, 22)


def test_pixel_breakdown_names_its_sources(pixel):
    prediction = pixel.predict(mobilenet_v2_spec(1.0))
    sources = {layer.source for layer in prediction.layers}
    assert sources == {"table", "fitted"}
    assert prediction.ms == pytest.approx(sum(layer.ms for layer in prediction.layers))
    figure = prediction.figure()
    assert figure.source == "predicted" and "Single-Path NAS" in figure.method


def test_pixel_generalises_through_the_per_op_model(pixel):
    def cost(**block):
        spec = ArchSpec((3, 160, 160), 1000, 32, (BlockSpec(16, 3, 1, 1), BlockSpec(48, **block)), 1280, 2)
        prediction = pixel.predict(spec)
        assert prediction.layers[2].source == "fitted"
        return prediction.layers[2].ms

    k3, k5, k7 = (cost(kernel=k, expand=4, stride=2) for k in (3, 5, 7))
    assert 0 < k3 < k5 < k7
    assert cost(kernel=5, expand=4, stride=2, se=True) > k5
    assert cost(kernel=5, expand=4, stride=2, activation="hswish") > k5
    by_resolution = [pixel.total_ms(spnas_spec(resolution=r)) for r in (128, 160, 192, 224)]
    assert by_resolution == sorted(by_resolution) and by_resolution[0] < 0.5 * by_resolution[-1]


def test_mobilenet_v2_leave_one_out_within_10_percent():
    model = load_target("pixel")
    for width, published in MOBILENET_V2_PIXEL1.items():
        table, positional, fitted = pixel_tables(exclude=[width])
        held_out = latency_model(model).with_parts(table=table, positional=positional, fallback=fitted)
        assert abs(held_out.total_ms(mobilenet_v2_spec(width)) / published - 1) < 0.10, width


def test_mobilenet_v2_specs_have_the_published_macs():
    for width, mmacs in {1.4: 582, 1.0: 300, 0.75: 209, 0.5: 97, 0.35: 59}.items():
        assert mobilenet_v2_spec(width).macs() / 1e6 == pytest.approx(mmacs, abs=1)


def test_note10_returns_lut_values_and_fits_the_rest():
    model = latency_model("note10")
    key = next(k for k in note10_table() if k.startswith("expanded_conv") and "se:1-hs:1" in k)
    layer = _layer_from_ofa(key)
    assert model.layer_ms(layer) == (pytest.approx(note10_table()[key]), "table")
    unseen = Layer("mbconv", 20, 20, 40, 40, 7, 1, mid=200, se=True, act="hswish", residual=True)
    ms, source = model.layer_ms(unseen)
    assert source == "fitted" and 0 < ms < 10
    assert 5 < model.total_ms(mobilenet_v2_spec(1.0)) < 100


@pytest.mark.parametrize("name", ["pixel-gpu", "rpi4"])
def test_estimated_targets_say_they_are_uncalibrated(name):
    prediction = latency_model(name).predict(mobilenet_v2_spec(1.0))
    assert prediction.kind == "uncalibrated estimate" and prediction.ms > 0
    assert "uncalibrated" in prediction.figure().method


def test_spec_prediction_is_cheap(pixel):
    rng = np.random.default_rng(1)
    specs = [spnas_spec([str(rng.choice(CHOICES)) for _ in range(20)]) for _ in range(2000)]
    start = time.perf_counter()
    for spec in specs:
        pixel.total_ms(spec)
    assert 2000 / (time.perf_counter() - start) > 1000  # thousands a second (about 5,000 here)


def test_spec_and_onnx_give_the_same_layers():
    spec = ArchSpec((3, 64, 48), 7, 16, (
        BlockSpec(16, 3, 1, 1), BlockSpec(24, 5, 3, 2, se=True), BlockSpec(24, 7, 6, 1, activation="hswish"),
        BlockSpec(24, 3, 6, 1, skip=True), BlockSpec(40, 3, 4, 2, se=True, activation="hswish"),
    ), 256, 2)  # fmt: skip
    layers = spec_layers(spec)
    decomposition = onnx_layers(layers_graph(layers))
    assert [layer.key() for layer in decomposition.layers] == [layer.key() for layer in layers]
    assert decomposition.left_out == []
    assert sum(layer.macs() for layer in layers) == spec.macs()


def test_exported_factory_network_decomposes_like_its_spec(tmp_path):
    from edgefab.export.onnx_export import export_onnx
    from edgefab.factory.network import build_network
    from edgefab.factory.presets import simple_classifier

    spec = simple_classifier((3, 64, 48), 7)
    model = export_onnx(build_network(spec), (1, *spec.input_shape), tmp_path / "m.onnx")
    decomposition = onnx_layers(model)
    assert [layer.key() for layer in decomposition.layers] == [layer.key() for layer in spec_layers(spec)]
    pixel = latency_model("pixel")
    assert pixel.predict_onnx(tmp_path / "m.onnx").ms == pytest.approx(pixel.total_ms(spec))


def test_unknown_operator_is_left_out_and_the_rest_predicted(tmp_path):
    model = layers_graph(spec_layers(spnas_spec(resolution=64, num_classes=10)))
    last = model.graph.output[0].name
    model.graph.node.append(helper.make_node("Erf", [last], ["erf_out"], name="mystery"))
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("erf_out", TensorProto.FLOAT, [1, 10]))
    prediction = latency_model("pixel").predict_onnx(model)
    assert prediction.left_out == ("mystery (Erf)",) and prediction.ms > 0
    assert "left out: mystery (Erf)" in prediction.figure().method
    only_unknown = helper.make_model(helper.make_graph(
        [helper.make_node("Erf", ["x"], ["y"], name="e")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])]))  # fmt: skip
    with pytest.raises(EdgefabError, match="left out: e \\(Erf\\)"):
        latency_model("pixel").predict_onnx(only_unknown)
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(EdgefabError, match="not a readable ONNX model"):
        latency_model("pixel").predict_onnx(tmp_path / "bad.onnx")
    onnx.save(model, tmp_path / "ok.onnx")
    assert latency_model("pixel").predict_onnx(tmp_path / "ok.onnx").ms == pytest.approx(prediction.ms)


def test_block_options_round_trip_and_keep_old_json():
    spec = spnas_spec()
    assert '"se"' not in spec.to_json() and '"activation"' not in spec.to_json()
    fancy = ArchSpec((3, 32, 32), 10, 16, (BlockSpec(24, 5, 4, 2, se=True, activation="hswish"),), 64)
    assert ArchSpec.from_dict(json.loads(fancy.to_json())) == fancy
    assert fancy.notation() == ["k5_e4_se_hs"]
    with pytest.raises(ValueError, match="activation"):
        BlockSpec(16, activation="gelu")


def test_factory_refuses_options_it_cannot_build():
    from edgefab.factory.network import build_network

    with pytest.raises(EdgefabError, match="squeeze-excitation and hard-swish"):
        build_network(ArchSpec((3, 32, 32), 10, 16, (BlockSpec(24, 3, 4, 2, se=True),), 64))


GOOD = """
name = "my-phone"
device = "a phone"
processor = "cpu"
os = "android"
arch = "arm64"
[tvm]
kind = "llvm"
[latency]
model = "roofline"
peak_gflops = 50.0
bandwidth_gbs = 10.0
launch_us = 5.0
"""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD.replace('"roofline"', '"guess"'), "field 'latency.model' must be one of"),
        (GOOD.replace("peak_gflops = 50.0\n", ""), "missing field 'latency.peak_gflops'"),
        (GOOD.replace("bandwidth_gbs = 10.0", 'bandwidth_gbs = "fast"'), "'latency.bandwidth_gbs' must be"),
        (GOOD.replace('"roofline"', '"measured"'), "no measured latency table"),
    ],
)
def test_bad_latency_section_names_the_field(tmp_path, text, message):
    path = tmp_path / "phone.toml"
    path.write_text(text)
    with pytest.raises(EdgefabError, match=message):
        latency_model(load_target(path))


def test_user_toml_roofline_and_unknown_target(tmp_path):
    path = tmp_path / "phone.toml"
    path.write_text(GOOD)
    assert latency_model(str(path)).predict(spnas_spec()).kind == "uncalibrated estimate"
    with pytest.raises(EdgefabError, match="unknown target 'nokia'"):
        latency_model("nokia")


def test_latency_modules_import_no_higher_layer_nor_tvm():
    import subprocess
    import sys

    code = (
        "import sys, edgefab.targets.latency, edgefab.targets.published, edgefab.targets.measured,"
        " edgefab.targets.profiling, edgefab.targets.reports, edgefab.targets.onnx_layers;"
        "edgefab.targets.latency.latency_model('pixel').total_ms(edgefab.targets.published.spnas_spec());"
        "bad = [m for m in sys.modules if m in ('torch', 'tvm') or m.startswith(('edgefab.search',"
        " 'edgefab.factory', 'edgefab.export', 'edgefab.pipeline'))];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr

"""ONNX graph utilities on the two shared real-world models and on tiny hand-built graphs."""

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgefab.errors import EdgefabError
from edgefab.export import graph

MODELS = Path(__file__).resolve().parents[1].parent / "shared" / "models"
PPOCR = MODELS / "ppocr_mobile_v2_cls.onnx"
SILERO = MODELS / "silero_vad_16k_op15.onnx"
SILERO_SHAPES = {"input": [1, 512], "state": [2, 1, 128]}
SR = {"sr": np.array(16000, dtype=np.int64)}


def tiny_model(op: str = "Relu", opset: int = 15) -> onnx.ModelProto:
    """x[N,4] -> op -> y, with a symbolic batch dim."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    g = helper.make_graph([helper.make_node(op, ["x"], ["y"])], "tiny", [x], [y])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


@pytest.fixture(scope="module")
def ppocr():
    original = graph.load_onnx(PPOCR)
    return original, graph.simplify(graph.fix_input_shapes(original, {"x": [1, 3, 48, 192]}))


@pytest.fixture(scope="module")
def silero():
    original = graph.load_onnx(SILERO)
    return original, graph.simplify(graph.fix_input_shapes(original, SILERO_SHAPES))


def op_types(model: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in model.graph.node}


# --- specs ---------------------------------------------------------------------------------------


def test_parse_input_specs():
    specs = ["x:1,3,48,192", "sr:", "t:scalar"]
    assert graph.parse_input_specs(specs) == {"x": [1, 3, 48, 192], "sr": [], "t": []}


@pytest.mark.parametrize("spec", ["x", "x=1,3", "x:1,a", "x:1,,3", ":1,2", "x:0,3"])
def test_parse_input_specs_rejects_malformed(spec):
    with pytest.raises(EdgefabError, match="bad input spec") as info:
        graph.parse_input_specs([spec])
    assert spec in str(info.value) and "\n" not in str(info.value)


def test_parse_input_values():
    assert graph.parse_input_values(["sr=16000"]) == {"sr": [16000.0]}
    with pytest.raises(EdgefabError, match="NAME=V1"):
        graph.parse_input_values(["sr:16000"])


# --- loading and signatures ----------------------------------------------------------------------


def test_load_missing_file(tmp_path):
    with pytest.raises(EdgefabError, match="does not exist"):
        graph.load_onnx(tmp_path / "nope.onnx")


@pytest.mark.parametrize("content", [b"this is not a protobuf \xff\xfe", b""])
def test_load_corrupt_file(tmp_path, content):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(EdgefabError, match="not a valid ONNX file") as info:
        graph.load_onnx(path)
    assert str(path) in str(info.value)


def test_signatures(ppocr, silero):
    assert graph.input_signature(ppocr[0]) == [{"name": "x", "shape": ["?", 3, "?", "?"], "dtype": "float32"}]
    assert graph.input_signature(silero[0])[2] == {"name": "sr", "shape": [], "dtype": "int64"}
    assert graph.output_signature(ppocr[1])[0]["shape"] == [1, 2]
    assert [o["shape"] for o in graph.output_signature(silero[1])] == [[1, 1], [2, 1, 128]]


# --- shape fixing --------------------------------------------------------------------------------


def test_fix_requires_symbolic_inputs(ppocr):
    with pytest.raises(EdgefabError, match=r"input 'x' has symbolic dims .*--input x:DIMS"):
        graph.fix_input_shapes(ppocr[0], {})


def test_fix_rejects_unknown_input(silero):
    with pytest.raises(EdgefabError, match="unknown input 'audio'.*input, state, sr"):
        graph.fix_input_shapes(silero[0], {"audio": [1, 512]})


def test_fix_rejects_rank_mismatch(ppocr):
    with pytest.raises(EdgefabError, match="rank 4"):
        graph.fix_input_shapes(ppocr[0], {"x": [1, 3, 48]})


def test_fix_does_not_touch_original(ppocr):
    assert graph.input_signature(ppocr[0])[0]["shape"][0] == "?"
    assert graph.input_signature(ppocr[1])[0]["shape"] == [1, 3, 48, 192]


# --- simplification and verification -------------------------------------------------------------


def test_ppocr_simplified_matches_original(ppocr):
    original, simplified = ppocr
    # The Shape/Concat/Reshape chain that TVM rejects is folded into constants.
    assert not op_types(simplified) & {"Shape", "Concat", "Slice", "Cast", "Identity"}
    feeds = graph.random_inputs(simplified, seed=1)
    assert graph.verify_simplified(original, simplified, feeds, atol=1e-4) <= 1e-4


def test_silero_simplified_matches_original(silero):
    original, simplified = silero
    # The If nodes test static shapes, so they fold away once the shapes are fixed.
    assert not op_types(simplified) & {"If", "Shape", "ConstantOfShape"}
    feeds = graph.random_inputs(simplified, seed=2, values=SR)
    assert feeds["sr"] == 16000 and feeds["state"].dtype == np.float32
    assert graph.verify_simplified(original, simplified, feeds, atol=1e-4) <= 1e-4


def test_decompose_lstm_matches_original(silero):
    original, simplified = silero
    assert "LSTM" in op_types(simplified)
    lowered = graph.decompose_lstm(simplified)
    assert "LSTM" not in op_types(lowered)
    for seed in (3, 4):
        feeds = graph.random_inputs(lowered, seed=seed, values=SR)
        assert graph.verify_simplified(original, lowered, feeds, atol=1e-4) <= 1e-4


def test_bind_inputs_turns_input_into_constant(silero):
    original, simplified = silero
    bound = graph.simplify(graph.bind_inputs(simplified, {"sr": [16000]}))
    assert [s["name"] for s in graph.input_signature(bound)] == ["input", "state"]
    feeds = graph.random_inputs(simplified, seed=5, values=SR)
    assert graph.verify_simplified(original, bound, feeds) <= 1e-4
    with pytest.raises(EdgefabError, match="shape"):
        graph.bind_inputs(simplified, {"sr": [1, 2]})


def test_verify_raises_when_outputs_differ():
    feeds = graph.random_inputs(graph.fix_input_shapes(tiny_model("Relu"), {"x": [2, 4]}))
    with pytest.raises(EdgefabError, match="differs from the original"):
        graph.verify_simplified(tiny_model("Relu"), tiny_model("Neg"), feeds)


def test_random_inputs_are_seeded(ppocr):
    a, b = graph.random_inputs(ppocr[1], seed=7), graph.random_inputs(ppocr[1], seed=7)
    assert a["x"].shape == (1, 3, 48, 192) and np.array_equal(a["x"], b["x"])
    with pytest.raises(EdgefabError, match="symbolic"):
        graph.random_inputs(ppocr[0])


def test_max_abs_diff():
    a = [np.zeros((2, 2), np.float32)]
    assert graph.max_abs_diff(a, [np.full((2, 2), 0.5, np.float32)]) == 0.5
    assert graph.max_abs_diff(a, [np.zeros((4,), np.float32)]) == float("inf")
    assert graph.max_abs_diff(a, []) == float("inf")


def test_run_onnxruntime_bad_feed_is_one_line():
    with pytest.raises(EdgefabError, match="ONNX Runtime failed") as info:
        graph.run_onnxruntime(tiny_model(), {"x": np.zeros((2, 5), np.float32)})
    assert "\n" not in str(info.value)


def test_random_inputs_reshape_parsed_scalar_value(silero):
    # `--input sr=16000` parses to a one-element list; the scalar input still gets a 0-d array.
    values = graph.parse_input_values(["sr=16000"])
    feeds = graph.random_inputs(silero[1], values=values)
    assert feeds["sr"].shape == () and feeds["sr"].dtype == np.int64 and feeds["sr"] == 16000
    with pytest.raises(EdgefabError, match="value for input 'sr'"):
        graph.random_inputs(silero[1], values={"sr": [1, 2]})

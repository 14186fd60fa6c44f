"""`edgefab compile` on the real third-party models: package, then run it from the package."""

import numpy as np
import pytest

from edgefab.errors import EdgefabError
from edgefab.export.graph import load_onnx, run_onnxruntime
from edgefab.pipeline.compile import CompileOptions, compile_model
from edgefab.runtime import load
from tests.conftest import SHARED_MODELS

PPOCR = SHARED_MODELS / "ppocr_mobile_v2_cls.onnx"
SILERO = SHARED_MODELS / "silero_vad_16k_op15.onnx"


@pytest.fixture(scope="module")
def ppocr_host(tmp_path_factory):
    out = tmp_path_factory.mktemp("compile")
    return compile_model(CompileOptions(PPOCR, "host", ["x:1,3,48,192"], out))


@pytest.fixture(scope="module")
def silero_host(tmp_path_factory):
    out = tmp_path_factory.mktemp("compile")
    return compile_model(CompileOptions(SILERO, "host", ["input:1,512", "state:2,1,128", "sr=16000"], out))


def test_ppocr_package_matches_the_original(ppocr_host):
    path, manifest = ppocr_host
    assert manifest["inputs"] == [{"name": "x", "shape": [1, 3, 48, 192], "dtype": "float32"}]
    assert manifest["engines"]["tvm"]["format"] == "shared-library"
    assert manifest["figures"]["simplified_max_abs_diff"] < 1e-4
    assert manifest["figures"]["macs"] > 1_000_000
    x = np.random.default_rng(1).standard_normal((1, 3, 48, 192)).astype(np.float32)
    expected = run_onnxruntime(load_onnx(PPOCR), {"x": x})
    for engine in ("onnxruntime", "tvm"):
        (got,) = load(path, engine=engine).run({"x": x}).values()
        assert np.abs(expected[0] - got).max() < 1e-4, engine


def test_silero_package_with_bound_sample_rate(silero_host):
    path, manifest = silero_host
    assert [i["name"] for i in manifest["inputs"]] == ["input", "state"]
    assert manifest["bound_inputs"] == {"sr": [16000.0]}
    rng = np.random.default_rng(2)
    feeds = {
        "input": rng.standard_normal((1, 512)).astype(np.float32),
        "state": rng.standard_normal((2, 1, 128)).astype(np.float32),
    }
    expected = run_onnxruntime(load_onnx(SILERO), {**feeds, "sr": np.array(16000, np.int64)})
    for engine in ("onnxruntime", "tvm"):
        got = list(load(path, engine=engine).run(feeds).values())
        assert len(got) == len(expected) == 2
        for want, have in zip(expected, got, strict=True):
            assert np.abs(want - have).max() < 1e-4, engine


def test_ppocr_with_blocked_channels(tmp_path):
    """``--layout NCHW8c``: the library blocks the convolutions inside, its interface stays NCHW."""
    path, manifest = compile_model(CompileOptions(PPOCR, "host", ["x:1,3,48,192"], tmp_path, layout="NCHW8c"))
    assert manifest["engines"]["tvm"]["layout"] == "NCHW8c"
    x = np.random.default_rng(3).standard_normal((1, 3, 48, 192)).astype(np.float32)
    expected = run_onnxruntime(load_onnx(PPOCR), {"x": x})
    (got,) = load(path, engine="tvm").run({"x": x}).values()
    assert np.abs(expected[0] - got).max() < 1e-4


def test_dynamic_input_without_shape_is_refused(tmp_path):
    with pytest.raises(EdgefabError, match=r"--input x:"):
        compile_model(CompileOptions(PPOCR, "host", [], tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_unsupported_operator_still_packages_onnxruntime(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Celu", ["x"], ["y"], alpha=1.0)
    graph = helper.make_graph(
        [node],
        "celu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model_path = tmp_path / "celu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(model_path))
    path, manifest = compile_model(CompileOptions(model_path, "host", [], tmp_path / "out"))
    assert "Celu" in manifest["engines"]["tvm"]["error"]
    assert sorted(manifest["files"]) == ["model.onnx"]
    x = np.linspace(-2, 2, 4, dtype=np.float32)[None]
    (y,) = load(path).run({"x": x}).values()
    assert np.allclose(y, np.where(x > 0, x, np.expm1(x)), atol=1e-6)

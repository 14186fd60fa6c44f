"""TVM Relax compilation of the shared real-world models, for this machine and for arm64 Android.

Each model is compiled at most once per target (module-scoped fixtures); the artifacts are shared.
"""

import dataclasses
import gzip
import io
import shutil
import struct
import tarfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgefab.errors import EdgefabError, UnsupportedOperatorError
from edgefab.export import graph
from edgefab.export.tvm_compile import compile_onnx, resolve_tvm_target, unsupported_operators
from edgefab.runtime.tvm_engine import TVMEngine
from edgefab.targets import load_target
from edgefab.targets.toolchain import linker

MODELS = Path(__file__).resolve().parents[1].parent / "shared" / "models"
CASES = {
    "ppocr": (MODELS / "ppocr_mobile_v2_cls.onnx", {"x": [1, 3, 48, 192]}, {}),
    "silero": (
        MODELS / "silero_vad_16k_op15.onnx",
        {"input": [1, 512], "state": [2, 1, 128]},
        {"sr": np.array(16000, dtype=np.int64)},
    ),
}
EM_AARCH64 = 183
HAS_GNU_CROSS = shutil.which("aarch64-linux-gnu-gcc") is not None


@pytest.fixture(scope="module")
def prepared():
    """{case: (original, fixed+simplified)} for both shared models."""
    out = {}
    for case, (path, shapes, _) in CASES.items():
        original = graph.load_onnx(path)
        out[case] = original, graph.simplify(graph.fix_input_shapes(original, shapes))
    return out


@pytest.fixture(scope="module")
def host_artifacts(prepared, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("host")
    return {c: compile_onnx(m[1], load_target("host"), out_dir, c) for c, m in prepared.items()}


@pytest.fixture(scope="module")
def pixel_artifacts(prepared, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("pixel")
    return {c: compile_onnx(m[1], load_target("pixel"), out_dir, c) for c, m in prepared.items()}


def elf_machine(data: bytes) -> int:
    assert data[:4] == b"\x7fELF", "not an ELF file"
    return struct.unpack_from("<H", data, 18)[0]


def archive_machines(path: Path) -> set[int]:
    with tarfile.open(path) as tar:
        members = [m for m in tar.getmembers() if m.name.endswith(".o")]
        assert members, "archive holds no object files"
        return {elf_machine(tar.extractfile(m).read()) for m in members}


# --- host ----------------------------------------------------------------------------------------


def test_resolve_host_target_names_the_real_cpu():
    resolved = resolve_tvm_target(load_target("host"))
    assert resolved["kind"] == "llvm" and resolved["mcpu"] not in ("", "native")
    assert "mtriple" in resolved
    assert resolve_tvm_target(load_target("pixel"))["mtriple"] == "aarch64-linux-android"


@pytest.mark.parametrize("case", list(CASES))
def test_host_library_matches_onnxruntime(case, prepared, host_artifacts):
    original, simplified = prepared[case]
    artifact = host_artifacts[case]
    assert artifact.format == "shared-library" and artifact.runs_here and artifact.path.is_file()
    names = [s["name"] for s in graph.input_signature(simplified)]
    engine = TVMEngine(artifact.path, names)
    for seed in (0, 1):
        feeds = graph.random_inputs(simplified, seed=seed, values=CASES[case][2])
        outputs = engine.run(feeds)
        reference = graph.run_onnxruntime(original, feeds)
        assert [o.shape for o in outputs] == [r.shape for r in reference]
        assert graph.max_abs_diff(outputs, reference) <= 1e-4


def test_engine_timing_and_missing_input(prepared, host_artifacts):
    simplified = prepared["ppocr"][1]
    engine = TVMEngine(host_artifacts["ppocr"].path, ["x"])
    times = engine.time_ms(graph.random_inputs(simplified), repeat=3)
    assert len(times) == 3 and all(t > 0 for t in times)
    with pytest.raises(EdgefabError, match="missing input"):
        engine.run({})


# --- arm64 Android -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_pixel_artifact_is_arm64(case, pixel_artifacts):
    artifact = pixel_artifacts[case]
    assert not artifact.runs_here and artifact.path.is_file()
    assert artifact.tvm_target["mtriple"] == "aarch64-linux-android"
    if artifact.format == "shared-library":
        assert artifact.path.suffix == ".so"
        assert elf_machine(artifact.path.read_bytes()) == EM_AARCH64
    else:
        assert artifact.format == "object-archive" and artifact.path.suffix == ".tar"
        assert archive_machines(artifact.path) == {EM_AARCH64}


@pytest.mark.skipif(not HAS_GNU_CROSS, reason="needs gcc-aarch64-linux-gnu")
def test_pixel_links_so_without_glibc(pixel_artifacts):
    artifact = pixel_artifacts["ppocr"]
    assert artifact.format == "shared-library" and "aarch64-linux-gnu-gcc" in artifact.note
    # Android's loader has no libc.so.6: the library must not ask for it.
    assert b"libc.so.6" not in artifact.path.read_bytes()


def test_android_triples_link_without_glibc_gpu_targets_too():
    # pixel-gpu's triple is its host's: its CPU side is linked for Android's loader as pixel's is
    for name, android in (("pixel", True), ("pixel-gpu", True), ("rpi4", False)):
        _, how = linker("aarch64-linux-gnu-gcc", resolve_tvm_target(load_target(name)))
        assert ("-nostdlib" in how) == android, name


def test_pixel_without_toolchain_writes_object_archive(prepared, tmp_path):
    bare = dataclasses.replace(load_target("pixel"), cross_compilers=("no-such-cross-gcc",))
    artifact = compile_onnx(prepared["silero"][1], bare, tmp_path, "vad")
    assert artifact.format == "object-archive" and artifact.path == tmp_path / "vad.tar"
    with gzip.open(artifact.path) as fh:  # export_library writes a gzip tar
        tarfile.open(fileobj=io.BytesIO(fh.read()))
    assert archive_machines(artifact.path) == {EM_AARCH64}
    assert "no-such-cross-gcc -shared -fPIC" in artifact.note


# --- bad input -----------------------------------------------------------------------------------


def tiny(op: str, dims=(2, 4), **attrs) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(dims))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(dims))
    node = helper.make_node(op, ["x"], ["y"], **attrs)
    return helper.make_model(
        helper.make_graph([node], "t", [x], [y]), opset_imports=[helper.make_opsetid("", 15)]
    )


def test_unsupported_operator_is_named(tmp_path):
    model = tiny("Celu", alpha=1.0)  # ONNX Runtime runs it; TVM's Relax importer has no converter
    assert graph.run_onnxruntime(model, {"x": np.ones((2, 4), np.float32)})
    with pytest.raises(UnsupportedOperatorError, match="Celu") as info:
        compile_onnx(model, load_target("host"), tmp_path)
    assert info.value.op_types == ["Celu"]


def test_unsupported_operator_inside_if_branch_is_found():
    then_g = helper.make_graph(
        [helper.make_node("Celu", ["x"], ["t"])], "then", [], [helper.make_tensor_value_info("t", 1, [2, 4])]
    )
    else_g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["e"])], "else", [], [helper.make_tensor_value_info("e", 1, [2, 4])]
    )
    cond = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])
    node = helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)
    model = helper.make_model(helper.make_graph([node], "g", [cond, x], [y]))
    assert unsupported_operators(model) == ["Celu"]


def test_symbolic_inputs_are_rejected_before_tvm(tmp_path):
    with pytest.raises(EdgefabError, match="symbolic dims"):
        compile_onnx(tiny("Relu", dims=("N", 4)), load_target("host"), tmp_path)


def test_non_plain_lstm_stays_and_is_reported(prepared):
    # Only the plain forward LSTM is unrolled; a bidirectional one must be reported, not miscompiled.
    model = onnx.ModelProto()
    model.CopyFrom(prepared["silero"][1])
    lstm = next(n for n in model.graph.node if n.op_type == "LSTM")
    lstm.attribute.append(helper.make_attribute("direction", "bidirectional"))
    assert "LSTM" in unsupported_operators(graph.decompose_lstm(model))
    assert "LSTM" not in unsupported_operators(graph.decompose_lstm(prepared["silero"][1]))

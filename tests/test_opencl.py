"""Mobile GPU (pixel-gpu): OpenCL kernels through dlight, shipped as kernels.cl and checked by clang.

The OpenCL C is checked with a real compiler front end (``clang -x cl -fsyntax-only``, Debian
package ``clang``); those checks skip, saying so, only where clang is not installed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from edgefab.cli import app
from edgefab.errors import EdgefabError
from edgefab.export.opencl import KERNELS_FILE, check_codegen
from edgefab.export.tvm_compile import compile_onnx
from edgefab.pipeline.compile import CompileOptions, compile_model
from edgefab.targets import load_target

CLANG = shutil.which("clang")
needs_clang = pytest.mark.skipif(CLANG is None, reason="clang not installed (apt-get install clang)")


def small_cnn() -> onnx.ModelProto:
    """Conv-ReLU-depthwise conv-pool-Gemm: the layer kinds of the factory's networks, tiny."""
    rng = np.random.default_rng(0)

    def weight(name, *shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.1, name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], group=8),
        helper.make_node("GlobalAveragePool", ["c2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], transB=1),
    ]
    inits = [weight("w1", 8, 1, 3, 3), weight("b1", 8), weight("w2", 8, 1, 3, 3), weight("w3", 10, 8),
             weight("b3", 10)]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "small_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 28, 28])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def clang_check(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CLANG, "-x", "cl", "-cl-std=CL2.0", "-fsyntax-only", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def gpu_artifact(tmp_path_factory):
    return compile_onnx(small_cnn(), load_target("pixel-gpu"), tmp_path_factory.mktemp("gpu"))


def test_pixel_gpu_writes_kernels_and_library(gpu_artifact):
    kernels = gpu_artifact.extra_files[KERNELS_FILE]
    source = kernels.read_text()
    assert "__kernel void" in source and "__global float*" in source
    assert gpu_artifact.details["kernel_count"] >= 4  # conv, depthwise conv, pool, dense at least
    assert gpu_artifact.path.is_file() and gpu_artifact.path.stat().st_size > 0
    assert gpu_artifact.tvm_target["kind"] == "opencl"
    schedules = gpu_artifact.details["schedules"]
    assert "unscheduled" not in schedules  # a GPU kernel without a schedule would not bind threads
    assert sum(schedules.values()) >= gpu_artifact.details["kernel_count"]
    assert all(name.split(".")[0] in ("adreno", "gpu") for name in schedules)


@needs_clang
def test_generated_opencl_passes_clang(gpu_artifact):
    result = clang_check(gpu_artifact.extra_files[KERNELS_FILE])
    assert result.returncode == 0, result.stderr[-2000:]


@needs_clang
def test_clang_check_rejects_broken_opencl(tmp_path):
    """The check above can fail: clang refuses OpenCL C with an error in it."""
    broken = tmp_path / "broken.cl"
    broken.write_text("__kernel void k(__global float* a) { a[get_global_id(0)] = undeclared; }\n")
    assert clang_check(broken).returncode != 0


def test_compile_packages_kernels_for_pixel_gpu(tmp_path):
    model_path = tmp_path / "small.onnx"
    onnx.save(small_cnn(), str(model_path))
    out_dir, manifest = compile_model(CompileOptions(model_path, target="pixel-gpu", out=tmp_path / "out"))
    tvm = manifest["engines"]["tvm"]
    assert tvm["kernels"] == KERNELS_FILE and KERNELS_FILE in manifest["files"]
    assert (out_dir / KERNELS_FILE).read_text().count("__kernel void") >= tvm["kernel_count"]
    assert (out_dir / tvm["file"]).is_file()
    assert manifest["recommended_engine"] == "onnxruntime"  # nothing runs the GPU code here


def test_texture_and_vulkan_fail_before_compiling():
    with pytest.raises(EdgefabError, match="texture"):
        check_codegen({"kind": "opencl", "device": "adreno", "keys": ["adreno", "opencl", "gpu", "texture"]})
    with pytest.raises(EdgefabError, match="vulkan"):
        check_codegen({"kind": "vulkan"})
    check_codegen({"kind": "opencl", "device": "adreno"})  # the buffer path is fine


def test_vulkan_target_file_is_refused_with_one_line(tmp_path):
    toml = (Path(__file__).resolve().parents[1] / "edgefab" / "targets" / "pixel-gpu.toml").read_text()
    custom = tmp_path / "vk.toml"
    custom.write_text(toml.replace('kind = "opencl"\ndevice = "adreno"', 'kind = "vulkan"'))
    model_path = tmp_path / "small.onnx"
    onnx.save(small_cnn(), str(model_path))
    result = CliRunner().invoke(
        app, ["compile", str(model_path), "--target", str(custom), "--out", str(tmp_path)]
    )
    assert result.exit_code == 2, result.output
    assert "vulkan" in result.output.lower() and "Traceback" not in result.output
    assert not any(tmp_path.glob("small-*"))


def test_targets_show_states_gpu_limitations():
    result = CliRunner().invoke(app, ["targets", "show", "pixel-gpu", "--json"])
    assert result.exit_code == 0
    limits = " ".join(json.loads(result.output)["limitations"])
    assert "texture" in limits and "Vulkan" in limits and "OpenCL runtime" in limits

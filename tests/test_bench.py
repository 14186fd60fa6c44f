"""``edgefab bench``: the package's engines timed on the same inputs (real ONNX Runtime and TVM)."""

from __future__ import annotations

import json

import onnx
import pytest
from typer.testing import CliRunner

from edgefab.cli import app
from edgefab.errors import EdgefabError
from edgefab.pipeline.compile import CompileOptions, compile_model
from edgefab.runtime.bench import BenchOptions, bench_package
from tests.test_tuning import one_conv


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    model = folder / "net.onnx"
    onnx.save(one_conv(), str(model))
    host, _ = compile_model(CompileOptions(model, target="host", out=folder / "out"))
    pixel, _ = compile_model(CompileOptions(model, target="pixel", out=folder / "out"))
    return host, pixel


def test_bench_times_both_engines_on_host(packages):
    report = bench_package(packages[0], BenchOptions(runs=10, warmup=2))
    ort, tvm = report["engines"]["onnxruntime"], report["engines"]["tvm"]
    for result in (ort, tvm):
        assert 0 < result["min_ms"] <= result["median_ms"] and result["iqr_ms"] >= 0
    assert tvm["max_abs_diff_vs_onnxruntime"] < 1e-4  # same inputs, same answers
    assert report["fastest"] in ("onnxruntime", "tvm")
    assert "skipped" in report["engines"]["pytorch"]


def test_bench_skips_a_library_that_does_not_run_here(packages):
    report = bench_package(packages[1], BenchOptions(runs=3, warmup=0))
    assert "median_ms" in report["engines"]["onnxruntime"]
    assert "skipped" in report["engines"]["tvm"] and report["fastest"] == "onnxruntime"


def test_bench_cli_json_and_table(packages):
    result = CliRunner().invoke(app, ["bench", str(packages[0]), "--runs", "5", "--json"])
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.output)["engines"]) == {"onnxruntime", "tvm", "pytorch"}
    table = CliRunner().invoke(app, ["bench", str(packages[0]), "--runs", "5"])
    assert table.exit_code == 0 and "IQR" in table.output and "onnxruntime" in table.output


def test_bench_refuses_a_missing_package(tmp_path):
    with pytest.raises(EdgefabError):
        bench_package(tmp_path / "nothing")
    result = CliRunner().invoke(app, ["bench", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_pytorch_times_the_architecture_the_manifest_records():
    from edgefab.pipeline.torch_bench import pytorch_entry
    from edgefab.spaces import get_space

    space = get_space("digits-28")
    spec = space.arch(space.smallest(), 10)
    manifest = {
        "kind": "classifier",  # what build writes
        "target": {"threads": 1},
        "inputs": [{"name": "input", "shape": [1, *spec.input_shape], "dtype": "float32"}],
        "build": {"architecture": spec.to_dict()},
    }
    result = pytorch_entry(manifest, BenchOptions(runs=5, warmup=1))
    assert 0 < result["min_ms"] <= result["median_ms"] and "fresh weights" in result["note"]
    manifest["compression"] = {"method": "snn"}
    assert "spiking" in pytorch_entry(manifest, BenchOptions(runs=1))["skipped"]
    assert "no architecture" in pytorch_entry({"kind": "classifier"}, BenchOptions(runs=1))["skipped"]
    generator = {**manifest, "kind": "generator", "compression": {}}
    assert "no architecture" in pytorch_entry(generator, BenchOptions(runs=1))["skipped"]

"""MetaSchedule tuning: one database per target in the cache, reused, version-checked, kept on interrupt.

Real tuning on this machine with very few trials (the figures do not matter here; that the
database is written, found and applied does). Each test gets its own cache folder.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefab.errors import EdgefabError
from edgefab.export import tuning
from edgefab.export.tvm_compile import check_compilable, import_onnx, resolve_tvm_target
from edgefab.pipeline.compile import CompileOptions, compile_model
from edgefab.targets import load_target


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEFAB_CACHE_DIR", str(tmp_path / "cache"))


def one_conv(channels: int = 8, classes: int = 10) -> onnx.ModelProto:
    """Conv-ReLU-pool-Gemm on 1x1x16x16: few tuning tasks, so few trials cover them."""
    rng = np.random.default_rng(channels + classes)

    def weight(name, *shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.1, name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "w2", "b2"], ["y"], transB=1),
    ]
    inits = [weight("w1", channels, 1, 3, 3), weight("b1", channels), weight("w2", classes, channels),
             weight("b2", classes)]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "one_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, classes])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def host_tvm_target() -> dict:
    return resolve_tvm_target(load_target("host"))


def test_database_is_keyed_by_target_and_tvm_version():
    host = tuning.database_dir("host", host_tvm_target())
    other_cpu = tuning.database_dir("host", {**host_tvm_target(), "mcpu": "cortex-a72"})
    assert host.name == f"tvm-{tuning.tvm_version()}" and host != other_cpu
    assert "tvm-tuning" in str(host)


def test_database_of_another_tvm_version_is_ignored_with_a_warning():
    folder = tuning.database_dir("host", host_tvm_target())
    stale = folder.parent / "tvm-0.0.1"
    stale.mkdir(parents=True)
    (stale / "database_tuning_record.json").write_text('["not", "for", "this", "version"]\n')
    with pytest.warns(UserWarning, match="TVM 0.0.1"):
        executable, info = tuning.compile_cpu(import_onnx(one_conv()), "host", host_tvm_target())
    assert info["tuned"] is False and info["database"] is None and "0.0.1" in info["warnings"][0]
    assert executable is not None


def test_tuning_is_refused_where_candidates_cannot_be_measured():
    with pytest.raises(EdgefabError, match="cannot tune for pixel"):
        check_compilable(load_target("pixel"), tune=True)


@pytest.mark.slow
def test_interrupted_tuning_keeps_its_records():
    folder = tuning.database_dir("host", host_tvm_target())
    tasks = tuning.extract_tasks(import_onnx(one_conv()), host_tvm_target())

    def interrupt(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tuning.tune(tasks, folder, tuning.TuneOptions(trials=len(tasks) * 2), on_trial=interrupt)
    assert tuning.count_records(folder) >= 1  # the first measured batch is on disk


@pytest.mark.slow
def test_tuned_compile_then_sibling_reuses_the_database(tmp_path):
    """Tune a tiny CNN with a few trials; compiling it again (and a sibling) measures nothing new."""
    first, second = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(one_conv(), str(first))
    onnx.save(one_conv(classes=10), str(second))  # same shapes, other weights: a sibling network
    _, manifest = compile_model(CompileOptions(first, target="host", out=tmp_path / "o1", tune=4))
    tvm = manifest["engines"]["tvm"]
    run = tvm["tuning_run"]
    assert tvm["tuned"] and run["new_trials"] >= 1 and tvm["database"]["records"] >= 1
    assert tvm["max_abs_diff_vs_onnxruntime"] < 1e-4
    assert "tuned" in manifest["figures"]["tvm_latency"]["method"]
    records = tvm["database"]["records"]

    _, again = compile_model(CompileOptions(second, target="host", out=tmp_path / "o2", tune=4))
    run = again["engines"]["tvm"]["tuning_run"]
    assert run["new_trials"] == 0 and run["tasks_in_database"] == run["tasks"]
    assert again["engines"]["tvm"]["database"]["records"] == records
    database = json.loads((tuning.database_dir("host", host_tvm_target()) / "meta.json").read_text())
    assert database["tvm_version"] == tuning.tvm_version()

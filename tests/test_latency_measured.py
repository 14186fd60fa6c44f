"""Measured latency tables: host profiling with ONNX Runtime, TVM over a real localhost RPC tracker, CLI."""

import json

import onnx
import pytest
from typer.testing import CliRunner

from edgefab.arch import ArchSpec, BlockSpec
from edgefab.cli import app
from edgefab.errors import EdgefabError
from edgefab.export.tvm_compile import layer_build
from edgefab.targets import load_target
from edgefab.targets.graphs import layers_graph
from edgefab.targets.latency import latency_model
from edgefab.targets.layers import spec_layers
from edgefab.targets.measured import STATISTIC, MeasuredTable, measure_rounds, space_layers, table_path
from edgefab.targets.profiling import TVM_DEFAULT_BUILD, connect_tracker, profile

TINY = ArchSpec(
    (3, 32, 32), 10, 8, (BlockSpec(8, 3, 1, 1), BlockSpec(16, 3, 3, 2), BlockSpec(16, 3, 3, 1)), 32, 2
)
runner = CliRunner()


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEFAB_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_host_profile_is_cached_and_used(cache):
    host = load_target("host")
    table, path = profile(host, TINY, threads=1, candidates=("k3_e3", "k5_e6"), networks=3, rounds=2)
    assert path == table_path(host, "onnxruntime", 1) and path.is_relative_to(cache)
    assert "onnxruntime-" in path.name and "-t1-" in path.name
    assert len(table.layers) == 9 and len(table.networks) == 3 and table.overhead[0] > 0
    again = MeasuredTable.load(path)
    assert again.layers == table.layers and again.overhead == table.overhead
    model = latency_model(host, threads=1)
    assert model.kind == "measured table"
    prediction = model.predict(TINY)
    assert {layer.source for layer in prediction.layers} == {"measured"}
    assert prediction.ms == pytest.approx(table.overhead[0] + (1 + table.overhead[1]) * sum(
        table.layers[layer.key()] for layer in spec_layers(TINY)))  # fmt: skip
    # a layer the table lacks is measured on first use, here, and kept
    wider = ArchSpec((3, 32, 32), 10, 8, (BlockSpec(8, 3, 1, 1), BlockSpec(24, 7, 2, 2)), 32, 2)
    first = model.predict(wider)
    assert {layer.source for layer in first.layers} == {"measured"}
    # ... on disk, so another process predicts with the same figures instead of measuring again
    kept = MeasuredTable.load(path)
    assert len(kept.layers) > len(table.layers) and kept.overhead == table.overhead
    assert latency_model(host, threads=1).predict(wider).ms == pytest.approx(first.ms)


def test_measure_rounds_takes_the_fastest_call_over_rounds_and_a_window():
    calls = []

    def timer(values):
        return lambda: calls.append(1) or list(values)

    assert measure_rounds([timer([3.0, 2.0, 5.0]), timer([0.5, 0.7])], 2) == [2.0, 0.5]
    assert len(calls) == 4  # two rounds of two timers
    progress = []
    calls.clear()
    measure_rounds([timer([1.0])], 1, min_seconds=0.05, on_round=lambda *counts: progress.append(counts))
    assert len(calls) > 1 and progress[-1] == (len(calls), len(calls))  # rounds until 50 ms passed
    assert all(done < total for done, total in progress[:-1])  # a bar that ends only when timing does


def test_a_table_timed_with_another_statistic_is_measured_afresh(cache):
    host = load_target("host")
    path = table_path(host, "onnxruntime", 1)
    stale = MeasuredTable("host", "onnxruntime-old", 1, "this machine", layers={"bogus": 9.0})
    stale.save(path)
    assert MeasuredTable.load(path).statistic == "10th percentile"  # what tables without the field used
    model = latency_model(host, threads=1)  # re-measured on use, the stale figures not mixed in
    assert "bogus" not in model.table and "fastest call" in model.method
    model.predict(TINY)
    kept = MeasuredTable.load(path)
    assert kept.statistic == STATISTIC and "bogus" not in kept.layers
    stale.save(path)
    table, _ = profile(host, TINY, threads=1, candidates=("k3_e3",), networks=2, rounds=1)
    assert table.statistic == STATISTIC and "bogus" not in table.layers


def test_profile_refuses_a_remote_target_without_rpc(cache):
    with pytest.raises(EdgefabError, match="--rpc HOST:PORT --key KEY"):
        profile(load_target("pixel"), TINY)
    with pytest.raises(EdgefabError, match="--rpc needs --key"):
        profile(load_target("pixel"), TINY, rpc="127.0.0.1:9190")


def test_unreachable_tracker_fails_fast_and_clearly():
    with pytest.raises(EdgefabError, match=r"cannot reach the TVM RPC tracker at 127.0.0.1:1 \("):
        connect_tracker("127.0.0.1:1", "android", timeout_s=2)
    with pytest.raises(EdgefabError, match="must be HOST:PORT"):
        connect_tracker("localhost", "android")


def test_profile_over_a_localhost_tvm_rpc_tracker(cache):
    pytest.importorskip("tornado")
    from tvm import rpc
    from tvm.rpc.tracker import Tracker

    tracker = Tracker(host="127.0.0.1", port=9190, port_end=9290, silent=True)
    server = rpc.Server(host="127.0.0.1", port=9300, port_end=9400, tracker_addr=("127.0.0.1", tracker.port),
                        key="android", silent=True)  # fmt: skip
    try:
        address = f"127.0.0.1:{tracker.port}"
        with pytest.raises(EdgefabError, match="no RPC server with key 'iphone'.*android"):
            connect_tracker(address, "iphone", timeout_s=1)
        host = load_target("host")
        default, _ = profile(host, TINY, rpc=address, key="android", candidates=("k5_e6",), networks=2,
                             rounds=1)  # fmt: skip
        shipped_build = layer_build(host)  # what edgefab profile passes: edgefab compile's build
        table, path = profile(host, TINY, rpc=address, key="android", candidates=("k3_e3",), networks=2,
                              rounds=1, build=shipped_build)  # fmt: skip
    finally:
        server.terminate()
        tracker.terminate()
    assert "tvm-" in path.name and table.device == f"RPC key 'android' via {address}"
    assert default.build == TVM_DEFAULT_BUILD and len(default.layers) == 9
    # compiled another way: the cached table is replaced, not extended with the default build's layers
    assert table.build == shipped_build.description and "NCHW8c inside" in table.build
    assert set(table.layers) == {layer.key() for layer in space_layers(TINY, ("k3_e3",))}
    assert len(table.layers) == 7 and all(ms > 0 for ms in table.layers.values())
    model = latency_model("host", runtime="tvm")
    assert model.kind == "measured table" and "tvm-" in model.method and "NCHW8c inside" in model.method
    assert model.predict(TINY).ms > 0


def _cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


def test_cli_latency_profile_and_targets(tmp_path, cache):
    path = tmp_path / "tiny.onnx"
    onnx.save(layers_graph(spec_layers(TINY)), path)
    result = _cli("latency", path, "--target", "pixel", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["kind"] == "published table" and len(report["layers"]) == 7 and report["left_out"] == []
    assert "summary" in _cli("latency", path, "--target", "note10").output
    measured = _cli("latency", path, "--target", "host", "--measure", "--threads", "1", "--json").output
    measured = json.loads(measured)
    assert measured["measured_ms"] > 0 and "error_percent" in measured
    listed = json.loads(_cli("targets", "list", "--json").output)
    assert {"host", "pixel", "note10", "pixel-gpu", "rpi4"} <= {t["name"] for t in listed}
    assert "calibrated" in _cli("targets", "list").output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["latency", "absent.onnx", "--target", "pixel"], "does not exist"),
        (["latency", "{model}", "--target", "nokia"], "unknown target 'nokia'"),
        (["latency", "{model}", "--target", "pixel", "--measure"], "--measure times the model on this"),
        (["profile", "--target", "pixel"], "--rpc HOST:PORT"),
        (["profile", "--rpc", "127.0.0.1:1", "--key", "x", "--timeout", "1"], "cannot reach the TVM RPC"),
        (["profile", "--space", "resnet"], "unknown space 'resnet'"),
        (["profile", "--target", "pixel-gpu", "--rpc", "127.0.0.1:1", "--key", "x"], "runs OpenCL kernels"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(tmp_path, cache, args, message):
    path = tmp_path / "tiny.onnx"
    onnx.save(layers_graph(spec_layers(TINY)), path)
    result = _cli(*[a.replace("{model}", str(path)) for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.output and result.output.strip().splitlines()[-1].startswith("error:")


def test_cli_latency_needs_and_takes_fixed_input_shapes(tmp_path):
    model = layers_graph(spec_layers(TINY))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    path = tmp_path / "dynamic.onnx"
    onnx.save(model, path)
    result = _cli("latency", path, "--target", "pixel")
    assert result.exit_code == 2 and "input 'x' has no fixed shape" in result.output
    fixed = _cli("latency", path, "--target", "pixel", "--input", "x:1,3,32,32", "--json")
    assert fixed.exit_code == 0 and len(json.loads(fixed.output)["layers"]) == 7
    bad = _cli("latency", path, "--target", "pixel", "--input", "y:1,3")
    assert bad.exit_code == 2 and "--input must be NAME:D1,D2,..." in bad.output

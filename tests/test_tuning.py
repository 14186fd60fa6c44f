"""MetaSchedule tuning: one database per target in the cache, reused, version-checked, kept on interrupt.

Real tuning on this machine with very few trials (the figures do not matter here; that the
database is written, found and applied does). Each test gets its own cache folder.
"""

from __future__ import annotations

import json
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefab.errors import EdgefabError
from edgefab.export import tuning
from edgefab.export.default_schedule import is_default
from edgefab.export.rpc_tuning import RpcDevice
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
    with pytest.raises(EdgefabError, match="cannot tune for pixel.*--rpc HOST:PORT --key KEY"):
        check_compilable(load_target("pixel"), tune=True)
    with pytest.raises(EdgefabError, match="cannot tune for pixel-gpu: MetaSchedule tuning here covers CPU"):
        check_compilable(load_target("pixel-gpu"), tune=True, over_rpc=True)
    check_compilable(load_target("pixel"), tune=True, over_rpc=True)  # a phone's CPU over RPC is fine


@pytest.mark.parametrize(
    ("rpc", "key", "tune", "message"),
    [
        ("127.0.0.1:1", "android", None, "add --tune N"),
        (None, "android", 4, "give the tracker with --rpc"),
        ("127.0.0.1:1", None, 4, "--rpc needs --key"),
        ("127.0.0.1:1", "android", 4, r"cannot reach the TVM RPC tracker at 127.0.0.1:1 \("),
    ],
)
def test_compile_rpc_options_fail_early_and_clearly(tmp_path, rpc, key, tune, message):
    path = tmp_path / "one.onnx"
    onnx.save(one_conv(), str(path))
    options = CompileOptions(path, target="pixel", out=tmp_path / "out", tune=tune, rpc=rpc, key=key)
    with pytest.raises(EdgefabError, match=message):
        compile_model(options)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_tuning_over_a_localhost_rpc_tracker_until_the_device_disappears():
    """Candidates measured by a TVM RPC server; once it is gone, tuning stops with a clear error."""
    pytest.importorskip("tornado")
    from tvm import rpc
    from tvm.rpc.tracker import Tracker

    tracker = Tracker(host="127.0.0.1", port=9190, port_end=9290, silent=True)
    server = rpc.Server(host="127.0.0.1", port=9300, port_end=9400, tracker_addr=("127.0.0.1", tracker.port),
                        key="android", silent=True)  # fmt: skip
    folder = tuning.database_dir("host", host_tvm_target())
    tasks = tuning.extract_tasks(import_onnx(one_conv()), host_tvm_target())
    device = RpcDevice(f"127.0.0.1:{tracker.port}", "android", timeout_s=20)
    try:
        report = tuning.tune(tasks[:2], folder, tuning.TuneOptions(trials=2, device=device))
        assert report.tasks_tuned == 2 and report.measured_on == f"RPC key 'android' via {device.tracker}"
        server.terminate()
        started = time.monotonic()
        with pytest.raises(EdgefabError, match="disappeared during tuning; what it measured before is kept"):
            tuning.tune(tasks, folder, tuning.TuneOptions(trials=4, device=device))
        assert time.monotonic() - started < 60  # no wait on a session that never comes
    finally:
        server.terminate()
        tracker.terminate()
    database = tuning.open_database(folder, create=False)
    assert all(tuning.has_record(database, task) for task in tasks[:2])
    # kernels the database lacks fall back to TVM's default schedule, and the manifest names them
    executable, info = tuning.compile_cpu(import_onnx(one_conv()), "host", host_tvm_target())
    assert info["kernels_in_database"] == f"2 of {len(tasks)}"
    assert {t.task_name for t in tasks[2:]} <= set(info["default_schedule_kernels"])
    assert executable is not None


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
    assert 1 <= run["new_trials"] <= 4 and tvm["database"]["records"] >= 1
    # the default schedule's records are not trials: one per kernel tuned, counted apart
    assert 1 <= run["default_records"] <= run["tasks"]
    assert tvm["max_abs_diff_vs_onnxruntime"] < 1e-4
    # With 4 trials the untuned form may win every kernel (it did on CI's CPU): then the package is
    # honestly "untuned", and says which kernels run the default schedule.
    kept_default = len(tvm["default_schedule_kernels"])
    assert tvm["tuned"] == (kept_default < run["tasks"])
    method = manifest["figures"]["tvm_latency"]["method"]
    assert ("(tuned" in method) == tvm["tuned"] and ("(untuned" in method) != tvm["tuned"]
    records = tvm["database"]["records"]

    _, again = compile_model(CompileOptions(second, target="host", out=tmp_path / "o2", tune=4))
    run = again["engines"]["tvm"]["tuning_run"]
    assert run["new_trials"] == 0 and run["tasks_in_database"] == run["tasks"]
    assert again["engines"]["tvm"]["database"]["records"] == records
    # asking for more trials tunes further: each kernel up to its larger share, records held counting
    _, more = compile_model(CompileOptions(second, target="host", out=tmp_path / "o3", tune=12))
    run = more["engines"]["tvm"]["tuning_run"]
    assert run["new_trials"] >= 1 and run["tasks_in_database"] == run["tasks"] and run["tasks_tuned"] >= 1
    database = json.loads((tuning.database_dir("host", host_tvm_target()) / "meta.json").read_text())
    assert database["tvm_version"] == tuning.tvm_version()
    # every tuned kernel's default form was measured too, so the best record is never the slower one
    folder = tuning.database_dir("host", host_tvm_target())
    database = tuning.open_database(folder, create=False)
    for task in tuning.extract_tasks(import_onnx(one_conv()), host_tvm_target()):
        records = database.get_top_k(database.commit_workload(task.dispatched[0]), 100)
        assert sum(is_default(record) for record in records) == 1 and len(records) >= 2


def test_factory_widths_are_covered_pair_by_pair():
    from edgefab.factory.space import FACTORY_SPACES
    from edgefab.pipeline.tune import covering_widths

    space = FACTORY_SPACES["digits-28"]
    # the stem as a stage before the first, the head as one after the last
    options = (space.stem_widths, *space.widths, space.head_widths)
    chosen = covering_widths(options)
    pairs = {(s, w[s - 1], w[s]) for w in chosen for s in range(1, len(w))}
    assert pairs == {(s, a, b) for s in range(1, len(options)) for a in options[s - 1] for b in options[s]}
    assert {w[0] for w in chosen} == set(options[0]) and len(chosen) == 9  # 3x3 pairs need 9, no more
    # a dropped third stage (width 0) passes the second's width on: the head then reads it
    drop = FACTORY_SPACES["digits-28-drop"]
    options = (drop.stem_widths, *drop.widths, drop.head_widths)
    chosen = covering_widths(options)
    assert {(w[2], w[4]) for w in chosen if w[3] == 0} == {(a, b) for a in options[2] for b in options[4]}
    assert len(chosen) == 18  # as many again with the stage dropped


def test_space_networks_hold_every_layer_of_random_factory_networks():
    """``edgefab tune --space`` must tune what a factory build compiles, narrowed stages included.

    Checked on edgefab's fused layers (shapes, op, stride), which is what MetaSchedule's tasks are
    made of; extracting the tasks of all 36 networks with TVM takes minutes.
    """
    from edgefab.factory.space import FACTORY_SPACES
    from edgefab.pipeline.tune import space_networks
    from edgefab.spaces import CHOICES, get_space
    from edgefab.targets.layers import spec_layers

    covered = {layer for spec in space_networks(get_space("digits-28"), 10) for layer in spec_layers(spec)}
    factory, rng = FACTORY_SPACES["digits-28"], np.random.default_rng(3)
    for _ in range(50):
        spec = factory.arch(factory.sample(rng), 10)
        assert set(spec_layers(spec)) <= covered
    # one network per choice at the space's own widths (what was tuned before) misses narrowed stages
    space = get_space("digits-28")
    full_width = [space.arch([slot.fixed or c for slot in space.slots], 10) for c in CHOICES]
    narrowest = factory.arch(factory.smallest(), 10)
    assert not set(spec_layers(narrowest)) <= {layer for spec in full_width for layer in spec_layers(spec)}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--space", "nope"], "unknown search space 'nope'"),
        (["--target", "pixel"], "give its TVM RPC tracker with --rpc HOST:PORT --key KEY"),
        (["--rpc", "127.0.0.1:1", "--key", "android"], r"cannot reach the TVM RPC tracker at 127.0.0.1:1 \("),
        (["--export", "db.json"], "the format is gzipped JSON; give a path ending in .json.gz"),
        (["--layout", "NHWC"], r"unknown layout 'NHWC': use one of NCHW, .*NCHW16c \(--layout\)"),
    ],
)
def test_tune_command_bad_input_is_one_line(args, message):
    import re

    from typer.testing import CliRunner

    from edgefab.cli import app

    result = CliRunner().invoke(app, ["tune", *args])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert re.search(message, result.output.replace("\n", " ")), result.output


@pytest.mark.slow
def test_space_kernels_match_trained_networks_not_fresh_ones(tmp_path):
    """A fresh batch norm's zero shift is folded away; trained networks keep a bias add per conv."""
    from edgefab.export.onnx_export import export_onnx
    from edgefab.factory.network import build_network
    from edgefab.pipeline.tune import trained_like, unique_tasks
    from edgefab.spaces import get_space

    space = get_space("digits-28")
    spec = space.arch(space.smallest(), 10)

    def kernels(network, name):
        model = export_onnx(network, (1, *spec.input_shape), tmp_path / f"{name}.onnx")
        return tuning.extract_tasks(import_onnx(model), host_tvm_target())

    fresh = kernels(build_network(spec), "fresh")
    one, other = (
        kernels(trained_like(build_network(spec), 1), "a"),
        kernels(trained_like(build_network(spec), 2), "b"),
    )
    assert len(unique_tasks([one, other])) == len(one)  # any trained weights: the same kernels
    assert len(unique_tasks([one, fresh])) > len(one)  # the fresh network's kernels differ


@pytest.mark.slow
def test_only_untuned_chooses_the_new_kernels(tmp_path):
    """``edgefab tune --only-untuned``: after one network is tuned, a wider sibling's new kernels are
    chosen and the kernels tuned before are not."""
    from edgefab.pipeline.tune import untuned_tasks

    path = tmp_path / "a.onnx"
    onnx.save(one_conv(), str(path))
    compile_model(CompileOptions(path, target="host", out=tmp_path / "o", tune=6))
    folder = tuning.database_dir("host", host_tvm_target())
    database = tuning.open_database(folder, create=False)
    old = tuning.extract_tasks(import_onnx(one_conv()), host_tvm_target())
    new = tuning.extract_tasks(import_onnx(one_conv(channels=16)), host_tvm_target())
    tuned = [task for task in old if tuning.trials_in_database(database, task) > 0]
    chosen = untuned_tasks(old + new, folder)
    assert tuned and not any(task is done for task in chosen for done in tuned)
    # the 16-channel convolution is a kernel no record holds
    assert any("conv" in task.task_name and any(task is n for n in new) for task in chosen), chosen


def test_trials_go_where_the_flops_are():
    """A kernel's share grows with its FLOPs times its count; the least gets a quarter of an even
    share; shares come in a few levels (floor x sqrt(2)^k) and add up to about the trials asked for."""
    from edgefab.export.trial_shares import kernel_flops, trial_shares

    tasks = tuning.extract_tasks(import_onnx(one_conv(channels=16)), host_tvm_target())
    shares = trial_shares(tasks, 64)
    floor = 64 // len(tasks) // 4
    by_cost = sorted(zip((t.weight * kernel_flops(t) for t in tasks), shares, strict=True))
    assert [share for _, share in by_cost] == sorted(shares) and shares != [shares[0]] * len(shares)
    levels = {round(floor * 2 ** (k / 2)) for k in range(20)}
    assert min(shares) == floor and set(shares) <= levels
    assert 0.8 * 64 <= sum(shares) <= 64
    assert "conv" in max(zip(shares, (t.task_name for t in tasks), strict=True))[1]
    # fewer trials than kernels: one each; a per-kernel limit: the same for all
    assert trial_shares(tasks, 2) == [1] * len(tasks)
    assert tuning._shares(tasks, tuning.TuneOptions(trials=64, max_trials_per_task=5)) == [5] * len(tasks)


def test_tuning_rounds_hold_kernels_of_one_share():
    todo = [("a", 8), ("b", 8), ("c", 4)] + [(f"d{i}", 2) for i in range(tuning.TASKS_PER_ROUND + 1)]
    rounds = tuning._rounds(todo)
    assert [(len(tasks), share) for tasks, share in rounds] == [
        (2, 8), (1, 4), (tuning.TASKS_PER_ROUND, 2), (1, 2)
    ]  # fmt: skip
    assert [task for tasks, _ in rounds for task in tasks] == [task for task, _ in todo]

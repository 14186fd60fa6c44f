"""``edgefab profile``: measure a target's per-layer table (ONNX Runtime here, TVM here or over RPC).

The TVM path compiles each layer for the target's TVM target, uploads the library to the device
(a TVM RPC server reached through a tracker, or this process for ``--runtime tvm`` without RPC),
and times it there with ``time_evaluator``. How a layer is compiled is the caller's choice (a
:class:`LayerBuild`; ``edgefab profile`` passes the one ``edgefab compile`` uses, so a table times
the kernels a package ships); without one it is TVM's own default build.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgefab.arch import ArchSpec
from edgefab.errors import EdgefabError
from edgefab.targets import Target
from edgefab.targets.graphs import layers_graph, random_input
from edgefab.targets.layers import Layer, spec_layers
from edgefab.targets.measured import (
    RUN_PROBE,
    STATISTIC,
    MeasuredTable,
    OrtMeasurer,
    measure_rounds,
    random_spec,
    resolve_threads,
    runtime_version,
    space_layers,
    table_path,
)
from edgefab.targets.model import DEFAULT_CANDIDATES
from edgefab.targets.toolchain import device_linker, resolve_tvm_target


class Progress(Protocol):
    """What profiling reports to (the CLI's progress bar)."""

    def stage(self, description: str) -> None: ...
    def advance(self, done: int, total: int) -> None: ...


@dataclass(frozen=True)
class LayerBuild:
    """How the TVM path compiles a layer graph: ``compile(model, folder, name)`` writes a library
    the device can load into ``folder`` and returns its path; ``description`` is kept in the table
    (a table measured one way is not extended with layers compiled another way)."""

    compile: Callable[[Any, Path, str], Path]
    description: str


TVM_DEFAULT_BUILD = "TVM's default build (NCHW, untuned)"


class _Quiet:
    def stage(self, description: str) -> None:
        pass

    def advance(self, done: int, total: int) -> None:
        pass


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` -> ``(host, port)``."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise EdgefabError(f"--rpc must be HOST:PORT (e.g. 127.0.0.1:9190), got '{address}'")
    return host, int(port)


def connect_tracker(address: str, key: str, timeout_s: float = 10.0) -> Any:
    """A TVM RPC session to a server registered under ``key`` at the tracker ``address``."""
    from tvm import rpc

    host, port = parse_address(address)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        raise EdgefabError(
            f"cannot reach the TVM RPC tracker at {address} ({reason}; waited up to {timeout_s:g} s)"
        ) from None
    tracker = rpc.connect_tracker(host, port)
    deadline = time.monotonic() + timeout_s
    while True:  # a server may take a moment to register
        keys = sorted(tracker.summary().get("queue_info", {}))
        if key in keys:
            return tracker.request(key, priority=1, session_timeout=0, max_retry=3)
        if time.monotonic() > deadline:
            raise EdgefabError(f"no RPC server with key '{key}' at the tracker {address} "
                               f"(registered keys: {', '.join(keys) or 'none'})")  # fmt: skip
        time.sleep(0.25)


class TvmMeasurer:
    """Times layers compiled by TVM on the session's device (``repeat`` windows of ``number`` calls)."""

    def __init__(self, target: Target, session: Any, work: Path, build: LayerBuild | None = None,
                 budget_ms: float = 200.0):  # fmt: skip
        self.session, self.work, self.budget_ms, self.count = session, work, budget_ms, 0
        self.build = build or default_build(target)

    def timer(self, layers: Sequence[Layer]) -> Callable[[], list[float]]:
        """Compile ``layers`` as one graph and load it on the device; a function timing one round."""
        import tvm
        from tvm import relax

        feed = random_input(layers[0])
        self.count += 1
        # A name per library: the device's loader would hand back an already loaded file of that name.
        path = self.build.compile(layers_graph(layers), self.work, f"layer{self.count}")
        self.session.upload(str(path))
        device = self.session.cpu()
        vm = relax.VirtualMachine(self.session.load_module(path.name), device)
        data = tvm.runtime.tensor(feed, device)
        repeat_ms = max(1, int(self.budget_ms / 5))
        timer = vm.time_evaluator("main", device, number=1, repeat=5, min_repeat_ms=repeat_ms)
        return lambda: [float(t) * 1e3 for t in timer(data).results]


def default_build(target: Target) -> LayerBuild:
    """TVM's own build of a layer graph for ``target`` (no layout change, no tuning database)."""
    import tvm

    compiled_for, fcompile = tvm.target.Target(resolve_tvm_target(target)), device_linker(target)

    def compile_layers(model: Any, folder: Path, name: str) -> Path:
        from tvm.relax.frontend.onnx import from_onnx

        path = folder / f"{name}.so"
        tvm.compile(from_onnx(model), compiled_for).export_library(str(path), fcompile=fcompile)
        return path

    return LayerBuild(compile_layers, TVM_DEFAULT_BUILD)


def profile(
    target: Target,
    base: ArchSpec,
    runtime: str = "onnxruntime",
    threads: int | None = None,
    rpc: str | None = None,
    key: str | None = None,
    candidates: Sequence[str] = DEFAULT_CANDIDATES,
    networks: int = 10,
    seed: int = 0,
    progress: Progress | None = None,
    timeout_s: float = 10.0,
    rounds: int = 3,
    build: LayerBuild | None = None,
    min_seconds: float = 0.0,
) -> tuple[MeasuredTable, Path]:
    """Measure every layer of the space around ``base`` and fit the overhead; returns the cached table
    (``build``: how the TVM path compiles layers, default TVM's own build; ``min_seconds``: the
    shortest timing window, ``measured.PROFILE_SECONDS`` for a table that outlasts a slow phase)."""
    rng = np.random.default_rng(seed)
    specs = [base] + [random_spec(base, rng, candidates) for _ in range(networks - 1)]
    return profile_layers(target, space_layers(base, candidates), specs, runtime, threads, rpc, key, progress,
                          timeout_s, rounds, build, min_seconds)  # fmt: skip


def profile_layers(
    target: Target,
    layers: Sequence[Layer],
    specs: Sequence[ArchSpec],
    runtime: str = "onnxruntime",
    threads: int | None = None,
    rpc: str | None = None,
    key: str | None = None,
    progress: Progress | None = None,
    timeout_s: float = 10.0,
    rounds: int = 3,
    build: LayerBuild | None = None,
    min_seconds: float = 0.0,
) -> tuple[MeasuredTable, Path]:
    """Measure ``layers`` one by one and ``specs`` as whole networks (to fit the per-network
    overhead), add them to the target's cached table and save it; returns the table and its path."""
    progress = progress or _Quiet()
    if rpc is not None:
        runtime = "tvm"
        if not key:
            raise EdgefabError("--rpc needs --key: the key the device's RPC server registered with")
    elif not target.runs_here:
        raise EdgefabError(f"target {target.name} is not this machine: profile it over TVM RPC with "
                           f"--rpc HOST:PORT --key KEY")  # fmt: skip
    count = resolve_threads(target, threads)
    path = table_path(target, runtime, count)
    device = f"RPC key '{key}' via {rpc}" if rpc else "this machine"
    built = (build.description if build else TVM_DEFAULT_BUILD) if runtime == "tvm" else ""
    table = MeasuredTable.load(path) if path.is_file() else None
    if table is None or (table.build, table.statistic) != (built, STATISTIC):  # not comparable: re-measure
        table = MeasuredTable(target.name, runtime_version(runtime), count, device, build=built,
                              statistic=STATISTIC)  # fmt: skip
    table.device = device
    layers = list(layers)
    nets = [spec_layers(spec) for spec in specs]
    with tempfile.TemporaryDirectory(prefix="edgefab-profile-") as work:
        measurer = _measurer(target, runtime, count, rpc, key, Path(work), timeout_s, build)
        groups = [[RUN_PROBE]] + [[layer] for layer in layers] + nets
        version = runtime_version(runtime)
        progress.stage(f"preparing {len(layers)} layers and {len(nets)} networks ({version})")
        timers = []
        for done, group in enumerate(groups, 1):
            timers.append(measurer.timer(group))
            progress.advance(done, len(groups))
        window = f", over at least {min_seconds:g} s" if min_seconds else ""
        progress.stage(f"timing on {device}, at least {rounds} interleaved rounds{window}")
        values = measure_rounds(timers, rounds, min_seconds, progress.advance)
    run, layer_ms, net_ms = values[0], values[1 : len(layers) + 1], values[len(layers) + 1 :]
    table.layers.update({layer.key(): max(0.0, ms - run) for layer, ms in zip(layers, layer_ms, strict=True)})
    table.networks = [
        {"layers": len(net), "sum_ms": sum(table.layers[layer.key()] for layer in net), "measured_ms": ms}
        for net, ms in zip(nets, net_ms, strict=True)
    ]
    table.overhead = (run, 0.0)
    table.fit_overhead()
    table.created = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    table.save(path)
    return table, path


def _measurer(target: Target, runtime: str, threads: int, rpc: str | None, key: str | None,
              work: Path, timeout_s: float, build: LayerBuild | None):  # fmt: skip
    if runtime == "onnxruntime":
        return OrtMeasurer(threads)
    if runtime != "tvm":
        runtime_version(runtime)  # raises the one-line error
    if rpc is not None:
        session = connect_tracker(rpc, key or "", timeout_s)
        # On the device: mode 1 takes the big cores first (a phone's little cores would set the pace).
        session.get_function("runtime.config_threadpool")(1, threads)
        return TvmMeasurer(target, session, work, build)
    from tvm import rpc as tvm_rpc

    logging.getLogger("RPCServer").setLevel(logging.WARNING)  # TVM's in-process server logs each load

    # TVM sizes a thread's pool once, from TVM_NUM_THREADS, else half the logical CPUs on x86 (one
    # thread on a 2-core machine without hyper-threads): the table says it was measured on ``threads``.
    os.environ["TVM_NUM_THREADS"] = str(threads)
    return TvmMeasurer(target, tvm_rpc.LocalSession(), work, build)

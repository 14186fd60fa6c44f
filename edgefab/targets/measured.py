"""Latency tables measured on a real device: this machine, or any device behind a TVM RPC tracker.

Profiling (:mod:`edgefab.targets.profiling`) times each fused layer of a search space alone (ONNX
Runtime here, or TVM here or over RPC), then a few whole networks of the space, and fits the
per-network overhead ``measured = a + (1 + b) * sum(layers)``: ``a`` is the cost of one ``run``
call (timed on a one-element graph and taken off every layer's figure), ``b`` what a layer alone
does not pay (its weights and input stay in cache between timed runs; in a network the other
layers evict them). Tables are cached on disk, one file per target, runtime (with its version),
thread count and, for this machine, CPU.

Each figure is the fastest of all calls timed over interleaved rounds (``measure_rounds``): the
latency of the layer or network when nothing else gets in its way. On a shared virtual machine a
low statistic is what repeats: back to back, medians of the same network moved by up to 17 % under
load. At two threads this machine also runs slow phases (every network 20-30 % slower, for 25 s and
longer), so ``edgefab profile`` times over at least ``PROFILE_SECONDS``: the fastest call of a window
that holds a fast stretch is the fast stretch's figure, where a 10th percentile carries the slow one
(BENCHMARKS.md, issue 3, "the fastest call").
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgefab.arch import ArchSpec, BlockSpec
from edgefab.cache import cache_dir
from edgefab.errors import EdgefabError
from edgefab.targets import Target
from edgefab.targets.graphs import layers_graph, random_input
from edgefab.targets.layers import Layer, block_inputs, block_layer, spec_layers
from edgefab.targets.model import DEFAULT_CANDIDATES, LatencyModel
from edgefab.targets.opmodel import OpModel, features

RUNTIMES = ("onnxruntime", "tvm")
MIN_FIT_ROWS = 8  # a fitted fallback needs at least this many measured layers


def runtime_version(runtime: str) -> str:
    """``onnxruntime-1.32.0`` or ``tvm-0.27.0``: part of a table's identity."""
    if runtime == "onnxruntime":
        import onnxruntime

        return f"onnxruntime-{onnxruntime.__version__}"
    if runtime == "tvm":
        from importlib.metadata import version

        return f"tvm-{version('apache-tvm')}"
    raise EdgefabError(f"unknown runtime '{runtime}'; use one of {', '.join(RUNTIMES)}")


def machine_id() -> str:
    """A short fingerprint of this machine's CPU (model name and core count)."""
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return hashlib.sha256(f"{model}|{os.cpu_count()}".encode()).hexdigest()[:10]


def resolve_threads(target: Target, threads: int | None) -> int:
    """The thread count a table is measured with (0 in a profile: all of this machine's cores)."""
    count = target.threads if threads is None else threads
    return count or (os.cpu_count() or 1)


def table_path(target: Target, runtime: str, threads: int) -> Path:
    """Where the table of ``target`` / ``runtime`` / ``threads`` is cached."""
    machine = f"-{machine_id()}" if target.runs_here else ""
    name = f"{target.name}-{runtime_version(runtime)}-t{threads}{machine}.json"
    return cache_dir() / "latency" / name


@dataclass
class MeasuredTable:
    """Per-layer milliseconds, the fitted overhead and the networks it was fitted on."""

    target: str
    runtime: str
    threads: int
    device: str
    layers: dict[str, float] = field(default_factory=dict)
    overhead: tuple[float, float] = (0.0, 0.0)
    networks: list[dict] = field(default_factory=list)  # {"layers": n, "sum_ms": s, "measured_ms": m}
    created: str = ""
    build: str = ""  # TVM tables: how the layers were compiled (profiling.LayerBuild.description)
    statistic: str = "10th percentile"  # of the calls timed; tables written before the field used it

    def save(self, path: Path) -> None:
        """Write atomically (a reader never sees half a table)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_suffix(f".{os.getpid()}.part")  # processes may save the same table at once
        part.write_text(json.dumps(asdict(self), indent=1, sort_keys=True))
        part.replace(path)

    @classmethod
    def load(cls, path: Path) -> MeasuredTable:
        """Read a cached table."""
        data = json.loads(path.read_text())
        data["overhead"] = tuple(data["overhead"])
        return cls(**data)

    def fit_overhead(self) -> None:
        """Fit ``b`` in ``measured = a + (1 + b) * sum`` (median over the networks; ``a`` is measured)."""
        if not self.networks:
            return
        run = self.overhead[0]
        ratios = [(net["measured_ms"] - run) / net["sum_ms"] for net in self.networks if net["sum_ms"] > 0]
        self.overhead = (run, float(np.median(ratios) - 1) if ratios else 0.0)


def _kept_on_disk(
    measure: Callable[[Layer], float], table: MeasuredTable, path: Path
) -> Callable[[Layer], float]:
    """``measure``, with each newly measured layer added to the cached table on disk, so that later
    processes predict with the same figure instead of measuring it again (under other load)."""

    def measure_and_keep(layer: Layer) -> float:
        ms = measure(layer)
        latest = MeasuredTable.load(path) if path.is_file() else table  # another process may have saved
        if latest.statistic != table.statistic:  # a stale table on disk is replaced, not mixed in
            latest = table
        ms = latest.layers.setdefault(layer.key(), ms)
        latest.save(path)
        return ms

    return measure_and_keep


def fitted_fallback(table: dict[str, float]) -> OpModel | None:
    """The per-op model fitted to a measured table, for layers it lacks."""
    if len(table) < MIN_FIT_ROWS:
        return None
    layers = [Layer.from_key(key) for key in table]
    return OpModel.fit([features(layer) for layer in layers], list(table.values()))


def measured_model(
    target: Target, runtime: str = "onnxruntime", threads: int | None = None
) -> LatencyModel | None:
    """The cached measured table of a target as a latency model, or None if never profiled.

    On this machine with ONNX Runtime, layers the table lacks are measured when first asked for.
    """
    count = resolve_threads(target, threads)
    path = table_path(target, runtime, count)
    here = target.runs_here and runtime == "onnxruntime"
    table = MeasuredTable.load(path) if path.is_file() else None
    if here and (table is None or table.statistic != STATISTIC):  # re-measured on use, not mixed
        table = MeasuredTable(target.name, runtime_version(runtime), count, "this machine")
        table.statistic = STATISTIC
    if table is None:
        return None
    measure = None
    if here:
        measure = _kept_on_disk(OrtMeasurer(count).layer, table, path)
    method = (
        f"{len(table.layers)} layers measured with {table.runtime} on {table.device}, {count} thread(s), "
        f"{table.statistic}{f' ({table.build})' if table.build else ''}; overhead fitted on "
        f"{len(table.networks)} networks"
        if table.networks
        else f"layers measured with {table.runtime} here on first use, {count} thread(s), "
        f"{table.statistic}; no overhead fitted (run edgefab profile --target {target.name})"
    )
    return LatencyModel(
        target, "measured table", method, dict(table.layers), fitted_fallback(table.layers),
        overhead=table.overhead, table_source="measured", measure=measure,
    )  # fmt: skip


RUN_PROBE = Layer("eltwise", 1, 1, 1, 1, act="none", name="run call")  # a one-element graph


class OrtMeasurer:
    """Times layers and networks with ONNX Runtime's CPU provider on this machine."""

    def __init__(self, threads: int, budget_ms: float = 150.0):
        self.threads, self.budget_ms = threads, budget_ms

    def timer(self, layers: Sequence[Layer]) -> Callable[[], list[float]]:
        """A function timing one round of ``layers`` run as one graph (milliseconds per call)."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = self.threads, 1
        model = layers_graph(layers).SerializeToString()
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        feed = {"x": random_input(layers[0])}
        return lambda: time_samples(lambda: session.run(None, feed), self.budget_ms)

    def layer(self, layer: Layer) -> float:
        """Milliseconds of one layer alone (the fastest call), less the cost of the ``run`` call."""
        ms, run = measure_rounds([self.timer([layer]), self.timer([RUN_PROBE])], 3)
        return max(0.0, ms - run)


STATISTIC = "fastest call"  # recorded in each table: a table timed another way is measured afresh
PROFILE_SECONDS = 30.0  # edgefab profile's shortest timing window (--seconds: longer on a noisier machine)


def measure_rounds(
    timers: Sequence[Callable[[], list[float]]],
    rounds: int,
    min_seconds: float = 0.0,
    on_round: Callable[[int, int], None] | None = None,
) -> list[float]:
    """The fastest of each timer's calls over interleaved rounds: at least ``rounds`` of them and
    at least ``min_seconds`` of timing. ``on_round`` gets the rounds done and the rounds expected."""
    samples: list[list[float]] = [[] for _ in timers]
    start, done = time.perf_counter(), 0
    while True:
        for index, timer in enumerate(timers):
            samples[index] += timer()
        done += 1
        elapsed = time.perf_counter() - start
        finished = done >= rounds and elapsed >= min_seconds
        if on_round:
            expected = max(rounds, math.ceil(min_seconds * done / max(elapsed, 1e-9)))
            on_round(done, done if finished else max(expected, done + 1))
        if finished:
            return [min(values) for values in samples]


def time_samples(call: Callable[[], object], budget_ms: float) -> list[float]:
    """Milliseconds of enough calls to fill about ``budget_ms`` (5-200 calls, after 2 warm-up calls)."""
    for _ in range(2):
        call()
    start = time.perf_counter()
    call()
    first = (time.perf_counter() - start) * 1e3
    samples = []
    for _ in range(int(min(200, max(5, budget_ms / max(first, 1e-3))))):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1e3)
    return samples


def space_layers(base: ArchSpec, candidates: Sequence[str] = DEFAULT_CANDIDATES) -> list[Layer]:
    """Every distinct layer of the space around ``base``: its fixed layers and each block's candidates.

    Blocks keep their out channels and stride; kernel and expansion take each candidate's values
    (blocks with expansion 1 are fixed). Skipping keeps shapes, so each block's input is known.
    """
    layers = {layer.key(): layer for layer in spec_layers(base)}
    for index, ((h, w, cin), block) in enumerate(zip(block_inputs(base), base.blocks, strict=True)):
        if block.expand == 1:
            continue
        for notation in candidates:
            kernel, expand = (int(part[1:]) for part in notation.split("_")[:2])
            choice = block_layer(h, w, cin, _with(block, kernel, expand), index)
            layers.setdefault(choice.key(), choice)
    return list(layers.values())


def _with(block: BlockSpec, kernel: int, expand: int) -> BlockSpec:
    from dataclasses import replace

    return replace(block, kernel=kernel, expand=expand, skip=False)


def random_spec(
    base: ArchSpec, rng: np.random.Generator, candidates: Sequence[str] = DEFAULT_CANDIDATES
) -> ArchSpec:
    """A random member of the space around ``base`` (skips where shapes allow, with one chance in five)."""
    from dataclasses import replace

    blocks, cin = [], base.stem_channels
    for block in base.blocks:
        if block.expand == 1:
            blocks.append(block)
        elif block.stride == 1 and cin == block.out_channels and rng.random() < 0.2:
            blocks.append(replace(block, skip=True))
        else:
            kernel, expand = (int(p[1:]) for p in str(rng.choice(list(candidates))).split("_")[:2])
            blocks.append(_with(block, kernel, expand))
        cin = block.out_channels
    return replace(base, blocks=tuple(blocks), name=f"{base.name}-random")


def measure_model(model, threads: int, rounds: int = 5) -> float:
    """Milliseconds of one ONNX Runtime inference of a static-shape model here (the fastest call)."""
    return measure_rounds([model_timer(model, threads)], rounds)[0]


def model_timer(model, threads: int) -> Callable[[], list[float]]:
    """A function timing one round (about 100 ms of calls) of a static-shape ONNX model here.

    Several models' timers passed to :func:`measure_rounds` are timed in interleaved rounds, so
    a burst of load on a shared machine spreads over all of them instead of skewing one.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {}
    for value in session.get_inputs():
        if not all(isinstance(d, int) and d > 0 for d in value.shape):
            raise EdgefabError(f"input '{value.name}' has no fixed shape ({value.shape}); fix it first")
        dtype = np.float32 if "float" in value.type else np.int64
        feeds[value.name] = rng.standard_normal(value.shape).astype(dtype)
    return lambda: time_samples(lambda: session.run(None, feeds), 100.0)

"""Latency of a model on a target, with where the figure comes from.

One interface serves search, factory and reports: :func:`latency_model` gives a target's
:class:`LatencyModel`, whose :meth:`~LatencyModel.predict` costs an :class:`~edgefab.arch.ArchSpec`
(microseconds: a dictionary look-up per layer) and :meth:`~LatencyModel.predict_onnx` an ONNX
graph, each as total milliseconds plus a per-layer breakdown. Per target the layers' costs come
from a published table (``pixel``, ``note10``), a table measured on the device (``host``, any
device over TVM RPC: :mod:`edgefab.targets.measured`), or an uncalibrated roofline estimate from
the chip's peak figures (``pixel-gpu``, ``rpi4`` until profiled). Layers a table lacks get a
per-op model fitted to that table (:mod:`edgefab.targets.opmodel`).

The pipeline also uses ``predicted_latency``, ``measure_onnx`` and ``time_calls``.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgefab.errors import EdgefabError
from edgefab.targets import Target
from edgefab.targets.model import LatencyModel, LayerCost, Prediction  # noqa: F401 (re-exported)


@dataclass(frozen=True)
class LatencyFigure:
    """A latency with its provenance."""

    ms: float
    source: str  # "measured" or "predicted"
    method: str  # how, in words

    def to_dict(self) -> dict:
        """JSON form for manifests."""
        return {"ms": round(self.ms, 4), "source": self.source, "method": self.method}


def predicted_latency(target: Target, model) -> LatencyFigure | None:
    """The target's latency model's figure for an ONNX graph, or None where no layer of the graph
    is known to it (an LSTM-only graph, say); ops it leaves out are named in the figure's method."""
    try:
        return latency_model(target).predict_onnx(model).figure()
    except EdgefabError:
        return None


def time_calls(call, warmup: int = 10, runs: int = 50) -> list[float]:
    """Milliseconds of each of ``runs`` calls of ``call()``, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1e3)
    return samples


def measure_onnx(
    path: Path,
    feeds: dict[str, np.ndarray],
    threads: int = 0,
    warmup: int = 10,
    runs: int = 50,
    session_config: dict[str, str] | None = None,
) -> LatencyFigure:
    """Median latency of one ONNX Runtime inference (CPU provider) on ``feeds``; ``session_config``
    holds the session config entries the model is shipped with (as the package's loader applies)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    for key, value in (session_config or {}).items():
        options.add_session_config_entry(key, str(value))
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    samples = time_calls(lambda: session.run(None, feeds), warmup, runs)
    thread_note = f"{threads} thread(s)" if threads else "all cores"
    return LatencyFigure(
        ms=statistics.median(samples),
        source="measured",
        method=f"ONNX Runtime {ort.__version__} CPU on this machine, {thread_note}, median of {runs}",
    )


MODELS = ("measured", "published-spnas", "published-ofa", "roofline")


def roofline_model(target: Target) -> LatencyModel:
    """An uncalibrated estimate from the chip's peak figures: MACs at peak rate, bytes at peak bandwidth."""
    from edgefab.targets.opmodel import FEATURES, OpModel

    spec = target.latency
    per_mmac = 2.0 / float(spec["peak_gflops"])  # ms per million MACs
    per_mb = 1.0 / float(spec["bandwidth_gbs"])  # ms per MB
    values = {"dense_macs": per_mmac, "pw_macs": per_mmac, "dw_macs": per_mmac, "act_mb": per_mb,
              "weight_mb": per_mb, "kernels": float(spec["launch_us"]) / 1e3}  # fmt: skip
    model = OpModel(tuple(values[name] for name in FEATURES), 0)
    method = (f"roofline sum at {spec['peak_gflops']:g} GFLOP/s, {spec['bandwidth_gbs']:g} GB/s, "
              f"{spec['launch_us']:g} us per kernel ({spec.get('provenance', 'peak figures')})")  # fmt: skip
    return LatencyModel(target, "uncalibrated estimate", method, {}, model, fallback_source="estimate")


def latency_model(
    target: Target | str, runtime: str | None = None, threads: int | None = None
) -> LatencyModel:
    """The target's latency model: a measured table where one is cached, else what its TOML names."""
    from edgefab.targets import load_target
    from edgefab.targets.measured import measured_model

    target = target if isinstance(target, Target) else load_target(target)
    kind = target.latency.get("model", "measured" if target.runs_here else "")
    measured = measured_model(target, runtime or "onnxruntime", threads)
    if measured is not None and (kind == "measured" or measured.table):
        return measured
    if runtime not in (None, "onnxruntime") or kind == "measured":
        how = f"--runtime {runtime}" if target.runs_here else "--rpc HOST:PORT --key KEY"
        raise EdgefabError(
            f"target {target.name} has no measured latency table for {runtime or 'onnxruntime'}; "
            f"make one with: edgefab profile --target {target.name} {how}"
        )
    if kind == "published-spnas":
        from edgefab.targets.published import pixel_model

        return pixel_model(target)
    if kind == "published-ofa":
        from edgefab.targets.published import note10_model

        return note10_model(target)
    if kind == "roofline":
        return roofline_model(target)
    raise EdgefabError(f"target {target.name} names no latency model (its [latency] table lacks 'model')")

"""Steps shared by ``build`` and ``compile``: TVM compilation with fallback, engine choice, packaging."""

from __future__ import annotations

import platform
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx

import edgefab
from edgefab.errors import EdgefabError, UnsupportedOperatorError
from edgefab.export.graph import max_abs_diff
from edgefab.export.rpc_tuning import RpcDevice
from edgefab.export.tuning import TuneOptions
from edgefab.export.tvm_compile import CompiledArtifact, check_compilable, compile_onnx, device_linker
from edgefab.runtime.tvm_engine import TVMEngine
from edgefab.targets import Target
from edgefab.targets.latency import LatencyFigure, time_calls
from edgefab.targets.profiling import connect_tracker

TVM_TOLERANCE = 1e-4


class Progress(Protocol):
    """What the pipeline tells the user while it works."""

    def stage(self, description: str) -> None:
        """A new stage begins."""

    def advance(self, done: int, total: int) -> None:
        """Progress within the current stage."""


class SilentProgress:
    """A :class:`Progress` that says nothing (library use and tests)."""

    def stage(self, description: str) -> None:
        pass

    def advance(self, done: int, total: int) -> None:
        pass


def tune_options(target: Target, trials: int, rpc: str | None, key: str | None, seed: int = 0) -> TuneOptions:
    """Tuning options for ``target``; with ``rpc``, candidates are measured on the device behind the
    tracker, which must be reachable and list a server for ``key`` before any work starts."""
    if key is not None and rpc is None:
        raise EdgefabError("--key names a device behind a TVM RPC tracker: give the tracker with --rpc")
    if rpc is not None and not key:
        raise EdgefabError("--rpc needs --key: the key the device's RPC server registered with")
    check_compilable(target, tune=True, over_rpc=rpc is not None)
    if rpc is None:
        return TuneOptions(trials=trials, seed=seed)
    connect_tracker(rpc, key)  # a clear error now beats candidates failing one by one later
    return TuneOptions(trials=trials, seed=seed, device=RpcDevice(rpc, key, fcompile=device_linker(target)))


@dataclass
class TvmOutcome:
    """What the TVM step produced: a library and its checks, or why there is none."""

    artifact: CompiledArtifact | None
    error: str | None = None
    parity_max_abs_diff: float | None = None
    latency: LatencyFigure | None = None

    def manifest_entry(self) -> dict[str, Any]:
        """The ``engines.tvm`` entry of the manifest."""
        if self.artifact is None:
            return {"error": self.error}
        entry = {
            "file": self.artifact.path.name,
            "format": self.artifact.format,
            "tvm_target": self.artifact.tvm_target,
            "runs_here": self.artifact.runs_here,
            "machine": platform.machine() if self.artifact.runs_here else None,
            "note": self.artifact.note,
        }
        entry.update(self.artifact.details)  # tuning database (CPU) or kernels and schedules (OpenCL)
        if self.parity_max_abs_diff is not None:
            entry["max_abs_diff_vs_onnxruntime"] = self.parity_max_abs_diff
        return entry


def compile_with_tvm(
    model: onnx.ModelProto,
    target: Target,
    work_dir: Path,
    feeds: dict[str, np.ndarray],
    reference: list[np.ndarray],
    tolerance: float = TVM_TOLERANCE,
    tune: TuneOptions | None = None,
    on_trial: Callable[[int, int], None] | None = None,
    layout: str | None = None,
) -> TvmOutcome:
    """Compile for ``target``; where the library runs here, check it against ``reference`` and time it.

    ``tolerance`` is the largest max abs difference accepted (wider for quantized graphs). ``tune``
    tunes the kernels below their share of its trials in the target's database first (see
    :mod:`edgefab.export.tuning`); ``layout`` is the CPU library's inner layout (see
    :mod:`edgefab.export.layout`; None: the target's).

    An operator TVM cannot import is not fatal: the package still ships the ONNX Runtime engine.
    """
    try:
        artifact = compile_onnx(model, target, work_dir, tune=tune, on_trial=on_trial, layout=layout)
    except UnsupportedOperatorError as exc:
        return TvmOutcome(artifact=None, error=str(exc))
    if not artifact.runs_here:
        return TvmOutcome(artifact=artifact)
    engine = TVMEngine(artifact.path, list(feeds), target.threads)
    outputs = engine.run(feeds)
    diff = max_abs_diff(reference, outputs)
    samples = time_calls(lambda: engine.run(feeds), warmup=3, runs=20)
    tuned = "tuned: target's database" if artifact.details.get("tuned") else "untuned"
    latency = LatencyFigure(
        ms=float(np.median(samples)), source="measured", method=f"TVM ({tuned}) on this machine, median of 20"
    )
    if diff > tolerance:
        return TvmOutcome(
            artifact=None,
            error=f"TVM output differs from ONNX Runtime by {diff:.3g} (> {tolerance:.3g}); not packaged",
        )
    return TvmOutcome(artifact=artifact, parity_max_abs_diff=diff, latency=latency)


def engines_entry(target: Target, proto: onnx.ModelProto, tvm: TvmOutcome) -> dict[str, Any]:
    """The manifest's ``engines``: the ONNX model for ONNX Runtime and what TVM made of it."""
    return {
        "onnxruntime": {
            "file": "model.onnx",
            "provider": target.ort_provider,
            "opset": next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None),
        },
        "tvm": tvm.manifest_entry(),
    }


def recommend_engine(ort_latency: LatencyFigure | None, tvm: TvmOutcome) -> tuple[str, str]:
    """Which engine the package should run on, and why (measured where both ran here)."""
    if tvm.artifact is None:
        return "onnxruntime", "no TVM library for this target"
    if ort_latency and tvm.latency and ort_latency.source == "measured":
        if tvm.latency.ms < ort_latency.ms:
            return "tvm", f"TVM measured faster here ({tvm.latency.ms:.3f} vs {ort_latency.ms:.3f} ms)"
        return (
            "onnxruntime",
            f"ONNX Runtime measured faster here ({ort_latency.ms:.3f} vs {tvm.latency.ms:.3f} ms)",
        )
    if tvm.artifact.details.get("tuned"):
        return "onnxruntime", "not measured on the device; ONNX Runtime is the safer default"
    return "onnxruntime", "not measured on the device; TVM is untuned, ONNX Runtime is the safer default"


@dataclass
class PackageContents:
    """Everything a package folder gets, before it is written."""

    manifest: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)


def base_manifest(name: str, kind: str, target: Target, tvm_target: dict[str, Any] | None) -> dict[str, Any]:
    """Fields every manifest starts with."""
    target_data = target.to_dict()
    if tvm_target is not None:
        target_data["tvm"] = tvm_target
    return {
        "name": name,
        "kind": kind,
        "edgefab_version": edgefab.__version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "target": target_data,
    }


@contextmanager
def work_folder() -> Iterator[Path]:
    """A scratch folder for intermediate files, removed afterwards whatever happens."""
    with tempfile.TemporaryDirectory(prefix="edgefab-") as folder:
        yield Path(folder)

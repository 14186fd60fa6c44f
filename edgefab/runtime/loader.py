"""Load a runtime package, verify it, and run it with ONNX Runtime or TVM.

Imports neither torch nor edgefab's build code, so it can stand alone beside a package.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import numpy as np

from edgefab.errors import EdgefabError
from edgefab.runtime.package import verify_package

ENGINES = ("auto", "onnxruntime", "tvm")


class _OrtEngine:
    def __init__(self, model_path: Path, provider: str, threads: int, config: dict[str, str] | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        for key, value in (config or {}).items():  # e.g. weight-only packages fold DequantizeLinear at load
            options.add_session_config_entry(key, str(value))
        available = ort.get_available_providers()
        providers = [provider] if provider in available else ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(model_path), options, providers=providers)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, feeds)


def tvm_runs_here(entry: dict[str, Any]) -> bool:
    """Whether a package's TVM library can be loaded on this machine."""
    return (
        entry.get("format") == "shared-library"
        and bool(entry.get("runs_here"))
        and entry.get("machine") == platform.machine()
    )


class Package:
    """A verified package, ready to run on one engine."""

    def __init__(self, path: Path, manifest: dict[str, Any], engine: str):
        self.path = path
        self.manifest = manifest
        self.engine = engine
        self.inputs: list[dict[str, Any]] = manifest["inputs"]
        self.outputs: list[dict[str, Any]] = manifest["outputs"]
        entry = manifest["engines"][engine]
        threads = int(manifest.get("target", {}).get("threads", 0) or 0)
        if engine == "onnxruntime":
            self._runner = _OrtEngine(
                path / entry["file"],
                entry.get("provider", "CPUExecutionProvider"),
                threads,
                entry.get("session_config"),
            )
        else:
            from edgefab.runtime.tvm_engine import TVMEngine

            self._runner = TVMEngine(path / entry["file"], [i["name"] for i in self.inputs], threads)

    @property
    def labels(self) -> list[str] | None:
        """Class names, for classifier packages."""
        return self.manifest.get("labels_list")

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on named inputs (shapes and dtypes as the manifest says)."""
        missing = [i["name"] for i in self.inputs if i["name"] not in feeds]
        if missing:
            raise EdgefabError(
                f"missing input(s) {', '.join(missing)}; the package takes {self._signature()}"
            )
        ordered = {i["name"]: _as_input(feeds[i["name"]], i) for i in self.inputs}
        results = self._runner.run(ordered)
        return {o["name"]: np.asarray(r) for o, r in zip(self.outputs, results, strict=True)}

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Logits for a batch of images, raw (uint8) or already preprocessed (float32)."""
        spec = self.inputs[0]
        batch = preprocess(images, self.manifest.get("preprocessing"), tuple(spec["shape"][1:]))
        rows = [self.run({spec["name"]: sample[None]})[self.outputs[0]["name"]][0] for sample in batch]
        return np.stack(rows)

    def _signature(self) -> str:
        return ", ".join(f"{i['name']}:{'x'.join(map(str, i['shape']))} {i['dtype']}" for i in self.inputs)


def _as_input(value: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    array = np.asarray(value)
    expected = tuple(spec["shape"])
    if array.shape != expected:
        raise EdgefabError(f"input {spec['name']} has shape {array.shape}; the package expects {expected}")
    return array.astype(spec["dtype"], copy=False)


def preprocess(images: np.ndarray, prep: dict[str, Any] | None, sample_shape: tuple[int, ...]) -> np.ndarray:
    """Turn images into model inputs of ``sample_shape`` (C, H, W) as the manifest's preprocessing says.

    uint8 images (N, H, W), (N, H, W, C) or (N, C, H, W) are scaled and normalised; float
    images are taken as already preprocessed.
    """
    array = np.asarray(images)
    channels = sample_shape[0]
    if array.ndim == 3 and channels == 1 and array.shape[1:] == sample_shape[1:]:
        array = array[:, None]  # (N, H, W) grey
    elif array.ndim == 4 and array.shape[-1] == channels and array.shape[1:3] == sample_shape[1:]:
        array = array.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    if array.shape[1:] != sample_shape:
        raise EdgefabError(
            f"input images have shape {images.shape}; expected (N, {', '.join(map(str, sample_shape))}) "
            "or the same without the channel axis"
        )
    if array.dtype == np.uint8 and prep:
        mean = np.asarray(prep["mean"], np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(prep["std"], np.float32).reshape(1, -1, 1, 1)
        return ((array.astype(np.float32) * np.float32(prep["scale"]) - mean) / std).astype(np.float32)
    return array.astype(np.float32)


def load(path: str | Path, engine: str = "auto") -> Package:
    """Verify every file of the package at ``path`` and open it on ``engine``.

    ``auto`` takes the manifest's recommended engine when it can run here, otherwise ONNX Runtime.
    """
    path = Path(path)
    if engine not in ENGINES:
        raise EdgefabError(f"unknown engine '{engine}'; choose one of {', '.join(ENGINES)}")
    manifest = verify_package(path)
    engines = manifest["engines"]
    tvm_entry = engines.get("tvm", {})
    if engine == "auto":
        wanted = manifest.get("recommended_engine", "onnxruntime")
        engine = "tvm" if wanted == "tvm" and tvm_runs_here(tvm_entry) else "onnxruntime"
    if engine == "tvm" and not tvm_runs_here(tvm_entry):
        reason = tvm_entry.get("error") or tvm_entry.get("note") or "it was built for another machine"
        raise EdgefabError(
            f"the package's TVM library cannot run on this machine: {reason}; use --engine onnxruntime"
        )
    return Package(path, manifest, engine)

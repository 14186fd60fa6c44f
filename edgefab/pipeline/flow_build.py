"""``edgefab build --model FLOW``: a SlimFlow one-step generator -> a generator package.

The package's graph is noise in, image out, one forward pass: image = clip(z + v(z, 0), -1, 1)
mapped to [0, 1]. It is exported to ONNX (checked against PyTorch), compiled with TVM for the
target (checked against ONNX Runtime where it runs here), and described in the manifest as a
``generator``: the noise's shape and distribution, the image's shape, layout and value range.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from edgefab.errors import EdgefabError
from edgefab.export.graph import run_onnxruntime
from edgefab.export.onnx_export import INPUT_NAME, OUTPUT_NAME, export_onnx, onnx_parity
from edgefab.export.stats import model_stats
from edgefab.flow.checkpoint import SLIMFLOW, load_checkpoint
from edgefab.flow.rectified import noise_like
from edgefab.flow.unet import VelocityUNet, parameter_count
from edgefab.pipeline.common import (
    TVM_TOLERANCE,
    Progress,
    SilentProgress,
    base_manifest,
    compile_with_tvm,
    engines_entry,
    recommend_engine,
    work_folder,
)
from edgefab.runtime.package import check_output_folder, read_manifest, write_package
from edgefab.targets import Target, load_target
from edgefab.targets.latency import LatencyFigure, latency_model, measure_onnx

NOISE, IMAGE = "noise", "image"
PARITY_TOLERANCE = 1e-4
PARITY_SAMPLES = 8


class OneStepGenerator(nn.Module):
    """noise (N, C, H, W) -> image in [0, 1]: one Euler step of the student's flow, t = 0."""

    def __init__(self, velocity: VelocityUNet):
        super().__init__()
        self.velocity = velocity

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        image = noise + self.velocity(noise, torch.zeros(noise.shape[0]))
        return (image.clamp(-1.0, 1.0) + 1.0) * 0.5


def rename_io(model: onnx.ModelProto, renames: dict[str, str]) -> onnx.ModelProto:
    """Rename graph inputs/outputs (and every use of them): the exporter names them input/logits."""
    for value in (*model.graph.input, *model.graph.output):
        value.name = renames.get(value.name, value.name)
    for node in model.graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    onnx.checker.check_model(model, full_check=True)
    return model


def refuse_classifier_options(options: Any) -> None:
    """Options of classifier builds mean nothing for a generator: refuse them rather than ignore them."""
    given = [
        flag
        for flag, value in (
            ("--quantize", options.quantize),
            ("--compress", options.compress),
            ("--task", options.task),
            ("--latency-ms", options.latency_ms),
            ("--factory", options.factory),
        )
        if value is not None
    ]
    if given:
        raise EdgefabError(f"{', '.join(given)} do not apply to a generator (--model FLOW); leave them out")


def _latency(target: Target, path: Path, proto: onnx.ModelProto, noise: np.ndarray) -> LatencyFigure | None:
    if target.runs_here:
        return measure_onnx(path, {NOISE: noise}, threads=target.threads)
    try:
        return latency_model(target).predict_onnx(proto).figure()
    except EdgefabError:
        return None


def build_flow_package(options: Any, progress: Progress | None = None) -> tuple[Path, dict[str, Any]]:
    """Package the one-step generator of the SlimFlow checkpoint ``options.model`` for ``options.target``."""
    progress = progress or SilentProgress()
    refuse_classifier_options(options)
    target = load_target(options.target)
    checkpoint = load_checkpoint(Path(options.model), SLIMFLOW, "edgefab build --model")
    velocity = checkpoint.models["one_step"]
    shape = (1, *velocity.config.image_shape)
    name = f"{Path(options.model).resolve().name}-{target.name}"
    out_dir = Path(options.out) / name
    check_output_folder(out_dir)
    generator = OneStepGenerator(velocity).eval()
    with work_folder() as work:
        progress.stage("exporting the one-step generator to ONNX and checking parity")
        onnx_path = work / "model.onnx"
        proto = rename_io(export_onnx(generator, shape, onnx_path), {INPUT_NAME: NOISE, OUTPUT_NAME: IMAGE})
        onnx.save(proto, str(onnx_path))
        noise = noise_like(PARITY_SAMPLES, shape[1:], seed=0).numpy()
        parity = onnx_parity(generator, onnx_path, noise)
        if parity >= PARITY_TOLERANCE:
            raise EdgefabError(f"ONNX export differs from PyTorch by {parity:.3g} (limit {PARITY_TOLERANCE})")
        latency = _latency(target, onnx_path, proto, noise[:1])
        progress.stage(f"compiling with TVM for {target.name}")
        feeds = {NOISE: noise[:1]}
        tvm = compile_with_tvm(proto, target, work, feeds, run_onnxruntime(onnx_path, feeds), TVM_TOLERANCE)
        engine, why = recommend_engine(latency, tvm)
        manifest = _manifest(
            name, target, tvm, engine, why, proto, onnx_path, parity, latency, checkpoint, shape
        )
        files = {"model.onnx": onnx_path}
        if tvm.artifact:
            files[tvm.artifact.path.name] = tvm.artifact.path
            files.update(tvm.artifact.extra_files)
        progress.stage(f"writing package {out_dir}")
        write_package(out_dir, manifest, files, archive=options.archive)
    return out_dir, read_manifest(out_dir)


def _manifest(name, target, tvm, engine, why, proto, onnx_path, parity, latency, checkpoint, shape) -> dict:
    tvm_target = tvm.artifact.tvm_target if tvm.artifact else None
    manifest = base_manifest(name, "generator", target, tvm_target)
    frechet = checkpoint.meta.get("frechet", {})
    manifest.update(
        {
            "inputs": [{"name": NOISE, "shape": list(shape), "dtype": "float32"}],
            "outputs": [{"name": IMAGE, "shape": list(shape), "dtype": "float32"}],
            "generator": {
                "input_noise_shape": list(shape),
                "noise": "standard normal N(0, I), float32",
                "output_image_shape": list(shape),
                "layout": "NCHW",
                "value_range": [0.0, 1.0],
                "to_uint8": "round(image * 255)",
                "steps": 1,
                "method": "SlimFlow: annealing reflow + flow-guided distillation (one Euler step at t = 0)",
            },
            "engines": engines_entry(target, proto, tvm),
            "recommended_engine": engine,
            "recommended_because": why,
            "figures": {
                **model_stats(proto),
                "pytorch_parameters": parameter_count(checkpoint.models["one_step"]),
                "model_bytes": onnx_path.stat().st_size,
                "onnx_parity_max_abs_diff": parity,
                "latency": latency.to_dict() if latency else None,
                "tvm_latency": tvm.latency.to_dict() if tvm.latency else None,
                "frechet_distance": frechet.get("one_step", {}).get("one_step"),
                "frechet_real_floor": frechet.get("real_vs_real_floor"),
            },
            "build": {
                "model": str(Path(checkpoint.path).resolve()),
                "kind": checkpoint.kind,
                "why": f"SlimFlow one-step generator, channels {checkpoint.meta.get('channels')}",
                "width": checkpoint.meta.get("width"),
                "first_width": checkpoint.meta.get("first_width"),
                "channels": checkpoint.meta.get("channels"),
                "teacher": checkpoint.meta.get("teacher", {}).get("path"),
                "data": checkpoint.meta.get("data", {}).get("spec"),
            },
        }
    )
    return manifest

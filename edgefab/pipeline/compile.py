"""``edgefab compile``: any ONNX model -> fixed shapes, simplified, verified, compiled, packaged."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgefab.compress.report import REPORT_FILE
from edgefab.errors import EdgefabError
from edgefab.export.graph import (
    bind_inputs,
    fix_input_shapes,
    input_signature,
    load_onnx,
    output_signature,
    parse_input_specs,
    parse_input_values,
    random_inputs,
    run_onnxruntime,
    simplify,
    verify_simplified,
)
from edgefab.export.stats import model_stats
from edgefab.export.tvm_compile import check_compilable, check_layout, resolve_tvm_target
from edgefab.pipeline.common import (
    TVM_TOLERANCE,
    PackageContents,
    Progress,
    SilentProgress,
    base_manifest,
    compile_with_tvm,
    recommend_engine,
    tune_options,
    work_folder,
)
from edgefab.pipeline.quantize import make_request, quantize_model
from edgefab.runtime.package import check_output_folder, read_manifest, write_package
from edgefab.targets import load_target
from edgefab.targets.latency import measure_onnx, predicted_latency

SIMPLIFY_TOLERANCE = 1e-4


@dataclass(frozen=True)
class CompileOptions:
    """What ``edgefab compile`` was asked for."""

    model: Path
    target: str = "host"
    inputs: list[str] = field(default_factory=list)  # NAME:DIMS fixes a shape, NAME=VALUES binds a constant
    out: Path = Path("build")
    name: str | None = None
    archive: bool = False
    quantize: str | None = None  # "int8": see edgefab.pipeline.quantize
    max_accuracy_drop: float = 1.0  # points of agreement with the float model int8 may lose
    calibration: str = "minmax"
    exclude_nodes: tuple[str, ...] = ()
    calibration_data: Path | None = None  # .npz/.npy of model inputs; default: seeded random inputs
    group_size: str | None = None  # w4/w8: columns per scale, "channel" or "auto" (default 128)
    act_order: bool = False  # w4/w8: GPTQ visits columns by decreasing Hessian diagonal
    tune: int | None = None  # MetaSchedule trials over the kernels (records in the target's database count)
    rpc: str | None = None  # with tune: HOST:PORT of the TVM RPC tracker of the device to measure on
    key: str | None = None  # with rpc: the device's key
    layout: str | None = None  # the CPU library's inner layout (NCHW, NCHW4c/8c/16c); None: the target's


def split_input_options(specs: list[str]) -> tuple[dict[str, list[int]], dict[str, np.ndarray]]:
    """``NAME:DIMS`` specs become shapes, ``NAME=V,...`` specs become constant values."""
    shape_specs = [s for s in specs if "=" not in s]
    value_specs = [s for s in specs if "=" in s]
    values = {name: np.asarray(v) for name, v in parse_input_values(value_specs).items()}
    return parse_input_specs(shape_specs), values


def prepare_graph(
    original: onnx.ModelProto, shapes: dict[str, list[int]], values: dict[str, np.ndarray]
) -> tuple[onnx.ModelProto, dict[str, np.ndarray], float]:
    """Fix shapes, bind constants, simplify, and check the result against the original.

    Returns the simplified graph, feeds for it (seeded random), and the max abs difference
    between the original and the simplified graph on those feeds.
    """
    fixed = fix_input_shapes(original, shapes)
    bound = bind_inputs(fixed, values) if values else fixed
    simplified = simplify(bound)
    feeds = random_inputs(input_signature(fixed), seed=0, values=values)
    diff = verify_simplified(original, simplified, feeds, atol=SIMPLIFY_TOLERANCE)
    wanted = {spec["name"] for spec in input_signature(simplified)}
    return simplified, {k: v for k, v in feeds.items() if k in wanted}, diff


def compile_model(options: CompileOptions, progress: Progress | None = None) -> tuple[Path, dict[str, Any]]:
    """Compile an ONNX file for a target and write the package; returns its folder and manifest."""
    progress = progress or SilentProgress()
    target = load_target(options.target)
    check_compilable(target)  # before any work: no codegen for this target
    check_layout(options.layout or target.layout, resolve_tvm_target(target))
    if (options.rpc or options.key) and not options.tune:
        raise EdgefabError("--rpc and --key measure tuning candidates on a device: add --tune N")
    tune = tune_options(target, options.tune, options.rpc, options.key) if options.tune else None
    original = load_onnx(options.model)
    shapes, values = split_input_options(options.inputs)
    request = make_request(
        options.quantize,
        options.max_accuracy_drop,
        options.calibration,
        options.exclude_nodes,
        options.calibration_data,
        group_size=options.group_size,
        act_order=options.act_order,
    )
    name = options.name or f"{Path(options.model).stem}-{target.name}"
    out_dir = Path(options.out) / name
    check_output_folder(out_dir)
    progress.stage("fixing shapes, simplifying and verifying with ONNX Runtime")
    simplified, feeds, diff = prepare_graph(original, shapes, values)
    with work_folder() as work:
        onnx_path = work / "model.onnx"
        onnx.save(simplified, str(onnx_path))
        stats = model_stats(simplified)
        shipped, shipped_proto, quantized = onnx_path, simplified, None
        if request is not None:
            progress.stage(f"quantizing to {request.method}, checking agreement on held-out samples")
            quantized = quantize_model(request, onnx_path, target, input_signature(simplified), work)
            shipped, shipped_proto = quantized.path, quantized.model
        if target.runs_here:
            config = quantized.ort_config if quantized else None
            latency = measure_onnx(shipped, feeds, threads=target.threads, session_config=config)
        else:
            latency = predicted_latency(target, simplified)
        tuned = f", tuning up to {options.tune} trials" if options.tune else ""
        progress.stage(f"compiling with TVM for {target.name}{tuned}")
        tolerance = quantized.tvm_tolerance if quantized else TVM_TOLERANCE
        reference = run_onnxruntime(shipped, feeds)
        tvm = compile_with_tvm(
            shipped_proto, target, work, feeds, reference, tolerance, tune, progress.advance, options.layout
        )
        engine, why = recommend_engine(latency, tvm)
        manifest = base_manifest(name, "model", target, tvm.artifact.tvm_target if tvm.artifact else None)
        manifest.update(
            {
                "inputs": input_signature(simplified),
                "outputs": output_signature(simplified),
                "preprocessing": None,
                "labels": None,
                "bound_inputs": {k: v.tolist() for k, v in values.items()},
                "engines": {
                    "onnxruntime": {"file": "model.onnx", "provider": target.ort_provider},
                    "tvm": tvm.manifest_entry(),
                },
                "recommended_engine": engine,
                "recommended_because": why,
                "figures": {
                    **stats,
                    "model_bytes": shipped.stat().st_size,
                    "simplified_max_abs_diff": diff,
                    "latency": latency.to_dict() if latency else None,
                    "tvm_latency": tvm.latency.to_dict() if tvm.latency else None,
                },
                "build": {"source_model": str(options.model), "input_specs": list(options.inputs)},
            }
        )
        contents = PackageContents(manifest, {"model.onnx": shipped})
        if quantized:
            quantized.annotate(manifest)
            contents.files[REPORT_FILE] = quantized.report_path
        if tvm.artifact:
            contents.files[tvm.artifact.path.name] = tvm.artifact.path
            contents.files.update(tvm.artifact.extra_files)  # kernels.cl for OpenCL targets
        progress.stage(f"writing package {out_dir}")
        write_package(out_dir, contents.manifest, contents.files, archive=options.archive)
    return out_dir, read_manifest(out_dir)

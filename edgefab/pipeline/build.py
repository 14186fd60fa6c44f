"""``edgefab build``: task data + target (+ latency budget) -> verified runtime package.

The model comes from the factory (``edgefab.pipeline.factory_build``: the shipped digits factory,
or ``--factory PATH``) customised for ``--task`` and ``--latency-ms`` in seconds; where no factory
fits the data, from the simple MBConv classifier family (``edgefab.factory.presets``): the widest
width that meets the budget, trained on the task's data (or loaded from the training cache).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgefab.arch import ArchSpec
from edgefab.compress.report import REPORT_FILE
from edgefab.data import Dataset, load_dataset, normalization, to_float, train_val_split
from edgefab.data.tasks import Task, apply_task, parse_task
from edgefab.errors import EdgefabError
from edgefab.export.graph import input_signature, run_onnxruntime
from edgefab.export.onnx_export import INPUT_NAME, export_onnx, onnx_parity
from edgefab.export.stats import model_stats
from edgefab.factory.customize import CustomizeOptions
from edgefab.factory.network import build_network
from edgefab.factory.presets import WIDTHS, simple_classifier
from edgefab.factory.train import TrainConfig, evaluate_accuracy, train_classifier
from edgefab.pipeline.common import (
    TVM_TOLERANCE,
    PackageContents,
    Progress,
    SilentProgress,
    base_manifest,
    compile_with_tvm,
    engines_entry,
    recommend_engine,
    work_folder,
)
from edgefab.pipeline.factory_build import (
    ChosenModel,
    customize_for_build,
    factory_split,
    resolve_factory,
)
from edgefab.pipeline.quantize import (
    QuantizeRequest,
    classifier_calibration,
    make_request,
    quantize_classifier,
)
from edgefab.pipeline.snn import SnnStep, apply_snn, snn_package_suffix
from edgefab.runtime.package import check_output_folder, read_manifest, write_package
from edgefab.targets import Target, load_target
from edgefab.targets.latency import LatencyFigure, latency_model, measure_onnx

PARITY_TOLERANCE = 1e-4
PARITY_SAMPLES = 32


@dataclass(frozen=True)
class BuildOptions:
    """What ``edgefab build`` was asked for."""

    target: str = "pixel"
    data: str = "mnist"
    out: Path = Path("build")
    latency_ms: float | None = None
    epochs: int = 4
    seed: int = 0
    archive: bool = False
    use_cache: bool = True
    task: str | None = None  # classes=A,B,... or groups=NAME:A,B/NAME:C,D (default: every class)
    factory: str | None = None  # a factory folder, "none" (simple family), default: shipped if it fits
    finetune_epochs: int = 0  # after customising a factory
    shift: int = 0  # random shifts (pixels) wherever build trains: the simple family, the fine-tune
    quantize: str | None = None  # "int8": see edgefab.pipeline.quantize
    max_accuracy_drop: float = 1.0  # points of validation accuracy int8 may lose
    calibration: str = "minmax"
    exclude_nodes: tuple[str, ...] = ()
    calibration_data: Path | None = None  # default: a seeded sample of the training split
    group_size: str | None = None  # w4/w8: columns per scale, "channel" or "auto" (default 128)
    act_order: bool = False  # w4/w8: GPTQ visits columns by decreasing Hessian diagonal
    compress: str | None = None  # "snn": see edgefab.pipeline.snn
    timesteps: tuple[int, ...] = (5, 3, 2, 1)  # --compress snn: IIR-SNN stages, the last one ships
    snn_epochs: int | None = None  # --compress snn: epochs at the last T (default: SnnOptions')
    model: Path | None = None  # a SlimFlow checkpoint: a generator package (edgefab.pipeline.flow_build)


def model_latency(
    target: Target, onnx_path: Path, model: onnx.ModelProto, session_config: dict[str, str] | None = None
) -> LatencyFigure | None:
    """Measured latency where the target is this machine, else the target's prediction."""
    if target.runs_here:
        signature = model.graph.input[0].type.tensor_type.shape.dim
        shape = [d.dim_value for d in signature]
        feeds = {INPUT_NAME: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
        return measure_onnx(onnx_path, feeds, threads=target.threads, session_config=session_config)
    return latency_model(target).predict_onnx(model).figure()


def candidate_latency(spec: ArchSpec, target: Target, work: Path) -> LatencyFigure | None:
    """Latency of an (untrained: weights do not change it) candidate: measured here, else predicted."""
    if not target.runs_here:
        return latency_model(target).predict(spec).figure()
    path = work / f"candidate-{spec.name}.onnx"
    return model_latency(target, path, export_onnx(build_network(spec), (1, *spec.input_shape), path))


def choose_architecture(base: ArchSpec, target: Target, budget_ms: float | None, work: Path) -> ArchSpec:
    """The widest member of the family whose latency on ``target`` meets ``budget_ms``."""
    if budget_ms is None:
        return base
    if budget_ms <= 0:
        raise EdgefabError(f"--latency-ms must be positive, got {budget_ms}")
    costs = []
    for width in WIDTHS:
        spec = base.scaled(width)
        figure = candidate_latency(spec, target, work)
        if figure is None:
            raise EdgefabError(f"target {target.name} has no latency model; build without --latency-ms")
        if figure.ms <= budget_ms:
            return spec
        costs.append(figure.ms)
    raise EdgefabError(
        f"no model meets {budget_ms:g} ms on {target.name}: the smallest costs {min(costs):.3f} ms "
        f"({'measured' if target.runs_here else 'predicted'}); raise --latency-ms"
    )


def onnx_accuracy(onnx_path: Path, val: Dataset, prep: dict) -> float:
    """Top-1 accuracy of the exported graph itself (what ships), one sample at a time."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    inputs = to_float(val.images, prep)
    correct = sum(
        int(session.run(None, {INPUT_NAME: sample[None]})[0].argmax() == label)
        for sample, label in zip(inputs, val.labels, strict=True)
    )
    return correct / max(1, len(val.labels))


def build(options: BuildOptions, progress: Progress | None = None) -> tuple[Path, dict[str, Any]]:
    """Run the whole pipeline and write the package; returns its folder and manifest."""
    progress = progress or SilentProgress()
    if options.model is not None:  # a flow checkpoint: its one-step generator is the package
        from edgefab.pipeline.flow_build import build_flow_package

        return build_flow_package(options, progress)
    target = load_target(options.target)
    request = make_request(
        options.quantize,
        options.max_accuracy_drop,
        options.calibration,
        options.exclude_nodes,
        options.calibration_data,
        group_size=options.group_size,
        act_order=options.act_order,
    )
    if options.latency_ms is not None and options.latency_ms <= 0:
        raise EdgefabError(f"--latency-ms must be positive, got {options.latency_ms:g}")
    progress.stage(f"loading data {options.data}")
    data = load_dataset(options.data)
    task = parse_task(options.task, data.classes)
    name = f"{data.name.split(':')[-1]}-{target.name}{snn_package_suffix(options)}"
    out_dir = Path(options.out) / name
    check_output_folder(out_dir)
    factory, why = resolve_factory(options.factory, data)
    # a factory's own split: its validation images are ones its supernet never trained on
    train, val = factory_split(factory, data) if factory else train_val_split(data, seed=options.seed)
    with work_folder() as work:
        if factory is not None:
            customize_options = CustomizeOptions(
                finetune_epochs=options.finetune_epochs,
                finetune_shift=options.shift,
                group_head=not snn_package_suffix(options),  # the SNN converter needs a linear head
                seed=options.seed,
            )
            chosen = customize_for_build(
                factory, why, task, target, options.latency_ms, train, val, customize_options, progress
            )
        else:
            chosen = _train_simple_family(why, task, target, train, val, options, work, progress)
        spec, prep = chosen.spec, chosen.prep
        chosen, snn = apply_snn(options, chosen, progress)  # --compress snn: the SNN replaces the model
        contents = _export_and_check(
            name, chosen.model, spec, target, chosen.train, chosen.val, prep, work, progress, request, snn
        )
        contents.manifest.update(
            {
                "build": {
                    "data": options.data,
                    "task": task.to_dict(),
                    "samples": {"train": len(chosen.train), "validation": len(chosen.val)},
                    "architecture": spec.to_dict(),
                    "notation": spec.notation(),
                    "latency_budget_ms": options.latency_ms,
                    **chosen.info,
                },
            }
        )
        contents.manifest["figures"]["pytorch_accuracy"] = round(
            evaluate_accuracy(chosen.model, chosen.val, prep), 5
        )
        progress.stage(f"writing package {out_dir}")
        write_package(out_dir, contents.manifest, contents.files, archive=options.archive)
    return out_dir, read_manifest(out_dir)


def _train_simple_family(
    why: str,
    task: Task,
    target: Target,
    train: Dataset,
    val: Dataset,
    options: BuildOptions,
    work: Path,
    progress: Progress,
) -> ChosenModel:
    """The fallback where no factory fits: the widest simple-family member within budget, trained."""
    train, val = apply_task(train, task), apply_task(val, task)
    prep = normalization(train)
    progress.stage("choosing the architecture for the budget")
    base = simple_classifier(train.input_shape, train.num_classes)
    spec = choose_architecture(base, target, options.latency_ms, work)
    progress.stage(f"training {spec.name} ({options.epochs} epochs)")
    config = TrainConfig(epochs=options.epochs, shift=options.shift, seed=options.seed)
    trained = train_classifier(spec, train, prep, config, progress.advance, options.use_cache)
    training = {**config.__dict__, "cached": trained.cached, "seconds": round(trained.train_seconds, 1)}
    info = {"model": "simple family", "why": why, "training": training}
    return ChosenModel(trained.model, spec, train, val, prep, info)


def _export_and_check(
    name: str,
    model,
    spec: ArchSpec,
    target: Target,
    train: Dataset,
    val: Dataset,
    prep: dict,
    work: Path,
    progress: Progress,
    request: QuantizeRequest | None = None,
    snn: SnnStep | None = None,
) -> PackageContents:
    progress.stage("exporting ONNX and checking parity")
    onnx_path = work / "model.onnx"
    proto = export_onnx(model, (1, *spec.input_shape), onnx_path)
    samples = to_float(val.images[:PARITY_SAMPLES], prep)
    parity = onnx_parity(model, onnx_path, samples)
    limit = snn.parity_tolerance if snn else PARITY_TOLERANCE  # a spike can flip on a 1e-7 difference
    if parity >= limit:
        raise EdgefabError(f"ONNX export differs from PyTorch by {parity:.3g} (limit {limit})")
    accuracy = onnx_accuracy(onnx_path, val, prep)
    shipped, shipped_proto, quantized = onnx_path, proto, None
    if request is not None:
        progress.stage(f"quantizing to {request.method}, checking accuracy on the validation split")
        calibration = classifier_calibration(request, input_signature(proto), train, prep)
        validation = (to_float(val.images, prep), val.labels)
        quantized = quantize_classifier(request, onnx_path, target, calibration, validation, accuracy, work)
        shipped, shipped_proto, accuracy = quantized.path, quantized.model, quantized.score
    latency = model_latency(target, shipped, proto, quantized.ort_config if quantized else None)
    progress.stage(f"compiling with TVM for {target.name}")
    feeds = {INPUT_NAME: samples[:1]}
    tolerance = quantized.tvm_tolerance if quantized else (snn.parity_tolerance if snn else TVM_TOLERANCE)
    reference = run_onnxruntime(shipped, feeds)
    # The bar moves where compiling is slow: re-measuring the shipped tuning records on a new CPU.
    tvm = compile_with_tvm(shipped_proto, target, work, feeds, reference, tolerance, None, progress.advance)
    engine, why = recommend_engine(latency, tvm)
    labels_path = work / "labels.json"
    labels_path.write_text(json.dumps(train.classes) + "\n")
    tvm_target = tvm.artifact.tvm_target if tvm.artifact else None
    manifest = base_manifest(name, "classifier", target, tvm_target)
    manifest.update(
        {
            "inputs": [{"name": INPUT_NAME, "shape": [1, *spec.input_shape], "dtype": "float32"}],
            "outputs": [{"name": "logits", "shape": [1, len(train.classes)], "dtype": "float32"}],
            "preprocessing": prep,
            "labels": "labels.json",
            "labels_list": list(train.classes),
            "engines": engines_entry(target, proto, tvm),
            "recommended_engine": engine,
            "recommended_because": why,
            "figures": {
                "accuracy": round(accuracy, 5),
                **model_stats(proto),
                "model_bytes": shipped.stat().st_size,
                "onnx_parity_max_abs_diff": parity,
                "latency": latency.to_dict() if latency else None,
                "tvm_latency": tvm.latency.to_dict() if tvm.latency else None,
            },
        }
    )
    files = {"model.onnx": shipped, "labels.json": labels_path}
    if quantized:
        quantized.annotate(manifest)
        files[REPORT_FILE] = quantized.report_path
    if snn:
        snn.annotate(manifest, files, onnx_path, samples, work)
    if tvm.artifact:
        files[tvm.artifact.path.name] = tvm.artifact.path
        files.update(tvm.artifact.extra_files)  # kernels.cl for OpenCL targets
    return PackageContents(manifest, files)

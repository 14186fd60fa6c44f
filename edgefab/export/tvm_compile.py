"""Compile a static-shape ONNX graph with TVM Relax into a library for a target.

The model must already have fixed input shapes and be simplified (see :mod:`edgefab.export.graph`).
Weights are embedded in the library as constants: one file to ship, nothing to keep in sync.
TVM is imported inside functions so that importing edgefab stays fast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from edgefab.errors import EdgefabError, UnsupportedOperatorError
from edgefab.export import graph, opencl, tuning
from edgefab.export.layout import LayoutNotApplied, block_of, to_blocked_layout
from edgefab.targets import Target
from edgefab.targets.profiling import LayerBuild
from edgefab.targets.toolchain import device_linker, find_cross_compiler, linker, resolve_tvm_target

# Handled by the importer itself rather than its converter map.
_BUILTIN_OPS = {"Constant", "If"}


@dataclass
class CompiledArtifact:
    """A compiled library and how to use it."""

    path: Path
    format: str  # "shared-library" or "object-archive"
    tvm_target: dict[str, Any]
    note: str
    runs_here: bool
    extra_files: dict[str, Path] = field(default_factory=dict)  # shipped beside the library
    details: dict[str, Any] = field(default_factory=dict)  # added to the manifest's engines.tvm


def check_compilable(target: Target, tune: bool = False, over_rpc: bool = False) -> None:
    """Fail before any work for a target this TVM cannot generate code for (or tune, with ``tune``;
    ``over_rpc``: candidates are measured on the device through a TVM RPC tracker)."""
    tvm_target = resolve_tvm_target(target)
    opencl.check_codegen(tvm_target)
    if tune:
        tuning.check_tunable(target, tvm_target, over_rpc)


def check_layout(layout: str, tvm_target: dict[str, Any]) -> int:
    """The channel block of ``layout`` (0 for NCHW); a one-line error for an unknown name or a
    blocked layout on a GPU target (its code comes from dlight rules written for NCHW)."""
    try:
        block = block_of(layout)
    except ValueError as exc:
        raise EdgefabError(f"{exc} (--layout)") from None
    if block and opencl.is_opencl(tvm_target):
        raise EdgefabError(f"--layout {layout} is for CPU targets; OpenCL code keeps NCHW: drop --layout")
    return block


def unsupported_operators(model: onnx.ModelProto) -> list[str]:
    """ONNX op types (including those inside `If` branches) that TVM's Relax importer cannot convert."""
    from tvm.relax.frontend.onnx import onnx_frontend

    # The importer checks only top-level nodes and fails deep inside a branch otherwise; its converter
    # map is the authoritative list of what it takes.
    known = set(onnx_frontend._get_convert_map()) | _BUILTIN_OPS
    return sorted({op for op in _op_types(model.graph) if op not in known})


def _op_types(g: onnx.GraphProto) -> set[str]:
    ops = set()
    for node in g.node:
        ops.add(node.op_type)
        for attr in node.attribute:
            subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subgraphs:
                ops |= _op_types(sub)
    return ops


def compile_onnx(
    model: onnx.ModelProto,
    target: Target,
    out_dir: Path,
    name: str = "model",
    tune: tuning.TuneOptions | None = None,
    on_trial: Callable[[int, int], None] | None = None,
    layout: str | None = None,
) -> CompiledArtifact:
    """Import ``model`` into Relax, build it for ``target`` and write the library into ``out_dir``.

    CPU code applies the target's tuning database where one exists (after tuning the kernels below
    their share of the trials with MetaSchedule when ``tune`` is given); OpenCL code is scheduled by
    dlight rules and its source ships as ``kernels.cl``. ``layout`` (CPU only) blocks the
    convolutions' channels inside the library, e.g. ``NCHW8c`` (see :mod:`edgefab.export.layout`;
    None: the target's ``layout``); the library's inputs and outputs keep the model's layout.
    """
    symbolic = [s for s in graph.input_signature(model) if any(isinstance(d, str) for d in s["shape"])]
    if symbolic:
        raise EdgefabError(
            f"input '{symbolic[0]['name']}' has symbolic dims {symbolic[0]['shape']}; "
            "fix input shapes (--input NAME:DIMS) before compiling with TVM"
        )
    model = graph.decompose_lstm(model)  # TVM has no LSTM converter
    missing = unsupported_operators(model)
    if missing:
        raise UnsupportedOperatorError(missing)
    check_compilable(target, tune is not None, tune is not None and tune.device is not None)
    tvm_target = resolve_tvm_target(target)
    layout = layout or target.layout
    block = check_layout(layout, tvm_target)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    extra: dict[str, Path] = {}
    if opencl.is_opencl(tvm_target):
        executable, source, schedules = opencl.compile_opencl(_import(model), tvm_target)
        extra[opencl.KERNELS_FILE] = opencl.write_kernels(source, out_dir)
        details = {
            "kernels": opencl.KERNELS_FILE,
            "kernel_count": len(opencl.kernel_names(source)),
            "schedules": schedules,
            "pipeline": "TVM Adreno pipeline, buffer path; dlight rules (Adreno first, then generic GPU)",
        }
    else:
        mod, layout_note = _import(model), None
        if block:
            try:
                mod = to_blocked_layout(mod, block)
            except LayoutNotApplied as exc:  # the model still compiles, in NCHW; the manifest says why
                layout, layout_note = "NCHW", f"{layout} not applied: {exc}; compiled in NCHW"
        executable, details = tuning.compile_cpu(mod, target.name, tvm_target, tune, on_trial)
        details["layout"] = layout
        if layout_note:
            details["layout_note"] = layout_note
    if target.runs_here:
        path = out_dir / f"{name}.so"
        executable.export_library(str(path))
        artifact = CompiledArtifact(
            path, "shared-library", tvm_target, "linked with the host C compiler", True
        )
    else:
        artifact = _export_cross(executable, target, tvm_target, out_dir, name)
    artifact.extra_files, artifact.details = extra, details
    return artifact


def layer_build(target: Target) -> LayerBuild:
    """How ``edgefab profile --runtime tvm`` compiles each layer: as :func:`compile_onnx` does (the
    target's layout, its tuning database where that holds the layer's kernels, linked for the
    device), so a measured table times the kernels a package ships. CPU targets only: profiling times
    layers on the device's CPU."""
    if opencl.is_opencl(resolve_tvm_target(target)):
        raise EdgefabError(f"target {target.name} runs OpenCL kernels; profiling times layers on a CPU: "
                           "profile a CPU target")  # fmt: skip
    device_linker(target)  # no cross compiler: fail before any work, not with an unloadable archive

    def compile_layers(model: onnx.ModelProto, folder: Path, name: str) -> Path:
        return compile_onnx(model, target, folder, name).path

    how = f"{target.layout} inside where it applies, the '{target.name}' tuning database's kernels"
    return LayerBuild(compile_layers, f"as edgefab compile builds it: {how}")


def import_onnx(model: onnx.ModelProto):
    """The Relax module of a static-shape ONNX model (a forward LSTM is unrolled first)."""
    return _import(graph.decompose_lstm(model))


def _import(model: onnx.ModelProto):
    """Run the Relax ONNX importer, turning its failures into one-line user errors."""
    from tvm.relax.frontend.onnx import from_onnx

    try:
        return from_onnx(model)
    except Exception as exc:  # the importer raises many types; the user needs one line
        text = str(exc).strip().splitlines()
        raise EdgefabError(
            f"TVM's ONNX importer failed: {text[-1] if text else type(exc).__name__}"
        ) from None


def _export_cross(executable, target: Target, tvm_target: dict, out_dir: Path, name: str) -> CompiledArtifact:
    """Link a shared library with a cross compiler if one is installed, else write the object archive."""
    compiler = find_cross_compiler(target)
    if compiler is None:
        path = out_dir / f"{name}.tar"
        executable.export_library(str(path))  # gzip tar of object files, needs no toolchain
        tried = ", ".join(target.cross_compilers) or "none"
        cc = target.cross_compilers[0] if target.cross_compilers else "<cross C compiler>"
        note = (
            f"object archive; no cross compiler found (tried: {tried}). "
            f"Link on a machine with one: mkdir objs && tar -xzf {path.name} -C objs && "
            f"{cc} -shared -fPIC -o {name}.so objs/*.o -lm"
        )
        return CompiledArtifact(path, "object-archive", tvm_target, note, False)
    path = out_dir / f"{name}.so"
    fcompile, how = linker(compiler, tvm_target)
    try:
        executable.export_library(str(path), fcompile=fcompile)
    except RuntimeError as exc:
        raise EdgefabError(f"linking with {compiler} failed: {str(exc).strip().splitlines()[-1]}") from None
    return CompiledArtifact(path, "shared-library", tvm_target, how, False)

"""OpenCL code for mobile GPUs (Adreno) through TVM's rule-based dlight schedules, buffer path.

The pipeline is TVM's own Adreno pipeline without its texture branch: legalize, fuse, then schedule
every fused kernel with the first dlight rule that matches: the Adreno rules (``Conv2d``,
``LayoutTransform``, ``Pool2D``) first, then the generic GPU rules (``Reduction``,
``GeneralReduction``, ``Fallback``). Which rule scheduled how many kernels is recorded, because the
Adreno rules only match the NCHWc layouts of the texture path: on the buffer path they usually match
nothing, and a manifest should say so rather than imply hand-tuned Adreno kernels.

Known limits of the pip wheel (apache-tvm 0.27, checked by trying): the OpenCL *runtime* is off, so
the kernels are generated but never run here; the texture path (``qcom/adreno-opencl-texture``)
emits OpenCL C that does not compile; there is no Vulkan code generator. :func:`check_codegen`
refuses those before any work is done.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from edgefab.errors import EdgefabError

KERNELS_FILE = "kernels.cl"


def check_codegen(tvm_target: dict[str, Any]) -> None:
    """Fail early for a TVM target this wheel cannot generate usable code for."""
    import tvm

    kind = tvm_target.get("kind")
    if not isinstance(kind, str) or not kind:
        raise EdgefabError("target's tvm.kind must be a non-empty string")
    if kind in ("llvm", "c"):
        return
    if tvm.get_global_func(f"target.build.{kind}", allow_missing=True) is None:
        raise EdgefabError(
            f"the installed TVM wheel has no '{kind}' code generator (target.build.{kind} is missing); "
            "build TVM from source with it enabled, or use an OpenCL or CPU target"
        )
    keys = set(tvm.target.Target(tvm_target).keys)
    if "texture" in keys:
        raise EdgefabError(
            "the Adreno texture path of TVM 0.27 emits OpenCL C that does not compile; "
            "use the buffer path (drop 'texture' from the target's keys, e.g. tag qcom/adreno-opencl)"
        )


def is_opencl(tvm_target: dict[str, Any]) -> bool:
    """Whether the target's device code is OpenCL."""
    return tvm_target.get("kind") == "opencl"


class _RecordedSchedule:
    """A module pass applying dlight rules in order (like ``dl.ApplyDefaultSchedule``), counting hits."""

    def __init__(self, rules: list, target):
        self.rules = rules
        self.target = target
        self.counts: Counter[str] = Counter()

    def __call__(self, mod, _ctx):
        from tvm import s_tir, tirx

        for gvar, func in list(mod.functions_items()):
            if not isinstance(func, tirx.PrimFunc) or _is_scheduled(func):
                continue
            for rule in self.rules:
                space = rule.apply(func, self.target, False)
                if space is None:
                    continue
                schedule = space if isinstance(space, s_tir.Schedule) else space[0]
                mod[gvar] = schedule.mod["main"].with_attr("tirx.is_scheduled", True)
                self.counts[_rule_name(rule)] += 1
                break
            else:
                self.counts["unscheduled"] += 1
        return mod


def _is_scheduled(func) -> bool:
    return "tirx.is_scheduled" in func.attrs and int(func.attrs["tirx.is_scheduled"]) == 1


def _rule_name(rule) -> str:
    family = type(rule).__module__.split(".")[-2]  # tvm.s_tir.dlight.<family>.<module>
    return f"{family}.{type(rule).__name__}"


def _dlight_rules() -> list:
    from tvm.s_tir import dlight as dl

    return [
        dl.adreno.Conv2d(),
        dl.adreno.LayoutTransform(),
        dl.adreno.Pool2D(),
        dl.gpu.Reduction(),
        dl.gpu.GeneralReduction(),
        dl.gpu.Fallback(),
    ]


def _pipeline(target, recorder: _RecordedSchedule):
    """TVM's Adreno pipeline (``relax.backend.adreno``) on buffers, scheduled by ``recorder``."""
    import tvm
    from tvm import relax

    schedule = tvm.transform.module_pass(recorder, opt_level=0, name="EdgefabDlightSchedule")

    @tvm.transform.module_pass(opt_level=0, name="EdgefabAdrenoBuffer")
    def pipeline(mod, _ctx):
        with target:
            passes = [
                tvm.tirx.transform.BindTarget(target),
                relax.transform.DecomposeOpsForInference(),
                relax.transform.LegalizeOps(),
                relax.transform.AnnotateTIROpPattern(),
                relax.transform.FoldConstant(),
                relax.transform.FuseOps(),
                relax.transform.FuseTIR(),
                relax.transform.DeadCodeElimination(),
                relax.transform.Normalize(),
                schedule,
                *relax.backend.gpu_generic.dataflow_lower_passes(target),
                *relax.backend.gpu_generic.finalize_passes(target),
            ]
            return tvm.transform.Sequential(passes)(mod)

    return pipeline


def compile_opencl(mod, tvm_target: dict[str, Any]) -> tuple[Any, str, dict[str, int]]:
    """Compile a Relax module for an OpenCL target.

    Returns the executable, the OpenCL C source of its kernels, and how many kernels each dlight
    rule scheduled.
    """
    import tvm

    check_codegen(tvm_target)
    target = tvm.target.Target(tvm_target)
    recorder = _RecordedSchedule(_dlight_rules(), target)
    try:
        executable = tvm.compile(mod, target, relax_pipeline=_pipeline(target, recorder))
    except Exception as exc:  # TVM raises many types; the user needs one line
        lines = str(exc).strip().splitlines()
        raise EdgefabError(f"TVM OpenCL build failed: {lines[-1] if lines else type(exc).__name__}") from None
    return executable, opencl_source(executable.mod), dict(sorted(recorder.counts.items()))


def opencl_source(module) -> str:
    """The OpenCL C source held by a built module (searched through its imports)."""
    if getattr(module, "kind", None) == "opencl":
        return module.inspect_source()
    for child in module.imports:
        source = opencl_source(child)
        if source:
            return source
    return ""


def kernel_names(source: str) -> set[str]:
    """Names of the ``__kernel`` functions (TVM repeats every prototype before each kernel)."""
    lines = source.splitlines()
    return {line.split("(")[0].split()[-1] for line in lines if line.startswith("__kernel void")}


def write_kernels(source: str, out_dir: Path) -> Path:
    """Write the kernels' source next to the library."""
    if "__kernel" not in source:
        raise EdgefabError("TVM produced no OpenCL kernels for this model")
    path = Path(out_dir) / KERNELS_FILE
    path.write_text(source)
    return path

"""Building and timing single kernels on this machine, as MetaSchedule's tuning does, and the
MetaSchedule plumbing tuning needs (an in-process builder, a progress callback, its log handlers).

Shared by tuning (:mod:`edgefab.export.tuning`) and by re-measuring shipped schedules
(:mod:`edgefab.export.shipped_tuning`).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgefab.export.rpc_tuning import export_candidate
from edgefab.runtime.tvm_threads import tvm_thread_count, use_tvm_threads

RUN_TIMEOUT_S = 60.0


def build_candidate(mod, target):
    """Build one MetaSchedule candidate like its default builder, without importing all intrinsics."""
    import tvm
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm.tirx.build(mod, target=target)


def tuning_target(tvm_target: dict[str, Any]) -> dict[str, Any]:
    """The TVM target to tune and compile tuned code with: MetaSchedule needs ``num-cores``.

    For this machine it is the thread count the code will run with (see
    :mod:`edgefab.runtime.tvm_threads`), and local measurements run on as many threads.
    """
    if tvm_target.get("kind") != "llvm" or "num-cores" in tvm_target:
        return dict(tvm_target)
    return {**tvm_target, "num-cores": tvm_thread_count()}


def local_runner(tuning_target: dict[str, Any]):
    """MetaSchedule's runner on this machine, its worker processes on the target's ``num-cores``
    threads (the count tuned code runs with here)."""
    from tvm.s_tir import meta_schedule as ms

    use_tvm_threads(int(tuning_target.get("num-cores", 0)))  # the workers inherit the environment
    return ms.runner.LocalRunner(timeout_sec=RUN_TIMEOUT_S)


def cpu_intrinsics_only() -> None:
    """Register only the CPU tensor intrinsics before MetaSchedule imports them all.

    ``TuneContext`` imports ``tvm.s_tir.tensor_intrin``, whose package import registers every
    intrinsic family; the CUDA one alone takes about 60 s here (two minutes on a busy machine), and
    a CPU schedule uses only the x86 and Arm ones. A stand-in package that loads just those keeps
    the same registrations for CPU targets. Nothing happens if the real package is already loaded.
    """
    import importlib
    import sys
    import types

    import tvm.s_tir

    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        return
    package = types.ModuleType(name)
    package.__path__ = [str(Path(tvm.s_tir.__file__).parent / "tensor_intrin")]
    sys.modules[name] = package
    for family in ("dot_product_common", "x86", "arm_cpu"):
        setattr(package, family, importlib.import_module(f"{name}.{family}"))


@functools.cache
def devnull():
    """A stream for MetaSchedule's stdout logging (its handlers outlive a run, so it stays open)."""
    return open(os.devnull, "w")  # noqa: SIM115 - kept open for the process's life on purpose


def measure_here(
    tvm_target: dict[str, Any],
    candidates: list[tuple[Any, list]],
    on_progress: Callable[[int, int], None] | None = None,
) -> list[list[float] | None]:
    """Build scheduled kernels and time them on this machine as tuning does; None for a failure.

    ``on_progress(done, total)`` is told after each build and each timing (``total`` counts both).
    """
    import tvm
    from tvm.s_tir import meta_schedule as ms

    cpu_intrinsics_only()
    report = on_progress or (lambda done, total: None)
    total = 2 * len(candidates)
    target, export = tvm.target.Target(tvm_target), export_candidate(None)
    inputs, built = [], []
    for done, (mod, args) in enumerate(candidates, 1):
        try:
            inputs.append(ms.runner.RunnerInput(export(build_candidate(mod, target)), "cpu", args))
            built.append(True)
        except Exception:  # a schedule this machine cannot build (another CPU's intrinsics)
            built.append(False)
        report(done, total)
    with contextlib.redirect_stdout(devnull()):
        futures = iter(local_runner(tvm_target).run(inputs))
    times = []
    for done, ok in enumerate(built, len(candidates) + 1):
        result = next(futures).result() if ok else None
        times.append(list(result.run_secs) if result and result.error_msg is None else None)
        report(done, total)
    return times


def in_process_builder(export: Callable[[Any], str]):
    """A MetaSchedule builder that compiles candidates in this process, one after another.

    The default ``LocalBuilder`` starts fresh worker processes for every batch; each imports TVM
    (8-10 s on a busy 2-core machine) and its build function imports every tensor intrinsic (about
    40 s), past its 30 s timeout, so every candidate "failed". Building a CPU kernel takes well under
    a second, so building here is both faster and simpler.
    """
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    @derived_object
    class _InProcessBuilder(ms.builder.PyBuilder):
        def build(self, build_inputs):
            results = []
            for item in build_inputs:
                try:
                    artifact = export(build_candidate(item.mod, item.target))
                    results.append(ms.builder.BuilderResult(artifact, None))
                except Exception as exc:  # a candidate that fails to build is a failed trial
                    results.append(ms.builder.BuilderResult(None, f"{type(exc).__name__}: {exc}"))
            return results

    return _InProcessBuilder()


def progress_callback(on_batch: Callable[[int, list], None]):
    """A MeasureCallback telling ``on_batch`` how many candidates were measured so far, and the
    batch's runner results."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    @derived_object
    class _Progress(ms.measure_callback.PyMeasureCallback):
        def __init__(self) -> None:
            self.done = 0

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            self.done += len(measure_candidates)
            on_batch(self.done, list(runner_results))

    return _Progress()


def drop_nameless_log_handlers() -> None:
    """MetaSchedule rebuilds its logging with dictConfig, naming the handlers already on its logger by
    ``get_name()``; a handler without a name (one a host application or pytest left there) makes
    that fail with "'NoneType' object has no attribute 'format'". Such a handler cannot be named in
    a dictConfig anyway, so it is taken off first."""
    import logging

    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    for handler in [h for h in logger.handlers if h.get_name() is None]:
        logger.removeHandler(handler)

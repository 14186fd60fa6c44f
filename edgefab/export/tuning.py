"""MetaSchedule tuning with one database per target, kept in the user cache and reused.

Every network edgefab builds is made of a finite set of layer shapes, and MetaSchedule keys its
records by the structure of each fused kernel (shapes, not weights or names). So one database per
target and TVM version serves every model: a second compile of the same or a sibling network finds
its kernels already tuned and costs no trials; only kernels new to the database are tuned.

The database lives in ``cache_dir()/tvm-tuning/<target>-<hash of the TVM target>/tvm-<version>/``
(MetaSchedule's JSON database: ``database_workload.json``, ``database_tuning_record.json``). A folder
of another TVM version is ignored with a warning: schedules are not portable across versions.
MetaSchedule appends each measured record to the JSON file as it goes, so an interrupted run keeps
what it found.

Fixes for the pip wheel (see ``shared/notes/stack-facts.md``): the module is lowered with the
``zero`` pipeline before task extraction (else no tasks are found); candidates are built in this
process without the default builder's import of every tensor intrinsic (about 40 s here, past the
builder's timeout); and the database is applied to the raw module.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgefab.cache import cache_dir
from edgefab.errors import EdgefabError

RUN_TIMEOUT_S = 60.0
META_FILE = "meta.json"


@dataclass(frozen=True)
class TuneOptions:
    """How much to tune: ``trials`` candidates in all, spread over the kernels not tuned yet."""

    trials: int = 64
    max_trials_per_task: int | None = None  # default: trials spread evenly over the new kernels
    seed: int = 0


@dataclass
class TuningReport:
    """What a tuning run did, for summaries and manifests."""

    database: str
    tvm_version: str
    tasks: int = 0  # distinct kernels (fused layers) of the module
    tasks_in_database: int = 0  # of which already tuned before this run
    tasks_tuned: int = 0  # given their first record in this run (fewer than asked when trials run out)
    new_trials: int = 0  # records measured and added in this run
    seconds: float = 0.0
    cost_model: str = ""
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-serialisable data."""
        return dict(self.__dict__)


def tvm_version() -> str:
    """The installed TVM version (databases are keyed by it)."""
    import tvm

    return str(tvm.__version__)


def database_dir(target_name: str, tvm_target: dict[str, Any]) -> Path:
    """The database folder for a target (its resolved TVM target) and the installed TVM version."""
    return _target_dir(target_name, tvm_target) / f"tvm-{tvm_version()}"


def _target_dir(target_name: str, tvm_target: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(tvm_target, sort_keys=True, default=str).encode()).hexdigest()[:12]
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in target_name)
    return cache_dir() / "tvm-tuning" / f"{safe}-{digest}"


def stale_databases(folder: Path) -> list[str]:
    """Warnings for databases of other TVM versions beside ``folder`` (they are never used)."""
    notes = []
    for other in sorted(folder.parent.glob("tvm-*")) if folder.parent.is_dir() else []:
        if other != folder and other.is_dir():
            notes.append(
                f"ignoring the tuning database {other} (made with TVM {other.name[4:]}, this is TVM "
                f"{tvm_version()}): schedules do not carry across versions"
            )
    meta = folder / META_FILE
    if meta.is_file():
        recorded = json.loads(meta.read_text()).get("tvm_version")
        if recorded != tvm_version():
            notes.append(f"ignoring the tuning database {folder}: its meta.json says TVM {recorded}")
    return notes


def open_database(folder: Path, create: bool):
    """MetaSchedule's JSON database in ``folder`` (None when it does not exist and ``create`` is off)."""
    from tvm.s_tir import meta_schedule as ms

    workload = folder / "database_workload.json"
    if not create and not workload.is_file():
        return None
    folder.mkdir(parents=True, exist_ok=True)
    meta = folder / META_FILE
    if not meta.is_file():
        meta.write_text(json.dumps({"tvm_version": tvm_version()}) + "\n")
    return ms.database.JSONDatabase(
        path_workload=str(workload),
        path_tuning_record=str(folder / "database_tuning_record.json"),
        allow_missing=True,
    )


def count_records(folder: Path) -> int:
    """Tuning records in the database (one JSON line each)."""
    path = folder / "database_tuning_record.json"
    if not path.is_file():
        return 0
    with path.open() as handle:
        return sum(1 for line in handle if line.strip())


def build_candidate(mod, target):
    """Build one MetaSchedule candidate like its default builder, without importing all intrinsics."""
    import tvm
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm.tirx.build(mod, target=target)


def _in_process_builder():
    """A MetaSchedule builder that compiles candidates in this process, one after another.

    The default ``LocalBuilder`` starts fresh worker processes for every batch; each imports TVM
    (8-10 s on a busy 2-core machine) and its build function imports every tensor intrinsic (about
    40 s), past its 30 s timeout, so every candidate "failed". Building a CPU kernel takes well under
    a second, so building here is both faster and simpler.
    """
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.builder.local_builder import default_export

    @derived_object
    class _InProcessBuilder(ms.builder.PyBuilder):
        def build(self, build_inputs):
            results = []
            for item in build_inputs:
                try:
                    artifact = default_export(build_candidate(item.mod, item.target))
                    results.append(ms.builder.BuilderResult(artifact, None))
                except Exception as exc:  # a candidate that fails to build is a failed trial
                    results.append(ms.builder.BuilderResult(None, f"{type(exc).__name__}: {exc}"))
            return results

    return _InProcessBuilder()


def _cost_model() -> str:
    """XGBoost's cost model when installed; otherwise random (works, but needs more trials)."""
    try:
        import xgboost  # noqa: F401
    except ImportError:
        return "random"
    return "xgb"


def tuning_target(tvm_target: dict[str, Any]) -> dict[str, Any]:
    """The TVM target to tune and compile tuned code with: MetaSchedule needs ``num-cores``."""
    import psutil

    if tvm_target.get("kind") != "llvm" or "num-cores" in tvm_target:
        return dict(tvm_target)
    return {**tvm_target, "num-cores": psutil.cpu_count(logical=False) or 1}


def extract_tasks(mod, tvm_target: dict[str, Any]) -> list:
    """The distinct fused kernels of a Relax module (MetaSchedule's tasks)."""
    import tvm
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    target = tvm.target.Target(tuning_target(tvm_target))
    with target:
        lowered = relax.get_pipeline("zero")(mod)  # unlowered modules have no tasks
    return list(ms.relax_integration.extract_tasks(lowered, target))


def tune(
    tasks: list,
    folder: Path,
    options: TuneOptions,
    on_trial: Callable[[int, int], None] | None = None,
) -> TuningReport:
    """Tune the ``tasks`` not yet in the database at ``folder``; records are appended as measured."""
    started = time.perf_counter()
    report = TuningReport(str(folder), tvm_version(), tasks=len(tasks), warnings=stale_databases(folder))
    for note in report.warnings:
        warnings.warn(note, stacklevel=2)
    if any("meta.json says" in note for note in report.warnings):
        raise EdgefabError(f"tuning database {folder} belongs to another TVM version; delete it to tune")
    database = open_database(folder, create=True)
    todo = [t for t in tasks if not _has_record(database, t)]
    report.tasks_in_database = len(tasks) - len(todo)
    if todo and options.trials > 0:
        before = count_records(folder)
        report.cost_model = _cost_model()
        try:
            with _interruptible() as interrupted:

                def progress(done: int) -> None:
                    try:
                        if on_trial:
                            on_trial(done, options.trials)
                    except KeyboardInterrupt:
                        interrupted.append(True)
                        raise

                _run_tuner(todo, folder, database, options, report.cost_model, progress)
        finally:  # records measured before an interruption are on disk already
            report.new_trials = count_records(folder) - before
            report.seconds = round(time.perf_counter() - started, 1)
        report.tasks_tuned = sum(_has_record(database, t) for t in todo)
    report.seconds = round(time.perf_counter() - started, 1)
    return report


@contextlib.contextmanager
def _interruptible():
    """Make Ctrl-C during tuning a KeyboardInterrupt again.

    A KeyboardInterrupt raised in Python code that MetaSchedule's C++ loop called back (a measure
    callback, the runner) comes out of the loop as a RuntimeError with no message; the list this
    yields records that an interrupt happened, so it can be raised as one.
    """
    import signal
    import threading

    interrupted: list[bool] = []
    previous = None
    if threading.current_thread() is threading.main_thread():

        def handler(signum, frame):
            interrupted.append(True)
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGINT, handler)
    try:
        yield interrupted
    except Exception:
        if interrupted:
            raise KeyboardInterrupt from None
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _has_record(database, task) -> bool:
    mod = task.dispatched[0]
    return database.has_workload(mod) and bool(database.get_top_k(database.commit_workload(mod), 1))


def _cpu_intrinsics_only() -> None:
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


def _strategy(per_task: int):
    """Evolutionary search sized to the trials: its defaults (population 512) take minutes per task
    on 2 cores before the first candidate is measured, which dominates short runs."""
    from tvm.s_tir import meta_schedule as ms

    population = int(min(512, max(32, 8 * per_task)))
    return ms.search_strategy.EvolutionarySearch(
        population_size=population, init_min_unmeasured=min(50, population // 2)
    )


def _progress_callback(on_trial: Callable[[int], None]):
    """A MeasureCallback telling ``on_trial`` how many candidates were measured so far."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    @derived_object
    class _Progress(ms.measure_callback.PyMeasureCallback):
        def __init__(self) -> None:
            self.done = 0

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            self.done += len(measure_candidates)
            on_trial(self.done)

    return _Progress()


def _drop_nameless_log_handlers() -> None:
    """MetaSchedule rebuilds its logging with dictConfig, naming the handlers already on its logger by
    ``get_name()``; a handler without a name (one a host application or pytest left there) makes
    that fail with "'NoneType' object has no attribute 'format'". Such a handler cannot be named in
    a dictConfig anyway, so it is taken off first."""
    import logging

    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    for handler in [h for h in logger.handlers if h.get_name() is None]:
        logger.removeHandler(handler)


def _run_tuner(
    todo: list, folder: Path, database, options: TuneOptions, cost_model: str, on_trial: Callable[[int], None]
) -> None:
    from tvm.s_tir import meta_schedule as ms

    _cpu_intrinsics_only()
    _drop_nameless_log_handlers()
    per_task = options.max_trials_per_task or max(1, math.ceil(options.trials / len(todo)))
    logs = str(folder / "logs")
    # MetaSchedule logs every step to stdout (which must stay clean for --json); its log files keep it.
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            todo, work_dir=logs, strategy=_strategy(per_task), seed=options.seed
        )
        ms.tune.tune_tasks(
            tasks=contexts,
            task_weights=weights,
            work_dir=logs,
            max_trials_global=options.trials,
            max_trials_per_task=per_task,
            num_trials_per_iter=min(64, per_task),
            builder=_in_process_builder(),
            runner=ms.runner.LocalRunner(timeout_sec=RUN_TIMEOUT_S),
            database=database,
            cost_model=cost_model,
            measure_callbacks=[
                *ms.measure_callback.MeasureCallback.create("default"),
                _progress_callback(on_trial),
            ],  # fmt: skip
        )


def check_tunable(target, tvm_target: dict[str, Any]) -> None:
    """Tuning measures candidates on the device: only CPU targets that run here can be tuned now."""
    if tvm_target.get("kind") != "llvm" or not target.runs_here:
        raise EdgefabError(
            f"cannot tune for {target.name}: tuning measures kernels on the device, and only CPU "
            "targets that run here (host) are supported; compile without --tune"
        )


def compile_cpu(
    mod,
    target_name: str,
    tvm_target: dict[str, Any],
    options: TuneOptions | None = None,
    on_trial: Callable[[int, int], None] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Compile for a CPU target, tuning first when ``options`` is given, applying the database if any.

    Returns the executable and what the manifest should say about tuning.
    """
    import tvm

    folder = database_dir(target_name, tvm_target)
    report = None
    if options is not None:
        report = tune(extract_tasks(mod, tvm_target), folder, options, on_trial)
    if count_records(folder) == 0:
        notes = stale_databases(folder)
        for note in notes:
            warnings.warn(note, stacklevel=2)
        info = {"tuned": False, "database": None, "warnings": notes}
        return tvm.compile(mod, tvm.target.Target(tvm_target)), info
    tasks = extract_tasks(mod, tvm_target)
    database = open_database(folder, create=False)
    covered = sum(_has_record(database, t) for t in tasks)
    info = {
        "tuned": covered > 0,
        "database": database_summary(folder),
        "kernels_in_database": f"{covered} of {len(tasks)}",
        "tuning_run": report.to_dict() if report else None,
    }
    return compile_tuned(mod, tvm_target, folder), info


def compile_tuned(mod, tvm_target: dict[str, Any], folder: Path):
    """Compile the raw (unlowered) Relax module, applying the database's best schedules."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    database = open_database(folder, create=False)
    target = tvm.target.Target(tuning_target(tvm_target))
    if database is None:
        return tvm.compile(mod, target)
    return ms.relax_integration.compile_relax(database, mod, target, params=None)


def database_summary(folder: Path) -> dict[str, Any]:
    """Where the database is and how many records it holds."""
    return {"path": str(folder), "records": count_records(folder), "tvm_version": tvm_version()}

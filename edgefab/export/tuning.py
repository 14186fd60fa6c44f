"""MetaSchedule tuning with one database per target, kept in the user cache and reused.

Every network edgefab builds is made of a finite set of layer shapes, and MetaSchedule keys its
records by the structure of each fused kernel (shapes, not weights or names). So one database per
target and TVM version serves every model: a second compile of the same or a sibling network finds
its kernels already tuned and costs no trials; only kernels new to the database are tuned.

The database lives in ``cache_dir()/tvm-tuning/<target>-<hash of the TVM target>/tvm-<version>/``
(MetaSchedule's JSON database: ``database_workload.json``, ``database_tuning_record.json``). A folder
of another TVM version is ignored with a warning: schedules are not portable across versions.
MetaSchedule appends each measured record to the JSON file as it goes, so an interrupted run keeps
what it found. Kernels the database lacks are first seeded from the database edgefab ships for the
target, if any (:mod:`edgefab.export.shipped_tuning`: copied on the machine that measured it,
re-measured here on any other). Candidates are measured on this machine, or on a device behind a
TVM RPC tracker (``TuneOptions.device``, see :mod:`edgefab.export.rpc_tuning`).

Fixes for the pip wheel (see ``shared/notes/stack-facts.md``): the module is lowered with the
``zero`` pipeline before task extraction (else no tasks are found); candidates are built in this
process without the default builder's import of every tensor intrinsic (about 40 s here, past the
builder's timeout); and the database is applied to the raw module.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgefab.errors import EdgefabError
from edgefab.export.default_schedule import compete_with_default, is_default
from edgefab.export.measure import (
    build_candidate,
    cpu_intrinsics_only,
    devnull,
    drop_nameless_log_handlers,
    in_process_builder,
    local_runner,
    progress_callback,
    tuning_target,
)
from edgefab.export.rpc_tuning import RpcDevice, device_gone, export_candidate, rpc_runner
from edgefab.export.shipped_tuning import seed_from_shipped, shipped_database
from edgefab.export.trial_shares import trial_shares
from edgefab.export.tuning_db import (
    count_records,
    database_dir,
    database_summary,
    open_database,
    stale_databases,
    tvm_version,
)

# MetaSchedule commits a task's measurements when it next picks that task, or at the end of the run;
# with one batch per task that is the end. Tuning in rounds of a few tasks puts records on disk (and
# moves the progress bar) as it goes, so an interrupted long run keeps what it measured.
TASKS_PER_ROUND = 8


@dataclass(frozen=True)
class TuneOptions:
    """How much to tune: ``trials`` candidates in all, spread over the kernels by their likely share
    of the time (:func:`edgefab.export.trial_shares.trial_shares`).

    Records already in the database count: a kernel is tuned only up to its share (or
    ``max_trials_per_task``), so asking again for the same costs nothing, and asking for more tunes
    further.
    """

    trials: int = 64
    max_trials_per_task: int | None = None  # the same share for every kernel instead
    seed: int = 0
    device: RpcDevice | None = None  # measure on this device over TVM RPC; None: on this machine


@dataclass
class TuningReport:
    """What a tuning run did, for summaries and manifests."""

    database: str
    tvm_version: str
    tasks: int = 0  # distinct kernels (fused layers) of the module
    tasks_in_database: int = 0  # of which had tuning records before this run
    tasks_tuned: int = 0  # tuned in this run (new, or below their share of the trials)
    new_trials: int = 0  # tuning candidates measured and added in this run
    default_records: int = 0  # default-schedule records measured beside them (one per tuned kernel)
    seconds: float = 0.0
    cost_model: str = ""
    measured_on: str = "this machine"
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-serialisable data."""
        return dict(self.__dict__)


def _cost_model() -> str:
    """XGBoost's cost model when installed; otherwise random (works, but needs more trials)."""
    try:
        import xgboost  # noqa: F401
    except ImportError:
        return "random"
    return "xgb"


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
    if options.device is not None:
        report.measured_on = options.device.describe()
    for note in report.warnings:
        warnings.warn(note, stacklevel=2)
    if any("meta.json says" in note for note in report.warnings):
        raise EdgefabError(f"tuning database {folder} belongs to another TVM version; delete it to tune")
    database = open_database(folder, create=True)
    shares = _shares(tasks, options)
    counts = [trials_in_database(database, t) for t in tasks]
    # the largest shares first (then the fewest records): when the trials run out, the kernels that
    # take most of the time have been tuned
    order = sorted(range(len(tasks)), key=lambda i: (-shares[i], counts[i]))
    todo = [(tasks[i], shares[i]) for i in order if counts[i] < shares[i]]
    budget = min(options.trials, sum(max(0, s - c) for s, c in zip(shares, counts, strict=True)))
    report.tasks_in_database = sum(count > 0 for count in counts)
    if todo and budget > 0:
        before = count_records(folder)
        report.cost_model = _cost_model()
        gone: list[bool] = []
        defaults = [0]  # default-schedule records added: not trials
        try:
            with _interruptible() as interrupted:

                def progress(done: int, runner_results: list) -> None:
                    if options.device is not None and device_gone(options.device, runner_results):
                        gone.append(True)
                        raise RuntimeError("the device is gone")
                    try:
                        if on_trial:
                            on_trial(done, budget)
                    except KeyboardInterrupt:
                        interrupted.append(True)
                        raise

                _run_tuner(todo, folder, database, options, budget, report.cost_model, progress, defaults)
        except Exception:
            if gone:
                raise _device_gone_error(options.device, folder) from None
            raise
        finally:  # records measured before an interruption are on disk already
            report.default_records = defaults[0]
            report.new_trials = count_records(folder) - before - defaults[0]
            report.seconds = round(time.perf_counter() - started, 1)
        report.tasks_tuned = sum(
            trials_in_database(database, t) > count for t, count in zip(tasks, counts, strict=True)
        )
    report.seconds = round(time.perf_counter() - started, 1)
    return report


def _shares(tasks: list, options: TuneOptions) -> list[int]:
    """Each kernel's share of the trials: ``max_trials_per_task`` for all, or by :func:`trial_shares`."""
    if options.max_trials_per_task:
        return [options.max_trials_per_task] * len(tasks)
    return trial_shares(tasks, options.trials)


def _device_gone_error(device: RpcDevice, folder: Path) -> EdgefabError:
    return EdgefabError(
        f"the device ({device.describe()}) disappeared during tuning; what it measured before is kept "
        f"in {folder}: start its RPC server again and rerun to go on"
    )


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


def trials_in_database(database, task) -> int:
    """How many tuned (not default) valid records ``database`` holds for ``task``'s kernel."""
    mod = task.dispatched[0]
    if not database.has_workload(mod):
        return 0
    return sum(not is_default(r) for r in database.get_top_k(database.commit_workload(mod), 1 << 20))


def has_record(database, task) -> bool:
    """True when ``database`` holds a valid record for ``task``'s kernel."""
    mod = task.dispatched[0]
    return database.has_workload(mod) and bool(database.get_top_k(database.commit_workload(mod), 1))


def _strategy(per_task: int):
    """Evolutionary search sized to the trials: its defaults (population 512) take minutes per task
    on 2 cores before the first candidate is measured, which dominates short runs."""
    from tvm.s_tir import meta_schedule as ms

    population = int(min(512, max(32, 8 * per_task)))
    return ms.search_strategy.EvolutionarySearch(
        population_size=population, init_min_unmeasured=min(50, population // 2)
    )


def _run_tuner(
    todo: list[tuple[Any, int]],
    folder: Path,
    database,
    options: TuneOptions,
    budget: int,
    cost_model: str,
    on_batch: Callable[[int, list], None],
    defaults: list[int],
) -> None:
    """Tune ``todo`` (kernels and their shares, equal shares next to each other) in rounds of up to
    ``TASKS_PER_ROUND`` kernels of one share, each kernel's default schedule measured after its round
    (``defaults[0]`` counts those records)."""
    from tvm.s_tir import meta_schedule as ms

    cpu_intrinsics_only()
    drop_nameless_log_handlers()
    logs = str(folder / "logs")
    local = options.device is None
    measured = [0]  # candidates measured in earlier rounds
    # MetaSchedule logs every step to stdout (which must stay clean for --json); its log files keep it.
    # Its stream handlers outlive the run, so the stream they were given stays open.
    with contextlib.redirect_stdout(devnull()):
        cores = int(todo[0][0].target.attrs.get("num-cores", 0))  # every task has the tuning target
        runner = local_runner({"num-cores": cores}) if local else rpc_runner(options.device)
        export = export_candidate(options.device)
        for round_tasks, per_task in _rounds(todo):
            round_budget = min(budget - measured[0], per_task * len(round_tasks))
            if round_budget <= 0:
                break
            contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
                round_tasks, work_dir=logs, strategy=_strategy(per_task), seed=options.seed
            )
            in_round = [0]

            def report(done: int, results: list, in_round=in_round) -> None:
                in_round[0] = done
                on_batch(measured[0] + done, results)

            ms.tune.tune_tasks(
                tasks=contexts,
                task_weights=weights,
                work_dir=logs,
                max_trials_global=round_budget,
                max_trials_per_task=per_task,
                num_trials_per_iter=min(64, per_task),
                builder=in_process_builder(export),
                runner=runner,
                database=database,
                cost_model=cost_model,
                measure_callbacks=[
                    *ms.measure_callback.MeasureCallback.create("default"),
                    progress_callback(report),
                ],  # fmt: skip
            )
            measured[0] += in_round[0]
            defaults[0] += compete_with_default(round_tasks, database, runner, export, build_candidate)


def _rounds(todo: list[tuple[Any, int]]) -> list[tuple[list, int]]:
    """``todo`` cut into rounds of at most ``TASKS_PER_ROUND`` kernels of one share, and that share."""
    rounds: list[tuple[list, int]] = []
    for task, share in todo:
        if not rounds or rounds[-1][1] != share or len(rounds[-1][0]) == TASKS_PER_ROUND:
            rounds.append(([], share))
        rounds[-1][0].append(task)
    return rounds


def check_tunable(target, tvm_target: dict[str, Any], over_rpc: bool = False) -> None:
    """Tuning measures candidates on the device: CPU targets that run here, or any CPU over RPC."""
    if tvm_target.get("kind") != "llvm":
        raise EdgefabError(
            f"cannot tune for {target.name}: MetaSchedule tuning here covers CPU targets only "
            "(GPU code is scheduled by dlight rules); compile without --tune"
        )
    if not (target.runs_here or over_rpc):
        raise EdgefabError(
            f"cannot tune for {target.name}: tuning measures kernels on the device; give its TVM RPC "
            "tracker with --rpc HOST:PORT --key KEY, or compile without --tune"
        )


def compile_cpu(
    mod,
    target_name: str,
    tvm_target: dict[str, Any],
    options: TuneOptions | None = None,
    on_trial: Callable[[int, int], None] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Compile for a CPU target, tuning first when ``options`` is given, applying the database if any.

    ``on_trial(done, total)`` follows the slow steps: re-measuring shipped schedules on a new CPU,
    then the tuning trials.

    Returns the executable and what the manifest should say about tuning.
    """
    import tvm

    folder = database_dir(target_name, tvm_target)
    shipped = shipped_database(target_name)
    tasks = extract_tasks(mod, tvm_target) if options is not None or shipped else []
    seeded = seed_from_shipped(tasks, folder, target_name, tvm_target, on_trial) if shipped else None
    report = None
    if options is not None:
        report = tune(tasks, folder, options, on_trial)
    if count_records(folder) == 0:
        notes = stale_databases(folder)
        for note in notes:
            warnings.warn(note, stacklevel=2)
        info = {"tuned": False, "database": None, "warnings": notes}
        return tvm.compile(mod, tvm.target.Target(tvm_target)), info
    tasks = tasks or extract_tasks(mod, tvm_target)
    database = open_database(folder, create=False)
    # Kernels without a valid record, or whose default form measured fastest, keep TVM's default
    # schedule; the manifest names them so a slow kernel can be traced to its cause.
    untuned = untuned_kernels(tasks, database)
    covered = sum(has_record(database, task) for task in tasks)
    info = {
        "tuned": len(untuned) < len(tasks),
        "database": database_summary(folder),
        "kernels_in_database": f"{covered} of {len(tasks)}",
        "default_schedule_kernels": untuned,
        "tuning_run": report.to_dict() if report else None,
        "shipped_database": seeded.to_dict() if seeded and seeded.records else None,
    }
    return compile_tuned(mod, tvm_target, folder), info


def untuned_kernels(tasks: list, database) -> list[str]:
    """Names of the ``tasks`` that run TVM's default schedule: no valid record in ``database``, or a
    record of the default kernel measured faster than every tuned candidate."""
    names = []
    for task in tasks:
        mod = task.dispatched[0]
        best = database.get_top_k(database.commit_workload(mod), 1) if database.has_workload(mod) else []
        if not best or is_default(best[0]):
            names.append(task.task_name)
    return names


def compile_tuned(mod, tvm_target: dict[str, Any], folder: Path):
    """Compile the raw (unlowered) Relax module, applying the database's best schedules."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    database = open_database(folder, create=False)
    target = tvm.target.Target(tuning_target(tvm_target))
    if database is None:
        return tvm.compile(mod, target)
    return ms.relax_integration.compile_relax(database, mod, target, params=None)

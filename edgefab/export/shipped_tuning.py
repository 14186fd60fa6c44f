"""Tuning databases shipped with edgefab, and how they seed a user's database.

``edgefab tune --space`` on a built-in target produces a database that every factory build of that
space can use. edgefab ships one (``edgefab/export/tuned/<target>.json.gz``) so a first build is tuned
without trials. The file keeps, per kernel (MetaSchedule workload, keyed by its structural hash), the
best tuned schedules and the default schedule's record, with the machine they were measured on.

Before use a shipped record is trusted only on the machine that measured it: the same resolved TVM
target (``mcpu``, core count), the same CPU model and the same measuring thread count. Anywhere else
its schedules are candidates, re-measured here first (a few seconds per kernel, once: they then live
in the user's database), so the best one is the best *here*. Only kernels the user's database lacks
are seeded; a user's own measurements always win.
"""

from __future__ import annotations

import functools
import gzip
import json
import os
import platform
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from edgefab.errors import EdgefabError
from edgefab.export.default_schedule import is_default
from edgefab.export.measure import measure_here, tuning_target
from edgefab.export.tuning_db import open_database, tvm_version

FORMAT = 1
TUNED_KEEP = 2  # tuned schedules kept per kernel besides the default: re-measuring picks among them

# Times (scheduled module, args info) candidates on this machine; None for one that failed.
Measure = Callable[[list[tuple[Any, list]]], list[list[float] | None]]


@dataclass
class SeedReport:
    """What seeding from a shipped database did."""

    source: str
    measured_on: str  # the CPU the shipped records were measured on
    kernels_copied: int = 0  # same machine: records used as measured
    kernels_remeasured: int = 0  # another machine: schedules timed here first
    records: int = 0
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-serialisable data."""
        return dict(self.__dict__)


def cpu_model() -> str:
    """This machine's CPU model name (``/proc/cpuinfo`` on Linux)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_identity(tuning_target: dict[str, Any]) -> dict[str, Any]:
    """What must match for shipped records to be used as measured: TVM target, CPU model and the
    thread count the kernels were timed with (files made before edgefab set it lack ``threads``:
    TVM had picked one thread on 2-core machines)."""
    threads = int(tuning_target.get("num-cores", 0))
    return {"tvm_target": tuning_target, "cpu": cpu_model(), "threads": threads}


def shipped_database(target_name: str) -> Path | None:
    """The database shipped for a built-in target, if any."""
    path = resources.files("edgefab.export") / "tuned" / f"{target_name}.json.gz"
    return Path(str(path)) if path.is_file() else None


def export_database(
    folder: Path,
    out: Path,
    tuning_target: dict[str, Any],
    about: dict[str, Any],
    measured_on: str | None = None,
) -> int:
    """Write the database at ``folder`` in the shipped format to ``out``; returns the records written.

    Per kernel: its workload (the kernel's TIR, which the records' traces replay on: the same kernel
    in another model can carry other block names), the ``TUNED_KEEP`` fastest tuned records and the
    default schedule's record. ``about`` (space, trials, date) is stored beside the machine identity;
    ``measured_on`` names the device when it was not this machine (tuning over RPC), so the records
    are never taken as this CPU's. The file appears only once it is complete.
    """
    database = open_database(folder, create=False)
    kernels: dict[str, dict] = {}
    for record in database.get_all_tuning_records() if database else []:
        workload = record.workload
        shash = workload.as_json()[0]
        if shash in kernels:
            continue
        best = database.get_top_k(workload, 256)
        tuned = [r for r in best if not is_default(r)][:TUNED_KEEP]
        default = [r for r in best if is_default(r)][:1]
        records = [r.as_json() for r in tuned + default]
        kernels[shash] = {"workload": workload.as_json()[1], "records": records}
    machine = machine_identity(tuning_target)
    if measured_on is not None:
        machine["cpu"] = measured_on
    payload = {"format": FORMAT, "tvm_version": tvm_version(), "machine": machine, "about": about}
    payload["kernels"] = kernels
    partial = out.with_name(out.name + ".partial")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(partial, "wt") as handle:
            json.dump(payload, handle, separators=(",", ":"), default=str)
        os.replace(partial, out)
    except OSError as exc:
        if partial.exists():
            partial.unlink()
        raise EdgefabError(
            f"cannot write the tuning database to {out}: {exc.strerror}; give another path"
        ) from None
    return sum(len(kernel["records"]) for kernel in kernels.values())


def load_shipped(path: Path) -> dict[str, Any]:
    """A shipped database file's contents."""
    with gzip.open(path, "rt") as handle:
        return json.load(handle)


def seed_database(
    tasks: list,
    folder: Path,
    shipped: Path,
    tuning_target: dict[str, Any],
    measure: Measure,
) -> SeedReport:
    """Give the ``tasks`` the user's database at ``folder`` lacks the shipped records for them.

    On the machine that measured them the records are copied; elsewhere each schedule is timed here
    with ``measure`` and recorded with this machine's times (schedules that fail here are dropped).
    """
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.schedule import ScheduleError
    from tvm.target import Target
    from tvm_ffi import structural_hash

    payload = load_shipped(shipped)
    report = SeedReport(str(shipped), payload["machine"]["cpu"])
    if payload.get("format") != FORMAT or payload["tvm_version"] != tvm_version():
        report.warnings.append(
            f"ignoring the shipped tuning database {shipped.name}: made with TVM {payload['tvm_version']}"
        )
        return report
    same_machine = payload["machine"] == json.loads(json.dumps(machine_identity(tuning_target)))
    database = open_database(folder, create=True)
    todo = []
    for task in tasks:
        mod = task.dispatched[0]
        if database.has_workload(mod) and database.get_top_k(database.commit_workload(mod), 1):
            continue  # the user's own records win
        shash = str(structural_hash(mod))
        stored = payload["kernels"].get(shash)
        if stored:
            shipped_mod = ms.database.Workload.from_json([shash, stored["workload"]]).mod
            workload = database.commit_workload(shipped_mod)
            try:
                records = [ms.database.TuningRecord.from_json(r, workload) for r in stored["records"]]
            except ScheduleError:  # the user's database holds this kernel under other names; skip it
                continue
            todo.append((workload, records))
    if same_machine:
        for _, records in todo:
            for record in records:
                database.commit_tuning_record(record)
        report.kernels_copied, report.records = len(todo), sum(len(records) for _, records in todo)
    elif todo:
        report.records = _remeasure(database, todo, Target(tuning_target), measure)
        report.kernels_remeasured = len(todo)
    return report


def _remeasure(database, todo: list, target, measure: Measure) -> int:
    """Time every shipped schedule here in one batch (starting the runner costs seconds) and record
    those that ran with this machine's times."""
    from tvm.s_tir import meta_schedule as ms

    flat = [(workload, record, record.as_measure_candidate()) for workload, rs in todo for record in rs]
    times = measure([(candidate.sch.mod, list(candidate.args_info)) for _, _, candidate in flat])
    kept = 0
    for (workload, record, candidate), run_secs in zip(flat, times, strict=True):
        if run_secs:
            args = list(candidate.args_info)
            database.commit_tuning_record(
                ms.database.TuningRecord(record.trace, workload, run_secs, target, args)
            )
            kept += 1
    return kept


def seed_from_shipped(
    tasks: list,
    folder: Path,
    target_name: str,
    tvm_target: dict[str, Any],
    on_progress: Callable[[int, int], None] | None = None,
) -> SeedReport | None:
    """Seed the target's database with edgefab's shipped records for ``tasks`` it lacks (see
    :mod:`edgefab.export.shipped_tuning`); None when nothing is shipped for the target.

    ``on_progress(done, total)`` follows the re-measuring on a CPU other than the shipped one.
    """
    shipped = shipped_database(target_name)
    if shipped is None:
        return None
    target = tuning_target(tvm_target)
    measure = functools.partial(measure_here, target, on_progress=on_progress)
    report = seed_database(tasks, folder, shipped, target, measure)
    for note in report.warnings:
        warnings.warn(note, stacklevel=2)
    return report

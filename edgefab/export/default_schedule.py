"""TVM's default (unscheduled) kernel as one more tuning candidate.

On CPU, TVM's default build leaves each fused kernel's loops as the importer wrote them. With few
trials per kernel MetaSchedule's best candidate can be slower than that (measured here: the digits
model tuned with about 3 trials per kernel ran 16 % slower than untuned). So after a kernel is tuned,
its default form is measured the same way, on the same runner, and recorded as a candidate whose
trace changes nothing. The database's best record then never loses to the untuned build by more than the
measurement's noise, and a later, longer tuning run can still replace it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def default_trace(mod):
    """A schedule trace that leaves ``mod`` as it is.

    MetaSchedule counts a record valid only if its trace has an instruction, so the trace looks up
    the root block and does nothing else.
    """
    from tvm.s_tir import Schedule

    schedule = Schedule(mod)
    schedule.get_sblock("root")
    return schedule.trace


def is_default(record) -> bool:
    """True for a record of the default (unscheduled) kernel: a trace of block lookups only."""
    return all(inst.kind.name == "GetSBlock" for inst in record.trace.insts)


def compete_with_default(tasks: list, database, runner, export: Callable[[Any], str], build) -> int:
    """Measure each task's default kernel with ``runner`` and commit it; returns how many were added.

    Only tasks with a record already get one (a task never tuned stays "not in the database", so a
    later ``--tune`` still tunes it), and only once per task.
    """
    from tvm.s_tir import meta_schedule as ms

    added = 0
    for task in tasks:
        mod = task.dispatched[0]
        workload = database.commit_workload(mod)
        records = database.get_top_k(workload, 64)
        if not records or any(is_default(record) for record in records):
            continue
        func = next(iter(mod.functions.values()))
        args = ms.arg_info.ArgInfo.from_prim_func(func)
        artifact = export(build(mod, task.target))
        (future,) = runner.run([ms.runner.RunnerInput(artifact, "cpu", args)])  # CPU targets only
        result = future.result()
        if result.error_msg is None and result.run_secs:
            trace = default_trace(mod)
            database.commit_tuning_record(
                ms.database.TuningRecord(trace, workload, result.run_secs, task.target, args)
            )
            added += 1
    return added

"""Shipped tuning databases: used as measured on their own machine, re-measured anywhere else.

A real database is tuned here with a few trials and exported in the shipped format; seeding then
runs the real MetaSchedule database and, for "another machine", real measurements on this one.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from edgefab.errors import EdgefabError
from edgefab.export import shipped_tuning, tuning
from edgefab.export.default_schedule import is_default
from edgefab.export.measure import measure_here, tuning_target
from edgefab.export.tvm_compile import import_onnx
from tests.test_tuning import host_tvm_target, one_conv


@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> tuple[Path, list, int]:
    """A database tuned here (8 trials), exported as edgefab ships it; with the tasks it covers."""
    work = tmp_path_factory.mktemp("shipped")
    tasks = tuning.extract_tasks(import_onnx(one_conv()), host_tvm_target())
    tuning.tune(tasks, work / "tuned", tuning.TuneOptions(trials=8))
    path = work / "host.json.gz"
    about = {"space": "test"}
    records = shipped_tuning.export_database(work / "tuned", path, tuning_target(host_tvm_target()), about)
    return path, tasks, records


def rewrite(path: Path, out: Path, change) -> Path:
    payload = shipped_tuning.load_shipped(path)
    change(payload)
    with gzip.open(out, "wt") as handle:
        json.dump(payload, handle)
    return out


def best_records(folder: Path, tasks: list) -> list:
    database = tuning.open_database(folder, create=False)
    return [database.get_top_k(database.commit_workload(t.dispatched[0]), 16) for t in tasks]


@pytest.mark.slow
def test_same_machine_copies_the_records_as_measured(shipped, tmp_path):
    path, tasks, records = shipped
    report = shipped_tuning.seed_database(tasks, tmp_path, path, tuning_target(host_tvm_target()), None)
    assert report.kernels_copied == len(tasks) and report.kernels_remeasured == 0
    assert report.records == records == tuning.count_records(tmp_path)
    stored = shipped_tuning.load_shipped(path)["kernels"]
    copied = {json.dumps(r.as_json()[1]) for kept in best_records(tmp_path, tasks) for r in kept}
    assert copied == {json.dumps(r[1]) for k in stored.values() for r in k["records"]}  # the shipped times


@pytest.mark.slow
def test_another_machine_remeasures_every_schedule_here(shipped, tmp_path):
    path, tasks, records = shipped
    elsewhere = rewrite(path, tmp_path / "other.json.gz", lambda p: p["machine"].update(cpu="Some Other CPU"))
    measured, steps = [], []

    def measure(candidates):
        measured.extend(candidates)
        return measure_here(tuning_target(host_tvm_target()), candidates, lambda *step: steps.append(step))

    folder = tmp_path / "db"
    report = shipped_tuning.seed_database(tasks, folder, elsewhere, tuning_target(host_tvm_target()), measure)
    assert report.kernels_remeasured == len(tasks) and report.kernels_copied == 0
    assert len(measured) == records and report.records == tuning.count_records(folder) >= len(tasks)
    assert steps == [(done, 2 * records) for done in range(1, 2 * records + 1)]  # each build, each timing
    kernels = shipped_tuning.load_shipped(path)["kernels"].values()
    stored = {json.dumps(r[1]) for kernel in kernels for r in kernel["records"]}
    for kept in best_records(folder, tasks):
        assert any(is_default(r) for r in kept)  # the default competes here too
        assert all(json.dumps(r.as_json()[1]) not in stored for r in kept)  # times are this machine's


@pytest.mark.slow
def test_records_timed_on_another_thread_count_are_remeasured(shipped, tmp_path):
    path, tasks, records = shipped
    one_thread = rewrite(path, tmp_path / "old.json.gz", lambda p: p["machine"].pop("threads"))
    report = shipped_tuning.seed_database(
        tasks, tmp_path / "db", one_thread, tuning_target(host_tvm_target()), lambda c: [[1e-3]] * len(c)
    )
    assert report.kernels_copied == 0 and report.kernels_remeasured == len(tasks)


@pytest.mark.slow
def test_user_records_win_and_other_versions_are_ignored(shipped, tmp_path):
    path, tasks, _ = shipped
    target = tuning_target(host_tvm_target())
    shipped_tuning.seed_database(tasks, tmp_path, path, target, None)
    again = shipped_tuning.seed_database(tasks, tmp_path, path, target, None)
    assert again.kernels_copied == 0 and again.records == 0  # already in the user's database
    old = rewrite(path, tmp_path / "old.json.gz", lambda p: p.update(tvm_version="0.0.1"))
    report = shipped_tuning.seed_database(tasks, tmp_path / "fresh", old, target, None)
    assert report.records == 0 and "TVM 0.0.1" in report.warnings[0]


@pytest.mark.slow
def test_export_names_a_remote_device_and_never_leaves_half_a_file(shipped, tmp_path):
    path, tasks, records = shipped
    folder = path.parent / "tuned"
    target = tuning_target(host_tvm_target())
    out = tmp_path / "phone.json.gz"
    assert shipped_tuning.export_database(folder, out, target, {}, measured_on="RPC key 'android'") == records
    assert shipped_tuning.load_shipped(out)["machine"]["cpu"] == "RPC key 'android'"
    report = shipped_tuning.seed_database(tasks, tmp_path / "db", out, target, lambda c: [None] * len(c))
    assert report.kernels_copied == 0  # measured elsewhere: never copied as this CPU's
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(EdgefabError, match="cannot write the tuning database to"):
        shipped_tuning.export_database(folder, blocked / "x.json.gz", target, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db", "file", "phone.json.gz"]


def test_the_main_job_on_host_finds_every_kernel_in_the_shipped_database(host_build):
    """The factory's digits network compiles tuned on ``host`` with no trials of its own: the shipped
    database (``edgefab tune --space digits-28``) holds every one of its kernels, copied or
    re-measured into this session's cache."""
    assert shipped_tuning.shipped_database("host") is not None
    tvm = host_build[1]["engines"]["tvm"]
    covered, total = tvm["kernels_in_database"].split(" of ")
    assert covered == total and tvm["tuning_run"] is None

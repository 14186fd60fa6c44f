"""Where MetaSchedule tuning databases live: one per target and TVM version, in the user cache.

``cache_dir()/tvm-tuning/<target>-<hash of the TVM target>/tvm-<version>/`` holds MetaSchedule's JSON
database (``database_workload.json``, ``database_tuning_record.json``) and a ``meta.json``. A folder
of another TVM version is ignored with a warning: schedules are not portable across versions.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from edgefab.cache import cache_dir
from edgefab.export.measure import tuning_target

META_FILE = "meta.json"


def tvm_version() -> str:
    """The installed TVM version (databases are keyed by it)."""
    import tvm

    return str(tvm.__version__)


def database_dir(target_name: str, tvm_target: dict[str, Any]) -> Path:
    """The database folder for a target (its resolved TVM target) and the installed TVM version."""
    return _target_dir(target_name, tvm_target) / f"tvm-{tvm_version()}"


def _target_dir(target_name: str, tvm_target: dict[str, Any]) -> Path:
    # num-cores is the thread count local candidates are timed with; records timed with another
    # count (databases made before edgefab set it ran on one thread here) belong in another folder.
    keyed = {**tuning_target(tvm_target), "timed_threads": "num-cores"}
    digest = hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:12]
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


def database_summary(folder: Path) -> dict[str, Any]:
    """Where the database is and how many records it holds."""
    return {"path": str(folder), "records": count_records(folder), "tvm_version": tvm_version()}

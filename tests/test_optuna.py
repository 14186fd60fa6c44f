"""`edgefab search optuna`: a shared, storage-backed, latency-constrained study over the factory's space."""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from edgefab.errors import EdgefabError
from edgefab.pipeline.optuna_job import OptunaJob, run_optuna
from edgefab.search.optuna_search import open_storage


def test_search_writes_a_feasible_pareto_front(tiny_factory, tmp_path):
    out = tmp_path / "run"
    job = OptunaJob("pixel", 1.0, factory=str(tiny_factory[0]), trials=8, out=out, task="classes=0,1,2")
    path, summary = run_optuna(job)
    front = json.loads((path / "pareto.json").read_text())
    assert summary["trials_in_study"] == 8 and summary["storage"] == str(out.with_suffix(".journal"))
    assert front and all(row["latency_ms"] <= 1.0 for row in front)
    assert [r["latency_ms"] for r in front] == sorted(r["latency_ms"] for r in front)
    accuracies = [r["accuracy"] for r in front]  # a Pareto front: slower members are more accurate
    assert accuracies == sorted(accuracies)
    assert summary["best"]["accuracy"] == max(accuracies)
    assert (path / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    # the study lives on in its storage: a second run continues it
    _, again = run_optuna(job)
    assert again["trials_in_study"] == 16


def test_a_study_keeps_one_question(tiny_factory, tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    job = OptunaJob("pixel", 1.0, factory=str(tiny_factory[0]), trials=1, storage=storage, out=tmp_path / "a")
    run_optuna(job)
    other = OptunaJob(
        "pixel", 0.8, factory=str(tiny_factory[0]), trials=1, storage=storage, out=tmp_path / "b"
    )
    with pytest.raises(EdgefabError, match="was started for .*budget_ms': 1.0"):
        run_optuna(other)


def test_bad_search_input(tiny_factory, tmp_path):
    with pytest.raises(EdgefabError, match=r"no sub-network meets 0.01 ms on pixel: the smallest costs"):
        run_optuna(OptunaJob("pixel", 0.01, factory=str(tiny_factory[0]), trials=1, out=tmp_path / "r"))
    with pytest.raises(EdgefabError, match="cannot open optuna storage"):
        open_storage("nosuchdb://user@host/db")


@pytest.mark.slow
def test_processes_share_one_study(tiny_factory, tmp_path):
    """Two `edgefab search optuna` processes on one journal file: one study with both's trials."""
    outputs = _two_workers(tiny_factory[0], str(tmp_path / "shared.journal"), tmp_path)
    assert max(o["trials_in_study"] for o in outputs) == 6


def _two_workers(factory: Path, storage: str, out: Path) -> list[dict]:
    """Two `edgefab search optuna` processes of 3 trials each, started together on ``storage``."""
    edgefab = [sys.executable, "-c", "from edgefab.cli import main; main()"]
    command = [*edgefab, "search", "optuna", "--target", "pixel", "--latency-ms", "1", "--trials", "3",
               "--factory", str(factory), "--storage", storage, "--json"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [
        subprocess.Popen([*command, "--out", str(out / f"run{i}")], stdout=subprocess.PIPE, env=env)
        for i in range(2)
    ]
    outputs = [json.loads(worker.communicate(timeout=600)[0]) for worker in workers]
    assert all(worker.returncode == 0 for worker in workers)
    return outputs


def _postgres_bin() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(os.path.realpath(found)).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return versions[-1].parent if versions else None


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL server on localhost (the machine's own binaries), as an optuna URL."""
    pytest.importorskip("psycopg2")
    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) on this machine")
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="edgefab-pg-"))
    if os.geteuid() == 0:  # initdb refuses root: run the server as the postgres user
        if not shutil.which("runuser"):
            pytest.skip("running as root without runuser: cannot start PostgreSQL")
        folder.chmod(0o755)
        shutil.chown(folder, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = folder / "data"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "check": True}
    initdb = [*as_user, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "edgefab"]
    subprocess.run(initdb, **quiet)
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
    pg_ctl = [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data)]
    subprocess.run([*pg_ctl, "-o", options, "-l", str(folder / "log"), "-w", "start"], **quiet)
    try:
        yield f"postgresql+psycopg2://edgefab@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], **quiet)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_processes_share_one_postgresql_study(tiny_factory, tmp_path, postgres_url):
    """Many workers, as on many machines: two processes on one PostgreSQL study (optuna's RDB storage)."""
    outputs = _two_workers(tiny_factory[0], postgres_url, tmp_path)
    assert max(o["trials_in_study"] for o in outputs) == 6
    assert all(o["storage"] == postgres_url for o in outputs)
    studies = open_storage(postgres_url).get_all_studies()
    assert len(studies) == 1

"""TVM code runs on the target's thread count, locally measured candidates too.

TVM's own default on x86 is half the logical CPUs (it takes them for hyper-threads): one thread on
this 2-core machine, where ONNX Runtime uses two. The checks run real TVM in fresh processes,
because a process sizes its thread pool only once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from edgefab.export import shipped_tuning
from edgefab.export.measure import tuning_target
from edgefab.export.tvm_compile import compile_onnx
from edgefab.runtime import tvm_threads
from edgefab.targets import load_target
from tests.test_tuning import host_tvm_target, one_conv


def run_python(code: str, **env: str) -> str:
    """stdout of ``code`` in a fresh interpreter with ``env`` added (TVM_NUM_THREADS removed first)."""
    environment = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    result = subprocess.run(
        [sys.executable, "-c", code], env={**environment, **env}, capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> str:
    artifact = compile_onnx(one_conv(), load_target("host"), tmp_path_factory.mktemp("threads"))
    return str(artifact.path)


ENGINE_THREADS = """
import sys, numpy as np, tvm
from edgefab.runtime.tvm_engine import TVMEngine
engine = TVMEngine(sys.argv[1] if len(sys.argv) > 1 else {path!r}, ["x"], threads={threads})
engine.run({{"x": np.zeros((1, 1, 16, 16), np.float32)}})
print(engine.threads, tvm.runtime.num_threads())
"""


@pytest.mark.parametrize("threads", [1, 2])
def test_engine_runs_on_the_targets_thread_count(library, threads):
    if threads > len(os.sched_getaffinity(0)):
        pytest.skip("TVM caps its pool at the CPUs there are")
    assert run_python(ENGINE_THREADS.format(path=library, threads=threads)) == f"{threads} {threads}"


def test_engine_runs_on_all_physical_cores_by_default(library):
    cores = tvm_threads.physical_cores()
    assert run_python(ENGINE_THREADS.format(path=library, threads=0)) == f"{cores} {cores}"


def test_a_users_tvm_num_threads_wins(library):
    assert run_python(ENGINE_THREADS.format(path=library, threads=2), TVM_NUM_THREADS="1") == "1 1"


def test_a_users_tvm_num_threads_stays_for_every_later_engine():
    code = (
        "from edgefab.runtime.tvm_threads import use_tvm_threads\n"
        "print(use_tvm_threads(2), use_tvm_threads(0), use_tvm_threads(2))"
    )
    assert run_python(code, TVM_NUM_THREADS="1") == "1 1 1"
    assert run_python(code) == f"2 {tvm_threads.physical_cores()} 2"  # edgefab's own value may change


def test_physical_cores_stay_within_the_cpus_this_process_may_use():
    assert 1 <= tvm_threads.physical_cores() <= len(os.sched_getaffinity(0))


def test_tuning_measures_with_the_thread_count_the_code_runs_with():
    target = tuning_target(host_tvm_target())
    assert target["num-cores"] == tvm_threads.tvm_thread_count()
    assert tuning_target({**host_tvm_target(), "num-cores": 4})["num-cores"] == 4  # a target's own stays
    identity = shipped_tuning.machine_identity(target)
    assert identity["threads"] == target["num-cores"]


MEASURED_THREADS = """
import json, os
from edgefab.export.measure import local_runner
runner = local_runner({"num-cores": 3})
print(json.dumps(os.environ["TVM_NUM_THREADS"]))  # the runner's worker processes inherit it
"""


def test_local_runner_workers_get_the_targets_thread_count():
    assert json.loads(run_python(MEASURED_THREADS)) == "3"

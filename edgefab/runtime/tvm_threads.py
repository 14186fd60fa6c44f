"""How many threads TVM's CPU kernels run on, set the same way everywhere edgefab runs TVM code.

TVM sizes its thread pool once per calling thread, from ``TVM_NUM_THREADS`` (else
``OMP_NUM_THREADS``, else half the logical CPUs on x86, on the guess that they are hyper-threads).
On a machine whose CPUs are not hyper-threads that guess halves the cores: on this 2-core x86 VM
every library ran on one thread while ONNX Runtime ran on two, and MetaSchedule measured its
candidates on one thread too. edgefab therefore sets the count itself: the target's ``threads``, or
with 0 the physical cores this process may use (ONNX Runtime's own default), unless the user set
``TVM_NUM_THREADS``.
"""

from __future__ import annotations

import os

_ENV = "TVM_NUM_THREADS"
_ours: dict[str, str] = {}  # the value edgefab set, so a later call may change it; a user's stays


def physical_cores() -> int:
    """Physical cores this process may run on (logical CPUs where the split is unknown)."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        import psutil

        physical = psutil.cpu_count(logical=False) or available
        logical = psutil.cpu_count(logical=True) or available
    except ImportError:
        return available
    # Affinity limits logical CPUs; scale by the machine's cores per logical CPU.
    return max(1, min(available, round(available * physical / logical)))


def _users_value() -> int | None:
    """A positive ``TVM_NUM_THREADS`` the user set (not one edgefab wrote), else None."""
    value = os.environ.get(_ENV, "").strip()
    if not value or _ours.get(_ENV) == value or not value.isdigit() or int(value) < 1:
        return None
    return int(value)


def tvm_thread_count(threads: int = 0) -> int:
    """The thread count TVM code runs with for a target's ``threads`` (0: all physical cores)."""
    return _users_value() or (threads if threads > 0 else physical_cores())


def use_tvm_threads(threads: int = 0) -> int:
    """Make TVM code run by this process use ``tvm_thread_count(threads)`` threads; returns it.

    Call before the first kernel runs in a thread (its pool is sized then) and before MetaSchedule
    starts its runner processes (they inherit the environment). A user's ``TVM_NUM_THREADS`` is
    left as it is.
    """
    count = tvm_thread_count(threads)
    if _users_value() is None:
        os.environ[_ENV] = _ours[_ENV] = str(count)
    return count

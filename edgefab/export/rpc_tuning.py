"""Measuring MetaSchedule candidates on a device over a TVM RPC tracker.

The tuner builds candidates here (cross-linked for the device where the target needs it) and
MetaSchedule's ``RPCRunner`` uploads and times them on the server registered under ``key``. Two
things the stock runner does not do, and tuning a phone needs:

- It asks the tracker for a session and waits for the answer with no deadline, so a device that is
  gone hangs the tuner forever. Sessions here are requested only once the tracker lists a free
  server under the key (a busy one is waited for up to ``timeout_s``); with none registered the
  candidate fails at once.
- A run of failures does not stop MetaSchedule. After a batch in which every candidate failed, the
  tracker is asked whether the device is still registered; if not, tuning stops with a clear error
  and the records measured so far stay in the database.

This module is imported by the runner's worker processes, so it imports nothing heavy at the top.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

GONE_MARKER = "edgefab: no free RPC server"


@dataclass(frozen=True)
class RpcDevice:
    """A device behind a TVM RPC tracker, and how to link code for it."""

    tracker: str  # HOST:PORT of the tracker
    key: str  # the key its RPC server registered with
    timeout_s: float = 60.0  # waiting for a free server, and for one candidate's session
    fcompile: Callable | None = None  # export_library's linker for the device; None: a tar the server links

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` of the tracker."""
        host, _, port = self.tracker.rpartition(":")
        return host, int(port)

    def describe(self) -> str:
        """How reports name the device."""
        return f"RPC key '{self.key}' via {self.tracker}"


def servers(address: tuple[str, int], key: str) -> tuple[int, int]:
    """``(registered, free)`` servers under ``key`` at the tracker; ``(0, 0)`` when it cannot be reached."""
    from tvm import rpc

    try:
        socket.create_connection(address, timeout=5).close()
        summary = rpc.connect_tracker(*address).summary()
    except (OSError, RuntimeError):
        return 0, 0
    registered = sum(entry.get("key") == f"server:{key}" for entry in summary.get("server_info", []))
    return registered, int(summary.get("queue_info", {}).get(key, {}).get("free", 0))


def create_session(rpc_config) -> Any:
    """MetaSchedule's ``f_create_session``: request a session only once a server is free to serve it.

    A server that is registered but busy is waited for (up to the session timeout); none registered
    fails the candidate at once, so a device that is gone costs seconds, not a timeout per candidate.
    """
    address = (rpc_config.tracker_host, int(rpc_config.tracker_port))
    deadline = time.monotonic() + rpc_config.session_timeout_sec
    while True:
        registered, free = servers(address, rpc_config.tracker_key)
        if free:
            return rpc_config.connect_server()
        if not registered or time.monotonic() > deadline:
            raise RuntimeError(f"{GONE_MARKER} with key '{rpc_config.tracker_key}' at the tracker")
        time.sleep(0.25)


def rpc_runner(device: RpcDevice):
    """A MetaSchedule ``RPCRunner`` for ``device`` that never waits on the tracker without a deadline."""
    from tvm.s_tir import meta_schedule as ms

    host, port = device.address
    config = ms.runner.RPCConfig(
        tracker_host=host,
        tracker_port=port,
        tracker_key=device.key,
        session_timeout_sec=int(device.timeout_s),
    )
    evaluator = ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=50)
    return ms.runner.RPCRunner(config, evaluator, f_create_session=create_session)


def device_gone(device: RpcDevice, runner_results: list) -> bool:
    """True when a batch failed throughout and the tracker no longer lists a server for the key."""
    if not runner_results or any(result.error_msg is None for result in runner_results):
        return False
    registered, _ = servers(device.address, device.key)
    return registered == 0


def export_candidate(device: RpcDevice | None) -> Callable[[Any], str]:
    """The builder's export step: a tar for local runs, a library linked for the device over RPC."""
    from tvm.s_tir.meta_schedule.builder.local_builder import default_export

    if device is None or device.fcompile is None:
        return default_export

    def export(module) -> str:
        import tempfile
        from pathlib import Path

        path = Path(tempfile.mkdtemp(prefix="edgefab-candidate-")) / "candidate.so"
        module.export_library(str(path), fcompile=device.fcompile)
        return str(path)

    return export

"""Run a TVM Relax library compiled for this machine.

The runtime is the lowest layer: it imports only numpy and TVM, never edgefab.export or torch.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edgefab.errors import EdgefabError
from edgefab.runtime.tvm_threads import use_tvm_threads


class TVMEngine:
    """A compiled host library (``.so``) loaded into a Relax virtual machine."""

    def __init__(self, library: Path, input_names: list[str], threads: int = 0):
        """Load ``library``; ``input_names`` is the order of ``main``'s parameters (graph input order).

        Kernels run on ``threads`` threads (0: all physical cores, as ONNX Runtime does; see
        :mod:`edgefab.runtime.tvm_threads`).
        """
        import tvm
        from tvm import relax

        library = Path(library)
        if not library.is_file():
            raise EdgefabError(f"TVM library {library} does not exist")
        self._tvm = tvm
        self.threads = use_tvm_threads(threads)
        self.input_names = list(input_names)
        self._vm = relax.VirtualMachine(tvm.runtime.load_module(str(library)), tvm.cpu())
        self._main = self._vm["main"]

    def _args(self, feeds: dict[str, np.ndarray]) -> list:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise EdgefabError(f"missing input(s) {', '.join(missing)}; expected {self.input_names}")
        # np.ascontiguousarray would turn a 0-d input (e.g. sr) into 1-d; asarray keeps the rank.
        return [self._tvm.runtime.tensor(np.asarray(feeds[n], order="C")) for n in self.input_names]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run once; outputs as numpy arrays in graph output order (tuples flattened)."""
        return _flatten(self._main(*self._args(feeds)))

    def time_ms(self, feeds: dict[str, np.ndarray], repeat: int = 20, warmup: int = 2) -> list[float]:
        """Wall-clock milliseconds of ``repeat`` runs (inputs already on the device), after warm-up."""
        args = self._args(feeds)
        for _ in range(warmup):
            self._main(*args)
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            self._main(*args)  # CPU execution is synchronous, so the call's end is the result's
            times.append((time.perf_counter() - start) * 1000.0)
        return times


def _flatten(value) -> list[np.ndarray]:
    if hasattr(value, "numpy"):
        return [value.numpy()]
    return [array for item in value for array in _flatten(item)]

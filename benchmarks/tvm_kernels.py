"""Where a TVM library's time goes: each kernel called alone, beside the whole call.

Runs the library's ``main`` once with an instrument that records every kernel call and its
argument shapes, then times each kernel alone through its packed function (fresh arrays of the
same shapes) and the whole call, on the threads TVM gets (``TVM_NUM_THREADS``, else all physical
cores as edgefab sets them). The kernels' sum against the whole call shows how much is the Relax
VM's own work between kernels; the slowest kernels show where tuning or layout falls short.

    python benchmarks/tvm_kernels.py build/mnist-host [--threads 2] [--top 12]   # edgefab build --target host
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def median_us(call, calls: int = 200, repeats: int = 5) -> float:
    """Median over ``repeats`` of the mean microseconds of ``calls`` back-to-back calls."""
    for _ in range(20):
        call()
    means = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            call()
        means.append((time.perf_counter() - start) / calls * 1e6)
    return float(np.median(means))


def kernel_calls(vm, inputs: list) -> list[tuple[str, list[tuple[tuple[int, ...], str]]]]:
    """The kernels one call of ``main`` runs, in order, with their arguments' shapes and dtypes."""
    calls = []

    def record(func, name, before, ret, *args):
        if before and not name.startswith("vm."):  # vm.builtin.*: the VM's own allocations, checks
            calls.append((name, [(tuple(a.shape), str(a.dtype)) for a in args if hasattr(a, "shape")]))
        return 0

    vm.set_instrument(record)
    vm["main"](*inputs)
    vm.set_instrument(lambda *args: 0)
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", type=Path, help="a package folder (model.so and manifest.json)")
    parser.add_argument("--threads", type=int, default=0, help="TVM threads (0: all physical cores)")
    parser.add_argument("--top", type=int, default=12, help="kernels to list, slowest first")
    args = parser.parse_args()

    from edgefab.runtime.tvm_threads import use_tvm_threads

    threads = use_tvm_threads(args.threads)  # before TVM sizes its pool
    import tvm
    from tvm import relax

    missing = [name for name in ("model.so", "manifest.json") if not (args.package / name).is_file()]
    if missing:
        raise SystemExit(f"{args.package} has no {' or '.join(missing)}: give a package built for a "
                         "target that runs here")  # fmt: skip
    manifest = json.loads((args.package / "manifest.json").read_text())
    library = tvm.runtime.load_module(str(args.package / "model.so"))
    vm = relax.VirtualMachine(library, tvm.cpu())
    rng = np.random.default_rng(0)
    inputs = [
        tvm.runtime.tensor(rng.standard_normal(item["shape"]).astype(item["dtype"]))
        for item in manifest["inputs"]
    ]
    whole = median_us(lambda: vm["main"](*inputs))
    rows = []
    for name, shapes in kernel_calls(vm, inputs):
        kernel = library.get_function(name, query_imports=True)
        arrays = [tvm.runtime.tensor(np.asarray(rng.standard_normal(s)).astype(d)) for s, d in shapes]
        rows.append((median_us(lambda k=kernel, a=arrays: k(*a)), name, shapes[0][0]))
    total = sum(us for us, _, _ in rows)
    print(f"TVM threads: {threads}; whole call {whole:.1f} us; {len(rows)} kernel calls add up to "
          f"{total:.1f} us ({100 * total / whole:.0f} % of the call)\n")  # fmt: skip
    print("| us | share | kernel | first input |")
    print("| --- | --- | --- | --- |")
    for us, name, shape in sorted(rows, reverse=True)[: args.top]:
        print(f"| {us:.1f} | {100 * us / total:.0f} % | {name} | {list(shape)} |")


if __name__ == "__main__":
    main()

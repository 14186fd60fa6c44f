"""ONNX Runtime vs untuned TVM on this machine, for the shared real-world models.

Run: python benchmarks/ort_vs_tvm.py [--runs N]. Both engines get the same fixed+simplified graph
and the same seeded inputs, use all cores, and are warmed up before timing; the table shows the
median of N runs and TVM's time as a multiple of ONNX Runtime's.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgefab.export import graph
from edgefab.export.tvm_compile import compile_onnx
from edgefab.runtime.tvm_engine import TVMEngine
from edgefab.targets import load_target

MODELS = Path(__file__).resolve().parents[1].parent / "shared" / "models"
CASES = [
    ("ppocr_mobile_v2_cls", {"x": [1, 3, 48, 192]}, {}),
    ("silero_vad_16k_op15", {"input": [1, 512], "state": [2, 1, 128]}, {"sr": np.array(16000)}),
]


def ort_times_ms(model, feeds: dict[str, np.ndarray], runs: int) -> list[float]:
    """Per-run milliseconds of ONNX Runtime (CPU provider) on ``feeds``, after warm-up."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for _ in range(3):
        session.run(None, feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def bench(name: str, shapes: dict, values: dict, runs: int, work: Path) -> tuple:
    """One table row: model, ORT median, TVM median, ratio, max abs diff, compile seconds."""
    original = graph.load_onnx(MODELS / f"{name}.onnx")
    simplified = graph.simplify(graph.fix_input_shapes(original, shapes))
    feeds = graph.random_inputs(simplified, seed=0, values=values)
    start = time.perf_counter()
    artifact = compile_onnx(simplified, load_target("host"), work, name)
    compile_s = time.perf_counter() - start
    engine = TVMEngine(artifact.path, list(feeds))
    diff = graph.max_abs_diff(engine.run(feeds), graph.run_onnxruntime(simplified, feeds))
    ort_ms = float(np.median(ort_times_ms(simplified, feeds, runs)))
    tvm_ms = float(np.median(engine.time_ms(feeds, repeat=runs, warmup=3)))
    return name, ort_ms, tvm_ms, tvm_ms / ort_ms, diff, compile_s


def main() -> None:
    """Print the comparison table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50, help="timed runs per engine (median reported)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        rows = [bench(name, shapes, values, args.runs, Path(work)) for name, shapes, values in CASES]
    print(f"host, median of {args.runs} runs; TVM untuned (llvm, resolved mcpu), weights embedded")
    header = f"{'model':<22}{'ORT ms':>10}{'TVM ms':>10}{'TVM/ORT':>10}{'max|diff|':>12}{'compile s':>11}"
    print(header)
    print("-" * len(header))
    for name, ort_ms, tvm_ms, ratio, diff, compile_s in rows:
        print(f"{name:<22}{ort_ms:>10.3f}{tvm_ms:>10.3f}{ratio:>9.1f}x{diff:>12.2e}{compile_s:>11.1f}")


if __name__ == "__main__":
    main()

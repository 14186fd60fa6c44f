"""ONNX Runtime vs TVM untuned vs TVM tuned (MetaSchedule) on this machine, with the roofline floor.

Run: nice -n 10 python benchmarks/compile_speed.py [--trials-ppocr 128] [--trials-digits 64]

Models: the shared PP-OCR classifier (1x3x48x192) and the digits model of ``edgefab build --target
host`` (built here, training from the cache when present). Each engine gets the same graph and the
same seeded inputs and uses all cores; tuned TVM tunes into a fresh database in a temporary folder
(so neither the user's database nor earlier runs help it) and states its trials and wall time.
The floor is the model's FLOPs (2 x MACs) over this machine's measured float32 matmul peak (numpy),
a bound no engine reaches. Prints a markdown table and writes the figures as JSON (--json-out).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from edgefab.export import graph, tuning
from edgefab.export.stats import model_stats
from edgefab.export.tvm_compile import import_onnx, resolve_tvm_target
from edgefab.runtime.tvm_engine import TVMEngine
from edgefab.targets import load_target
from edgefab.targets.latency import time_calls

MODELS = Path(__file__).resolve().parents[1].parent / "shared" / "models"
RUNS = 50


def peak_gflops(size: int = 1024, repeats: int = 10) -> float:
    """This machine's float32 matmul throughput (numpy/BLAS, all cores), best of ``repeats``."""
    a = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32)
    a @ a
    best = min(_timed(lambda: a @ a) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def ort_ms(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> tuple[float, list[np.ndarray]]:
    """Median ms of ONNX Runtime (CPU provider, all cores), and its outputs."""
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    samples = time_calls(lambda: session.run(None, feeds), warmup=10, runs=RUNS)
    return float(np.median(samples)), session.run(None, feeds)


def tvm_ms(executable, feeds: dict[str, np.ndarray], work: Path, tag: str) -> tuple[float, list[np.ndarray]]:
    """Median ms of a TVM executable (exported, loaded back like a package does), and its outputs."""
    path = work / f"{tag}.so"
    executable.export_library(str(path))
    engine = TVMEngine(path, list(feeds))
    samples = engine.time_ms(feeds, repeat=RUNS, warmup=10)
    return float(np.median(samples)), engine.run(feeds)


def bench_model(name: str, model: onnx.ModelProto, trials: int, peak: float, work: Path) -> dict:
    """Every column of the table for one model."""
    import tvm

    feeds = graph.random_inputs(model, seed=0)
    tvm_target = resolve_tvm_target(load_target("host"))
    ort_time, reference = ort_ms(model, feeds)
    mod = import_onnx(model)
    untuned_time, out = tvm_ms(tvm.compile(mod, tvm.target.Target(tvm_target)), feeds, work, f"{name}-u")
    untuned_diff = graph.max_abs_diff(reference, out)
    folder = work / f"db-{name}"
    tasks = tuning.extract_tasks(mod, tvm_target)
    report = tuning.tune(tasks, folder, tuning.TuneOptions(trials=trials))
    tuned_time, out = tvm_ms(tuning.compile_tuned(import_onnx(model), tvm_target, folder), feeds, work, name)
    flops = 2 * model_stats(model)["macs"]
    return {
        "model": name,
        "flops": flops,
        "onnxruntime_ms": ort_time,
        "tvm_untuned_ms": untuned_time,
        "tvm_tuned_ms": tuned_time,
        "tuning": report.to_dict(),
        "max_abs_diff": {"untuned": untuned_diff, "tuned": graph.max_abs_diff(reference, out)},
        "roofline_floor_ms": flops / (peak * 1e9) * 1e3,
    }


def digits_model(out: Path) -> onnx.ModelProto:
    """The model of ``edgefab build --target host`` (the build trains or loads it from the cache)."""
    from edgefab.pipeline.build import BuildOptions, build

    path, _ = build(BuildOptions(target="host", out=out))
    return onnx.load(str(path / "model.onnx"))


def table(rows: list[dict], peak: float) -> str:
    """The markdown table of the results."""
    lines = [
        f"Peak measured here (numpy float32 matmul, all cores): {peak:.1f} GFLOP/s",
        "",
        "| model | ONNX Runtime ms | TVM untuned ms | TVM tuned ms | tuned / ORT | tuning (kernels, trials, "
        "wall time) | roofline floor ms |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        t = r["tuning"]
        cells = [
            r["model"],
            f"{r['onnxruntime_ms']:.3f}",
            f"{r['tvm_untuned_ms']:.3f}",
            f"{r['tvm_tuned_ms']:.3f}",
            f"{r['tvm_tuned_ms'] / r['onnxruntime_ms']:.2f}x",
            f"{t['tasks']} kernels, {t['new_trials']} trials, {t['seconds']:.0f} s ({t['cost_model']})",
            f"{r['roofline_floor_ms']:.4f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    """Build/load the models, time every engine, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials-ppocr", type=int, default=128)
    parser.add_argument("--trials-digits", type=int, default=64)
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()
    peak = peak_gflops()
    with tempfile.TemporaryDirectory(prefix="edgefab-bench-") as folder:
        work = Path(folder)
        ppocr = graph.simplify(
            graph.fix_input_shapes(
                graph.load_onnx(MODELS / "ppocr_mobile_v2_cls.onnx"), {"x": [1, 3, 48, 192]}
            )
        )
        rows = [
            bench_model(
                "digits (edgefab build --target host)",
                digits_model(work / "build"),
                args.trials_digits,
                peak,
                work,
            ),  # fmt: skip
            bench_model("ppocr_mobile_v2_cls 1x3x48x192", ppocr, args.trials_ppocr, peak, work),
        ]
    print(table(rows, peak))
    if args.json_out:
        args.json_out.write_text(json.dumps({"peak_gflops": peak, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()

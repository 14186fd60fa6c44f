"""PyTorch eager vs ONNX Runtime vs TVM (untuned, tuned, space database) on this machine, with the floor.

Run: nice -n 10 python benchmarks/compile_speed.py [--trials 64] [--trials-space 128] [--skip MobileNetV2]

Models: the two shared third-party models (PP-OCR's text classifier at 1x3x48x192, Silero VAD on
512-sample chunks), the digits model of ``edgefab build --target host`` (the factory's choice), and
a MobileNetV2-style network at 224 (the ``mnasnet-224`` space with every searchable layer an
expansion-6 3x3 inverted residual, 1000 classes). Each engine gets the same graph and the same
seeded inputs and uses all cores (TVM: as many threads as ONNX Runtime); the engines of a model take
turns in 15 rounds of 10 calls, a pause apart: a time is the median of the rounds' medians, "tuned /
ORT" the median of the ratios within each round (see ``interleaved_medians``). "TVM untuned" is
TVM's own build of the graph (NCHW, no edgefab passes). "TVM tuned" is what ``edgefab compile
--tune N`` builds: the graph in the target's layout (``host``: NCHW8c, where it applies) tuned into
a fresh database in a temporary folder (so neither the user's database nor earlier runs help it);
the table states its trials, wall time and layout. "TVM space db" first tunes every distinct kernel of
the model's search space into another fresh database (``edgefab tune --space``), then compiles the
model with it: the model itself costs no trials; the column says how many of its kernels the space
database covered. PyTorch eager runs the same architecture (random weights; the time does not depend
on them) where edgefab has the PyTorch module; the two third-party models exist only as ONNX. The
floor is the model's FLOPs (2 x MACs) over this machine's measured float32 matmul peak (numpy), a
bound no engine reaches.
With --layout NCHW (or NCHW4c/8c/16c) the model is also built in that layout (``edgefab compile
--layout``): tuned with the same trials into another fresh database, and compiled with the space
database (which then holds the space's kernels in both layouts), all timed in the same rounds.
--trials 0 skips the per-model tuning; --trials-space shipped uses edgefab's shipped host database
instead of tuning one.
Prints a markdown table and writes the figures as JSON (--json-out); --keep DIR keeps the tuning
databases (a ``db-N`` folder per model) and libraries for a later look or export.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from edgefab.export import graph, tuning
from edgefab.export.layout import block_of
from edgefab.export.stats import model_stats
from edgefab.export.tvm_compile import import_onnx, resolve_tvm_target
from edgefab.pipeline.common import SilentProgress
from edgefab.runtime.tvm_engine import TVMEngine
from edgefab.runtime.tvm_threads import tvm_thread_count
from edgefab.targets import load_target
from edgefab.targets.latency import time_calls

MODELS = Path(__file__).resolve().parents[1].parent / "shared" / "models"
ROUNDS = 15  # rounds in which every engine of a model is timed in turn
CALLS_PER_ROUND = 10  # timed calls per engine and round (median taken)
PAUSE_S = 0.2  # between rounds, so that they spread over the machine's slow and fast phases


@dataclass
class Case:
    """One model of the table: its graph, and where it comes from."""

    name: str
    model: onnx.ModelProto
    feeds: dict[str, np.ndarray]
    spec: object | None = None  # ArchSpec when edgefab has the PyTorch module
    space: str | None = None  # the search space it was assembled from


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


def ort_runner(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> tuple[Callable, list[np.ndarray]]:
    """A call of ONNX Runtime (CPU provider, all cores) on ``feeds``, and its outputs."""
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return (lambda: session.run(None, feeds)), session.run(None, feeds)


def tvm_runner(executable, feeds: dict[str, np.ndarray], work: Path, tag: str) -> tuple[Callable, list]:
    """A call of a TVM executable (exported, loaded back like a package does), and its outputs."""
    path = work / f"{tag}.so"
    executable.export_library(str(path))
    engine = TVMEngine(path, list(feeds))
    return (lambda: engine.run(feeds)), engine.run(feeds)


def torch_runner(spec, feeds: dict[str, np.ndarray]) -> Callable:
    """A call of the architecture in PyTorch eager (inference mode, all cores)."""
    import torch

    from edgefab.factory.network import build_network

    torch.set_num_threads(os.cpu_count() or 1)
    network = build_network(spec).eval()
    (data,) = [torch.from_numpy(v) for v in feeds.values()]

    def call():
        with torch.inference_mode():
            return network(data)

    return call


def interleaved_medians(calls: dict[str, Callable]) -> dict[str, float]:
    """Median ms of each call, and each TVM call's median ratio to ONNX Runtime (``*_vs_ort``).

    The machine's speed drifts by up to 2x over seconds, and ONNX Runtime's threads lose more to a
    busy neighbour than TVM's. So the engines take turns in ``ROUNDS`` rounds a pause apart (spread
    over several seconds); a ratio is taken within each round, where both engines met the same
    phase, and its median over the rounds is the figure to quote.
    """
    rounds: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(ROUNDS):
        for name, call in calls.items():
            rounds[name].append(float(np.median(time_calls(call, warmup=2, runs=CALLS_PER_ROUND))))
        time.sleep(PAUSE_S)
    figures = {name: float(np.median(values)) for name, values in rounds.items()}
    for name in [n for n in calls if n.startswith("tvm_")]:
        ratios = np.array(rounds[name]) / np.array(rounds["onnxruntime_ms"])
        figures[name.replace("_ms", "_vs_ort")] = float(np.median(ratios))
    return figures


def tuned_in_fresh_database(mod, tvm_target: dict, trials: int, work: Path) -> tuple[object, dict]:
    """``mod`` tuned with ``trials`` into a new database under ``work``: its library and the report."""
    folder = work / f"db-{len(os.listdir(work))}"
    report = tuning.tune(tuning.extract_tasks(mod, tvm_target), folder, tuning.TuneOptions(trials=trials))
    return tuning.compile_tuned(mod, tvm_target, folder), report.to_dict()


def fill_space_database(
    space_name: str, trials: int | str, variants: dict, tvm_target: dict, folder: Path, layouts: tuple
) -> dict:
    """The space database in ``folder``: edgefab's shipped one seeded for the kernels of the
    ``variants`` (modules of one model), or the space's kernels tuned with ``trials`` in each of the
    ``layouts`` (None: none) as ``edgefab tune --space`` does; tuned once per space."""
    from edgefab.export.measure import measure_here, tuning_target
    from edgefab.export.shipped_tuning import seed_database, shipped_database
    from edgefab.pipeline.tune import space_tasks
    from edgefab.spaces import get_space

    started = time.perf_counter()
    if trials == "shipped":
        target = tuning_target(tvm_target)
        tasks = [task for mod in variants.values() for task in tuning.extract_tasks(mod, tvm_target)]
        measure = lambda c: measure_here(target, c)  # noqa: E731
        report = seed_database(tasks, folder, shipped_database("host"), target, measure)
        return {**report.to_dict(), "seconds": round(time.perf_counter() - started, 1), "shipped": True}
    if folder.is_dir():
        return {"reused": str(folder)}
    tasks = []
    for each in dict.fromkeys(layout for layout in layouts if layout):
        tasks += space_tasks(get_space(space_name), 10, tvm_target, SilentProgress(), each)
    return tuning.tune(tasks, folder, tuning.TuneOptions(trials=trials)).to_dict()


def in_layout(model: onnx.ModelProto, layout: str) -> tuple[object, str]:
    """The model's Relax module with its convolutions in ``layout`` where it applies (as ``edgefab
    compile`` builds it), and the layout it got."""
    from edgefab.pipeline.tune import blocked_or_plain

    mod = import_onnx(model)
    if block_of(layout) == 0:
        return mod, "NCHW"
    converted = blocked_or_plain(mod, block_of(layout))
    return converted, layout if converted is not mod else "NCHW"


def bench_case(
    case: Case, trials: int, space_trials: int | str, peak: float, work: Path, layout: str | None = None
) -> dict:
    """Every column of the table for one model."""
    import tvm

    host = load_target("host")
    tvm_target = resolve_tvm_target(host)
    calls: dict[str, Callable] = {}
    calls["onnxruntime_ms"], reference = ort_runner(case.model, case.feeds)
    row = {"model": case.name, "flops": 2 * model_stats(case.model)["macs"]}
    if case.spec is not None:
        calls["pytorch_ms"] = torch_runner(case.spec, case.feeds)
    mod = import_onnx(case.model)
    executable = tvm.compile(mod, tvm.target.Target(tvm_target))
    calls["tvm_untuned_ms"], out = tvm_runner(executable, case.feeds, work, f"{case.name}-u")
    diffs = {"untuned": graph.max_abs_diff(reference, out)}
    main, row["tuned_layout"] = in_layout(case.model, host.layout)
    blocked, row["blocked_layout"] = in_layout(case.model, layout) if layout else (None, None)
    row["tuning"] = row["blocked_tuning"] = None
    if trials:  # the model tuned into a fresh database, and again in the other layout
        tuned, row["tuning"] = tuned_in_fresh_database(main, tvm_target, trials, work)
        calls["tvm_tuned_ms"], out = tvm_runner(tuned, case.feeds, work, f"{case.name}-t")
        diffs["tuned"] = graph.max_abs_diff(reference, out)
    if trials and blocked is not None:
        compiled, row["blocked_tuning"] = tuned_in_fresh_database(blocked, tvm_target, trials, work)
        calls["tvm_blocked_ms"], out = tvm_runner(compiled, case.feeds, work, f"{case.name}-b")
        diffs["blocked"] = graph.max_abs_diff(reference, out)
    row["pytorch_ms"] = row["tvm_space_ms"] = row["space"] = None
    if case.space and space_trials:
        folder = work / f"space-{case.space}"
        variants = {"space": main}
        if blocked is not None:
            variants["space_blocked"] = blocked
        row["space_tuning"] = fill_space_database(
            case.space, space_trials, variants, tvm_target, folder, (host.layout, layout)
        )
        database = tuning.open_database(folder, create=False)
        for key, variant in variants.items():
            tasks = tuning.extract_tasks(variant, tvm_target)
            default = tuning.untuned_kernels(tasks, database)  # no record, or the default form won
            covered = sum(tuning.has_record(database, task) for task in tasks)
            row[key] = {
                "name": case.space,
                "kernels_covered": f"{covered} of {len(tasks)}",
                "kernels_on_tuned_schedules": len(tasks) - len(default),
                "model_trials": 0,
            }
            compiled = tuning.compile_tuned(variant, tvm_target, folder)
            calls[f"tvm_{key}_ms"], out = tvm_runner(compiled, case.feeds, work, f"{case.name}-{key}")
            diffs[key] = graph.max_abs_diff(reference, out)
    row.update(interleaved_medians(calls))
    row["max_abs_diff"] = diffs
    row["roofline_floor_ms"] = row["flops"] / (peak * 1e9) * 1e3
    return row


def digits_case(out: Path) -> Case:
    """The model of ``edgefab build --target host`` (the factory's choice) and its architecture."""
    from edgefab.arch import ArchSpec
    from edgefab.pipeline.build import BuildOptions, build

    path, manifest = build(BuildOptions(target="host", out=out))
    model = onnx.load(str(path / "model.onnx"))
    spec = ArchSpec.from_dict(manifest["build"]["architecture"])
    space = manifest["build"].get("space") or "digits-28"
    return Case(
        "digits (edgefab build --target host)", model, graph.random_inputs(model, seed=0), spec, space
    )


def mobilenet_case(work: Path) -> Case:
    """A MobileNetV2-style network at 224: every searchable layer of ``mnasnet-224`` a k3 e6 block,
    seeded, with batch norms like a trained network's (so its kernels are a trained model's)."""
    import torch

    from edgefab.export.onnx_export import export_onnx
    from edgefab.factory.network import build_network
    from edgefab.pipeline.tune import trained_like
    from edgefab.spaces import get_space

    space = get_space("mnasnet-224")
    spec = space.arch([slot.fixed or "k3_e6" for slot in space.slots], 1000)
    torch.manual_seed(0)
    network = trained_like(build_network(spec), 0)
    model = export_onnx(network, (1, *spec.input_shape), work / "mobilenet.onnx")
    return Case("MobileNetV2-style 224 (k3 e6)", model, graph.random_inputs(model, seed=0), spec, None)


def onnx_case(name: str, file: str, shapes: dict, values: dict) -> Case:
    """A shared third-party model with its shapes fixed (and constants bound) as ``edgefab compile`` does."""
    from edgefab.pipeline.compile import prepare_graph

    model, feeds, _ = prepare_graph(graph.load_onnx(MODELS / file), shapes, values)
    return Case(name, model, feeds)


def space_cell(row: dict, key: str) -> str:
    """'ms (kernels covered, ratio to ORT)' of the model compiled with the space database."""
    if not row.get(key):
        return "-"
    space, tuned = row[key], row[key].get("kernels_on_tuned_schedules", "?")
    return (f"{row[f'tvm_{key}_ms']:.3f} ({space['kernels_covered']} in db, {tuned} tuned; "
            f"{row[f'tvm_{key}_vs_ort']:.2f}x ORT)")  # fmt: skip


def table(rows: list[dict], peak: float) -> str:
    """The markdown table of the results."""
    lines = [
        f"Peak measured here (numpy float32 matmul, all cores): {peak:.1f} GFLOP/s; "
        f"TVM kernels run (and are tuned) on {tvm_thread_count()} threads",
        "",
        "| model | PyTorch eager ms | ONNX Runtime ms | TVM untuned ms | TVM tuned ms | tuned / ORT "
        "| tuning (kernels, trials, wall time) | TVM space db ms (kernels covered) | roofline floor ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        t = r["tuning"]
        cells = [
            r["model"],
            f"{r['pytorch_ms']:.3f}" if r["pytorch_ms"] is not None else "-",
            f"{r['onnxruntime_ms']:.3f}",
            f"{r['tvm_untuned_ms']:.3f}",
            f"{r['tvm_tuned_ms']:.3f}" if t else "-",
            f"{r['tvm_tuned_vs_ort']:.2f}x" if t else "-",
            f"{t['tasks']} kernels, {t['new_trials']} trials, {t['seconds']:.0f} s ({t['cost_model']}), "
            f"{r['tuned_layout']}"
            if t
            else "not tuned per model (--trials 0)",
            space_cell(r, "space"),
            f"{r['roofline_floor_ms']:.4f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    for r in rows:
        t = r["blocked_tuning"]
        if t:
            lines.append(f"\n{r['model']}, tuned with the convolutions in {r['blocked_layout']}: "
                         f"{r['tvm_blocked_ms']:.3f} ms, {r['tvm_blocked_vs_ort']:.2f}x ORT "
                         f"({t['tasks']} kernels, {t['new_trials']} trials, "
                         f"{t['seconds']:.0f} s).")  # fmt: skip
        if r.get("space_blocked"):
            lines.append(f"\n{r['model']}, convolutions in {r['blocked_layout']}, with the space "
                         f"database: {space_cell(r, 'space_blocked')}.")  # fmt: skip
    for r in rows:
        t = r.get("space_tuning")
        if t and t.get("shipped"):
            how = f"{t['kernels_copied']} kernels copied" if t["kernels_copied"] else (
                f"{t['kernels_remeasured']} kernels re-measured here")  # fmt: skip
            lines.append(f"\nSpace database for {r['space']['name']}: edgefab's shipped one (measured on "
                         f"{t['measured_on']}), {how} in {t['seconds']:.1f} s.")  # fmt: skip
        elif t and "tasks" in t:
            lines.append(f"\nSpace database for {r['space']['name']}: {t['tasks']} kernels, "
                         f"{t['new_trials']} trials, {t['seconds']:.0f} s, paid once.")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    """Build/load the models, time every engine, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=64,
                        help="trials per model for 'TVM tuned' (0: no per-model tuning)")  # fmt: skip
    parser.add_argument("--trials-space", default="128",
                        help="trials for the space database, or 'shipped' for edgefab's own")  # fmt: skip
    parser.add_argument("--skip", action="append", default=[],
                        help="skip models: digits, ppocr, silero or MobileNetV2 (a prefix)")  # fmt: skip
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument("--layout", default=None, help="also build in this layout (NCHW, NCHW8c, ...; "
                        "the target's is the main one): tuned into another fresh database with the same "
                        "trials, and with the space database")  # fmt: skip
    parser.add_argument("--keep", type=Path, default=None,
                        help="work in this folder and keep it (tuning databases, libraries)")  # fmt: skip
    args = parser.parse_args()
    peak = peak_gflops()
    rows = []
    with contextlib.ExitStack() as stack:
        work = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edgefab-bench-")))
        work.mkdir(parents=True, exist_ok=True)
        makers = {
            "digits": lambda: digits_case(work / "build"),
            "ppocr": lambda: onnx_case("ppocr_mobile_v2_cls 1x3x48x192", "ppocr_mobile_v2_cls.onnx",
                                       {"x": [1, 3, 48, 192]}, {}),
            "silero": lambda: onnx_case("silero_vad_16k_op15 1x512", "silero_vad_16k_op15.onnx",
                                        {"input": [1, 512], "state": [2, 1, 128]}, {"sr": np.array(16000)}),
            "MobileNetV2": lambda: mobilenet_case(work),
        }  # fmt: skip
        for key, make in makers.items():
            if any(key.startswith(prefix) for prefix in args.skip):
                continue  # before making the case: the digits case runs a whole build
            case = make()
            started = time.perf_counter()
            space = args.trials_space if args.trials_space == "shipped" else int(args.trials_space)
            rows.append(bench_case(case, args.trials, space, peak, work, args.layout))
            print(f"{case.name}: {time.perf_counter() - started:.0f} s", flush=True)
            if args.json_out:  # after every model, so a run that dies can still be read
                figures = {"peak_gflops": peak, "tvm_threads": tvm_thread_count(), "rows": rows}
                args.json_out.write_text(json.dumps(figures, indent=2) + "\n")
    print(table(rows, peak))


if __name__ == "__main__":
    main()

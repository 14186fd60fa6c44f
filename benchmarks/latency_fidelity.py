"""How well edgefab's latency models predict real latencies (issue 3's figures).

* host: profile the Single-Path NAS space at 224x224 (or ``--space digits-28``, the space host
  builds search) with ONNX Runtime (1 and 2 threads), then
  predict N random architectures of the space and measure each one, exported from PyTorch by the
  factory (not the graphs the profiler built), with ONNX Runtime. Also measures each network twice
  to show the measurement's own repeatability on this (shared) machine. With ``--reference``, also
  each network timed right after a reference network (the space's base), its time scaled by the
  reference's prediction over the reference's time: the machine's drifting speed divides out, and
  what is left is how well the model predicts latencies relative to one another.
* pixel: leave-one-out on the five published MobileNetV2 Pixel 1 latencies (the per-op model is
  refitted without the held-out network), with and without the MobileNetV2 calibration.
* note10: leave-one-resolution-out on the Once-for-All Note10 LUT (per-op model fitted on four
  resolutions, predicting every block of the fifth).

    python benchmarks/latency_fidelity.py [--networks 50] [--threads 1 2] [--skip-host] [--space S]
        [--reference] [--export-workers N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np


def shares(predicted, measured) -> dict:
    """nn-Meter's figures: RMSE (ms and relative) and the shares within 5/10/15 %."""
    p, m = np.asarray(predicted, float), np.asarray(measured, float)
    rel = p / m - 1
    return {
        "n": len(m),
        "rmse_ms": float(np.sqrt(np.mean((p - m) ** 2))),
        "rmse_percent": float(100 * np.sqrt(np.mean(rel**2))),
        **{f"within_{k}": float(np.mean(np.abs(rel) <= k / 100)) for k in (5, 10, 15)},
    }


def row(name: str, s: dict) -> str:
    within = " | ".join(f"{100 * s[f'within_{k}']:.0f} %" for k in (5, 10, 15))
    return f"| {name} | {s['n']} | {s['rmse_ms']:.3f} | {s['rmse_percent']:.1f} % | {within} |"


HEADER = (
    "| case | n | RMSE (ms) | RMSE (rel.) | +-5 % | +-10 % | +-15 % |\n"
    "| --- | --- | --- | --- | --- | --- | --- |"
)


def space_and_samples(space: str, networks: int, seed: int):
    """The profiled base architecture and ``networks`` random members of ``space``."""
    from edgefab.spaces import get_space
    from edgefab.targets.measured import random_spec
    from edgefab.targets.published import spnas_spec

    rng = np.random.default_rng(seed)
    if space == "spnas-224":
        base = spnas_spec()
        return base, [random_spec(base, rng) for _ in range(networks)]
    found = get_space(space)
    base = found.arch(found.largest(), 10)
    return base, [found.arch(found.sample(rng), 10) for _ in range(networks)]


def host(
    networks: int,
    threads_list: list[int],
    seed: int,
    space: str = "spnas-224",
    reference: bool = False,
    export_workers: int = 1,
) -> dict:
    """Profile, then predicted vs measured for random architectures, per thread count."""
    from edgefab.targets import load_target
    from edgefab.targets.latency import latency_model
    from edgefab.targets.measured import PROFILE_SECONDS, measure_rounds, model_timer
    from edgefab.targets.profiling import profile

    target = load_target("host")
    base, specs = space_and_samples(space, networks, seed)
    folder = Path(tempfile.gettempdir()) / f"edgefab-fidelity-{space}-{seed}"  # exports kept for reruns
    folder.mkdir(exist_ok=True)
    start = time.time()
    paths = [folder / f"n{i}.onnx" for i in range(len(specs))]
    if export_workers > 1:  # exporting is most of a run at 224; the files are then found cached
        with ProcessPoolExecutor(export_workers, mp_context=get_context("spawn")) as pool:
            list(pool.map(_export_only, specs, paths))
    models = [_exported(spec, path) for spec, path in zip(specs, paths, strict=True)]
    print(f"exported {networks} networks from PyTorch in {time.time() - start:.0f} s", file=sys.stderr)
    results = {}
    for threads in threads_list:
        start = time.time()
        table, _ = profile(target, base, threads=threads, min_seconds=PROFILE_SECONDS)
        model = latency_model(target, threads=threads)
        predicted = [model.total_ms(s) for s in specs]
        timers = [model_timer(m, threads) for m in models]
        # every network in each round (load spreads over all), each pass as long as profile's window
        first = measure_rounds(timers, 5, PROFILE_SECONDS)
        second = measure_rounds(timers, 5, PROFILE_SECONDS)
        results[f"{threads} thread(s)"] = {
            "prediction": shares(predicted, first),
            "repeat_measurement": shares(second, first),
            "overhead": table.overhead,
            "layers_profiled": len(table.layers),
            "mean_measured_ms": float(np.mean(first)),
            "seconds": round(time.time() - start),
            # per network, to tell a systematic miss (the model) from scatter (the timing)
            "networks": [
                {"predicted_ms": p, "measured_ms": m, "again_ms": a}
                for p, m, a in zip(predicted, first, second, strict=True)
            ],
        }
        if reference:
            scale = model.total_ms(base)
            reference_timer = model_timer(_exported(base, folder / "base.onnx"), threads)
            first = [scale * r for r in beside_reference(timers, reference_timer, 5)]
            second = [scale * r for r in beside_reference(timers, reference_timer, 5)]
            results[f"{threads} thread(s)"].update(
                prediction_scaled=shares(predicted, first), repeat_scaled=shares(second, first)
            )
        print(f"host, {threads} thread(s): done in {time.time() - start:.0f} s", file=sys.stderr)
    return results


def beside_reference(timers, reference, rounds: int) -> list[float]:
    """Each timer's time over the reference's, both timed back to back (the fastest of a round's
    calls), the median over ``rounds`` rounds."""
    ratios: list[list[float]] = [[] for _ in timers]
    for _ in range(rounds):
        for index, timer in enumerate(timers):
            base = min(reference())
            ratios[index].append(min(timer()) / base)
    return [float(np.median(r)) for r in ratios]


def _exported(spec, path: Path):
    """The network of ``spec`` as ONNX, exported once (the same spec and seed give the same file)."""
    import onnx

    from edgefab.export.onnx_export import export_onnx
    from edgefab.factory.network import build_network

    meta, described = path.with_suffix(".json"), json.dumps(spec.to_dict())
    if path.is_file() and meta.is_file() and meta.read_text() == described:
        return onnx.load(str(path))
    model = export_onnx(build_network(spec), (1, *spec.input_shape), path)
    meta.write_text(described)
    return model


def _export_only(spec, path: Path) -> None:
    """``_exported`` in a worker process: one torch thread, so that workers do not crowd each other."""
    import torch

    torch.set_num_threads(1)
    _exported(spec, path)


def pixel() -> dict:
    """Leave-one-out on the published MobileNetV2 Pixel 1 latencies."""
    from edgefab.targets.latency import latency_model
    from edgefab.targets.opmodel import OpModel
    from edgefab.targets.published import MOBILENET_V2_PIXEL1, mobilenet_v2_spec, pixel_fit_rows, pixel_tables

    rows, loo, table_only = [], [], []
    table_fit = OpModel.fit(*[part[: -len(MOBILENET_V2_PIXEL1)] for part in pixel_fit_rows()])
    for width, published in MOBILENET_V2_PIXEL1.items():
        table, positional, fitted = pixel_tables(exclude=[width])
        model = latency_model("pixel").with_parts(table=table, positional=positional, fallback=fitted)
        predicted = model.total_ms(mobilenet_v2_spec(width))
        table_only_model = latency_model("pixel").with_parts(fallback=table_fit)
        uncalibrated = table_only_model.total_ms(mobilenet_v2_spec(width))
        loo.append(predicted)
        table_only.append(uncalibrated)
        rows.append(
            {"width": width, "published_ms": published, "loo_ms": predicted, "table_only_ms": uncalibrated}
        )
    measured = list(MOBILENET_V2_PIXEL1.values())
    return {"networks": rows, "loo": shares(loo, measured), "table_only": shares(table_only, measured)}


def note10() -> dict:
    """Leave-one-resolution-out on the Note10 LUT: the per-op model against blocks it never saw."""
    from importlib import resources

    from edgefab.targets.published import _layer_from_ofa, _parse_ofa_yaml, note10_fit

    folder = resources.files("edgefab.targets").joinpath("tables", "note10_ofa_lut")
    results = {}
    for resolution in (160, 176, 192, 208, 224):
        held = _parse_ofa_yaml(folder.joinpath(f"note10_{resolution}.yaml").read_text())
        fit = note10_fit(exclude=list(held))
        results[resolution] = shares([fit.layer_ms(_layer_from_ofa(k)) for k in held], list(held.values()))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", type=int, default=50)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-host", action="store_true")
    parser.add_argument("--space", default="spnas-224", help="spnas-224 (the paper's) or digits-28, ...")
    parser.add_argument("--reference", action="store_true", help="also time beside a reference network")
    parser.add_argument("--export-workers", type=int, default=1, help="processes exporting the networks")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report = {"pixel": pixel(), "note10": note10()}
    if not args.skip_host:
        report["host"] = host(
            args.networks, args.threads, args.seed, args.space, args.reference, args.export_workers
        )
    print(HEADER)
    for name, result in report.get("host", {}).items():
        print(row(f"host, ONNX Runtime, {name}: predicted vs measured", result["prediction"]))
        print(row(f"host, ONNX Runtime, {name}: measured vs measured again", result["repeat_measurement"]))
        if "prediction_scaled" in result:
            print(
                row(f"host, {name}: predicted vs measured beside the reference", result["prediction_scaled"])
            )
            print(row(f"host, {name}: beside the reference, again", result["repeat_scaled"]))
    print(row("pixel, MobileNetV2 leave-one-out", report["pixel"]["loo"]))
    print(row("pixel, MobileNetV2, table-only fit", report["pixel"]["table_only"]))
    for resolution, result in report["note10"].items():
        print(row(f"note10 LUT, held-out resolution {resolution}", result))
    print("\n| MobileNetV2 | published (ms) | leave-one-out (ms) | error | table-only fit (ms) | error |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in report["pixel"]["networks"]:
        loo, only = (100 * (r[k] / r["published_ms"] - 1) for k in ("loo_ms", "table_only_ms"))
        print(f"| {r['width']} | {r['published_ms']} | {r['loo_ms']:.1f} | {loo:+.1f} % "
              f"| {r['table_only_ms']:.1f} | {only:+.1f} % |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()

"""fp32 / int8 / w4 GPTQ / w4 round-to-nearest side by side: accuracy or agreement, bytes, host latency,
and the output error of GPTQ vs round-to-nearest.

Run: nice -n 10 python benchmarks/weight_only.py [--digits-model PATH]. Models and data as in
benchmarks/quantization.py (the factory's digits model; ppocr_mobile_v2_cls at [1, 3, 48, 192] on
"digit strips"). int8: edgefab's automatic static QDQ; w4: uint4 weights, group size 128, GPTQ
(damp 0.01, block 128, no act-order) on 128 calibration samples, or round-to-nearest on the same
grid. Output error: relative RMS of the model output vs fp32 on the evaluation samples. Latency:
ONNX Runtime, batch 1, median of 7 interleaved rounds of 50; w4 with the weights dequantized once
at load (session.disable_quant_qdq, as edgefab packages run it), and in brackets ORT's default
session, which runs DequantizeLinear on every call.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).parent))
from quantization import SHARED, digit_strips, digits_model  # noqa: E402

from edgefab.compress.evaluate import agreement, first_outputs  # noqa: E402
from edgefab.compress.int8 import quantize_int8  # noqa: E402
from edgefab.compress.weight_only import WeightOnlyOptions, quantize_weights  # noqa: E402
from edgefab.data import load_dataset, normalization, to_float, train_val_split  # noqa: E402
from edgefab.export import graph  # noqa: E402
from edgefab.pipeline.weight_only import _session  # noqa: E402
from edgefab.targets.latency import time_calls  # noqa: E402


def latencies(paths: dict[str, tuple[Path, bool]], feeds: dict, rounds: int = 7) -> dict[str, float]:
    """Median ms per (model, fold) entry, rounds interleaved."""
    sessions = {name: _session(path, fold) for name, (path, fold) in paths.items()}
    samples: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, sess in sessions.items():
            samples[name].append(statistics.median(time_calls(lambda s=sess: s.run(None, feeds), 10, 50)))
    return {name: statistics.median(values) for name, values in samples.items()}


def compare(name: str, fp32: Path, calib: list[dict], feeds: list[dict], labels, work: Path) -> list[dict]:
    """Rows for one model: fp32, int8, w4 GPTQ, w4 RTN."""
    stem = work / name
    int8 = quantize_int8(fp32, Path(f"{stem}_int8.onnx"), calib).path
    gptq = quantize_weights(fp32, calib, WeightOnlyOptions(), Path(f"{stem}_w4_gptq.onnx")).path
    rtn = quantize_weights(fp32, [], WeightOnlyOptions(method="rtn"), Path(f"{stem}_w4_rtn.onnx")).path
    models = {"fp32": fp32, "int8": int8, "w4 GPTQ": gptq, "w4 RTN": rtn}
    timed = {k: (p, k.startswith("w4")) for k, p in models.items()}
    timed.update({f"{k} (DQ every call)": (p, False) for k, p in models.items() if k.startswith("w4")})
    ms = latencies(timed, feeds[0])
    ref = first_outputs(_session(fp32), feeds)
    rows = []
    for kind, path in models.items():
        out = first_outputs(_session(path, kind.startswith("w4")), feeds)
        agreed = agreement(ref, out)
        acc = (out.reshape(len(feeds), -1).argmax(-1) == labels).mean()
        latency = f"{ms[kind]:.4f}" + (
            f" ({ms[kind + ' (DQ every call)']:.4f})" if kind.startswith("w4") else ""
        )
        rows.append(
            {
                "model": name,
                "weights": kind,
                "accuracy": f"{100 * acc:.2f} %",
                "top-1 agreement with fp32": f"{100 * agreed.share:.2f} %",
                "output error vs fp32": "-" if kind == "fp32" else f"{100 * agreed.relative_rms:.2f} %",
                "bytes": f"{path.stat().st_size:,} (x{path.stat().st_size / fp32.stat().st_size:.3f})",
                "ms": latency,
            }
        )
    return rows


def main() -> None:
    """Print the comparison as a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digits-model", type=Path, default=None)
    args = parser.parse_args()
    train, val = train_val_split(load_dataset("mnist"))
    prep = normalization(train)
    with tempfile.TemporaryDirectory(prefix="edgefab-bench-") as folder:
        work = Path(folder)
        digits_calib = [{"input": x[None]} for x in to_float(train.images[:128], prep)]
        digits_eval = [{"input": x[None]} for x in to_float(val.images, prep)]
        model = digits_model(args.digits_model, work)
        rows = compare("digits", model, digits_calib, digits_eval, val.labels, work)
        original = graph.load_onnx(SHARED / "models" / "ppocr_mobile_v2_cls.onnx")
        ppocr = work / "ppocr_fp32.onnx"
        onnx.save(graph.simplify(graph.fix_input_shapes(original, {"x": [1, 3, 48, 192]})), str(ppocr))
        calib, _ = digit_strips(128, seed=1)
        inputs, labels = digit_strips(400, seed=2)
        feeds = [{"x": x[None]} for x in inputs]
        rows += compare("ppocr_mobile_v2_cls", ppocr, [{"x": x[None]} for x in calib], feeds, labels, work)
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + " --- |" * len(columns))
    for r in rows:
        print("| " + " | ".join(r[c] for c in columns) + " |")


if __name__ == "__main__":
    main()

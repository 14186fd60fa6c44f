"""fp32 vs int8 (ONNX Runtime static QDQ) side by side: accuracy or agreement, bytes, host latency.

Run: python benchmarks/quantization.py [--digits-model PATH]. Models: the factory's digits model
(``edgefab build --target host``'s ``model.onnx``; built into a temporary folder when not given)
and ../shared/models/ppocr_mobile_v2_cls.onnx at [1, 3, 48, 192]. ppocr has no labelled data here,
so it is calibrated and checked on "digit strips": six embedded digits, dark on white, as a
48x192 text line, half of them turned 180 degrees (the orientation the classifier predicts), plus
seeded standard-normal inputs. Quantization settings are edgefab's automatic ones for this CPU.
Latency: ONNX Runtime, batch 1, all cores, median of 7 interleaved rounds of 50 runs.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
import onnx

from edgefab.compress.calibration import Feeds
from edgefab.compress.evaluate import agreement, first_outputs, session
from edgefab.compress.int8 import Int8Options, quantize_int8
from edgefab.data import load_dataset, normalization, to_float, train_val_split
from edgefab.export import graph
from edgefab.targets.latency import time_calls

SPEC = {"name": "x", "shape": [1, 3, 48, 192], "dtype": "float32"}
SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def latency_ms(paths: dict[str, Path], feeds: Feeds, rounds: int = 7) -> dict[str, float]:
    """Median ms per model, rounds interleaved so machine load hits both alike."""
    sessions = {name: session(path) for name, path in paths.items()}
    samples: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, sess in sessions.items():
            samples[name].append(statistics.median(time_calls(lambda s=sess: s.run(None, feeds), 10, 50)))
    return {name: statistics.median(values) for name, values in samples.items()}


def digit_strips(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3, 48, 192) ppocr inputs, normalised as PaddleOCR does, and labels (1 = turned 180)."""
    rng = np.random.default_rng(seed)
    digits = load_dataset("mnist").images[:, 0]
    inputs = np.empty((count, 3, 48, 192), np.float32)
    labels = rng.integers(0, 2, count)
    for k in range(count):
        canvas = np.full((48, 192), 255, np.uint8)
        for j in range(6):
            canvas[10:38, 6 + 30 * j : 34 + 30 * j] = 255 - digits[rng.integers(len(digits))]
        if labels[k]:
            canvas = canvas[::-1, ::-1]
        inputs[k] = ((canvas.astype(np.float32) / 255 - 0.5) / 0.5)[None]
    return inputs, labels


def _accuracy_text(fp32: float, int8: float) -> str:
    return f"{100 * fp32:.2f} -> {100 * int8:.2f} % ({100 * (int8 - fp32):+.2f})"


def row(name: str, fp32: Path, int8: Path, checks: dict[str, str], feeds: Feeds) -> dict[str, str]:
    """One table row."""
    times = latency_ms({"fp32": fp32, "int8": int8}, feeds)
    size32, size8 = fp32.stat().st_size, int8.stat().st_size
    fp32_ms, int8_ms = times["fp32"], times["int8"]
    return {
        "model": name,
        **checks,
        "bytes fp32 -> int8": f"{size32:,} -> {size8:,} (x{size8 / size32:.3f})",
        "ms fp32 -> int8": f"{fp32_ms:.4f} -> {int8_ms:.4f} (x{int8_ms / fp32_ms:.2f})",
    }


def digits_row(model: Path, work: Path) -> dict[str, str]:
    """The factory's digits model: validation accuracy before and after."""
    train, val = train_val_split(load_dataset("mnist"))
    prep = normalization(train)
    calibration = [{"input": x[None]} for x in to_float(train.images[:128], prep)]
    result = quantize_int8(model, work / "digits_int8.onnx", calibration, Int8Options())
    inputs = to_float(val.images, prep)
    feeds = [{"input": x[None]} for x in inputs]
    fp32 = first_outputs(session(model), feeds)[:, 0]
    int8 = first_outputs(session(result.path), feeds)[:, 0]
    acc32, acc8 = (fp32.argmax(1) == val.labels).mean(), (int8.argmax(1) == val.labels).mean()
    checks = {
        "accuracy fp32 -> int8": _accuracy_text(acc32, acc8),
        "agreement": f"{100 * agreement(fp32, int8).share:.2f} % top-1 ({len(feeds)} validation digits)",
        "types": f"{result.types.activation_type}/{result.types.weight_type}",
    }
    params = sum(int(np.prod(t.dims)) for t in onnx.load(str(model)).graph.initializer if len(t.dims) > 1)
    checks["per-channel weights"] = f"{len(result.per_channel_weights)} of {len(result.quantized_nodes)}"
    return row(f"digits (factory, {params / 1000:.0f} k weights)", model, result.path, checks, feeds[0])


def ppocr_row(work: Path) -> dict[str, str]:
    """ppocr text-orientation classifier: accuracy on digit strips, agreement on strips and noise."""
    original = graph.load_onnx(SHARED / "models" / "ppocr_mobile_v2_cls.onnx")
    fp32_path = work / "ppocr_fp32.onnx"
    onnx.save(graph.simplify(graph.fix_input_shapes(original, {"x": [1, 3, 48, 192]})), str(fp32_path))
    calib_inputs, _ = digit_strips(128, seed=1)
    result = quantize_int8(fp32_path, work / "ppocr_int8.onnx", [{"x": x[None]} for x in calib_inputs])
    inputs, labels = digit_strips(400, seed=2)
    feeds = [{"x": x[None]} for x in inputs]
    fp32 = first_outputs(session(fp32_path), feeds)[:, 0]
    int8 = first_outputs(session(result.path), feeds)[:, 0]
    noise = [{"x": graph.random_inputs([SPEC], seed=i)["x"]} for i in range(100)]
    noise_fp32 = first_outputs(session(fp32_path), noise)
    noise_agree = agreement(noise_fp32, first_outputs(session(result.path), noise))
    acc32, acc8 = (fp32.argmax(-1) == labels).mean(), (int8.argmax(-1) == labels).mean()
    checks = {
        "accuracy fp32 -> int8": _accuracy_text(acc32, acc8) + " on strips",
        "agreement": f"{100 * agreement(fp32, int8).share:.2f} % top-1 on 400 strips, "
        f"{100 * noise_agree.share:.0f} % on 100 noise inputs (max |dp| {noise_agree.max_abs_diff:.3f})",
        "types": f"{result.types.activation_type}/{result.types.weight_type}",
    }
    checks["per-channel weights"] = f"{len(result.per_channel_weights)} of {len(result.quantized_nodes)}"
    return row("ppocr_mobile_v2_cls", fp32_path, result.path, checks, feeds[0])


def digits_model(given: Path | None, work: Path) -> Path:
    """The digits model: the one given, else a fresh `edgefab build --target host`."""
    if given:
        return given
    from edgefab.pipeline.build import BuildOptions, build

    path, _ = build(BuildOptions(target="host", out=work / "build"))
    return path / "model.onnx"


def main() -> None:
    """Print the comparison as a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digits-model", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgefab-bench-") as folder:
        work = Path(folder)
        rows = [digits_row(digits_model(args.digits_model, work), work), ppocr_row(work)]
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + " --- |" * len(columns))
    for r in rows:
        print("| " + " | ".join(r[c] for c in columns) + " |")


if __name__ == "__main__":
    main()

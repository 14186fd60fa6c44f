"""ANN vs IIR-SNN on the embedded digits: accuracy per T, spike rates, energy, host latency.

Run: nice -n 10 python benchmarks/snn.py [--epochs-per-stage 1] [--last-stage-epochs 3] [--threads 1]
[--json snn.json]. Training uses ``--threads`` torch threads (1: on a shared 2-core machine, two
threads wait on each other whenever one is descheduled, several times slower).

ANN: the simple MBConv family as ``edgefab build --factory none`` trains it (4 epochs, seed 0, the
fixed 80/20 split). SNN: ``edgefab.compress.snn_train.convert_and_train`` with the build's defaults
unless overridden. Accuracy of the shipped forms is measured on the exported ONNX graphs in ONNX
Runtime over the whole validation split; latency: ONNX Runtime, batch 1, all cores, median of
interleaved rounds.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgefab.compress.snn_train import SnnOptions, convert_and_train
from edgefab.data import load_dataset, normalization, to_float, train_val_split
from edgefab.export.onnx_export import export_onnx
from edgefab.factory.presets import simple_classifier
from edgefab.factory.train import TrainConfig, train_classifier
from edgefab.pipeline.build import onnx_accuracy
from edgefab.pipeline.snn import host_latency, onnx_agreement


def _row(cells: list) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def tables(result, onnx: dict, latency: dict) -> str:
    """The markdown tables for BENCHMARKS.md."""
    lines = [
        _row(["network", "accuracy (PyTorch)", "accuracy (ONNX, ORT)", "before its stage", "mean spike rate",
              "ANN/SNN energy fp32 dense", "fp32 event", "int8 dense", "int8 event", "stage time"]),
        _row(["---"] * 10),
        _row(["ANN", f"{100 * result.ann_accuracy:.2f} %", f"{100 * onnx['ann']:.2f} %", "-", "-", "1", "1",
              "1", "1", "-"]),
    ]  # fmt: skip
    for stage in result.stages:
        energy, data = stage.energy, stage.to_dict()
        shipped = f"{100 * onnx['snn']:.2f} %" if stage is result.stages[-1] else "-"
        lines.append(
            _row(
                [
                    f"SNN T={stage.timesteps}",
                    f"{100 * stage.accuracy:.2f} %",
                    shipped,
                    f"{100 * stage.start_accuracy:.2f} %",
                    f"{data['mean_spike_rate']:.4f}",
                    f"{energy['ratio_dense']:.2f}x",
                    f"{energy['ratio_event_driven']:.2f}x",
                    f"{energy['int8']['ratio_dense']:.2f}x",
                    f"{energy['int8']['ratio_event_driven']:.2f}x",
                    f"{stage.seconds:.0f} s",
                ]
            )  # fmt: skip
        )
    lines += ["", _row(["LIF layer", *(f"T={s.timesteps}" for s in result.stages)])]
    lines.append(_row(["---"] * (1 + len(result.stages))))
    for layer in result.stages[0].spike_rates:
        lines.append(_row([layer, *(f"{s.spike_rates[layer]:.4f}" for s in result.stages)]))
    lines += [
        "",
        f"Host latency (ONNX Runtime, batch 1): ANN {latency['ann_ms']:.4f} ms, "
        f"SNN T={result.stages[-1].timesteps} {latency['snn_ms']:.4f} ms "
        f"(x{latency['snn_ms'] / latency['ann_ms']:.2f}); {latency['method']}.",
    ]
    return "\n".join(lines)


def main() -> None:
    """Train (or load) the ANN, convert and train the SNN, measure, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = SnnOptions()
    parser.add_argument("--epochs-per-stage", type=int, default=defaults.epochs_per_stage)
    parser.add_argument("--last-stage-epochs", type=int, default=defaults.last_stage_epochs)
    parser.add_argument("--timesteps", default="5,3,2,1")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved latency rounds")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of the SNN's training")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    train, val = train_val_split(load_dataset("mnist"))
    prep = normalization(train)
    spec = simple_classifier(train.input_shape, train.num_classes)
    ann = train_classifier(spec, train, prep, TrainConfig(epochs=4, seed=0)).model
    options = SnnOptions(
        timesteps=tuple(int(t) for t in args.timesteps.split(",")),
        epochs_per_stage=args.epochs_per_stage,
        last_stage_epochs=args.last_stage_epochs,
        seed=args.seed,
    )
    start = time.perf_counter()
    result = convert_and_train(ann, train, val, prep, options, stage=lambda text: print(text, flush=True))
    print(f"SNN training: {time.perf_counter() - start:.0f} s", flush=True)
    with tempfile.TemporaryDirectory(prefix="edgefab-snn-bench-") as folder:
        paths = {"ann": Path(folder) / "ann.onnx", "snn": Path(folder) / "snn.onnx"}
        export_onnx(ann, (1, *spec.input_shape), paths["ann"])
        export_onnx(result.network, (1, *spec.input_shape), paths["snn"])
        onnx = {name: onnx_accuracy(path, val, prep) for name, path in paths.items()}
        samples = to_float(val.images[:64], prep)
        parity = onnx_agreement(result.network, paths["snn"], samples)
        latency = host_latency(paths, samples[:1], rounds=args.rounds)
    print(tables(result, onnx, latency))
    print(f"parity (64 samples): {parity}")
    if args.json:
        figures = {**result.to_dict(), "onnx_accuracy": onnx, "host_latency": latency, "parity": parity}
        args.json.write_text(json.dumps(figures, indent=2, default=float) + "\n")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()

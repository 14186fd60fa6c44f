"""Random shifts for `edgefab build`'s simple family (the fallback where no factory fits): with and
without, side by side, same seeds, judged on digits no training saw.

Each (width, epochs, seed) trains the simple family's member twice with build's recipe
(``TrainConfig``), once without shifts and once with ``--shift``, on the shipped factory's training
split, and scores both on its held-out validation images (plus ``--judge-extra`` digits). Prints a
row per (width, epochs): the means, and each seed's difference.

    python benchmarks/fallback_shift.py [--widths 0.5,1.0] [--epochs 4,12] [--seeds 3] [--shift 2]
                                        [--judge-extra extra_digits.npz]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from factory import judging_split, task_val_accuracy, with_extra  # noqa: E402

from edgefab.data import load_dataset  # noqa: E402
from edgefab.data.tasks import parse_task  # noqa: E402
from edgefab.factory.network import build_network  # noqa: E402
from edgefab.factory.presets import simple_classifier  # noqa: E402
from edgefab.factory.store import SHIPPED, load_factory  # noqa: E402
from edgefab.factory.train import TrainConfig, fit  # noqa: E402
from edgefab.pipeline.factory_build import factory_split  # noqa: E402


def trained_accuracy(width: float, config: TrainConfig, train, judge, task, prep) -> float:
    """Accuracy (%) on ``judge`` of the width-scaled simple classifier trained with ``config``."""
    torch.manual_seed(config.seed)
    model = build_network(simple_classifier(train.input_shape, train.num_classes).scaled(width))
    fit(model, train, prep, config)
    return 100 * task_val_accuracy(model, judge, task, prep)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", default="0.5,1.0")
    parser.add_argument("--epochs", default="4,12")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--shift", type=int, default=2)
    parser.add_argument("--judge-extra", type=Path, default=None)
    args = parser.parse_args()
    factory, data = load_factory(SHIPPED), load_dataset("mnist")
    train, val = factory_split(factory, data)
    _, _, judge = judging_split(factory, train, val, "held-out")
    if args.judge_extra:
        judge = with_extra(judge, load_dataset(str(args.judge_extra)))
    task = parse_task("all", data.classes)
    print(f"judged on {len(judge)} images; shift {args.shift}\n")
    print("| width | epochs | no shift, mean % | shift, mean % | difference | per seed |")
    print("|---|---|---|---|---|---|")
    for epochs in map(int, args.epochs.split(",")):
        for width in map(float, args.widths.split(",")):
            pairs = []
            for seed in range(args.seeds):
                plain, shifted = (
                    trained_accuracy(width, TrainConfig(epochs=epochs, shift=shift, seed=seed), train, judge,
                                     task, factory.prep)
                    for shift in (0, args.shift)
                )  # fmt: skip
                pairs.append((plain, shifted))
            plain_mean = statistics.mean(p for p, _ in pairs)
            shifted_mean = statistics.mean(s for _, s in pairs)
            each = ", ".join(f"{s - p:+.2f}" for p, s in pairs)
            print(f"| {width:g} | {epochs} | {plain_mean:.2f} | {shifted_mean:.2f} | "
                  f"{shifted_mean - plain_mean:+.2f} | {each} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()

"""The factory's optional short fine-tune (`edgefab build --finetune-epochs N --shift S`): the pick
with and without it, side by side, same seeds, judged on digits no method selected on.

For each budget and customisation seed the factory customises once without a fine-tune and once per
``--epochs`` value with one (``CustomizeOptions.finetune_epochs``, ``finetune_shift``): the same seed
draws the same candidates, so each fine-tune starts from the same pick, which the table checks. Budgets
are those of ``benchmarks/factory.py`` (30, 60 and 90 % of the way from the smallest to the largest
sub-network on `host`'s table, in log space) unless ``--budget-ms`` names others.

    python benchmarks/factory_finetune.py [--task all] [--budget-ms 0.046,0.083] [--epochs 2,4]
                                          [--shift 2] [--seeds 3] [--judge-extra extra_digits.npz]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from factory import RELATIVE_BUDGETS, judging_split, load_extra, task_val_accuracy, with_extra  # noqa: E402

from edgefab.data import load_dataset  # noqa: E402
from edgefab.data.tasks import parse_task  # noqa: E402
from edgefab.errors import EdgefabError  # noqa: E402
from edgefab.factory.customize import CustomizeOptions, customize, latency_range  # noqa: E402
from edgefab.factory.store import SHIPPED, load_factory  # noqa: E402
from edgefab.pipeline.common import SilentProgress  # noqa: E402
from edgefab.pipeline.factory_build import factory_latency_model, factory_split  # noqa: E402
from edgefab.targets import load_target  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="all")
    parser.add_argument("--budget-ms", help="comma-separated budgets (ms); default: factory.py's")
    parser.add_argument("--epochs", default="2,4", help="comma-separated fine-tune lengths")
    parser.add_argument("--shift", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=3, help="customisation seeds 0..N-1")
    parser.add_argument("--judge-extra", type=Path, default=None)
    args = parser.parse_args()
    try:  # bad arguments fail before any work
        lengths = [int(e) for e in args.epochs.split(",")]
        chosen = [float(b) for b in args.budget_ms.split(",")] if args.budget_ms else []
    except ValueError as exc:
        parser.error(f"--epochs and --budget-ms take comma-separated numbers: {exc}")
    if args.seeds < 1 or min(lengths) < 1 or args.shift < 0:
        parser.error("--seeds and every --epochs value must be at least 1, --shift at least 0")
    factory, data = load_factory(SHIPPED), load_dataset("mnist")
    try:
        task = parse_task(args.task, data.classes)
    except EdgefabError as exc:
        parser.error(str(exc))
    extra = load_extra(parser, args.judge_extra, data)
    train, val = factory_split(factory, data)
    train, select, judge = judging_split(factory, train, val, "held-out")
    if extra is not None:
        judge = with_extra(judge, extra)
    model = factory_latency_model(load_target("host"), factory, SilentProgress())
    smallest, largest = latency_range(factory, model)
    budgets = chosen or [smallest * (largest / smallest) ** r for r in RELATIVE_BUDGETS]
    if min(budgets) < smallest:
        parser.error(f"--budget-ms {min(budgets):g}: the smallest sub-network costs {smallest:.3f} ms")
    print(f"task {task.text}; judged on {len(judge)} images; fine-tune shift {args.shift}\n")
    print("| budget ms | pick ms (predicted) | no fine-tune, mean % | "
          + " | ".join(f"{e} epochs, mean % (gain) | {e} epochs s" for e in lengths)
          + " | per seed: no fine-tune / " + " / ".join(f"{e} ep" for e in lengths) + " |")  # fmt: skip
    print("|---|---|---|" + "---|---|" * len(lengths) + "---|")
    for budget in budgets:
        rows = [run_seed(factory, task, model, budget, (train, select, judge), lengths, args.shift, seed)
                for seed in range(args.seeds)]  # fmt: skip
        print_row(budget, rows, lengths)


def run_seed(factory, task, model, budget: float, split, lengths: list[int], shift: int, seed: int) -> dict:
    """Accuracy (%) of the pick without a fine-tune and after each length, and the fine-tunes' seconds."""
    train, select, judge = split
    base = customize(factory, task, model, budget, train, select, CustomizeOptions(seed=seed))
    row = {"ms": base.predicted_ms, "plain": 100 * task_val_accuracy(base.network, judge, task, factory.prep)}
    for epochs in lengths:
        options = CustomizeOptions(seed=seed, finetune_epochs=epochs, finetune_shift=shift)
        tuned = customize(factory, task, model, budget, train, select, options)
        if tuned.selection != base.selection:
            raise SystemExit(f"seed {seed}, budget {budget:g}: the fine-tuned run picked another network")
        row[epochs] = 100 * task_val_accuracy(tuned.network, judge, task, factory.prep)
        row[f"{epochs}s"] = tuned.seconds["finetune"]
    return row


def print_row(budget: float, rows: list[dict], lengths: list[int]) -> None:
    """One markdown row: means over the seeds, each length's gain over no fine-tune, and each seed."""
    plain = statistics.mean(r["plain"] for r in rows)
    picks = sorted({round(r["ms"], 4) for r in rows})
    cells = [f"{budget:.3f}", ", ".join(f"{ms:.4f}" for ms in picks), f"{plain:.2f}"]
    for epochs in lengths:
        tuned = statistics.mean(r[epochs] for r in rows)
        seconds = statistics.median(r[f"{epochs}s"] for r in rows)
        cells += [f"{tuned:.2f} ({tuned - plain:+.2f})", f"{seconds:.1f}"]
    cells.append("; ".join(" / ".join(f"{r[k]:.2f}" for k in ["plain", *lengths]) for r in rows))
    print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()

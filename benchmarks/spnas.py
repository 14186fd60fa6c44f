"""Single-Path NAS vs random search, side by side in one run on `host` (issue 4, item 5).

At three host budgets (positions 0.3/0.6/0.9 between the space's smallest and largest predicted
latency), on the embedded digits:

- the Single-Path NAS result: searched for ``--epochs`` (``--warmup`` of them on cross-entropy
  alone), then fine-tuned for ``--finetune`` epochs;
- ``--random`` architectures drawn uniformly from the space among those whose predicted latency is
  at or under the budget, each trained from scratch for the same number of epochs in all
  (search + fine-tune), with the same optimiser settings; the best of them by validation accuracy.

Accuracies are on the whole validation split; latencies are predicted by the host's measured table
and measured with ONNX Runtime (median of interleaved rounds, searched and best random alike).

    python benchmarks/spnas.py [--epochs 6 --warmup 2 --finetune 2 --random 20] [--json out.json]

Each finished training is appended to ``--json``'s ``.partial`` file, so a long run that dies can
be read; searches and trainings are cached, so a rerun resumes. Torch runs on one thread (2
shared cores); run it on a quiet machine for the latencies.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from edgefab.arch import ArchSpec
from edgefab.data import load_dataset, normalization, train_val_split
from edgefab.export.onnx_export import INPUT_NAME, export_onnx
from edgefab.factory.network import build_network
from edgefab.factory.train import TrainConfig, evaluate_accuracy, train_classifier
from edgefab.search.costs import cost_table
from edgefab.search.spnas import SpnasOptions, SpnasResult, search
from edgefab.spaces import get_space
from edgefab.targets import load_target
from edgefab.targets.latency import latency_model, measure_onnx

RELATIVE_BUDGETS = (0.3, 0.6, 0.9)


def random_within(space, table, budget: float, count: int, seed: int) -> list[list[str]]:
    """``count`` distinct architectures drawn uniformly from those at or under ``budget``."""
    rng = np.random.default_rng(seed)
    found: list[list[str]] = []
    for _ in range(200_000):
        choices = space.sample(rng)
        if table.total(choices) <= budget and choices not in found:
            found.append(choices)
            if len(found) == count:
                return found
    raise RuntimeError(f"only {len(found)} random architectures under {budget:.4f} ms")


def measured_ms(networks: dict[str, torch.nn.Module], shape, work: Path, rounds: int = 5) -> dict:
    """Median ONNX Runtime latency of each network, measured in interleaved rounds."""
    paths = {}
    for name, network in networks.items():
        paths[name] = work / f"{name}.onnx"
        export_onnx(network, (1, *shape), paths[name])
    feeds = {INPUT_NAME: np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)}
    threads = load_target("host").threads
    times: dict[str, list[float]] = {name: [] for name in networks}
    for _ in range(rounds):
        for name, path in paths.items():
            times[name].append(measure_onnx(path, feeds, threads=threads, runs=100).ms)
    return {name: statistics.median(values) for name, values in times.items()}


def cached_search(space, table, train, prep, options: SpnasOptions, val, work: Path) -> SpnasResult:
    """:func:`search`, or its result from an earlier run of the same settings (a rerun resumes)."""
    key = json.dumps([asdict(options), table.total(space.largest())], sort_keys=True)
    folder = work / f"spnas-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if (folder / "result.json").is_file():
        saved = json.loads((folder / "result.json").read_text())
        network = build_network(ArchSpec.from_dict(saved["spec"]))
        network.load_state_dict(load_file(str(folder / "weights.safetensors")))
        network.eval()
        return SpnasResult(spec=ArchSpec.from_dict(saved["spec"]), network=network, **saved["result"])
    result = search(space, table, train, prep, options, validation=val)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in result.network.state_dict().items()},
        str(folder / "weights.safetensors"),
    )
    fields = ("choices", "predicted_ms", "search_choices", "accuracy", "search_seconds", "finetune_seconds")
    saved = {"spec": result.spec.to_dict(), "result": {name: getattr(result, name) for name in fields}}
    (folder / "result.json").write_text(json.dumps(saved))
    return result


def run_budget(space, table, budget, train, val, prep, args, work: Path, log) -> dict:
    """Single-Path NAS and the random baseline at one budget."""
    options = SpnasOptions(
        budget_ms=budget,
        epochs=args.epochs,
        warmup_epochs=args.warmup,
        finetune_epochs=args.finetune,
        seed=args.seed,
    )
    result = cached_search(space, table, train, prep, options, val, work)
    row = {
        "budget_ms": round(budget, 4),
        "spnas": {
            "choices": result.choices,
            "predicted_ms": round(result.predicted_ms, 4),
            "accuracy": round(result.accuracy, 5),
            "search_seconds": round(result.search_seconds, 1),
            "finetune_seconds": round(result.finetune_seconds, 1),
        },
    }
    log(row)
    config = TrainConfig(epochs=args.epochs + args.finetune, lr=options.lr, seed=args.seed)
    randoms, best_net = [], None
    for choices in random_within(space, table, budget, args.random, args.seed):
        start = time.perf_counter()
        # Through the training cache: the budgets draw from one random stream, so most of a lower
        # budget's architectures come again at a higher one; a rerun resumes where one died.
        trained = train_classifier(space.arch(choices, 10), train, prep, config)
        accuracy = evaluate_accuracy(trained.model, val, prep)
        randoms.append(
            {
                "choices": choices,
                "predicted_ms": round(table.total(choices), 4),
                "accuracy": round(accuracy, 5),
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
        log({"budget_ms": round(budget, 4), "random": randoms[-1]})
        if best_net is None or accuracy > max(r["accuracy"] for r in randoms[:-1]):
            best_net = trained.model
    row["random"] = randoms
    row["best_random"] = max(randoms, key=lambda r: r["accuracy"])
    measured = measured_ms({"spnas": result.network, "random": best_net}, space.input_shape, work)
    row["spnas"]["measured_ms"] = round(measured["spnas"], 4)
    row["best_random"]["measured_ms"] = round(measured["random"], 4)
    return row


def print_table(rows: list[dict], args) -> None:
    print(
        f"\nSingle-Path NAS ({args.epochs} search + {args.finetune} fine-tune epochs) vs best of "
        f"{args.random} random architectures ({args.epochs + args.finetune} epochs each), host\n"
    )
    print(
        "| budget (ms) | SPNAS accuracy | predicted | measured | search + fine-tune (s) "
        "| best random accuracy | predicted | measured | random median accuracy "
        "| random better than SPNAS |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        s, b = row["spnas"], row["best_random"]
        accuracies = [r["accuracy"] for r in row["random"]]
        better = sum(a > s["accuracy"] for a in accuracies)
        print(
            f"| {row['budget_ms']:.4f} | {100 * s['accuracy']:.2f} % | {s['predicted_ms']:.4f} "
            f"| {s['measured_ms']:.4f} | {s['search_seconds']:.0f} + {s['finetune_seconds']:.0f} "
            f"| {100 * b['accuracy']:.2f} % | {b['predicted_ms']:.4f} | {b['measured_ms']:.4f} "
            f"| {100 * statistics.median(accuracies):.2f} % | {better} of {len(accuracies)} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--finetune", type=int, default=2)
    parser.add_argument("--random", type=int, default=20)
    parser.add_argument("--budgets", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "edgefab-spnas-bench")
    args = parser.parse_args()
    torch.set_num_threads(1)
    partial = args.json.with_suffix(".partial.jsonl") if args.json else None

    def log(record: dict) -> None:
        print(json.dumps(record), flush=True)
        if partial:
            with partial.open("a") as handle:
                handle.write(json.dumps(record) + "\n")

    data = load_dataset("mnist")
    train, val = train_val_split(data, seed=args.seed)
    prep = normalization(train)
    space = get_space("digits-28")
    table = cost_table(space, data.num_classes, latency_model(load_target("host")))
    smallest, largest = table.total(space.smallest()), table.total(space.largest())
    budgets = [smallest + r * (largest - smallest) for r in RELATIVE_BUDGETS[: args.budgets]]
    log({"smallest_ms": smallest, "largest_ms": largest, "budgets_ms": budgets, "source": table.source})
    start = time.perf_counter()
    rows = [run_budget(space, table, b, train, val, prep, args, args.work, log) for b in budgets]
    if args.json:
        settings = vars(args) | {"json": str(args.json), "work": str(args.work)}
        args.json.write_text(json.dumps({"args": settings, "rows": rows}, indent=2))
    print_table(rows, args)
    print(f"\nwall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()

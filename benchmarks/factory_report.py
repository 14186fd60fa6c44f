"""The tables `benchmarks/factory.py` prints, and the paired bootstrap its dominance verdicts use.

Why a bootstrap: on the digits, the judging images are a few hundred (597 for all ten digits, 250
for a four-digit subset), so one image is 0.17-0.40 point, and the factory and the scratch family
differ by about that much. Each model is judged on the same images, so their difference is paired:
resampling the images (and the scratch network's training seeds) with replacement gives the spread
of the difference that another draw of images and seeds would show. (``scipy.stats.bootstrap``
resamples paired samples too, but cannot resample the seeds beside the images: with seeds 2.3
points apart, as w0.35's on all ten digits, those matter.)
``--judge-extra`` adds 2,000 digits no method saw and narrows the interval about twofold; with the
62,000 MNIST digits the embedded set lacks (``benchmarks/extra_digits.py``), (c)'s pooled interval is
3x narrower than with the 2,000 (0.05 point wide instead of 0.16).
"""

from __future__ import annotations

import numpy as np

BOOTSTRAP_DRAWS = 4000


def paired_interval(
    ours: np.ndarray | list[np.ndarray],
    theirs: list[np.ndarray],
    draws: int = BOOTSTRAP_DRAWS,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """(difference, low, high): the mean accuracy of ``ours`` minus that of ``theirs`` (a 0/1 vector
    per seed, or for ``ours`` one vector, all over the same images), and its ``level`` bootstrap
    interval; each draw resamples the images, the same ones for both sides, and each side's seeds."""
    mine, others = np.atleast_2d(np.asarray(ours, float)), np.stack(theirs).astype(float)
    rng = np.random.default_rng(0)
    differences = np.empty(draws)
    count = mine.shape[1]
    for draw in range(draws):
        times_drawn = np.bincount(rng.integers(0, count, count), minlength=count)
        seeds = rng.integers(0, len(others), len(others))
        # one vector of ours: no draw, so one-seed intervals stay those printed before it took several
        own = rng.integers(0, len(mine), len(mine)) if len(mine) > 1 else [0]
        differences[draw] = (_seed_means(mine, times_drawn)[own].mean()
                             - _seed_means(others, times_drawn)[seeds].mean())  # fmt: skip
    low, high = np.quantile(differences, [(1 - level) / 2, (1 + level) / 2])
    return float(mine.mean() - others.mean()), float(low), float(high)


def _seed_means(hits: np.ndarray, times_drawn: np.ndarray) -> np.ndarray:
    """Each seed's accuracy (a row of ``hits``) on images drawn ``times_drawn`` times each: a
    product instead of indexing 62,000 images per draw: several times faster, the same numbers."""
    return hits @ times_drawn / times_drawn.sum()


def accuracy_verdict(low: float, high: float) -> str:
    """The accuracy verdict: "ahead" or "behind" where the interval excludes zero, else "within noise"."""
    return "ahead" if low > 0 else "behind" if high < 0 else "within noise"


def interval_cells(ours, theirs) -> list[str]:
    """Two table cells: the difference in points with its 95 % interval, and the verdict."""
    difference, low, high = paired_interval(ours, theirs)
    return [f"{100 * difference:+.2f} ({100 * low:+.2f} to {100 * high:+.2f})", accuracy_verdict(low, high)]


def without_arrays(row: dict) -> dict:
    """``row`` without its per-image arrays, to print as progress."""
    return {key: value for key, value in row.items() if not key.endswith("_hits")}


def print_row(cells: list[str]) -> None:
    """One markdown table row."""
    print("| " + " | ".join(cells) + " |")


def print_header(header: list[str]) -> None:
    """A markdown table's header and separator rows."""
    print_row(header)
    print("|---" * len(header) + "|")


def print_tables(rows, sampler_rows, smallest, largest) -> None:
    print(f"\nfactory space on host: smallest {smallest:.3f} ms, largest {largest:.3f} ms (predicted)\n")
    judged = {r["task"]: r["judged_on"] for r in rows}
    if judged:
        print("(b) images judged on: " + ", ".join(f"{t} {count}" for t, count in judged.items()) + "\n")
    header = ["task", "budget ms", "factory acc", "factory ms", "factory s (+checks)", "optuna acc",
              "optuna ms", "optuna s (trials)", "scratch acc", "scratch ms", "scratch s"]  # fmt: skip
    print_header(header)
    for r in rows:
        optuna_acc = f"{100 * r['optuna_acc']:.2f} %" if r["optuna_acc"] is not None else "none in budget"
        optuna_ms = f"{r['optuna_ms']:.3f}" if r["optuna_ms"] is not None else "-"
        cells = [
            r["task"], f"{r['budget']:.3f}", f"{100 * r['factory_acc']:.2f} %", f"{r['factory_ms']:.3f}",
            f"{r['factory_s']:.1f} (+{r['factory_checks']})", optuna_acc, optuna_ms,
            f"{r['optuna_s']:.0f} ({r['optuna_trials']})",
            f"{100 * r['scratch_acc']:.2f} %",
            f"{r['scratch_ms']:.3f}" + ("" if r["scratch_fits"] else " (none fit)"),
            f"{r['scratch_s']:.0f}",
        ]  # fmt: skip
        print_row(cells)
    if rows:
        print_dominance(rows)
    if not sampler_rows:
        return
    seeds, rank = sampler_rows[0]["seeds"], sampler_rows[0]["rank"]
    print(f"\n(c) mean over {seeds} seeds, candidates ranked by {rank}; the pick judged on validation "
          "images (and any --judge-extra digits) that neither the scoring nor the factory's pool "
          "saw")  # fmt: skip
    header = ["task", "budget ms", "held-out images", "assembler: best score", "uniform: best score",
              "assembler: pick held out", "uniform: pick held out", "assembler: budget used",
              "uniform: budget used", "assembler - uniform held out, points (95 % interval)",
              "accuracy"]  # fmt: skip
    print_header(header)
    for r in sampler_rows:
        cells = [r["task"], f"{r['budget']:.3f}", str(r["held_out_images"])]
        cells += [
            f"{100 * r[key]:.2f} %"
            for key in ("assembler", "random", "assembler_held_out", "random_held_out")
        ]
        cells += [f"{100 * r[key]:.0f} %" for key in ("assembler_budget_used", "random_budget_used")]
        cells += interval_cells(r["assembler_hits"], r["random_hits"])
        print_row(cells)
    if len(sampler_rows) > 1:
        difference, low, high = pooled_sampler_interval(sampler_rows)
        print(f"\n(c) all {len(sampler_rows)} cells pooled: assembler - uniform {100 * difference:+.2f} "
              f"({100 * low:+.2f} to {100 * high:+.2f}) points, {accuracy_verdict(low, high)}")  # fmt: skip


def pooled_sampler_interval(rows, draws: int = BOOTSTRAP_DRAWS, level: float = 0.95) -> tuple:
    """(difference, low, high) of the assembler's held-out accuracy minus uniform sampling's over
    all of (c)'s cells, each cell weighted by its images. A task's cells judge the same images, so a
    draw resamples each task's images once for all its budgets (a clustered bootstrap), and each
    side's seeds once for all cells."""
    stacks = [{side: np.stack(r[f"{side}_hits"]).astype(float) for side in ("assembler", "random")}
              for r in rows]  # fmt: skip
    tasks = {r["task"]: stack["assembler"].shape[1] for r, stack in zip(rows, stacks, strict=True)}
    seeds = {side: len(stacks[0][side]) for side in ("assembler", "random")}
    total = sum(stack["assembler"].shape[1] for stack in stacks)

    def difference(times_drawn: dict, chosen: dict) -> float:
        """``times_drawn``: per task, how often each image is drawn (they sum to its image count)."""
        sums = {side: sum(_seed_means(stack[side], times_drawn[r["task"]])[chosen[side]].mean()
                          * stack[side].shape[1] for r, stack in zip(rows, stacks, strict=True))
                for side in ("assembler", "random")}  # fmt: skip
        return (sums["assembler"] - sums["random"]) / total

    rng = np.random.default_rng(0)
    results = np.empty(draws)
    for draw in range(draws):
        images = {
            task: np.bincount(rng.integers(0, count, count), minlength=count) for task, count in tasks.items()
        }
        chosen = {side: rng.integers(0, count, count) for side, count in seeds.items()}
        results[draw] = difference(images, chosen)
    everything = {task: np.ones(count) for task, count in tasks.items()}
    low, high = np.quantile(results, [(1 - level) / 2, (1 + level) / 2])
    return difference(everything, {side: np.arange(count) for side, count in seeds.items()}), low, high


def print_dominance(rows) -> None:
    """The factory at each scratch network's own latency: does it match it in speed and beat it?

    With several scratch seeds the verdict is against their mean (the family's expected accuracy);
    the verdict against seed 0 alone, as a one-seed run gives it, is printed beside it. The last two
    columns say whether the accuracy difference stands out of the noise of the judging images and
    the scratch seeds (:func:`paired_interval`)."""
    print("\n(b) dominance: the factory's pick, and the factory customised again at the scratch network's "
          "latency, each against the scratch network (ms ratio: factory / scratch, median of 3,000 "
          "back-to-back pairs of calls)")  # fmt: skip
    header = ["task", "budget ms", "scratch acc", "pick acc", "pick / scratch ms",
              "scratch's latency as a budget", "factory acc there", "there / scratch ms",
              "factory at scratch's latency dominates"]  # fmt: skip
    seeds = len(rows[0]["scratch_accs"])
    if seeds > 1:
        header[2] = f"scratch acc: mean of {seeds} seeds (lowest-highest)"
        header += ["against seed 0 alone", "seeds the factory's accuracy matches"]
    header += ["factory - scratch acc, points (95 % interval)", "accuracy"]
    print_header(header)
    for r in rows:
        acc, ratio, accuracies = r["dominance_acc"], r["dominance_ms_ratio"], r["scratch_accs"]
        verdict = "yes" if acc >= r["scratch_acc"] and ratio <= 1.0 else "no"
        smallest = " (the smallest)" if r["dominance_floor"] else ""
        smallest += " (its very graph)" if r.get("dominance_same_network") else ""
        scratch = f"{100 * r['scratch_acc']:.2f} %"
        if seeds > 1:
            scratch += f" ({100 * min(accuracies):.2f}-{100 * max(accuracies):.2f})"
        cells = [r["task"], f"{r['budget']:.3f}", scratch,
                 f"{100 * r['factory_acc']:.2f} %", f"{r['pick_ratio']:.2f}", f"{r['dominance_budget']:.3f}",
                 f"{100 * acc:.2f} %", f"{ratio:.2f}{smallest}", verdict]  # fmt: skip
        if seeds > 1:
            alone = "yes" if acc >= accuracies[0] and ratio <= 1.0 else "no"
            cells += [alone, f"{sum(acc >= a for a in accuracies)} of {seeds}"]
        cells += interval_cells(r["dominance_hits"], r["scratch_hits"])
        print_row(cells)

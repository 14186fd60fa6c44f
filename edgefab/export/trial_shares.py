"""How a tuning run spreads its trials over a model's kernels: by where the time is likely to go.

With a few dozen trials per kernel, what MetaSchedule finds rests on how many trials each kernel gets.
An even spread gives a reshape as many as a convolution that takes a tenth of the network's time.
Here a kernel's share is in proportion to its FLOPs times the number of times it occurs in the model
(MetaSchedule's task weight): on MobileNetV2 at 224 in NCHW8c that product correlated 0.90 with the
tuned kernels' measured share of the time (BENCHMARKS.md, issue 9). Every kernel gets at least a
quarter of an even share, since memory-bound kernels (depthwise convolutions, layout transforms) take
more time than their FLOPs say. Shares are that floor times a power of the square root of 2, so that
the kernels of one share can be tuned together in one MetaSchedule run, which takes one per-kernel
limit.
"""

from __future__ import annotations

import math

FLOOR_OF_EVEN_SHARE = 4  # the least share is an even share over this


def kernel_flops(task) -> float:
    """A MetaSchedule task's floating-point operations per call (0 where TVM cannot count them)."""
    from tvm.s_tir.analysis import estimate_tir_flops

    try:
        return float(estimate_tir_flops(task.dispatched[0]))
    except Exception:  # TVM raises TVMError on loops it cannot bound; such a kernel gets the floor
        return 0.0


def trial_shares(tasks: list, trials: int) -> list[int]:
    """Each task's share of ``trials``: the floor, plus the rest in proportion to weight x FLOPs,
    rounded to the floor times a power of the square root of 2 (a few levels) and stepped down where
    rounding up asked for more than ``trials`` in all."""
    if not tasks:
        return []
    floor = max(1, math.ceil(trials / len(tasks) / FLOOR_OF_EVEN_SHARE))
    costs = [task.weight * kernel_flops(task) for task in tasks]
    rest = trials - floor * len(tasks)
    if rest <= 0 or sum(costs) <= 0:
        return [max(1, math.ceil(trials / len(tasks)))] * len(tasks)
    wanted = [floor + rest * cost / sum(costs) for cost in costs]
    steps = [round(2 * math.log2(share / floor)) for share in wanted]

    def level(step: int) -> int:
        return round(floor * 2 ** (step / 2))

    # rounding up may ask for more than ``trials``: step down the shares rounded up the most
    while sum(level(step) for step in steps) > trials:
        i = max((i for i, step in enumerate(steps) if step > 0), key=lambda i: level(steps[i]) / wanted[i])
        steps[i] -= 1
    return [level(step) for step in steps]

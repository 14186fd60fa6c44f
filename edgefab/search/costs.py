"""Per-layer cost tables for a search space, read from a target's latency model."""

from __future__ import annotations

from edgefab.search.supernet import CostTable
from edgefab.spaces import CHOICES, SearchSpace
from edgefab.targets.model import LatencyModel


def cost_table(space: SearchSpace, num_classes: int, model: LatencyModel) -> CostTable:
    """Every searchable slot's cost per choice, and the fixed rest, so that ``table.total(choices)``
    equals ``model.total_ms(space.arch(choices))``.

    Slot inputs do not depend on the choices (a skipped layer keeps the shape), so the costs are
    read once on the largest network. The model's overhead ``a + b * sum(layers)`` is folded in:
    layer costs are scaled by ``1 + b`` and ``a`` joins the fixed part.
    """
    largest = space.arch(space.largest(), num_classes)
    scale = 1.0 + model.overhead[1]
    layers = {
        index: {c: scale * ms for c, ms in model.layer_costs(largest, index, CHOICES).items()}
        for index in space.searchable()
    }
    fixed = model.total_ms(largest) - sum(costs["k5_e6"] for costs in layers.values())
    return CostTable(fixed_ms=fixed, layers=layers, source=f"{model.kind}: {model.method}")

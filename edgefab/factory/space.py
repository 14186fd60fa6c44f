"""The factory's module space: a Single-Path NAS space plus a channel width per stage.

Each searchable layer picks one of the superkernel's ops (``k3_e3`` .. ``k5_e6``, ``skip`` where
the stage allows it); each stage picks its output width from a short list (the sparsity knob: a
narrower stage uses the first channels of the shared weights, as Once-for-All's elastic width).
A :class:`ModuleSelection` is one such choice; :meth:`FactorySpace.arch` turns it into an
:class:`~edgefab.arch.ArchSpec`, which latency models, extraction and export all read.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from edgefab.arch import ArchSpec
from edgefab.errors import EdgefabError
from edgefab.spaces import SPACES, SearchSpace


@dataclass(frozen=True)
class ModuleSelection:
    """One op per layer slot and one output width per stage."""

    choices: tuple[str, ...]
    widths: tuple[int, ...]

    def notation(self) -> str:
        """e.g. ``k3_e1 | k5_e6 k3_e3 skip @24 | ...``: readable in tables and logs."""
        return " ".join(self.choices) + "  widths " + "/".join(map(str, self.widths))

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"choices": list(self.choices), "widths": list(self.widths)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModuleSelection:
        """Inverse of :meth:`to_dict`."""
        return cls(tuple(data["choices"]), tuple(int(w) for w in data["widths"]))


@dataclass(frozen=True)
class FactorySpace:
    """A search space whose stages also choose their width from ``widths[stage]``."""

    space: SearchSpace
    widths: tuple[tuple[int, ...], ...]  # per stage, ascending, the last the space's own width

    def __post_init__(self) -> None:
        if len(self.widths) != len(self.stages()):
            raise ValueError(
                f"{self.space.name}: {len(self.stages())} stages but {len(self.widths)} width lists"
            )

    @property
    def name(self) -> str:
        return self.space.name

    def stages(self) -> list[list[int]]:
        """Slot indices of each stage: a stage starts at a searchable slot that cannot be skipped."""
        stages: list[list[int]] = []
        for index in self.space.searchable():
            if not self.space.slots[index].skippable or not stages:
                stages.append([])
            stages[-1].append(index)
        return stages

    def stage_of(self) -> dict[int, int]:
        """Stage index of each searchable slot."""
        return {slot: s for s, slots in enumerate(self.stages()) for slot in slots}

    def decisions(self) -> list[tuple[str, tuple[str, ...] | tuple[int, ...]]]:
        """Every decision a selection makes, in a fixed order: (name, options)."""
        layer = [(f"layer{i}", self.space.slots[i].options()) for i in self.space.searchable()]
        return layer + [(f"stage{s}-width", w) for s, w in enumerate(self.widths)]

    def selection(self, values: list) -> ModuleSelection:
        """A selection from one value per decision (the order of :meth:`decisions`)."""
        searchable = self.space.searchable()
        choices = [slot.fixed for slot in self.space.slots]
        for slot, value in zip(searchable, values[: len(searchable)], strict=True):
            choices[slot] = str(value)
        return ModuleSelection(tuple(choices), tuple(int(w) for w in values[len(searchable) :]))

    def values(self, selection: ModuleSelection) -> list:
        """Inverse of :meth:`selection`."""
        return [selection.choices[i] for i in self.space.searchable()] + list(selection.widths)

    def largest(self) -> ModuleSelection:
        """Every layer at k5_e6, every stage at its widest."""
        return ModuleSelection(tuple(self.space.largest()), tuple(w[-1] for w in self.widths))

    def smallest(self) -> ModuleSelection:
        """Every skippable layer skipped, the rest k3_e3, every stage at its narrowest."""
        return ModuleSelection(tuple(self.space.smallest()), tuple(w[0] for w in self.widths))

    def sample(self, rng: np.random.Generator) -> ModuleSelection:
        """Uniformly random decisions."""
        return self.selection([options[rng.integers(len(options))] for _, options in self.decisions()])

    def check(self, selection: ModuleSelection) -> None:
        """Raise a one-line error if ``selection`` is not a member of the space."""
        for (name, options), value in zip(self.decisions(), self.values(selection), strict=True):
            if value not in options:
                raise EdgefabError(f"{self.name}: {name} allows {options}, not {value!r}")

    def arch(self, selection: ModuleSelection, num_classes: int) -> ArchSpec:
        """The ArchSpec of ``selection`` (stage widths replace the space's channel counts)."""
        self.check(selection)
        spec = self.space.arch(list(selection.choices), num_classes)
        stage_of = self.stage_of()
        blocks = tuple(
            replace(block, out_channels=selection.widths[stage_of[i]]) if i in stage_of else block
            for i, block in enumerate(spec.blocks)
        )
        return replace(spec, blocks=blocks, name=f"factory-{self.name}")


def _space(name: str, widths: tuple[tuple[int, ...], ...]) -> FactorySpace:
    return FactorySpace(SPACES[name], widths)


FACTORY_SPACES: dict[str, FactorySpace] = {
    "digits-28": _space("digits-28", ((16, 24), (24, 32, 40), (48, 64, 80))),
    "cifar-32": _space("cifar-32", ((16, 24), (24, 32, 40), (48, 64, 80), (64, 80, 96))),
}


def factory_space(name: str) -> FactorySpace:
    """A built-in factory space by name."""
    if name not in FACTORY_SPACES:
        raise EdgefabError(f"unknown factory space '{name}'; known: {', '.join(FACTORY_SPACES)}")
    return FACTORY_SPACES[name]


def space_for_shape(input_shape: tuple[int, int, int]) -> FactorySpace:
    """The built-in factory space whose input is ``input_shape`` (C, H, W)."""
    for space in FACTORY_SPACES.values():
        if tuple(space.space.input_shape) == tuple(input_shape):
            return space
    shapes = ", ".join(
        f"{s.name} ({'x'.join(map(str, s.space.input_shape))})" for s in FACTORY_SPACES.values()
    )
    raise EdgefabError(f"no factory space takes {'x'.join(map(str, input_shape))} images; spaces: {shapes}")

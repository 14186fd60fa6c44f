"""The factory's module space: a Single-Path NAS space plus a channel width per stage.

Each searchable layer picks one of the superkernel's ops (``k3_e3`` .. ``k5_e6``, ``skip`` where
the stage allows it); each stage picks its output width from a short list (the sparsity knob: a
narrower stage uses the first channels of the shared weights, as Once-for-All's elastic width).
Some spaces also narrow the stem (with the fixed layers before the first stage) and the 1x1 head
the same way, and some may drop their last stage (a width of 0: the head then reads the stage
before, as a shallower network would; :attr:`FactorySpace.droppable`). A :class:`ModuleSelection`
is one such choice; :meth:`FactorySpace.arch` turns it into an :class:`~edgefab.arch.ArchSpec`,
which latency models, extraction and export all read.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from edgefab.arch import ArchSpec, BlockSpec, same_graph
from edgefab.errors import EdgefabError
from edgefab.spaces import SPACES, SearchSpace


@dataclass(frozen=True)
class ModuleSelection:
    """One op per layer slot, one output width per stage and (where elastic) the stem's and the
    head's widths."""

    choices: tuple[str, ...]
    widths: tuple[int, ...]
    stem: int | None = None  # None: the space's own stem width
    head: int | None = None  # None: the space's own head width

    def notation(self) -> str:
        """e.g. ``k3_e1 k5_e6 k3_e3 skip ...  widths 16/32/64  stem 8  head 96``: readable in tables."""
        stem = f"  stem {self.stem}" if self.stem is not None else ""
        head = f"  head {self.head}" if self.head is not None else ""
        return " ".join(self.choices) + "  widths " + "/".join(map(str, self.widths)) + stem + head

    def to_dict(self) -> dict[str, Any]:
        """JSON form ("stem" and "head" only where set)."""
        data: dict[str, Any] = {"choices": list(self.choices), "widths": list(self.widths)}
        elastic = {"stem": self.stem, "head": self.head}
        return {**data, **{key: value for key, value in elastic.items() if value is not None}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModuleSelection:
        """Inverse of :meth:`to_dict`."""
        stem, head = (None if data.get(key) is None else int(data[key]) for key in ("stem", "head"))
        return cls(tuple(data["choices"]), tuple(int(w) for w in data["widths"]), stem, head)


@dataclass(frozen=True)
class FactorySpace:
    """A search space whose stages also choose their width from ``widths[stage]``."""

    space: SearchSpace
    # Per stage, ascending, the last the space's own width; the last stage's may start with 0: dropped.
    widths: tuple[tuple[int, ...], ...]
    # The stem's and the fixed leading layers' widths, ascending, the last the space's own; () = fixed.
    stem_widths: tuple[int, ...] = ()
    # The 1x1 head's widths, ascending, the last the space's own; () = fixed.
    head_widths: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if len(self.widths) != len(self.stages()):
            raise ValueError(
                f"{self.space.name}: {len(self.stages())} stages but {len(self.widths)} width lists"
            )
        if self.stem_widths:
            stem = self.space.stem_channels
            leading = {self.space.slots[i].out_channels for i in range(self.space.searchable()[0])}
            if self.stem_widths[-1] != stem or leading - {stem}:
                raise ValueError(
                    f"{self.space.name}: an elastic stem needs the stem and the layers before the first "
                    f"stage at one width, the last of stem_widths"
                )
        if self.head_widths and self.head_widths[-1] != self.space.head_channels:
            raise ValueError(f"{self.space.name}: the last of head_widths must be the head's own width")
        zeros = [s for s, w in enumerate(self.widths) if 0 in w]
        last = self.widths[-1]
        if zeros and (
            zeros != [len(self.widths) - 1] or last.count(0) > 1 or last[0] != 0 or len(self.widths) < 2
        ):
            raise ValueError(
                f"{self.space.name}: only the last stage can be dropped (width 0, first of its widths), "
                f"and only where a stage comes before it"
            )

    @property
    def droppable(self) -> bool:
        """Whether a sub-network may drop the last stage (its width 0): the head then reads the
        stage before. Why: a stage's first layer can never be skipped, so without this every
        sub-network of the digits space pays for a third stage that the scratch family, at the
        same cost, spends on wider first two (BENCHMARKS.md, issue 5, "Why the factory is behind")."""
        return self.widths[-1][0] == 0

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
        stem = [("stem-width", self.stem_widths)] if self.stem_widths else []
        head = [("head-width", self.head_widths)] if self.head_widths else []
        return layer + [(f"stage{s}-width", w) for s, w in enumerate(self.widths)] + stem + head

    def selection(self, values: list) -> ModuleSelection:
        """A selection from one value per decision (the order of :meth:`decisions`)."""
        searchable = self.space.searchable()
        choices = [slot.fixed for slot in self.space.slots]
        for slot, value in zip(searchable, values[: len(searchable)], strict=True):
            choices[slot] = str(value)
        widths = values[len(searchable) : len(searchable) + len(self.widths)]
        elastic = iter(values[len(searchable) + len(self.widths) :])
        stem = int(next(elastic)) if self.stem_widths else None
        head = int(next(elastic)) if self.head_widths else None
        return self.canonical(ModuleSelection(tuple(choices), tuple(int(w) for w in widths), stem, head))

    def canonical(self, selection: ModuleSelection) -> ModuleSelection:
        """``selection`` with a dropped stage's layer choices at their smallest: they build nothing,
        so selections that differ only there are one network and must compare equal."""
        if selection.widths[-1] != 0:
            return selection
        smallest, choices = self.space.smallest(), list(selection.choices)
        for slot in self.stages()[-1]:
            choices[slot] = smallest[slot]
        return replace(selection, choices=tuple(choices))

    def values(self, selection: ModuleSelection) -> list:
        """Inverse of :meth:`selection`."""
        stem = [selection.stem] if self.stem_widths else []
        head = [selection.head] if self.head_widths else []
        return [selection.choices[i] for i in self.space.searchable()] + list(selection.widths) + stem + head

    def largest(self) -> ModuleSelection:
        """Every layer at k5_e6, every stage (and the stem and head) at its widest."""
        widths = tuple(w[-1] for w in self.widths)
        stem, head = (w[-1] if w else None for w in (self.stem_widths, self.head_widths))
        return ModuleSelection(tuple(self.space.largest()), widths, stem, head)

    def smallest(self) -> ModuleSelection:
        """Every skippable layer skipped, the rest k3_e3, every stage (and the stem and head) at its
        narrowest (a droppable last stage dropped)."""
        widths = tuple(w[0] for w in self.widths)
        stem, head = (w[0] if w else None for w in (self.stem_widths, self.head_widths))
        return ModuleSelection(tuple(self.space.smallest()), widths, stem, head)

    def sample(self, rng: np.random.Generator) -> ModuleSelection:
        """Uniformly random decisions."""
        return self.selection([options[rng.integers(len(options))] for _, options in self.decisions()])

    def sample_from_end(self, rng: np.random.Generator) -> ModuleSelection:
        """A sub-network at a random distance from the smallest or the largest (a coin decides
        which): k of its decisions redrawn at random, k uniform from none to all.

        Why: uniform sampling puts almost every sub-network in the middle of the latency range (on
        the digits space under 1 % lie in its fastest third), so a pool drawn that way leaves the
        assembler nothing but the smallest network at tight budgets, and supernet training that
        way never visits the cheap end but through the smallest; this covers the range evenly."""
        end = self.smallest() if rng.random() < 0.5 else self.largest()
        values, decisions = list(self.values(end)), self.decisions()
        for d in rng.permutation(len(decisions))[: rng.integers(len(decisions) + 1)]:
            options = decisions[d][1]
            values[d] = options[rng.integers(len(options))]
        return self.selection(values)

    def holding(self, spec: ArchSpec) -> ModuleSelection | None:
        """The selection whose network is ``spec`` (its blocks, stem and head), or None where the
        space does not hold it: each of ``spec``'s stages (a block that changes shape starts one) fills
        the first slots of one of the space's, the rest skipped."""
        searchable = self.space.searchable()
        stages: list[list[BlockSpec]] = []
        cin = spec.stem_channels
        for block in spec.blocks[searchable[0] :]:
            if block.skip:
                continue
            if not stages or block.stride != 1 or block.out_channels != cin:
                stages.append([])
            stages[-1].append(block)
            cin = block.out_channels
        own = self.stages()
        if len(stages) > len(own) or any(len(a) > len(b) for a, b in zip(stages, own, strict=False)):
            return None
        choices = list(self.space.smallest())
        for stage, slots in zip(stages, own, strict=False):
            for block, slot in zip(stage, slots, strict=False):
                choices[slot] = block.notation()
        widths = [stage[0].out_channels for stage in stages] + [0] * (len(own) - len(stages))
        stem = spec.stem_channels if self.stem_widths else None
        head = spec.head_channels if self.head_widths else None
        selection = self.canonical(ModuleSelection(tuple(choices), tuple(widths), stem, head))
        try:
            held = self.arch(selection, spec.num_classes)
        except EdgefabError:
            return None
        return selection if same_graph(held, spec) else None

    def check(self, selection: ModuleSelection) -> None:
        """Raise a one-line error if ``selection`` is not a member of the space."""
        if selection.stem is not None and not self.stem_widths:
            raise EdgefabError(f"{self.name}: the stem's width is fixed here, a selection cannot set it")
        if selection.head is not None and not self.head_widths:
            raise EdgefabError(f"{self.name}: the head's width is fixed here, a selection cannot set it")
        if selection != self.canonical(selection):
            raise EdgefabError(f"{self.name}: a dropped last stage's layers must be at their smallest ops")
        for (name, options), value in zip(self.decisions(), self.values(selection), strict=True):
            if value not in options:
                raise EdgefabError(f"{self.name}: {name} allows {options}, not {value!r}")

    def arch(self, selection: ModuleSelection, num_classes: int) -> ArchSpec:
        """The ArchSpec of ``selection`` (stage widths replace the space's channel counts)."""
        self.check(selection)
        spec = self.space.arch(list(selection.choices), num_classes)
        stage_of = self.stage_of()
        blocks = [
            replace(block, out_channels=selection.widths[stage_of[i]]) if i in stage_of else block
            for i, block in enumerate(spec.blocks)
        ]
        if selection.widths[-1] == 0:  # dropped: identities at the width of the stage before
            kept = selection.widths[-2]
            for i in self.stages()[-1]:
                blocks[i] = BlockSpec(kept, kernel=3, expand=3, stride=1, skip=True)
        if selection.stem is not None:  # the stem and the layers before the first stage narrow together
            for i in range(self.space.searchable()[0]):
                blocks[i] = replace(blocks[i], out_channels=selection.stem)
            spec = replace(spec, stem_channels=selection.stem)
        if selection.head is not None:
            spec = replace(spec, head_channels=selection.head)
        return replace(spec, blocks=tuple(blocks), name=f"factory-{self.name}")


def _space(
    name: str, widths: tuple[tuple[int, ...], ...], stem: tuple[int, ...] = (), head: tuple[int, ...] = ()
) -> FactorySpace:
    return FactorySpace(SPACES[name], widths, stem, head)


FACTORY_SPACES: dict[str, FactorySpace] = {
    # The digits' stem and first stage go down to 8 channels: the from-scratch MobileNetV2 family's
    # narrow members (width 0.35-0.5) are that narrow there, and were faster than every sub-network
    # of the space without it (BENCHMARKS.md, issue 5's dominance check). The head narrows for the
    # same reason: the family's w0.35 has 88 channels there, w0.5 128.
    "digits-28": _space(
        "digits-28", ((8, 16, 24), (24, 32, 40), (48, 64, 80)), stem=(8, 16), head=(96, 160, 256)
    ),
    # The same with its third stage droppable (width 0), so that the cheap end can have the scratch
    # family's two-stage shape. Not the default: trained alike, its cheap end scored 0.8 point lower
    # (BENCHMARKS.md, issue 5, "A droppable third stage and anchors").
    "digits-28-drop": _space(
        "digits-28", ((8, 16, 24), (24, 32, 40), (0, 48, 64, 80)), stem=(8, 16), head=(96, 160, 256)
    ),
    "digits-28-wide": _space(
        "digits-28-wide",
        ((8, 16, 24, 32, 40), (16, 24, 32, 40, 64)),
        stem=(8, 16, 24),
        head=(88, 128, 192, 256, 384),
    ),
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

"""Search spaces as data: the layer slots a search chooses among, and their fixed parts.

A space is the Single-Path NAS / MnasNet macro-architecture: a stem, a list of MBConv layers
whose kernel (3 or 5), expansion (3 or 6) and, where the stage allows it, skip are searched, and a
head. Plain data like :mod:`edgefab.arch`, shared by the searches, the factory and the CLI.
``SPACES`` holds the built-in ones; a space turns a list of choices into an
:class:`~edgefab.arch.ArchSpec`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgefab.arch import ArchSpec, BlockSpec
from edgefab.errors import EdgefabError

CHOICES = ("k3_e3", "k3_e6", "k5_e3", "k5_e6")  # the paper's candidate ops "0".."3"
SKIP = "skip"


@dataclass(frozen=True)
class LayerSlot:
    """One searchable (or fixed) MBConv layer of a space."""

    out_channels: int
    stride: int = 1
    skippable: bool = False
    fixed: str | None = None  # e.g. "k3_e1": not searched

    def options(self) -> tuple[str, ...]:
        """Every choice this slot allows."""
        if self.fixed:
            return (self.fixed,)
        return CHOICES + ((SKIP,) if self.skippable else ())


@dataclass(frozen=True)
class SearchSpace:
    """A macro-architecture with searchable layers."""

    name: str
    input_shape: tuple[int, int, int]
    stem_channels: int
    stem_stride: int
    slots: tuple[LayerSlot, ...]
    head_channels: int
    description: str = ""

    def arch(self, choices: list[str], num_classes: int) -> ArchSpec:
        """The ArchSpec for one choice per slot (e.g. ``["k3_e1", "k5_e6", "skip", ...]``)."""
        if len(choices) != len(self.slots):
            raise EdgefabError(f"space {self.name} has {len(self.slots)} layers, got {len(choices)} choices")
        blocks = []
        for index, (slot, choice) in enumerate(zip(self.slots, choices, strict=True)):
            if choice not in slot.options():
                raise EdgefabError(f"layer {index} of {self.name} allows {slot.options()}, not '{choice}'")
            blocks.append(_block(slot, choice))
        return ArchSpec(
            input_shape=self.input_shape,
            num_classes=num_classes,
            stem_channels=self.stem_channels,
            stem_stride=self.stem_stride,
            blocks=tuple(blocks),
            head_channels=self.head_channels,
            name=self.name,
        )

    def largest(self) -> list[str]:
        """Every searchable layer at k5_e6."""
        return [slot.fixed or "k5_e6" for slot in self.slots]

    def smallest(self) -> list[str]:
        """Every layer skipped where allowed, else k3_e3."""
        return [slot.fixed or (SKIP if slot.skippable else "k3_e3") for slot in self.slots]

    def sample(self, rng: np.random.Generator) -> list[str]:
        """Uniformly random choices."""
        return [str(rng.choice(slot.options())) for slot in self.slots]

    def searchable(self) -> list[int]:
        """Indices of the slots a search decides."""
        return [i for i, slot in enumerate(self.slots) if not slot.fixed]


def _block(slot: LayerSlot, choice: str) -> BlockSpec:
    if choice == SKIP:
        return BlockSpec(slot.out_channels, kernel=3, expand=3, stride=slot.stride, skip=True)
    kernel, expand = (int(part[1:]) for part in choice.split("_"))
    return BlockSpec(slot.out_channels, kernel=kernel, expand=expand, stride=slot.stride)


def _stages(stages: list[tuple[int, int, int, bool]]) -> tuple[LayerSlot, ...]:
    """(channels, layers, first stride, later layers skippable) -> slots; the first layer of a stage
    changes shape, so only the later ones may be skipped."""
    slots = []
    for channels, count, stride, skippable in stages:
        slots.append(LayerSlot(channels, stride))
        slots.extend(LayerSlot(channels, 1, skippable) for _ in range(count - 1))
    return tuple(slots)


SPACES: dict[str, SearchSpace] = {
    # Single-Path NAS / MnasNet at 224 (layers 0-21 as in the published Pixel 1 table).
    "mnasnet-224": SearchSpace(
        name="mnasnet-224",
        input_shape=(3, 224, 224),
        stem_channels=32,
        stem_stride=2,
        slots=(
            LayerSlot(16, 1, fixed="k3_e1"),
            *_stages(
                [(24, 4, 2, True), (40, 4, 2, True), (80, 4, 2, True), (96, 4, 1, True), (192, 4, 2, True)]
            ),
            LayerSlot(320, 1, fixed="k3_e6"),
        ),
        head_channels=1280,
        description="Single-Path NAS search space (MnasNet macro-architecture), ImageNet 224x224",
    ),
    "digits-28": SearchSpace(
        name="digits-28",
        input_shape=(1, 28, 28),
        stem_channels=16,
        stem_stride=2,
        slots=(
            LayerSlot(16, 1, fixed="k3_e1"),
            *_stages([(24, 3, 2, True), (40, 3, 2, True), (80, 2, 1, True)]),
        ),
        head_channels=256,
        description="small space for 28x28 grey images (the embedded digits)",
    ),
    # The from-scratch MobileNetV2 family's shape at 28x28 (two stride-2 stages, nothing at 4x4
    # after them), up to its w1.5 widths: at the same measured latency digits-28's third stage left
    # only narrow sub-networks. Not the default: it did not beat the family either (BENCHMARKS.md,
    # issue 5, "A wider two-stage space").
    "digits-28-wide": SearchSpace(
        name="digits-28-wide",
        input_shape=(1, 28, 28),
        stem_channels=24,
        stem_stride=2,
        slots=(
            LayerSlot(24, 1, fixed="k3_e1"),
            *_stages([(40, 3, 2, True), (64, 3, 2, True)]),
        ),
        head_channels=384,
        description="two wide stages for 28x28 grey images (the simple family's shape)",
    ),
    "cifar-32": SearchSpace(
        name="cifar-32",
        input_shape=(3, 32, 32),
        stem_channels=24,
        stem_stride=1,
        slots=(
            LayerSlot(16, 1, fixed="k3_e1"),
            *_stages([(24, 3, 2, True), (40, 3, 2, True), (80, 3, 2, True), (96, 2, 1, True)]),
        ),
        head_channels=512,
        description="small space for 32x32 colour images (CIFAR-style)",
    ),
}


def get_space(name: str) -> SearchSpace:
    """A built-in space by name; unknown names list the known ones."""
    if name not in SPACES:
        raise EdgefabError(f"unknown search space '{name}'; known spaces: {', '.join(SPACES)}")
    return SPACES[name]

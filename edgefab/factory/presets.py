"""Built-in architectures: the simple MBConv classifier family used when no factory applies, and
its members that a factory space holds (the supernet trains them at every step)."""

from __future__ import annotations

from edgefab.arch import ArchSpec, BlockSpec
from edgefab.factory.space import FactorySpace, ModuleSelection

# Width multipliers tried, widest first, when a latency budget must be met.
WIDTHS = (1.5, 1.0, 0.75, 0.5, 0.35)


def simple_classifier(input_shape: tuple[int, int, int], num_classes: int) -> ArchSpec:
    """A small MBConv classifier sized for the input: stride-2 stages until about 4x4 remain."""
    _, height, _ = input_shape
    stem_stride = 2 if height >= 28 else 1
    blocks = [BlockSpec(16, kernel=3, expand=1, stride=1)]
    stages = [(24, 3), (40, 5), (80, 3), (96, 5)]
    size = height // stem_stride
    for out_channels, kernel in stages:
        if size <= 4:
            break
        blocks.append(BlockSpec(out_channels, kernel=kernel, expand=3, stride=2))
        blocks.append(BlockSpec(out_channels, kernel=kernel, expand=3, stride=1))
        size = (size + 1) // 2
    return ArchSpec(
        input_shape=tuple(input_shape),
        num_classes=num_classes,
        stem_channels=16,
        stem_stride=stem_stride,
        blocks=tuple(blocks),
        head_channels=256,
        name="simple-mbconv",
    )


def family_in_space(fspace: FactorySpace, num_classes: int) -> list[ModuleSelection]:
    """The simple family's members (every width of ``WIDTHS``) that ``fspace`` holds, widest first."""
    family = simple_classifier(fspace.space.input_shape, num_classes)
    held = (fspace.holding(family.scaled(width)) for width in WIDTHS)
    return [selection for selection in held if selection is not None]

"""The from-scratch family inside a factory: each member as a sub-network with inherited weights.

For a factory whose space holds the simple MobileNetV2-style family (``digits-28-wide``), this
prints each member's accuracy as a sub-network of the supernet (inherited weights, batch norms
recalibrated, as customisation scores candidates) beside its predicted latency on `host`, and the
space's smallest and largest sub-networks (those alone for a space without the family). Read it
beside ``benchmarks/factory.py``'s scratch accuracies (the same judging images): it says whether
weight sharing costs the family accuracy.

    python benchmarks/factory_family.py --factory PATH [--judge-extra extra_digits.npz]
"""

from __future__ import annotations

import argparse

from factory import judging_split, task_val_accuracy, with_extra

from edgefab.data import load_dataset
from edgefab.data.tasks import parse_task
from edgefab.errors import EdgefabError
from edgefab.factory.presets import WIDTHS, simple_classifier
from edgefab.factory.scoring import subnetwork
from edgefab.factory.space import FactorySpace, ModuleSelection
from edgefab.factory.store import load_factory
from edgefab.pipeline.common import SilentProgress
from edgefab.pipeline.factory_build import factory_latency_model, factory_split
from edgefab.targets import load_target


def family_selection(space: FactorySpace, width: float) -> ModuleSelection:
    """The family member of ``width`` as a selection of ``space`` (an error where it is not one)."""
    member = simple_classifier(tuple(space.space.input_shape), 10).scaled(width)
    stages = tuple(b.out_channels for b in member.blocks[1::2])
    # two MBConv (e3) layers per stage, k3 then k5, as simple_classifier builds them; the rest skipped
    per_stage = [len(slots) for slots in space.stages()]
    if len(per_stage) != len(stages) or min(per_stage) < 2:
        raise EdgefabError(f"space {space.name} does not hold the simple family (stages {per_stage})")
    kernels = [b.kernel for b in member.blocks[1::2]]
    choices = [slot.fixed for slot in space.space.slots]
    for slots, kernel in zip(space.stages(), kernels, strict=True):
        for position, slot in enumerate(slots):
            choices[slot] = f"k{kernel}_e3" if position < 2 else "skip"
    selection = ModuleSelection(tuple(choices), stages, member.stem_channels, member.head_channels)
    space.check(selection)
    return selection


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factory", required=True)
    parser.add_argument("--judge-extra", help="a .npz of digits no method saw (benchmarks/extra_digits.py)")
    args = parser.parse_args()
    data, factory = load_dataset("mnist"), load_factory(args.factory)
    train, val = factory_split(factory, data)
    _, _, judge = judging_split(factory, train, val, "held-out")
    if args.judge_extra:
        judge = with_extra(judge, load_dataset(args.judge_extra))
    model = factory_latency_model(load_target("host"), factory, SilentProgress())
    task, space = parse_task("all", data.classes), factory.space
    try:
        named = [(f"w{w}", family_selection(space, w)) for w in WIDTHS]
    except EdgefabError as exc:  # still worth its smallest and largest
        print(f"{exc}: its smallest and largest only")
        named = []
    named += [("smallest", space.smallest()), ("largest", space.largest())]
    print(f"{factory.meta['space']}: all ten digits, judged on {len(judge)} images\n")
    print("| sub-network | inherited accuracy | predicted host ms |\n|---|---|---|")
    for name, selection in named:
        network = subnetwork(factory.supernet, selection, train, factory.prep)
        accuracy = task_val_accuracy(network, judge, task, factory.prep)
        print(f"| {name} | {100 * accuracy:.2f} % | {model.total_ms(space.arch(selection, 10)):.4f} |")


if __name__ == "__main__":
    main()

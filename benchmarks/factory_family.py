"""The from-scratch family inside a factory: each member as a sub-network with inherited weights.

For a factory whose space holds members of the simple MobileNetV2-style family (all of them in
``digits-28-wide``; :meth:`FactorySpace.holding` finds them), this prints each held member's
accuracy as a sub-network of the supernet (inherited weights, batch norms recalibrated, as
customisation scores candidates) beside its predicted latency on `host`, then the factory's anchors
(the sub-networks its training visited at every step, if any) and the space's smallest and largest.
Read it beside ``benchmarks/factory.py``'s scratch accuracies (the same judging images): it says
whether weight sharing costs the family accuracy.

    python benchmarks/factory_family.py --factory PATH [--judge-extra extra_digits.npz]
"""

from __future__ import annotations

import argparse

from factory import judging_split, task_val_accuracy, with_extra

from edgefab.data import load_dataset
from edgefab.data.tasks import parse_task
from edgefab.factory.customize import anchor_selections
from edgefab.factory.presets import WIDTHS, simple_classifier
from edgefab.factory.scoring import subnetwork
from edgefab.factory.store import load_factory
from edgefab.pipeline.common import SilentProgress
from edgefab.pipeline.factory_build import factory_latency_model, factory_split
from edgefab.targets import load_target


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
    family = simple_classifier(tuple(space.space.input_shape), 10)
    held = [(f"w{w}", space.holding(family.scaled(w))) for w in WIDTHS]
    named = [(name, selection) for name, selection in held if selection is not None]
    if len(named) < len(held):
        print(f"space {space.name} holds {len(named)} of the family's {len(held)} members")
    held_anchors = {selection for _, selection in named}
    named += [(f"anchor: {a.notation()}", a) for a in anchor_selections(factory) if a not in held_anchors]
    named += [("smallest", space.smallest()), ("largest", space.largest())]
    print(f"{factory.meta['space']}: all ten digits, judged on {len(judge)} images\n")
    print("| sub-network | inherited accuracy | predicted host ms |\n|---|---|---|")
    for name, selection in named:
        network = subnetwork(factory.supernet, selection, train, factory.prep)
        accuracy = task_val_accuracy(network, judge, task, factory.prep)
        print(f"| {name} | {100 * accuracy:.2f} % | {model.total_ms(space.arch(selection, 10)):.4f} |")


if __name__ == "__main__":
    main()

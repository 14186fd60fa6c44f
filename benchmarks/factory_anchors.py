"""Train a `digits-28-drop` factory anchored just under the scratch family's latencies (`anc4`).

`digits-28-drop` holds only the family's w1.0, so ``edgefab factory train --anchors`` anchors that
one alone. This names the others: two-stage networks just under w0.35's and w0.5's host latency
and a three-stage one just under w1.5's, with w1.0, in the order `anc4` was trained with
(BENCHMARKS.md, issue 5, "A droppable third stage and anchors": 1987 s on 2 cores). Judge the
result with ``factory_family.py`` and ``factory.py``.

    python benchmarks/factory_anchors.py --out anc4 [--device cpu] [--seed 0]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from edgefab.errors import EdgefabError
from edgefab.factory.space import ModuleSelection
from edgefab.pipeline.factory_train import FactoryJob, train_factory

# (layer choices, stage widths, stem, head); predicted host ms on the machine that chose them
UNDER_SCRATCH = (
    ("k3_e1 k3_e3 skip skip k5_e3 k5_e3 skip k3_e3 skip", (16, 24, 0), 8, 96),  # 0.0315; w0.35 0.0335
    ("k3_e1 k3_e3 k3_e3 skip k5_e3 k5_e3 skip k3_e3 skip", (16, 24, 0), 8, 96),  # 0.0365; w0.5 0.0376
    ("k3_e1 k3_e3 k3_e3 skip k5_e3 k5_e3 skip k3_e3 skip", (24, 40, 0), 16, 256),  # the family's w1.0
    ("k3_e1 k3_e6 k3_e3 skip k5_e6 k5_e3 skip k3_e3 k3_e3", (24, 40, 80), 16, 256),  # 0.0786; w1.5 0.0816
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    named = tuple(
        ModuleSelection(tuple(choices.split()), widths, stem, head).to_dict()
        for choices, widths, stem, head in UNDER_SCRATCH
    )
    job = FactoryJob(out=Path(args.out), space="digits-28-drop", extra_anchors=named,
                     device=args.device, seed=args.seed)  # fmt: skip
    start = time.perf_counter()
    try:
        out, meta = train_factory(job)
    except EdgefabError as exc:  # e.g. --out is a folder that is not a factory, or no such --device
        parser.error(str(exc))
    print(f"{out}: {len(meta['training']['anchors'])} anchors, {time.perf_counter() - start:.0f} s "
          f"({meta['training']['seconds']:.0f} s supernet)")  # fmt: skip


if __name__ == "__main__":
    main()

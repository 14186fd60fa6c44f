"""Flow-guided distillation variants side by side, from one SlimFlow checkpoint's 2-flow and pairs.

Run: nice -n 10 python benchmarks/slimflow_levers.py /tmp/slimflow/slim NAME [--loss lpips] [--guide-weight 2]
     [--lr 2e-3] [--steps 2000]   (one variant per call; a line of JSON appended to --log)

Each variant distils the checkpoint's ``two_flow`` on its ``pairs.npz`` (edgefab.flow.distill) and is
scored on 1,000 one-step samples of the fixed scoring noise with three checks:

- ``fd``: Frechet distance on the Frechet classifier's features (edgefab.flow.frechet, as in the
  report); compare only within one cache, since the classifier is trained per cache;
- ``fd_perceptual``: Frechet distance on the pooled four layers of the PerceptualNet
  (edgefab.flow.perceptual), a second network that is not the Frechet classifier (it IS the one the
  lpips loss trains on, so it favours lpips if anything);
- ``mse_vs_teacher``: mean squared error against the teacher's ``--teacher-steps`` Euler image from
  the same noise (fresh noise, never the pairs'), in [-1, 1] units, both clipped.

``--only-reference`` scores the teacher and the checkpoint's own two students instead.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from edgefab.flow.checkpoint import SLIMFLOW, TEACHER, load_checkpoint
from edgefab.flow.data import load_flow_data
from edgefab.flow.distill import DISTILL_LR, DistillOptions, flow_guided_distill, make_distance
from edgefab.flow.evaluate import NOISE_SEED, make_scorer
from edgefab.flow.frechet import frechet_distance
from edgefab.flow.perceptual import PerceptualDistance, PerceptualNet, perceptual_net
from edgefab.flow.rectified import OptimOptions, euler_sample, noise_like
from edgefab.flow.reflow import Pairs


def pooled_features(net: PerceptualNet, images: torch.Tensor) -> np.ndarray:
    """Every PerceptualNet layer averaged over positions, concatenated (176-d on the digits)."""
    with torch.no_grad():
        parts = [
            torch.cat([f.mean((2, 3)) for f in net.features(c)], 1) for c in images.clamp(-1, 1).split(500)
        ]
    return torch.cat(parts).double().numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("name")
    parser.add_argument("--loss", default="pseudo-huber")
    parser.add_argument("--guide-weight", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=DISTILL_LR)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--teacher-steps", type=int, default=32)
    parser.add_argument("--only-reference", action="store_true")
    parser.add_argument("--log", type=Path, default=Path("slimflow_levers.jsonl"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    slim = load_checkpoint(args.checkpoint, SLIMFLOW, "this benchmark")
    teacher = load_checkpoint(Path(slim.meta["teacher"]["path"]), TEACHER, "this benchmark").models[
        "velocity"
    ]
    data = load_flow_data(slim.meta["data"]["spec"])
    scorer = make_scorer(data, args.samples)
    perceptual = perceptual_net(data.dataset)
    noise = noise_like(scorer.count, teacher.config.image_shape, NOISE_SEED)
    reference = euler_sample(teacher, noise, args.teacher_steps)
    order = torch.randperm(len(data.images), generator=torch.Generator().manual_seed(1))
    real = pooled_features(perceptual.net, data.images[order[: scorer.count]])

    def checks(samples: torch.Tensor) -> dict[str, float]:
        return {
            "fd": round(frechet_distance(scorer.net.embed(samples), scorer.reference), 2),
            "fd_perceptual": round(frechet_distance(pooled_features(perceptual.net, samples), real), 3),
            "mse_vs_teacher": round(float((samples.clamp(-1, 1) - reference.clamp(-1, 1)).pow(2).mean()), 4),
        }

    result = {"name": args.name, "args": {k: str(v) for k, v in vars(args).items()}, "floor": scorer.floor}
    if args.only_reference:
        result["teacher"] = checks(reference)
        for key, model in slim.models.items():
            result[key] = checks(euler_sample(model, noise, 1))
    else:
        pairs = Pairs.load(args.checkpoint / "pairs.npz")
        options = DistillOptions(
            OptimOptions(args.steps, lr=args.lr, warmup=50), args.guide_weight, loss=args.loss
        )
        distance = make_distance(
            args.loss, PerceptualDistance(perceptual.net) if "lpips" in args.loss else None
        )
        start = time.perf_counter()
        model, _ = flow_guided_distill(slim.models["two_flow"], pairs, options, None, distance)
        result["seconds"] = round(time.perf_counter() - start, 1)
        result["one_step"] = checks(euler_sample(model, noise, 1))
    print(json.dumps(result))
    with open(args.log, "a") as log:
        log.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()

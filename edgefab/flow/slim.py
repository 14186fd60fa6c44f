"""``edgefab flow slim``: SlimFlow on a rectified-flow teacher.

1. Reflow pairs: seeded noise z and the teacher's ODE solution x from it (Euler N steps or RK45).
2. Annealing Reflow (:mod:`edgefab.flow.reflow`): a randomly initialised student of ``width`` (its
   first, highest-resolution level at ``first_width``) learns the pairs, its noise annealed from
   independent to the teacher's coupling: the 2-flow.
3. Flow-Guided Distillation (:mod:`edgefab.flow.distill`): the 2-flow becomes a one-step generator,
   trained with pseudo-Huber or the LPIPS-style distance of :mod:`edgefab.flow.perceptual` (whose
   network, trained here on the teacher's data, is copied into the checkpoint).
4. Both students are scored at one step (Frechet distance on the project's own digit features,
   with the real-vs-real floor) and drawn as PNG grids; the checkpoint (kind ``slimflow``) holds
   both, the pairs and the teacher's path.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from edgefab.devices import deterministic_kernels, resolve_device
from edgefab.errors import EdgefabError
from edgefab.flow.checkpoint import (
    SLIMFLOW,
    TEACHER,
    check_checkpoint_folder,
    load_checkpoint,
    save_checkpoint,
)
from edgefab.flow.data import FlowData, load_flow_data
from edgefab.flow.distill import DistillOptions, check_loss, flow_guided_distill, make_distance
from edgefab.flow.evaluate import make_scorer, save_grid, score
from edgefab.flow.perceptual import CHANNELS, STRIDES, PerceptualDistance, perceptual_net
from edgefab.flow.reflow import AnnealOptions, Pairs, annealing_reflow, generate_pairs, parse_solver
from edgefab.flow.unet import UNetConfig, VelocityUNet, check_config, parameter_count
from edgefab.runtime.package import sha256_file
from edgefab.threads import torch_threads

PAIRS_FILE = "pairs.npz"
PERCEPTUAL_FILE = "perceptual.safetensors"
DISTANCES = {
    "pseudo-huber": "pseudo-Huber (c = 0.00054 sqrt(dims))",
    "lpips": f"LPIPS-style, on edgefab's own PerceptualNet ({PERCEPTUAL_FILE}); LPIPS's weights "
    "cannot be downloaded here",
    "lpips+pseudo-huber": f"LPIPS-style on edgefab's own PerceptualNet ({PERCEPTUAL_FILE}) + pseudo-Huber",
}
# Reflow pairs drawn from the teacher. 12,000 instead of 3,000 cost 4x the teacher time and gained
# nothing (the students' one-step distances stayed within noise; BENCHMARKS.md, SlimFlow).
PAIRS = 3000
# The first level (14x14 on the digits) at 0.75 instead of 0.5: 24/32/32 channels, 0.316 of the
# teacher's parameters, scored 110.7 against 131-135 at 16/32/32 (BENCHMARKS.md, SlimFlow).
FIRST_WIDTH = 0.75
# The teacher's adaptive RK45 (about 50 evaluations) for the pairs, not 16 Euler steps: a student
# cannot be better than its pairs, and at the default length RK45 pairs scored 79.9 against 97.5
# (Euler 16) for 92 s more of the teacher; at four times the steps 52.3 against 71.5 (BENCHMARKS.md,
# SlimFlow, fifth part).
SOLVER = "rk45"


@dataclass(frozen=True)
class SlimOptions:
    """What ``edgefab flow slim`` was asked for."""

    teacher: Path
    out: Path = Path("flows/slim")
    width: float = 0.5
    first_width: float = FIRST_WIDTH  # the first (highest-resolution) level's width
    pairs: int = PAIRS
    solver: str = SOLVER  # how the teacher's pairs are solved: euler:N or rk45
    anneal: AnnealOptions = field(default_factory=AnnealOptions)
    distill: DistillOptions = field(default_factory=DistillOptions)
    eval_samples: int = 1000  # per set for the Frechet distance (0: skip scoring)
    seed: int = 0
    threads: int = 1
    device: str = "cpu"  # auto, cpu, cuda or cuda:N (edgefab.devices); scoring runs on the CPU


def slim(options: SlimOptions, progress: Any) -> tuple[Path, dict[str, Any]]:
    """Run SlimFlow on ``options.teacher``; returns (checkpoint folder, summary)."""
    teacher_ckpt = load_checkpoint(options.teacher, TEACHER, "flow slim")
    device = resolve_device(options.device)
    teacher = teacher_ckpt.models["velocity"].to(device)
    config = student_config(teacher.config, options.width, options.first_width)  # checked before any work
    solver, solver_steps = parse_solver(options.solver)
    check_checkpoint_folder(options.out)
    check_loss(options.distill.loss)
    if options.pairs < options.anneal.optim.batch_size:
        raise EdgefabError(
            f"--pairs {options.pairs} is below the batch size {options.anneal.optim.batch_size}"
        )
    seconds: dict[str, float] = {}
    data = load_flow_data(teacher_ckpt.meta["data"]["spec"])
    with (
        torch_threads(options.threads),
        deterministic_kernels(device),
        tempfile.TemporaryDirectory(prefix="edgefab-slim-") as work,
    ):
        distance, perceptual = _distance(data, options, device, progress)  # data without classes fails first
        progress.stage(f"reflow pairs: {options.pairs} teacher samples ({options.solver})")
        start = time.perf_counter()
        image_shape = tuple(teacher.config.image_shape)
        pairs = generate_pairs(
            teacher, options.pairs, image_shape, solver, solver_steps, options.seed, progress.advance
        )
        seconds["pairs"] = time.perf_counter() - start
        two_flow, reflow_losses = _anneal(config, pairs, options, device, progress, seconds)
        distill = options.distill
        progress.stage(f"flow-guided distillation ({distill.optim.steps} steps, {distill.loss})")
        start = time.perf_counter()
        one_step, distill_losses = flow_guided_distill(
            two_flow, pairs, options.distill, progress.advance, distance
        )
        seconds["distill"] = time.perf_counter() - start
        two_flow, one_step, teacher = two_flow.cpu(), one_step.cpu(), teacher.cpu()
        scores = _score(data, {"two_flow": two_flow, "one_step": one_step}, options, progress)
        progress.stage(f"writing {options.out}")
        extra = {PAIRS_FILE: pairs.save(Path(work) / PAIRS_FILE)}
        if perceptual:
            extra[PERCEPTUAL_FILE] = Path(perceptual.pop("cache"))
        for name, model in (("two_flow", two_flow), ("one_step", one_step)):
            extra[f"{name}.png"] = save_grid(model, Path(work) / f"{name}.png", "euler", 1)
        summary = _summary(
            options, teacher_ckpt, teacher, one_step, pairs, seconds, scores, reflow_losses, distill_losses
        )
        summary["distillation"]["perceptual"] = perceptual
        summary["device"] = str(device)
        path = save_checkpoint(
            options.out, SLIMFLOW, {"two_flow": two_flow, "one_step": one_step}, summary, extra
        )
    return path, summary


def student_config(teacher: UNetConfig, width: float, first_width: float) -> UNetConfig:
    """The student's layout: the teacher's base channels times ``width``, the first level's times
    ``first_width``; stored as explicit channels at width 1, so checkpoints need nothing new."""
    base = teacher.base_channels
    check_config(UNetConfig(teacher.image_shape, base, width))
    try:
        check_config(UNetConfig(teacher.image_shape, base[:1], first_width))
    except EdgefabError as exc:
        raise EdgefabError(f"--first-width: {exc}") from None
    channels = (round(base[0] * first_width), *(round(c * width) for c in base[1:]))
    return UNetConfig(teacher.image_shape, channels, 1.0)


def _anneal(
    config: UNetConfig, pairs: Pairs, options: SlimOptions, device: torch.device, progress: Any, seconds: dict
) -> tuple:
    progress.stage(
        f"annealing reflow: {list(config.channels)}-channel student, {options.anneal.optim.steps} steps "
        f"(b 1 -> 0 over {options.anneal.anneal_steps}, {options.anneal.schedule}, {device})"
    )
    start = time.perf_counter()
    torch.manual_seed(options.seed + 1)
    student = VelocityUNet(config).to(device)  # random initialisation, as SlimFlow's students
    two_flow, losses = annealing_reflow(student, pairs, options.anneal, progress.advance)
    seconds["annealing_reflow"] = time.perf_counter() - start
    return two_flow, losses


def _distance(
    data: FlowData, options: SlimOptions, device: torch.device, progress: Any
) -> tuple[Any, dict[str, Any] | None]:
    """The distillation distance, and what its perceptual network is (None for pseudo-Huber)."""
    loss = options.distill.loss
    if "lpips" not in loss:
        return make_distance(loss), None
    progress.stage("perceptual network for the distillation distance (trained once, then cached)")
    start = time.perf_counter()
    trained = perceptual_net(data.dataset)
    about = {
        "file": PERCEPTUAL_FILE,
        "network": f"edgefab PerceptualNet: conv {list(CHANNELS)} strides {list(STRIDES)}, SiLU, "
        "global pool, linear; not the Frechet classifier",
        "accuracy": round(trained.accuracy, 4),
        "sha256": sha256_file(Path(trained.path)),
        "cached": trained.cached,
        "seconds": round(time.perf_counter() - start, 1),
        "cache": trained.path,
    }
    return make_distance(loss, PerceptualDistance(trained.net).to(device)), about


def _score(
    data: FlowData, models: dict[str, VelocityUNet], options: SlimOptions, progress: Any
) -> dict[str, Any]:
    if options.eval_samples <= 0:
        return {}
    progress.stage(f"scoring: Frechet distance of {options.eval_samples} one-step samples per model")
    scorer = make_scorer(data, options.eval_samples)
    result = {name: score(scorer, model, "euler", 1)["frechet_distance"] for name, model in models.items()}
    return {**scorer.to_dict(), "one_step": result}


def _mean(values: list[float]) -> float:
    return round(sum(values) / max(1, len(values)), 4)


def _summary(options, teacher_ckpt, teacher, one_step, pairs, seconds, scores, reflow_losses, distill_losses):
    anneal, distill = options.anneal, options.distill
    return {
        "teacher": {
            "path": str(Path(teacher_ckpt.path).resolve()),
            "sha256": teacher_ckpt.meta["models"]["velocity"]["sha256"],
            "parameters": parameter_count(teacher),
        },
        "data": teacher_ckpt.meta["data"],
        "width": options.width,
        "first_width": options.first_width,
        "channels": list(one_step.config.channels),
        "parameters": {"one_step": parameter_count(one_step), "teacher": parameter_count(teacher)},
        "pairs": {
            "count": len(pairs.noise),
            "solver": pairs.solver,
            "teacher_evaluations": pairs.evaluations,
        },
        "annealing_reflow": {
            **anneal.optim.__dict__,
            "anneal_steps": anneal.anneal_steps,
            "schedule": anneal.schedule,
            "flip": anneal.flip,
            "loss_last_100": _mean(reflow_losses[-100:]),
        },
        "distillation": {
            **distill.optim.__dict__,
            "guide_weight": distill.guide_weight,
            "t_range": [distill.t_low, distill.t_high],
            "loss": distill.loss,
            "distance": DISTANCES[distill.loss],
            "flip": distill.flip,
            "loss_last_100": _mean(distill_losses[-100:]),
        },
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "frechet": scores,
    }

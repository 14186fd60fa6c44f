"""``edgefab flow report``: sample grids, Frechet distance, parameters, MACs and host latency of flows.

For a SlimFlow checkpoint the rows are the teacher at 1 and at many Euler steps (and RK45 on
request), the annealed 2-flow student at 1 step and the SlimFlow student at 1 step; for a teacher,
its own rows. Every model is scored on the same seeded noise against the same real images.

MACs are counted on the exported ONNX graph of one velocity evaluation (``edgefab.export.stats``)
and multiplied by the evaluations per sample; host latency is ONNX Runtime's median for one
evaluation at batch 1 on ``threads`` threads, times the evaluations (every step costs the same
forward pass).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgefab.errors import EdgefabError
from edgefab.export.onnx_export import export_onnx
from edgefab.export.stats import model_stats
from edgefab.flow.checkpoint import (
    SLIMFLOW,
    TEACHER,
    FlowCheckpoint,
    is_flow_checkpoint,
    load_any,
    load_checkpoint,
)
from edgefab.flow.data import load_flow_data
from edgefab.flow.evaluate import Scorer, make_scorer, real_grid, save_grid, score
from edgefab.flow.rectified import noise_like
from edgefab.flow.unet import VelocityUNet, parameter_count
from edgefab.pipeline.common import Progress, SilentProgress, work_folder
from edgefab.runtime.grid import save_png_grid
from edgefab.targets.latency import measure_onnx
from edgefab.threads import torch_threads

REPORT_FILE = "report.json"


@dataclass(frozen=True)
class ReportOptions:
    """What ``edgefab flow report`` was asked for."""

    path: Path
    samples: int = 1000  # per set, for the Frechet distance
    many_steps: int = 32  # the teacher's "many Euler steps" row
    rk45: bool = False  # also the teacher with SciPy's adaptive RK45
    out: Path | None = None  # grids and report.json (default: <checkpoint>/report)
    threads: int = 1


class VelocityAtZero(nn.Module):
    """v(x, 0): one velocity evaluation as a single-input graph, for MACs and latency."""

    def __init__(self, velocity: VelocityUNet):
        super().__init__()
        self.velocity = velocity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.velocity(x, torch.zeros(x.shape[0]))


def forward_cost(model: VelocityUNet, work: Path, threads: int) -> dict[str, Any]:
    """MACs of one evaluation (ONNX graph) and ONNX Runtime's median ms for it at batch 1."""
    shape = (1, *model.config.image_shape)
    path = work / f"velocity-{id(model)}.onnx"
    proto = export_onnx(VelocityAtZero(model).eval(), shape, path)
    name = proto.graph.input[0].name
    figure = measure_onnx(path, {name: noise_like(1, shape[1:], 0).numpy()}, threads=threads, runs=50)
    return {"macs": model_stats(proto)["macs"], "ms": figure.ms, "method": figure.method}


def _rows(
    checkpoint: FlowCheckpoint, options: ReportOptions
) -> list[tuple[str, str, VelocityUNet, str, int]]:
    """(row name, model key, model, solver, steps) of every row to measure."""
    rows = []
    if checkpoint.kind == TEACHER:
        teacher = checkpoint.models["velocity"]
    else:
        teacher = _recorded_teacher(checkpoint)
    rows += [("teacher", "teacher", teacher, "euler", 1)]
    rows += [("teacher", "teacher", teacher, "euler", options.many_steps)]
    if options.rk45:
        rows.append(("teacher", "teacher", teacher, "rk45", 0))
    if checkpoint.kind == SLIMFLOW:
        rows.append(("2-flow (annealing reflow)", "two_flow", checkpoint.models["two_flow"], "euler", 1))
        rows.append(("SlimFlow (+ distillation)", "one_step", checkpoint.models["one_step"], "euler", 1))
    return rows


def _recorded_teacher(checkpoint: FlowCheckpoint) -> VelocityUNet:
    """The teacher a SlimFlow checkpoint was made from, refused if it is gone or has changed since."""
    recorded = checkpoint.meta["teacher"]
    path = Path(recorded["path"])
    if not is_flow_checkpoint(path):
        raise EdgefabError(
            f"the teacher {path} that {checkpoint.path} was made from is gone; the report compares against it"
        )
    teacher = load_checkpoint(path, TEACHER, "the report's teacher rows")
    if teacher.meta["models"]["velocity"]["sha256"] != recorded["sha256"]:
        raise EdgefabError(
            f"the teacher {path} has changed since {checkpoint.path} was made; run flow slim again"
        )
    return teacher.models["velocity"]


def flow_report(options: ReportOptions, progress: Progress | None = None) -> dict[str, Any]:
    """Measure every row, write grids and ``report.json`` into the report folder; returns the report."""
    progress = progress or SilentProgress()
    checkpoint = load_any(options.path)
    out = Path(options.out) if options.out else Path(options.path) / "report"
    rows = _rows(checkpoint, options)
    with torch_threads(options.threads), work_folder() as work:
        progress.stage("training or loading the feature classifier; real-vs-real floor")
        data = load_flow_data(checkpoint.meta["data"]["spec"])
        scorer = make_scorer(data, options.samples)
        real_grid(data, out / "real.png")
        costs: dict[str, dict[str, Any]] = {}
        results = []
        for index, (label, key, model, solver, steps) in enumerate(rows):
            progress.stage(f"{label}: {scorer.count} samples")
            if key not in costs:
                costs[key] = forward_cost(model, work, options.threads)
            results.append(_measure(label, key, model, solver, steps, scorer, costs[key], out))
            progress.advance(index + 1, len(rows))
    report = {
        "checkpoint": str(options.path),
        "kind": checkpoint.kind,
        "scoring": scorer.to_dict(),
        "rows": results,
        "latency_method": "ONNX Runtime, one evaluation at batch 1, median of 50, times the evaluations",
        "goals": goals(results) if checkpoint.kind == SLIMFLOW else None,
        "folder": str(out),
    }
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report


def _measure(label, key, model, solver, steps, scorer: Scorer, cost, out: Path) -> dict[str, Any]:
    result = score(scorer, model, solver, steps)
    grid = out / f"{key}-{solver}{steps or ''}.png"
    if solver == "euler":
        save_grid(model, grid, solver, steps)
    else:
        save_png_grid(((result["samples"][:64].clamp(-1, 1) + 1) / 2).numpy(), grid, columns=8)
    evaluations = result["evaluations"]
    return {
        "model": label,
        "key": key,
        "solver": solver if solver == "rk45" else f"euler:{steps}",
        "evaluations": evaluations,
        "frechet_distance": result["frechet_distance"],
        "parameters": parameter_count(model),
        "macs_per_sample": int(round(cost["macs"] * evaluations)),
        "host_ms_per_sample": round(cost["ms"] * evaluations, 4),
        "grid": str(grid),
    }


def goals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's three goals for the SlimFlow student at one step, each met or not, with the figures."""
    by_key = {(r["key"], r["solver"]): r for r in rows}
    student = by_key[("one_step", "euler:1")]
    teacher_one = by_key[("teacher", "euler:1")]
    euler = [r for r in rows if r["key"] == "teacher" and r["solver"].startswith("euler:")]
    teacher_many = max(euler, key=lambda r: r["evaluations"])  # the many-step Euler row, not RK45
    ratio_one = teacher_one["frechet_distance"] / max(student["frechet_distance"], 1e-9)
    ratio_many = student["frechet_distance"] / max(teacher_many["frechet_distance"], 1e-9)
    ratio_params = student["parameters"] / teacher_many["parameters"]
    return {
        "beats_teacher_one_step_widely": {
            "teacher_1_over_student": round(ratio_one, 2),
            "wanted": ">= 2",
            "met": ratio_one >= 2,
        },
        "within_1.5x_of_teacher_many_steps": {
            "student_over_teacher_many": round(ratio_many, 3),
            "teacher_row": f"teacher {teacher_many['solver']}",
            "wanted": "<= 1.5",
            "met": ratio_many <= 1.5,
        },
        "at_most_a_third_of_parameters": {
            "ratio": round(ratio_params, 3),
            "wanted": "<= 0.333",
            "met": ratio_params <= 1 / 3,
        },
    }

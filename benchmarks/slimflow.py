"""SlimFlow on the embedded digits: teacher at 1 and many Euler steps (and RK45), 2-flow and SlimFlow
students at one step; Frechet distance, parameters, MACs, host latency, and the issue's goals.

Run: nice -n 10 python benchmarks/slimflow.py --work /tmp/slimflow [--teacher PATH] [--json slimflow.json]

Without ``--teacher`` it trains one first, exactly as ``edgefab flow train`` with the same options
(``--teacher-steps``). Then ``edgefab flow slim`` (``edgefab.flow.slim.slim``) and ``edgefab flow
report --rk45`` (``edgefab.pipeline.flow_report.flow_report``) with this script's options. Torch runs
on one thread (a shared 2-core machine); latency is ONNX Runtime at batch 1 on one thread.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from edgefab.flow.distill import DISTILL_LR, DistillOptions
from edgefab.flow.rectified import OptimOptions
from edgefab.flow.reflow import AnnealOptions
from edgefab.flow.slim import FIRST_WIDTH, PAIRS, SOLVER, SlimOptions, slim
from edgefab.flow.teacher import TeacherOptions, train_teacher
from edgefab.pipeline.flow_report import ReportOptions, flow_report


class Log:
    """A Progress that prints stages and every tenth of a stage, with elapsed seconds."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.last = -1

    def stage(self, text: str) -> None:
        self.last = -1
        print(f"[{time.perf_counter() - self.start:6.0f} s] {text}", flush=True)

    def advance(self, done: int, total: int) -> None:
        tenth = 10 * done // max(1, total)
        if tenth != self.last:
            self.last = tenth
            print(f"[{time.perf_counter() - self.start:6.0f} s]   {done}/{total}", flush=True)


def _row(cells: list) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def table(report: dict) -> str:
    """The markdown table for BENCHMARKS.md."""
    lines = [
        _row(
            [
                "model",
                "sampler",
                "evaluations",
                "Frechet distance",
                "parameters",
                "MACs / sample",
                "host ms / sample",
            ]
        ),
        _row(["---"] * 7),
    ]
    for row in report["rows"]:
        lines.append(
            _row(
                [
                    row["model"], row["solver"], f"{row['evaluations']:g}", f"{row['frechet_distance']:.2f}",
                    f"{row['parameters']:,}", f"{row['macs_per_sample'] / 1e6:,.1f} M",
                    f"{row['host_ms_per_sample']:.3f}",
                ]
            )
        )  # fmt: skip
    scoring = report["scoring"]
    lines.append("")
    lines.append(
        f"Real-vs-real floor: {scoring['real_vs_real_floor']:.2f} ({scoring['samples']} images per set); "
    )
    lines.append(
        f"feature classifier accuracy {100 * scoring['feature_net_accuracy']:.1f} % on held-out digits."
    )
    for goal, value in (report["goals"] or {}).items():
        figures = ", ".join(f"{k} {v}" for k, v in value.items() if k != "met")
        lines.append(f"- {goal}: {'met' if value['met'] else 'NOT met'} ({figures})")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/slimflow"))
    parser.add_argument("--teacher", type=Path, help="an existing teacher checkpoint (default: train one)")
    parser.add_argument("--teacher-steps", type=int, default=1500)
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--first-width", type=float, default=FIRST_WIDTH)
    parser.add_argument("--pairs", type=int, default=PAIRS)
    parser.add_argument("--solver", default=SOLVER)
    parser.add_argument("--reflow-steps", type=int, default=3000)
    parser.add_argument("--anneal-steps", type=int, default=1500)
    parser.add_argument("--schedule", default="linear")
    parser.add_argument("--distill-steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64, help="pairs per step of both stages")
    parser.add_argument("--distill-lr", type=float, default=DISTILL_LR)
    parser.add_argument("--guide-weight", type=float, default=DistillOptions.guide_weight)
    parser.add_argument(
        "--loss", default=DistillOptions.loss, help="lpips, pseudo-huber or lpips+pseudo-huber"
    )
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--many-steps", type=int, default=32)
    parser.add_argument("--no-rk45", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="where to train: cpu, cuda or auto")
    parser.add_argument("--no-report", action="store_true", help="train only (e.g. on a GPU machine)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    log, seconds = Log(), {}
    teacher = args.teacher
    if teacher is None:
        start = time.perf_counter()
        options = TeacherOptions(
            out=args.work / "teacher",
            optim=OptimOptions(args.teacher_steps, seed=args.seed),
            device=args.device,
        )
        teacher, _ = train_teacher(options, log)
        seconds["teacher"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    anneal = AnnealOptions(
        OptimOptions(args.reflow_steps, args.batch_size, seed=args.seed), args.anneal_steps, args.schedule
    )
    distill = DistillOptions(
        OptimOptions(args.distill_steps, args.batch_size, lr=args.distill_lr, warmup=50, seed=args.seed),
        args.guide_weight,
        loss=args.loss,
    )
    options = SlimOptions(
        teacher,
        args.work / "slim",
        args.width,
        args.first_width,
        args.pairs,
        args.solver,
        anneal,
        distill,
        0,
        args.seed,
        device=args.device,
    )
    path, summary = slim(options, log)
    seconds["slim"] = round(time.perf_counter() - start, 1)
    if args.no_report:
        print(json.dumps({"seconds": seconds, "slim_seconds": summary["seconds"]}))
        return
    start = time.perf_counter()
    report = flow_report(ReportOptions(path, args.samples, args.many_steps, not args.no_rk45), log)
    seconds["report"] = round(time.perf_counter() - start, 1)
    result = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "seconds": seconds,
        "slim": summary,
        "report": report,
    }
    print(table(report))
    print(json.dumps({"seconds": seconds, "slim_seconds": summary["seconds"]}))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

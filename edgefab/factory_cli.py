"""Command-line pieces for the model factory: ``edgefab factory train``, ``assemble`` and ``show``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from edgefab.console import JsonOption, RichProgress, emit, key_value_table, user_errors

# FactoryJob's defaults, kept here so that --help needs no torch import
FACTORY_POOL_SAMPLES = 1000
FACTORY_ASSEMBLER_TARGETS = "pixel,note10"
FACTORY_SHIFT = 2
FACTORY_EPOCHS = 40  # FactoryJob's; the shipped factory's (tests/test_factory.py checks all three agree)
FACTORY_SPREAD = 0  # FactoryJob's spread_subnets; the shipped factory's (the same test)

# options that `train` and `assemble` share (the pool and the assembler's latency targets)
PoolOption = Annotated[int, typer.Option(min=8, help="Sub-networks scored to train the assembler.")]
PoolSamplesOption = Annotated[
    int, typer.Option(min=1, help="Validation images each pool member is scored on.")
]
TargetsOption = Annotated[
    str,
    typer.Option("--targets", help="Targets (comma-separated) whose latency budgets the assembler learns."),
]

factory_app = typer.Typer(
    help="NN-Factory: a pretrained modular supernet and its module assembler.", no_args_is_help=True
)


def _names(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise typer.BadParameter("name at least one target, e.g. --targets pixel,note10")
    return names


def _dropped_note(widths: list[list[int]]) -> str:
    return " (0: the last stage dropped)" if widths and widths[-1][:1] == [0] else ""


def _anchors_note(training: dict[str, Any]) -> str:
    count, labels = len(training.get("anchors", ())), training.get("anchor_label_weight", 0)
    if not count:
        return ""
    weighted = f" (labels weighted {labels})" if labels else ""
    return f" with {count} anchor(s) trained at every step{weighted}"


def _summary_rows(path: Path, meta: dict[str, Any]) -> list[tuple[str, Any]]:
    data, training, pool = meta["data"], meta["training"], meta["pool"]
    return [
        ("factory", path),
        (
            "space",
            f"{meta['space']} (stage widths {meta['widths']}{_dropped_note(meta['widths'])}, stem "
            f"{meta.get('stem_widths') or 'fixed'}, head {meta.get('head_widths') or 'fixed'})",
        ),
        ("data", f"{data['name']}: {len(data['classes'])} classes, {data['train_samples']} training images"),
        (
            "training",
            f"{training['epochs']} epochs sandwich rule{_anchors_note(training)}, shifts up to "
            f"{training.get('shift', 0)} px, "
            f"{training['processes']} process(es) on {training.get('device', 'cpu')}, "
            f"{training['seconds']:.0f} s",
        ),  # fmt: skip
        (
            "pool",
            f"{pool['size']} sub-networks scored on {pool['scored_on']} images in {pool['seconds']:.0f} s",
        ),
        (
            "all-class accuracy",
            f"smallest {100 * pool['accuracy_smallest']:.2f} %, median "
            f"{100 * pool['accuracy_median']:.2f} %, largest {100 * pool['accuracy_largest']:.2f} %",
        ),  # fmt: skip
        (
            "assembler",
            f"trained on {', '.join(meta['assembler']['targets'])} latency models, "
            f"{meta['assembler']['steps']} steps",
        ),  # fmt: skip
    ]


@factory_app.command("train")
@user_errors
def train(
    data: Annotated[
        str, typer.Option(help="mnist (embedded), a .npz file, an image folder, or torchvision:NAME.")
    ] = "mnist",
    out: Annotated[Path, typer.Option("--out", "-o", help="Factory folder to write.")] = Path(
        "factories/mnist"
    ),
    space: Annotated[
        str | None, typer.Option(help="Factory space (default: the one for the data's image shape).")
    ] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Supernet training epochs.")] = FACTORY_EPOCHS,
    shift: Annotated[
        int, typer.Option(min=0, help="Shift training images randomly by up to this many pixels (0: off).")
    ] = FACTORY_SHIFT,
    spread_subnets: Annotated[
        int,
        typer.Option(
            min=0,
            max=2,
            help="Of the 2 random sub-networks a step trains, how many are drawn near the smallest or "
            "the largest (the rest uniformly, which seldom reaches the cheap end).",
        ),
    ] = FACTORY_SPREAD,
    anchors: Annotated[
        bool,
        typer.Option(
            "--anchors/--no-anchors",
            help="Train the simple family's members that the space holds at every step (and pool them).",
        ),
    ] = False,
    anchor_labels: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Weight of the label loss each anchor learns from beside the largest's predictions "
            "(0: distillation alone).",
        ),
    ] = 0.0,
    pool: PoolOption = 384,
    pool_samples: PoolSamplesOption = FACTORY_POOL_SAMPLES,
    assembler_targets: TargetsOption = FACTORY_ASSEMBLER_TARGETS,
    seed: Annotated[
        int, typer.Option(min=0, help="Seed of the initialisation, sampling (and the split).")
    ] = 0,
    split_seed: Annotated[
        int | None,
        typer.Option(min=0, help="Seed of the train/validation split (default: --seed): to retrain on one."),
    ] = None,
    device: Annotated[
        str,
        typer.Option(
            help="Where the supernet trains: auto (a CUDA GPU if torch sees one), cpu, cuda or cuda:N."
        ),
    ] = "auto",
    as_json: JsonOption = False,
) -> None:
    """Train the supernet (sandwich rule) and the assembler once; start with torchrun for many
    processes (one per GPU: each takes cuda:LOCAL_RANK)."""
    from edgefab.pipeline.factory_train import FactoryJob, train_factory

    job = FactoryJob(
        data=data, out=out, space=space, epochs=epochs, shift=shift, spread_subnets=spread_subnets,
        anchors=anchors, anchor_label_weight=anchor_labels, pool=pool, pool_samples=pool_samples,
        assembler_targets=_names(assembler_targets), seed=seed, split_seed=split_seed, device=device,
    )  # fmt: skip
    with RichProgress(enabled=not as_json) as progress:
        path, meta = train_factory(job, progress)
    if meta:  # rank 0 (the only process under plain python)
        emit(
            {"factory": str(path), **meta},
            as_json,
            key_value_table("edgefab factory train", _summary_rows(path, meta)),
        )


@factory_app.command("assemble")
@user_errors
def assemble(
    path: Annotated[Path, typer.Argument(help="Factory folder whose assembler to retrain (in place).")],
    pool: PoolOption = 384,
    pool_samples: PoolSamplesOption = FACTORY_POOL_SAMPLES,
    assembler_targets: TargetsOption = FACTORY_ASSEMBLER_TARGETS,
    steps: Annotated[int, typer.Option(min=1, help="Assembler training steps.")] = 1500,
    as_json: JsonOption = False,
) -> None:
    """Retrain a factory's assembler with today's code (its supernet kept), from the factory's own seed."""
    from edgefab.pipeline.factory_train import FactoryJob, assemble_factory

    with RichProgress(enabled=not as_json) as progress:
        path, meta = assemble_factory(
            path,
            FactoryJob(pool=pool, pool_samples=pool_samples, assembler_targets=_names(assembler_targets),
                       assembler_steps=steps),
            progress,
        )  # fmt: skip
    emit({"factory": str(path), **meta}, as_json,
         key_value_table("edgefab factory assemble", _summary_rows(path, meta)))  # fmt: skip


@factory_app.command("show")
@user_errors
def show(
    path: Annotated[
        Path | None, typer.Argument(help="Factory folder (default: the shipped digits factory).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """What a factory was trained on and how."""
    from edgefab.factory.store import SHIPPED, load_factory

    factory = load_factory(path or SHIPPED)
    emit({"factory": str(factory.path), **factory.meta}, as_json,
         key_value_table("edgefab factory", _summary_rows(factory.path, factory.meta)))  # fmt: skip

"""Command-line pieces for spiking packages: ``edgefab snn report`` and the build's summary rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from edgefab.console import JsonOption, emit, fail, user_errors
from edgefab.errors import EdgefabError

snn_app = typer.Typer(help="Spiking (IIR-SNN) packages: reports.", no_args_is_help=True)

SNN_FILE = "snn.json"  # the name edgefab.pipeline.snn writes (not imported: it pulls in torch)


def read_snn_report(package: Path) -> dict[str, Any]:
    """A package's ``snn.json`` (hashes checked first), with the package's name and path."""
    from edgefab.runtime.package import verify_package

    manifest = verify_package(Path(package))
    if "compression" not in manifest or SNN_FILE not in manifest.get("files", {}):
        raise EdgefabError(
            f"{package} is not a spiking package; build it with --compress snn to get a report"
        )
    return {
        "package": str(package),
        "name": manifest["name"],
        **json.loads((Path(package) / SNN_FILE).read_text()),
    }


def snn_rows(manifest: dict[str, Any]) -> list[tuple[str, Any]]:
    """Summary-table rows for a spiking package (none for another)."""
    section = manifest.get("compression")
    if not section or section.get("method") != "snn":
        return []
    accuracy = section["accuracy"]
    energy = section["energy_ratio_ann_over_snn"]
    latency = section["host_latency"]
    per_t = ", ".join(f"{key} {100 * value:.2f} %" for key, value in accuracy.items() if key != "ann")
    return [
        ("SNN", f"IIR-SNN, T = {section['timesteps']}, ships T={section['shipped_timesteps']}"),
        ("SNN accuracy", f"ANN {100 * accuracy['ann']:.2f} %; {per_t}"),
        (
            "SNN energy (ANN/SNN)",
            f"x{energy['fp32_dense']} dense sums, x{energy['fp32_event_driven']} event-driven",
        ),
        (
            "SNN host latency",
            f"ANN {latency['ann_ms']:.4f} ms, SNN {latency['snn_ms']:.4f} ms (ONNX Runtime)",
        ),
        ("SNN parity check", section["parity_check"]),
    ]


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"


def stage_table(report: dict[str, Any]) -> Table:
    """Accuracy, spike rate and energy per T, against the ANN."""
    caption = "energy ANN/SNN: 45 nm, fp32 MAC 4.6 pJ / AC 0.9 pJ (int8: 0.23 / 0.03 pJ)"
    table = Table(title=f"IIR-SNN stages of {report['name']}", title_justify="left", caption=caption)
    for column in (
        "network",
        "accuracy",
        "start",
        "mean spike rate",
        "energy x (dense)",
        "x (event)",
        "int8 x",
    ):
        table.add_column(column)
    table.add_row("ANN", _percent(report["ann_accuracy"]), "-", "-", "1", "1", "1")
    for stage in report["stages"]:
        energy = stage["energy"]
        table.add_row(
            f"SNN T={stage['timesteps']}",
            _percent(stage["accuracy"]),
            _percent(stage["start_accuracy"]),
            f"{stage['mean_spike_rate']:.4f}",
            f"{energy['ratio_dense']:.2f}",
            f"{energy['ratio_event_driven']:.2f}",
            f"{energy['int8']['ratio_dense']:.2f} / {energy['int8']['ratio_event_driven']:.2f}",
        )
    return table


def rate_table(report: dict[str, Any]) -> Table:
    """Spike rate (fraction of neurons firing per timestep) of each LIF layer at each T."""
    stages = report["stages"]
    table = Table(title="spike rate per layer (per neuron per timestep)", title_justify="left")
    table.add_column("layer")
    for stage in stages:
        table.add_column(f"T={stage['timesteps']}")
    for layer in stages[0]["spike_rates"]:
        table.add_row(layer, *(f"{stage['spike_rates'][layer]:.4f}" for stage in stages))
    return table


def energy_table(report: dict[str, Any]) -> Table:
    """Per-layer energy of the shipped (last) T, fp32 constants."""
    stage = report["stages"][-1]
    table = Table(title=f"energy per layer at T={stage['timesteps']} (pJ, fp32)", title_justify="left")
    for column in ("layer", "input", "MACs", "ANN", "SNN dense", "SNN event-driven"):
        table.add_column(column)
    for row in stage["energy"]["layers"]:
        table.add_row(
            row["layer"], row["input"], f"{row['macs']:,}", f"{row['ann_pj']:,.0f}",
            f"{row['snn_dense_pj']:,.0f}", f"{row['snn_event_driven_pj']:,.0f}",
        )  # fmt: skip
    energy = stage["energy"]
    table.add_row("total", "", "", f"{energy['ann_pj']:,.0f}", f"{energy['snn_dense_pj']:,.0f}",
                  f"{energy['snn_event_driven_pj']:,.0f}")  # fmt: skip
    return table


@snn_app.command("report")
@user_errors
def report(
    path: Annotated[Path, typer.Argument(help="Package folder built with --compress snn.")],
    as_json: JsonOption = False,
) -> None:
    """Accuracy per timestep count, spike rates per layer, energy estimate against the ANN."""
    from rich.console import Group

    from edgefab.console import stdout

    data = read_snn_report(path)
    if as_json:
        emit(data, as_json)
        return
    stdout.print(Group(stage_table(data), rate_table(data), energy_table(data)))


def _timesteps(text: str) -> tuple[int, ...]:
    """``--timesteps`` parsed and checked while the command line is read (before any training).

    Bad values get the project's one-line ``error:`` and exit code 2 like any other bad input, not
    click's usage block (a callback runs before the command's ``user_errors`` wrapper can see it).
    """
    from edgefab.compress.snn_train import parse_timesteps

    try:
        return parse_timesteps(text)
    except EdgefabError as exc:
        fail(str(exc))


CompressOption = Annotated[
    str | None, typer.Option("--compress", help="Compress the model: snn (IIR-SNN spiking network).")
]
SnnEpochsOption = Annotated[
    int | None,
    typer.Option(
        "--snn-epochs",
        min=1,
        help="--compress snn: epochs at the last (shipped) T (default 20; fewer: faster).",
    ),
]
TimestepsOption = Annotated[
    str,
    typer.Option(
        "--timesteps",
        callback=_timesteps,
        help="--compress snn: decreasing timestep counts, each stage starts from the last; the last ships.",
    ),
]

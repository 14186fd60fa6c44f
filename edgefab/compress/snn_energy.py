"""Compute-energy estimate of a spiking network against its ANN, from measured spike rates.

Constants (45 nm CMOS, Horowitz, "Computing's energy problem", ISSCC 2014), as the SNN papers
(DIET-SNN, IIR-SNN) use them:

- 32-bit float: multiply 3.7 pJ + add 0.9 pJ, so one multiply-accumulate (MAC) = 4.6 pJ and one
  accumulate (AC) = 0.9 pJ;
- 8-bit integer: multiply 0.2 pJ + add 0.03 pJ, so MAC = 0.23 pJ, AC = 0.03 pJ.

ANN energy = all MACs x E_MAC. SNN energy, summed over the synaptic layers
(:func:`edgefab.compress.snn.synaptic_layers`):

- the first layer sees the analog image (direct encoding): its MACs x E_MAC, once (its output is
  the same at every timestep);
- a layer fed by spikes: MACs x (spike rate of its input) x T x E_AC;
- a layer fed by a membrane-input sum (after a linear projection or a residual add, and the
  classifier after the pool) is counted two ways: ``dense`` = MACs x T x E_MAC (what the exported
  graph computes: a real-valued input needs multiplies), and ``event_driven`` = the accumulates of
  the spikes that make the sum, through the merged linear weights, x E_AC (what a neuromorphic chip
  that cannot multiply would do). ``dense`` is the headline figure; ``event_driven`` is the one
  the papers' all-spiking networks correspond to.

Only arithmetic is counted (no memory traffic, membrane updates or spike routing), as the papers do.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from edgefab.compress.snn import SynapticLayer


@dataclass(frozen=True)
class EnergyConstants:
    """Energy of one operation, in picojoules."""

    name: str
    mac_pj: float
    ac_pj: float
    source: str


FP32_45NM = EnergyConstants(
    "45nm-fp32", 4.6, 0.9, "Horowitz, ISSCC 2014, 45 nm: 32-bit float multiply 3.7 pJ + add 0.9 pJ"
)
INT8_45NM = EnergyConstants(
    "45nm-int8", 0.23, 0.03, "Horowitz, ISSCC 2014, 45 nm: 8-bit integer multiply 0.2 pJ + add 0.03 pJ"
)


def layer_energy(
    layer: SynapticLayer, rates: dict[str, float], timesteps: int, constants: EnergyConstants
) -> dict[str, Any]:
    """One layer's ANN and SNN energy (pJ per inference) and its SNN operation counts."""
    events = sum(rates[source] * ops for source, ops in layer.events) * timesteps
    if layer.input == "image":
        dense = event = layer.macs * constants.mac_pj
    elif layer.input == "spikes":
        dense = event = events * constants.ac_pj
    else:
        dense, event = layer.macs * timesteps * constants.mac_pj, events * constants.ac_pj
    return {
        "layer": layer.name,
        "input": layer.input,
        "macs": layer.macs,
        "input_rate": rates[layer.events[0][0]] if layer.input == "spikes" else None,
        "accumulates": round(events),
        "ann_pj": layer.macs * constants.mac_pj,
        "snn_dense_pj": dense,
        "snn_event_driven_pj": event,
    }


def estimate_energy(
    layers: list[SynapticLayer],
    rates: dict[str, float],
    timesteps: int,
    constants: EnergyConstants = FP32_45NM,
) -> dict[str, Any]:
    """ANN vs SNN compute energy per inference; ratios are ANN / SNN (above 1: the SNN spends less)."""
    rows = [layer_energy(layer, rates, timesteps, constants) for layer in layers]
    ann = sum(r["ann_pj"] for r in rows)
    dense = sum(r["snn_dense_pj"] for r in rows)
    event = sum(r["snn_event_driven_pj"] for r in rows)
    return {
        "constants": asdict(constants),
        "timesteps": timesteps,
        "ann_pj": ann,
        "snn_dense_pj": dense,
        "snn_event_driven_pj": event,
        "ratio_dense": ann / dense if dense else None,
        "ratio_event_driven": ann / event if event else None,
        "layers": rows,
    }


def energy_summary(layers: list[SynapticLayer], rates: dict[str, float], timesteps: int) -> dict[str, Any]:
    """The float-32 estimate with its per-layer rows, plus the ratios with the int8 constants."""
    fp32 = estimate_energy(layers, rates, timesteps, FP32_45NM)
    int8 = estimate_energy(layers, rates, timesteps, INT8_45NM)
    fp32["int8"] = {k: int8[k] for k in ("constants", "ann_pj", "snn_dense_pj", "snn_event_driven_pj",
                                          "ratio_dense", "ratio_event_driven")}  # fmt: skip
    return fp32

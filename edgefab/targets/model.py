"""The latency-model interface: per-layer costs summed, plus a per-network overhead.

A :class:`LatencyModel` holds a table (layer key -> ms; optionally also by block position, which
reproduces position-dependent published tables exactly) and a fitted per-op model for layers the
table lacks. Costs are memoised per layer, so costing an ArchSpec is a few dictionary look-ups.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from edgefab.arch import ArchSpec, BlockSpec
from edgefab.errors import EdgefabError
from edgefab.targets import Target
from edgefab.targets.layers import Layer, block_inputs, block_layer, spec_layers
from edgefab.targets.opmodel import OpModel

if TYPE_CHECKING:
    from edgefab.targets.latency import LatencyFigure

# The Single-Path NAS candidates (plus skip where shapes allow): the default of layer_costs.
DEFAULT_CANDIDATES = ("k3_e3", "k3_e6", "k5_e3", "k5_e6")


@dataclass(frozen=True)
class LayerCost:
    """One layer's share of a prediction."""

    name: str
    key: str
    ms: float
    source: str  # "table", "fitted", "measured" or "estimate"

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"name": self.name, "layer": self.key, "ms": round(self.ms, 4), "source": self.source}


@dataclass(frozen=True)
class Prediction:
    """Total milliseconds, the per-layer breakdown and where the figure comes from."""

    ms: float
    layers: tuple[LayerCost, ...]
    overhead_ms: float
    target: str
    kind: str  # "published table", "measured table" or "uncalibrated estimate"
    method: str
    left_out: tuple[str, ...] = ()

    def figure(self) -> LatencyFigure:
        """As the pipeline's :class:`~edgefab.targets.latency.LatencyFigure`."""
        from edgefab.targets.latency import LatencyFigure

        note = f"; left out: {', '.join(self.left_out)}" if self.left_out else ""
        return LatencyFigure(ms=self.ms, source="predicted", method=f"{self.kind}: {self.method}{note}")

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "target": self.target, "ms": round(self.ms, 4), "overhead_ms": round(self.overhead_ms, 4),
            "kind": self.kind, "method": self.method, "left_out": list(self.left_out),
            "layers": [layer.to_dict() for layer in self.layers],
        }  # fmt: skip


@dataclass
class LatencyModel:
    """Per-layer latency of one target (and runtime): table, fitted fallback and overhead."""

    target: Target
    kind: str
    method: str
    table: dict[str, float]
    fallback: OpModel | None = None
    positional: dict[tuple[int, str], float] = field(default_factory=dict)
    positional_blocks: int = 0  # positional entries apply to specs with exactly this many blocks
    overhead: tuple[float, float] = (0.0, 0.0)  # ms per network, share of the layers' sum
    table_source: str = "table"
    fallback_source: str = "fitted"
    measure: Callable[[Layer], float] | None = None  # measures a missing layer (a device at hand)
    table_key: Callable[[Layer], str | None] | None = None  # the table's own key (default: Layer.key)
    _memo: dict[str, tuple[float, str]] = field(default_factory=dict, repr=False)

    def with_parts(self, **changes: Any) -> LatencyModel:
        """A copy with some parts replaced (e.g. ``fallback=...`` for a leave-one-out fit), memo emptied."""
        return replace(self, _memo={}, **changes)

    def layer_ms(self, layer: Layer) -> tuple[float, str]:
        """Milliseconds of one layer and where they come from."""
        key = layer.key()
        cached = self._memo.get(key)
        if cached is not None:
            return cached
        lookup = self.table_key(layer) if self.table_key else key
        if lookup in self.table:
            result = (self.table[lookup], self.table_source)
        elif self.measure is not None:
            self.table[key] = self.measure(layer)
            result = (self.table[key], "measured")
        elif self.fallback is not None:
            result = (self.fallback.layer_ms(layer), self.fallback_source)
        else:
            raise EdgefabError(f"target {self.target.name}: no latency for layer {key} and no fitted model")
        self._memo[key] = result
        return result

    def _cost(self, layer: Layer, blocks: int) -> tuple[float, str]:
        if blocks == self.positional_blocks and layer.block >= 0:
            ms = self.positional.get((layer.block, layer.key()))
            if ms is not None:
                return ms, self.table_source
        return self.layer_ms(layer)

    def overhead_ms(self, layers_ms: float) -> float:
        """The fitted per-network overhead of a network whose layers sum to ``layers_ms``."""
        return self.overhead[0] + self.overhead[1] * layers_ms

    def total_ms(self, spec: ArchSpec) -> float:
        """Predicted milliseconds of ``spec`` (the fast path for searches)."""
        blocks = len(spec.blocks)
        layers_ms = sum(self._cost(layer, blocks)[0] for layer in spec_layers(spec))
        return layers_ms + self.overhead_ms(layers_ms)

    def predict(self, spec: ArchSpec) -> Prediction:
        """Predicted milliseconds of ``spec`` with its per-layer breakdown."""
        return self._prediction(spec_layers(spec), len(spec.blocks), ())

    def predict_layers(self, layers: Sequence[Layer], left_out: Sequence[str] = ()) -> Prediction:
        """Prediction for a list of fused layers (e.g. from an ONNX graph)."""
        return self._prediction(list(layers), -1, tuple(left_out))

    def predict_onnx(self, model: onnx.ModelProto | Path | str) -> Prediction:
        """Prediction for a static-shape ONNX graph; ops no model knows are listed in ``left_out``."""
        from edgefab.targets.onnx_layers import onnx_layers

        if not isinstance(model, onnx.ModelProto):
            model = load_onnx(Path(model))
        check_static_inputs(model)
        decomposition = onnx_layers(model)
        if not decomposition.layers:
            left = decomposition.left_out
            more = f" and {len(left) - 5} more" if len(left) > 5 else ""
            raise EdgefabError(f"no layer of this graph is known to the latency model; left out: "
                               f"{', '.join(left[:5]) or 'nothing'}{more}")  # fmt: skip
        return self.predict_layers(decomposition.layers, decomposition.left_out)

    def _prediction(self, layers: list[Layer], blocks: int, left_out: tuple[str, ...]) -> Prediction:
        costs = []
        for layer in layers:
            ms, source = self._cost(layer, blocks)
            costs.append(LayerCost(layer.name or layer.kind, layer.key(), ms, source))
        layers_ms = sum(c.ms for c in costs)
        overhead = self.overhead_ms(layers_ms)
        total = layers_ms + overhead
        return Prediction(total, tuple(costs), overhead, self.target.name, self.kind, self.method, left_out)

    def layer_costs(
        self, spec: ArchSpec, index: int, candidates: Sequence[str] = DEFAULT_CANDIDATES
    ) -> dict[str, float]:
        """Cost of each candidate op (``k5_e6``-style notation, ``skip``) for block ``index`` of ``spec``.

        The block's input shape follows from the blocks before it; ``skip`` (0 ms) is offered where
        input and output shapes agree. A search sums these, weighted by its choices, per block.
        """
        if not 0 <= index < len(spec.blocks):
            raise EdgefabError(f"block index {index} is outside 0-{len(spec.blocks) - 1}")
        h, w, cin = block_inputs(spec)[index]
        block = spec.blocks[index]
        costs = {}
        for notation in candidates:
            if notation == "skip":
                continue
            kernel, expand = (int(part[1:]) for part in notation.split("_")[:2])
            choice = replace(block, kernel=kernel, expand=expand, skip=False)
            costs[notation] = self._cost(block_layer(h, w, cin, choice, index), len(spec.blocks))[0]
        if block.stride == 1 and cin == block.out_channels:
            costs["skip"] = 0.0
        return costs

    def block_ms(self, spec: ArchSpec, index: int, block: BlockSpec) -> float:
        """Cost of ``block`` placed at position ``index`` of ``spec`` (0 when skipped)."""
        if block.skip:
            return 0.0
        h, w, cin = block_inputs(spec)[index]
        return self._cost(block_layer(h, w, cin, block, index), len(spec.blocks))[0]


def check_static_inputs(model: onnx.ModelProto) -> None:
    """Refuse a graph whose inputs lack fixed shapes (layer shapes would be unknown)."""
    weights = {init.name for init in model.graph.initializer}
    for value in model.graph.input:
        if value.name in weights:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in
                value.type.tensor_type.shape.dim]  # fmt: skip
        if not all(isinstance(d, int) and d > 0 for d in dims):
            raise EdgefabError(f"input '{value.name}' has no fixed shape {dims}; give one with "
                               f"--input {value.name}:D1,D2,...")  # fmt: skip


def fix_input_shapes(model: onnx.ModelProto, specs: Sequence[str]) -> onnx.ModelProto:
    """Set input shapes from ``NAME:D1,D2,...`` texts (as ``edgefab compile --input`` takes them)."""
    inputs = {value.name: value for value in model.graph.input}
    for text in specs:
        name, _, dims = text.partition(":")
        if name not in inputs or not dims or not all(d.strip().isdigit() for d in dims.split(",")):
            names = ", ".join(sorted(inputs))
            raise EdgefabError(f"--input must be NAME:D1,D2,... with NAME one of {names}, got '{text}'")
        shape = inputs[name].type.tensor_type.shape
        shape.ClearField("dim")
        for size in dims.split(","):
            shape.dim.add().dim_value = int(size)
    return model


def load_onnx(path: Path) -> onnx.ModelProto:
    """Read an ONNX file, turning a missing or corrupt file into a one-line error."""
    if not path.is_file():
        raise EdgefabError(f"ONNX file {path} does not exist")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - onnx raises several unrelated types for a bad file
        raise EdgefabError(f"{path} is not a readable ONNX model: {exc}") from None

"""Latency tables published by the papers edgefab builds on, and the per-op models fitted to them.

* ``pixel`` (Google Pixel 1 CPU): Single-Path NAS's per-layer table (22 MBConv layers x 4 ops,
  TFLite, one big core) with its 19.5999 ms fixed part, calibrated on the MobileNet authors'
  whole-network MobileNetV2 latencies. Layers in the table get the table's value (position by
  position for the Single-Path NAS space, so its formula is reproduced exactly); every other layer
  gets the per-op model fitted to the table and the five networks.
* ``note10`` (Samsung Galaxy Note10 CPU): Once-for-All's lookup tables (resolutions 160-224); a
  per-op model fitted to all of them covers the layers they lack.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from importlib import resources
from statistics import mean

import numpy as np

from edgefab.arch import ArchSpec, BlockSpec, round_channels
from edgefab.targets import Target
from edgefab.targets.layers import Layer, block_inputs, block_layer, spec_layers
from edgefab.targets.model import LatencyModel
from edgefab.targets.opmodel import OpModel, features, network_features

SPNAS_FIXED_MS = 19.5999  # stem, layers 0 and 21, head and logits (Single-Path NAS's formula)
SPNAS_OPS = {"0": "k3_e3", "1": "k3_e6", "2": "k5_e3", "3": "k5_e6"}
# (out channels, stride) of layers 1-21 (layer 0 is the fixed 3x3 e1 block to 16 channels)
SPNAS_LAYERS = [(24, 2)] + [(24, 1)] * 3 + [(40, 2)] + [(40, 1)] * 3 + [(80, 2)] + [(80, 1)] * 3
SPNAS_LAYERS += [(96, 1)] * 4 + [(192, 2)] + [(192, 1)] * 3 + [(320, 1)]
# MobileNetV2 on the Pixel 1 (TFLite, float, 1 big core, 224x224): width -> ms
MOBILENET_V2_PIXEL1 = {1.4: 138.0, 1.0: 73.8, 0.75: 55.8, 0.5: 28.7, 0.35: 19.7}
NETWORK_WEIGHT = 4.0  # a whole network weighs as much as this many table layers in the fit


def _block(notation: str, out_channels: int, stride: int) -> BlockSpec:
    if notation == "skip":
        return BlockSpec(out_channels, stride=stride, skip=True)
    kernel, expand = (int(part[1:]) for part in notation.split("_")[:2])
    return BlockSpec(out_channels, kernel, expand, stride)


def spnas_spec(
    choices: Sequence[str] = ("k3_e3",) * 20, resolution: int = 224, num_classes: int = 1000
) -> ArchSpec:
    """The Single-Path NAS (MnasNet-style) network with ``choices`` for its searchable layers 1-20."""
    if len(choices) != 20:
        raise ValueError(f"the Single-Path NAS space has 20 searchable layers, got {len(choices)} choices")
    blocks = [BlockSpec(16, 3, 1, 1)]
    blocks += [_block(c, out, stride) for c, (out, stride) in zip(choices, SPNAS_LAYERS[:20], strict=True)]
    blocks.append(BlockSpec(320, 3, 6, 1))
    return ArchSpec((3, resolution, resolution), num_classes, 32, tuple(blocks), 1280, 2, "spnas")


def mobilenet_v2_spec(width: float = 1.0, resolution: int = 224, num_classes: int = 1000) -> ArchSpec:
    """MobileNetV2 at a width multiplier, as an ArchSpec (channels rounded to 8, as its authors do)."""
    settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2)]
    blocks = []
    for expand, channels, repeats, stride in settings + [(6, 320, 1, 1)]:
        out = round_channels(channels * width)
        blocks += [BlockSpec(out, 3, expand, stride if i == 0 else 1) for i in range(repeats)]
    head = round_channels(1280 * width) if width > 1 else 1280
    stem = round_channels(32 * width)
    shape = (3, resolution, resolution)
    return ArchSpec(shape, num_classes, stem, tuple(blocks), head, 2, f"mobilenetv2-{width:g}")


def _read_table(name: str) -> str:
    return resources.files("edgefab.targets").joinpath("tables", name).read_text()


@functools.cache
def spnas_table() -> dict[int, dict[str, float]]:
    """The Single-Path NAS Pixel 1 table: layer index -> op notation -> ms."""
    raw = json.loads(_read_table("pixel1_spnas_runtime.json"))
    return {int(layer): {SPNAS_OPS[op]: ms for op, ms in ops.items()} for layer, ops in raw.items()}


def _spnas_rows() -> tuple[dict[tuple[int, str], float], list[Layer]]:
    """Table entries by (block index, layer key), and the fixed part's layers."""
    table, base = spnas_table(), spnas_spec()
    shapes, entries = block_inputs(base), {}
    for index in range(1, 22):
        h, w, cin = shapes[index]
        out, stride = SPNAS_LAYERS[index - 1]
        for notation, ms in table[index].items():
            entries[(index, block_layer(h, w, cin, _block(notation, out, stride), index).key())] = ms
    layers = spec_layers(base)
    entries[(0, layers[1].key())] = mean(table[0].values())  # layer 0's op is fixed (3x3, e1)
    fixed = [layers[0], layers[1], layers[-4], *layers[-3:]]  # stem, layer 0, layer 21, head, pool, logits
    return entries, fixed


def pixel_fit_rows(exclude: Sequence[float] = ()) -> tuple[list[np.ndarray], list[float], list[float]]:
    """Feature rows, ms and weights for the pixel per-op fit (MobileNetV2 widths in ``exclude`` left out)."""
    entries, fixed = _spnas_rows()
    rows = [features(Layer.from_key(key)) for (_, key) in entries]
    ms, weights = list(entries.values()), [1.0] * len(entries)
    rows.append(network_features(fixed))
    ms.append(SPNAS_FIXED_MS)
    weights.append(NETWORK_WEIGHT)
    for width, latency in MOBILENET_V2_PIXEL1.items():
        if width not in exclude:
            rows.append(network_features(spec_layers(mobilenet_v2_spec(width))))
            ms.append(latency)
            weights.append(NETWORK_WEIGHT)
    return rows, ms, weights


def pixel_tables(
    exclude: Sequence[float] = (),
) -> tuple[dict[str, float], dict[tuple[int, str], float], OpModel]:
    """The pixel model's parts: table by layer key, table by (block, key), and the fitted per-op model."""
    entries, fixed = _spnas_rows()
    fitted = OpModel.fit(*pixel_fit_rows(exclude))
    by_key: dict[str, list[float]] = {}
    for (_, key), ms in entries.items():
        by_key.setdefault(key, []).append(ms)
    table = {key: mean(values) for key, values in by_key.items()}
    # Split what the fixed part leaves for stem, head, pool and logits in the fitted model's proportions.
    rest = [fixed[0], *fixed[3:]]
    left = SPNAS_FIXED_MS - table[fixed[1].key()] - table[fixed[2].key()]
    shares = np.array([fitted.layer_ms(layer) for layer in rest])
    for layer, share in zip(rest, shares / shares.sum(), strict=True):
        table[layer.key()] = float(left * share)
    positional = {(index, key): ms for (index, key), ms in entries.items()}
    return table, positional, fitted


def _parse_ofa_yaml(text: str) -> dict[str, float]:
    """Once-for-All's LUT files: ``key:`` lines, each followed by ``count``, ``mean`` and ``std``."""
    table, key = {}, None
    for line in text.splitlines():
        if line and not line.startswith(" "):
            key = line.rstrip().rstrip(":")
        elif line.strip().startswith("mean:") and key:
            table[key] = float(line.split(":", 1)[1])
    return table


def ofa_key(layer: Layer) -> str | None:
    """The Once-for-All LUT key of a layer (None for layers the LUT cannot name)."""
    shape = f"input:{layer.h}x{layer.w}x{layer.cin}"
    out = f"output:{layer.out_h}x{layer.out_w}x{layer.cout}"
    if layer.kind == "mbconv":
        flags = f"idskip:{int(layer.residual)}-se:{int(layer.se)}-hs:{int(layer.act == 'hswish')}"
        conv = f"expand:{layer.mid}-kernel:{layer.kernel}-stride:{layer.stride}"
        return f"expanded_conv-{shape}-{out}-{conv}-{flags}"
    if layer.kind == "conv" and layer.kernel == 3 and layer.cin == 3:
        return f"Conv-{shape}-{out}"
    if layer.kind == "conv" and layer.kernel == 1:
        return f"Conv_1-{shape}-{out}"
    if layer.kind == "pool":
        return f"AvgPool2D-{shape}-output:1x1x{layer.cin}"
    if layer.kind == "fc":
        return f"Logits-input:1x1x{layer.cin}-output:{layer.cout}"
    return None


def _layer_from_ofa(key: str) -> Layer | None:
    parts = dict(p.split(":", 1) for p in key.split("-")[1:])
    h, w, cin = (int(v) for v in parts["input"].split("x"))
    name = key.split("-")[0]
    if name == "expanded_conv":
        cout = int(parts["output"].split("x")[2])
        act = "hswish" if parts["hs"] == "1" else "relu6"
        kernel, stride = int(parts["kernel"]), int(parts["stride"])
        se, residual = parts["se"] == "1", parts["idskip"] == "1"
        return Layer("mbconv", h, w, cin, cout, kernel, stride, int(parts["expand"]), se, act, residual)
    if name in ("Conv", "Conv_1", "Conv_2"):
        oh, _, cout = (int(v) for v in parts["output"].split("x"))
        return Layer("conv", h, w, cin, cout, 3 if name == "Conv" else 1, h // oh, act="hswish")
    if name == "AvgPool2D":
        return Layer("pool", h, w, cin, cin, 0, act="none")
    return Layer("fc", 1, 1, cin, int(parts["output"]), act="none")


@functools.cache
def note10_table() -> dict[str, float]:
    """The Once-for-All Note10 LUT over all resolutions: key -> mean ms."""
    folder = resources.files("edgefab.targets").joinpath("tables", "note10_ofa_lut")
    table: dict[str, float] = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            table.update(_parse_ofa_yaml(entry.read_text()))
    return table


def note10_fit(exclude: Sequence[str] = ()) -> OpModel:
    """The per-op model fitted to the Note10 LUT (keys in ``exclude`` left out)."""
    pairs = [(_layer_from_ofa(k), ms) for k, ms in note10_table().items() if k not in exclude]
    return OpModel.fit([features(layer) for layer, _ in pairs], [ms for _, ms in pairs])


def pixel_model(target: Target) -> LatencyModel:
    """The ``pixel`` model: Single-Path NAS table (exact), per-op fit for every other layer."""
    table, positional, fitted = pixel_tables()
    method = (
        "Single-Path NAS Pixel 1 per-layer table (TFLite, 1 big core) where a layer matches it, else a "
        "per-op model fitted to that table and the published MobileNetV2 Pixel 1 latencies"
    )
    return LatencyModel(target, "published table", method, table, fitted, positional, positional_blocks=22)


def note10_model(target: Target) -> LatencyModel:
    """The ``note10`` model: Once-for-All's Note10 LUT where a layer matches it, else its per-op fit."""
    method = "Once-for-All Note10 lookup tables (160-224) where a layer matches, else a per-op fit to them"
    table = dict(note10_table())
    return LatencyModel(target, "published table", method, table, note10_fit(), table_key=ofa_key)

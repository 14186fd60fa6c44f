"""Fused layers: the unit every latency model costs.

A network, given as an :class:`~edgefab.arch.ArchSpec` or as an ONNX graph, is cut into the layers
runtimes fuse and the published tables measure: a convolution with its activation (the stem, the
head), a whole MBConv block (expand, depthwise, squeeze-excitation, project, residual), a global
pool and a fully connected classifier. Both paths give equal :class:`Layer` values for the same
network, so a table measured from one serves the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgefab.arch import ArchSpec, BlockSpec, round_channels

KINDS = ("conv", "dwconv", "mbconv", "pool", "fc", "eltwise")


@dataclass(frozen=True)
class Layer:
    """One fused layer and its shapes (``name`` and ``block`` only label it; they are not compared)."""

    kind: str  # one of KINDS
    h: int  # input height and width
    w: int
    cin: int
    cout: int
    kernel: int = 1
    stride: int = 1
    mid: int = 0  # MBConv middle channels (== cin: no expand conv)
    se: bool = False
    act: str = "relu6"  # "relu6", "hswish" or "none"
    residual: bool = False
    name: str = field(default="", compare=False)
    block: int = field(default=-1, compare=False)  # ArchSpec block index, -1 elsewhere

    @property
    def out_h(self) -> int:
        """Output height ("same" padding)."""
        return 1 if self.kind == "pool" else (self.h + self.stride - 1) // self.stride

    @property
    def out_w(self) -> int:
        """Output width ("same" padding)."""
        return 1 if self.kind == "pool" else (self.w + self.stride - 1) // self.stride

    def key(self) -> str:
        """Canonical text of the shape, the key of measured tables, e.g. ``mbconv-56x56x24-40-k5-s2-m72``."""
        text = f"{self.kind}-{self.h}x{self.w}x{self.cin}-{self.cout}-k{self.kernel}-s{self.stride}"
        if self.kind == "mbconv":
            text += f"-m{self.mid}" + ("-se" if self.se else "") + ("-res" if self.residual else "")
        return text + ("" if self.act == "relu6" else f"-{self.act}")

    @classmethod
    def from_key(cls, key: str) -> Layer:
        """Inverse of :meth:`key`."""
        parts = key.split("-")
        h, w, cin = (int(v) for v in parts[1].split("x"))
        values: dict = {"kind": parts[0], "h": h, "w": w, "cin": cin, "cout": int(parts[2])}
        values["kernel"], values["stride"] = int(parts[3][1:]), int(parts[4][1:])
        for part in parts[5:]:
            if part.startswith("m"):
                values["mid"] = int(part[1:])
            elif part == "se":
                values["se"] = True
            elif part == "res":
                values["residual"] = True
            else:
                values["act"] = part
        return cls(**values)

    def macs(self) -> int:
        """Multiply-accumulates of the layer (as :meth:`ArchSpec.macs` counts them)."""
        pixels_in, pixels_out = self.h * self.w, self.out_h * self.out_w
        if self.kind == "conv":
            return pixels_out * self.cout * self.cin * self.kernel**2
        if self.kind == "dwconv":
            return pixels_out * self.cout * self.kernel**2
        if self.kind == "fc":
            return pixels_in * self.cin * self.cout
        if self.kind != "mbconv":
            return 0
        expand = pixels_in * self.cin * self.mid if self.mid != self.cin else 0
        total = expand + pixels_out * self.mid * (self.kernel**2 + self.cout)
        return total + (2 * self.mid * se_channels(self.mid) if self.se else 0)


def se_channels(mid: int) -> int:
    """Squeeze-excitation bottleneck width for ``mid`` channels (as ``BlockSpec.se_channels``)."""
    return round_channels(mid / 4)


def spec_layers(spec: ArchSpec) -> list[Layer]:
    """The fused layers of ``spec`` in order; skipped blocks have none."""
    channels, h, w = spec.input_shape
    stem = Layer("conv", h, w, channels, spec.stem_channels, 3, spec.stem_stride, name="stem")
    layers, h, w, cin = [stem], stem.out_h, stem.out_w, spec.stem_channels
    for index, block in enumerate(spec.blocks):
        if block.skip:
            continue
        layer = block_layer(h, w, cin, block, index)
        layers.append(layer)
        h, w, cin = layer.out_h, layer.out_w, block.out_channels
    head = Layer("conv", h, w, cin, spec.head_channels, name="head")
    pool = Layer("pool", h, w, spec.head_channels, spec.head_channels, 0, act="none", name="pool")
    logits = Layer("fc", 1, 1, spec.head_channels, spec.num_classes, act="none", name="logits")
    return layers + [head, pool, logits]


def block_layer(h: int, w: int, cin: int, block: BlockSpec, index: int = -1) -> Layer:
    """The MBConv layer of a (not skipped) :class:`~edgefab.arch.BlockSpec` on an ``h x w x cin`` input."""
    return Layer(
        "mbconv",
        h,
        w,
        cin,
        block.out_channels,
        block.kernel,
        block.stride,
        mid=cin * block.expand,
        se=block.se,
        act=block.activation,
        residual=block.stride == 1 and cin == block.out_channels,
        name=f"block {index} {block.notation()}",
        block=index,
    )


def block_inputs(spec: ArchSpec) -> list[tuple[int, int, int]]:
    """The ``(h, w, channels)`` each block of ``spec`` receives (a skipped block passes it on)."""
    channels, h, w = spec.input_shape
    h, w = (h + spec.stem_stride - 1) // spec.stem_stride, (w + spec.stem_stride - 1) // spec.stem_stride
    cin, shapes = spec.stem_channels, []
    for block in spec.blocks:
        shapes.append((h, w, cin))
        if not block.skip:
            h, w = (h + block.stride - 1) // block.stride, (w + block.stride - 1) // block.stride
            cin = block.out_channels
    return shapes

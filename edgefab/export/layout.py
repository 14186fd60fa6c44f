"""Blocked channel layout (NCHW{B}c) for CPU code, as Relax passes.

In NCHW the innermost axis of a small feature map (4x4, 7x7) is a few floats, too short for a
vector register, so TVM's depthwise and pointwise kernels on such maps stay scalar however long
they are tuned. ONNX Runtime's x86 kernels block the channels (``nchwc``) instead: every vector
holds B channels of one pixel. These passes do the same for a Relax module:

* ``clip_as_ops``: the ONNX importer emits Clip (ReLU6) as TIR calls that layout passes cannot see
  through; as Relax ``maximum``/``minimum`` ops they follow the convolutions' layout.
* ``convert_to_blocked``: ``relax.transform.ConvertLayout`` with a callback that blocks every
  convolution whose channels divide by B (the rest keep NCHW, with layout transforms around them).
* ``legalize_blocked``: Relax's legalization leaves blocked convolutions alone; this gives them
  TE computes (plain and depthwise) that MetaSchedule can tune like any other kernel.

``to_blocked_layout(mod, B)`` runs the three in order, or raises LayoutNotApplied (nothing to block,
or TVM's layout pass failed on some operator: it crashes on Silero VAD's graph, for one).
"""

from __future__ import annotations

from typing import Any

from edgefab.targets import LAYOUTS  # the names accepted wherever a CPU build takes a layout


def block_of(layout: str) -> int:
    """The channel block of a layout name (0 for plain NCHW); unknown names are a ValueError."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout '{layout}': use one of {', '.join(LAYOUTS)}")
    return 0 if layout == "NCHW" else int(layout[4:-1])


class LayoutNotApplied(ValueError):
    """A blocked layout cannot be used for this module; the message says why (callers fall back)."""


def to_blocked_layout(mod, block: int):
    """``mod`` with its convolutions in NCHW{block}c where their channels allow, legalized.

    Raises LayoutNotApplied where no convolution can be blocked or TVM's layout pass fails.
    """
    from tvm import relax

    if not any(_blocked_weight_layout(call, block) for call in _conv2d_calls(mod)):
        raise LayoutNotApplied(f"no 2-D convolution whose channels divide by {block}")
    mod = relax.transform.FoldConstant()(mod)  # Clip's bounds become constants
    mod = clip_as_ops(mod)
    try:
        mod = convert_to_blocked(mod, block)
    except Exception as exc:  # TVM raises its internal errors for operators it cannot re-layout
        text = str(exc).strip().splitlines()
        raise LayoutNotApplied(
            f"TVM's ConvertLayout failed: {text[-1] if text else type(exc).__name__}"
        ) from None
    mod = relax.transform.FoldConstant()(mod)  # weights are transformed once, here
    return legalize_blocked(mod)


def clip_as_ops(mod):
    """Replace the importer's ``call_tir(maximum|minimum, (x, scalar))`` by Relax ops."""
    from tvm import ir, relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    call_tir = ir.Op.get("relax.call_tir")

    @mutator
    class ClipAsOps(PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if call.op != call_tir or len(call.args[1].fields) != 2:
                return call
            name = call.args[0].name_hint
            x, bound = call.args[1].fields
            if getattr(bound.ty, "ndim", None) != 0:  # a scalar bound only: then the op is elementwise
                return call
            if name.startswith("maximum"):
                return relax.op.maximum(x, bound)
            if name.startswith("minimum"):
                return relax.op.minimum(x, bound)
            return call

    for gvar, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            mod[gvar] = ClipAsOps(mod).visit_expr(func)
    return relax.transform.DeadCodeElimination()(mod)


def convert_to_blocked(mod, block: int):
    """Convolutions to NCHW{block}c (weights OIHW{block}i{block}o, depthwise OIHW1i{block}o)."""
    from tvm import relax

    def desired(call) -> dict[str, Any]:
        if getattr(call.op, "name", None) != "relax.nn.conv2d":
            return {}
        weight_layout = _blocked_weight_layout(call, block)
        if weight_layout is None:
            return {"relax.nn.conv2d": ["NCHW", "OIHW"]}
        return {"relax.nn.conv2d": [f"NCHW{block}c", weight_layout]}

    return relax.transform.ConvertLayout({}, desired)(mod)


def _blocked_weight_layout(call, block: int) -> str | None:
    """The weight layout of a blockable NCHW convolution (plain or depthwise), else None."""
    if call.attrs.data_layout != "NCHW" or call.attrs.kernel_layout != "OIHW":
        return None
    data, weight = call.args
    in_channels, out_channels = int(data.ty.shape[1]), int(weight.ty.shape[0])
    groups = int(call.attrs.groups)
    depthwise = groups == in_channels == out_channels
    if in_channels % block or out_channels % block or not (groups == 1 or depthwise):
        return None
    return f"OIHW1i{block}o" if depthwise else f"OIHW{block}i{block}o"


def _conv2d_calls(mod) -> list:
    """Every ``relax.nn.conv2d`` call in the module's Relax functions."""
    from tvm import ir, relax

    conv2d, found = ir.Op.get("relax.nn.conv2d"), []
    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(
                func, lambda e: found.append(e) if isinstance(e, relax.Call) and e.op == conv2d else None
            )
    return found


def legalize_blocked(mod):
    """Legalize every operator, blocked convolutions by this module's TE computes."""
    from tvm import relax
    from tvm.relax.transform.legalize_ops import nn as relax_nn

    def conv2d(bb, call):
        if len(call.attrs.data_layout) == 4:
            return relax_nn._nn_conv2d(bb, call)  # NCHW / NHWC: Relax's own rule
        data = call.args[0]
        out_dtype = str(call.attrs.out_dtype or data.ty.dtype)
        compute = blocked_conv2d if int(call.attrs.groups) == 1 else blocked_depthwise_conv2d
        geometry = [[int(v) for v in getattr(call.attrs, k)] for k in ("strides", "padding", "dilation")]
        return bb.call_te(
            compute, data, call.args[1], *geometry, out_dtype, primfunc_name_hint=compute.__name__
        )

    return relax.transform.LegalizeOps({"relax.nn.conv2d": conv2d})(mod)


def blocked_conv2d(data, weight, strides, padding, dilation, out_dtype: str):
    """NCHW{b}c x OIHW{b}i{b}o convolution, reducing over input-channel chunks and block apart (one
    reduction axis per tensor axis: no division in the indices for the tuner to untangle)."""
    from tvm import te

    _, in_chunks, _, _, in_block = (int(v) for v in data.shape)
    _, _, kh, kw, _, _ = (int(v) for v in weight.shape)
    padded, shape, (sh, sw), (dh, dw) = _padded(data, weight, strides, padding, dilation)
    rc, rb = te.reduce_axis((0, in_chunks), "rc"), te.reduce_axis((0, in_block), "rb")
    rh, rw = te.reduce_axis((0, kh), "rh"), te.reduce_axis((0, kw), "rw")
    return te.compute(
        shape,
        lambda n, c, y, x, k: te.sum(
            padded[n, rc, y * sh + rh * dh, x * sw + rw * dw, rb].astype(out_dtype)
            * weight[c, rc, rh, rw, rb, k].astype(out_dtype),
            axis=[rc, rh, rw, rb],
        ),
        name="conv2d_NCHWc",
    )


def blocked_depthwise_conv2d(data, weight, strides, padding, dilation, out_dtype: str):
    """NCHW{b}c x OIHW1i{b}o depthwise convolution (one filter per channel)."""
    from tvm import te

    _, _, kh, kw, _, _ = (int(v) for v in weight.shape)
    padded, shape, (sh, sw), (dh, dw) = _padded(data, weight, strides, padding, dilation)
    rh, rw = te.reduce_axis((0, kh), "rh"), te.reduce_axis((0, kw), "rw")
    return te.compute(
        shape,
        lambda n, c, y, x, k: te.sum(
            padded[n, c, y * sh + rh * dh, x * sw + rw * dw, k].astype(out_dtype)
            * weight[c, 0, rh, rw, 0, k].astype(out_dtype),
            axis=[rh, rw],
        ),
        name="depthwise_conv2d_NCHWc",
    )


def _padded(data, weight, strides, padding, dilation):
    """The zero-padded input, the output shape, and strides and dilation as pairs."""
    from tvm import topi

    batch, _, height, width, _ = (int(v) for v in data.shape)
    out_chunks, _, kh, kw, _, out_block = (int(v) for v in weight.shape)
    top, left, bottom, right = padding
    (sh, sw), (dh, dw) = strides, dilation
    shape = (
        batch,
        out_chunks,
        (height + top + bottom - (kh - 1) * dh - 1) // sh + 1,
        (width + left + right - (kw - 1) * dw - 1) // sw + 1,
        out_block,
    )
    if any(padding):
        data = topi.nn.pad(data, [0, 0, top, left, 0], [0, 0, bottom, right, 0], name="pad")
    return data, shape, (sh, sw), (dh, dw)

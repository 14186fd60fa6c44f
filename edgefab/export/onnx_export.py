"""PyTorch -> ONNX: export with torch's own exporter, check the graph, and test parity.

The exported graph has fixed shapes (batch 1, the way a phone runs it), so it needs no
simplification pass before TVM; ``edgefab.export.graph`` handles third-party graphs.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


@contextlib.contextmanager
def _quiet():
    """torch.onnx prints progress lines and warnings of its own; the CLI has its own progress."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch._dynamo", "torch.export")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def export_onnx(
    model: nn.Module, input_shape: tuple[int, ...], path: Path, opset: int = OPSET
) -> onnx.ModelProto:
    """Export ``model`` (eval mode) for one input of ``input_shape`` and check it with ``onnx.checker``."""
    model = model.eval()
    example = (torch.zeros(input_shape),)
    with _quiet():
        program = torch.onnx.export(
            model,
            example,
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            verbose=False,
        )
    proto = program.model_proto
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    return proto


@torch.no_grad()
def onnx_parity(model: nn.Module, onnx_path: Path, inputs: np.ndarray) -> float:
    """Max absolute difference between PyTorch and ONNX Runtime over ``inputs`` (one sample at a time)."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    worst = 0.0
    for sample in inputs:
        batch = sample[None].astype(np.float32)
        expected = model(torch.from_numpy(batch)).numpy()
        (found,) = session.run(None, {name: batch})
        worst = max(worst, float(np.abs(expected - found).max()))
    return worst

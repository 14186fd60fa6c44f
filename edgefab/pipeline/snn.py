"""The ``--compress snn`` step of ``edgefab build``: the trained classifier becomes an IIR-SNN.

:func:`apply_snn` converts and trains (``edgefab.compress.snn_train``) and returns the network of the
last (shortest) T, which ``build`` then exports, checks and compiles in place of the ANN; the
returned :class:`SnnStep` adds ``snn.json`` and the manifest's ``compression`` entry.

Parity: a spike is a threshold comparison, so a float difference of 1e-7 between PyTorch, ONNX
Runtime and TVM can flip a spike whose membrane sits on the threshold, and one flip moves the logits
by far more than 1e-4. The check is therefore: the same top-1 class on every parity sample and
logits within ``LOGIT_TOLERANCE``; the manifest records the check and what was measured.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from edgefab.compress.snn_train import SnnOptions, SnnResult, check_timesteps, convert_and_train
from edgefab.errors import EdgefabError
from edgefab.export.onnx_export import INPUT_NAME, export_onnx
from edgefab.pipeline.common import Progress
from edgefab.targets.latency import time_calls

SNN_FILE = "snn.json"
COMPRESSIONS = ("snn",)
LOGIT_TOLERANCE = 0.05  # a few spike flips in the head move a logit by about a hundredth
PARITY_CHECK = f"same top-1 class on every sample and max |logit difference| <= {LOGIT_TOLERANCE}"


def check_compress(compress: str | None, quantize: str | None = None) -> None:
    """Refuse an unknown ``--compress`` (and combinations not built yet) before any training."""
    if compress is None:
        return
    if compress not in COMPRESSIONS:
        raise EdgefabError(f"unknown --compress '{compress}'; use one of: {', '.join(COMPRESSIONS)}")
    if quantize:
        raise EdgefabError("--compress snn and --quantize cannot be combined yet; choose one")


@dataclass
class SnnStep:
    """The SNN step's outcome, for the export and the package."""

    result: SnnResult
    ann: nn.Module
    input_shape: tuple[int, ...]

    @property
    def parity_tolerance(self) -> float:
        """Largest logit difference accepted between PyTorch, ONNX Runtime and TVM."""
        return LOGIT_TOLERANCE

    def annotate(
        self,
        manifest: dict[str, Any],
        files: dict[str, Path],
        onnx_path: Path,
        samples: np.ndarray,
        work: Path,
    ) -> None:
        """Check parity on ``samples``, write ``snn.json`` and add the ``compression`` entry."""
        parity = onnx_agreement(self.result.network, onnx_path, samples)
        ann_path = work / "ann.onnx"
        export_onnx(self.ann, (1, *self.input_shape), ann_path)
        latency = host_latency({"ann": ann_path, "snn": onnx_path}, samples[:1])
        report = {**self.result.to_dict(), "parity": parity, "host_latency": latency}
        path = work / SNN_FILE
        path.write_text(json.dumps(report, indent=2) + "\n")
        files[SNN_FILE] = path
        manifest["compression"] = compression_entry(self.result, parity, latency)
        manifest["figures"]["snn_parity"] = parity


def compression_entry(result: SnnResult, parity: dict[str, Any], latency: dict[str, Any]) -> dict[str, Any]:
    """The manifest's ``compression`` entry: settings and headline figures (details in ``snn.json``)."""
    last = result.stages[-1]
    energy = last.energy
    return {
        "method": "snn",
        "algorithm": "IIR-SNN (LIF neurons, direct encoding, BPTT per timestep count, shortest last)",
        "timesteps": [stage.timesteps for stage in result.stages],
        "shipped_timesteps": last.timesteps,
        "accuracy": {
            "ann": round(result.ann_accuracy, 5),
            **{f"T{s.timesteps}": round(s.accuracy, 5) for s in result.stages},
        },
        "mean_spike_rate": {
            f"T{s.timesteps}": round(s.to_dict()["mean_spike_rate"], 5) for s in result.stages
        },
        "energy_ratio_ann_over_snn": {
            "fp32_dense": _round(energy["ratio_dense"]),
            "fp32_event_driven": _round(energy["ratio_event_driven"]),
            "int8_dense": _round(energy["int8"]["ratio_dense"]),
            "int8_event_driven": _round(energy["int8"]["ratio_event_driven"]),
        },
        "host_latency": latency,
        "parity_check": PARITY_CHECK,
        "report": SNN_FILE,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


@torch.no_grad()
def onnx_agreement(model: nn.Module, onnx_path: Path, samples: np.ndarray) -> dict[str, Any]:
    """PyTorch vs ONNX Runtime on ``samples``, one at a time; raises unless they agree (see module doc)."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    model.eval()
    diffs, same = [], 0
    for sample in samples:
        batch = sample[None].astype(np.float32)
        expected = model(torch.from_numpy(batch)).numpy()
        (found,) = session.run(None, {INPUT_NAME: batch})
        diffs.append(float(np.abs(expected - found).max()))
        same += int(expected.argmax() == found.argmax())
    result = {
        "check": PARITY_CHECK,
        "samples": len(samples),
        "top1_agreement": same / max(1, len(samples)),
        "max_abs_logit_diff": max(diffs, default=0.0),
        "samples_within_1e-4": sum(d < 1e-4 for d in diffs),
    }
    if same < len(samples) or result["max_abs_logit_diff"] > LOGIT_TOLERANCE:
        raise EdgefabError(
            f"the SNN's ONNX graph disagrees with PyTorch: top-1 agreement {same}/{len(samples)}, "
            f"max logit difference {result['max_abs_logit_diff']:.3g} (limit {LOGIT_TOLERANCE})"
        )
    return result


def host_latency(paths: dict[str, Path], sample: np.ndarray, rounds: int = 5) -> dict[str, Any]:
    """ONNX Runtime latency of each model here, batch 1, interleaved rounds, medians."""
    sessions = {
        name: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for name, path in paths.items()
    }
    feeds = {INPUT_NAME: sample.astype(np.float32)}
    samples: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, sess in sessions.items():
            samples[name].append(statistics.median(time_calls(lambda s=sess: s.run(None, feeds), 5, 20)))
    result: dict[str, Any] = {f"{name}_ms": round(statistics.median(v), 4) for name, v in samples.items()}
    result["method"] = (
        f"ONNX Runtime on the build machine, batch 1, median of {rounds} interleaved rounds of 20"
    )
    return result


def snn_package_suffix(options: Any) -> str:
    """``-snn`` for a ``--compress snn`` build, else nothing; checks the options before any training."""
    compress = getattr(options, "compress", None)
    check_compress(compress, getattr(options, "quantize", None))
    if compress is None:
        if getattr(options, "snn_epochs", None) is not None:
            raise EdgefabError("--snn-epochs applies only with --compress snn; add that or drop the option")
        return ""
    check_timesteps(tuple(options.timesteps))
    return f"-{compress}"


def apply_snn(options: Any, chosen: Any, progress: Progress) -> tuple[Any, SnnStep | None]:
    """``chosen`` unchanged unless ``options.compress == "snn"``; then with its model replaced by the
    trained SNN of the last T, and the step that annotates the package.

    ``options``: the build's ``BuildOptions`` (``compress``, ``timesteps``, ``snn_epochs``, ``seed``);
    ``chosen``: its ``ChosenModel`` (``model``, ``train``, ``val``, ``prep``).
    """
    if not snn_package_suffix(options):
        return chosen, None
    last_stage = {"last_stage_epochs": options.snn_epochs} if options.snn_epochs else {}
    snn_options = SnnOptions(timesteps=tuple(options.timesteps), seed=options.seed, **last_stage)
    result = convert_and_train(
        chosen.model, chosen.train, chosen.val, chosen.prep, snn_options, progress.stage, progress.advance
    )
    step = SnnStep(result, chosen.model, tuple(chosen.train.input_shape))
    return replace(chosen, model=result.network.eval()), step

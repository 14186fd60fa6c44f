"""PyTorch eager beside a package's engines in ``edgefab bench``.

A package holds no PyTorch weights, but a model edgefab built records its architecture (an
ArchSpec) in the manifest. The network is rebuilt from it with fresh weights: the time of a dense
forward pass does not depend on the weights' values, so it is PyTorch's time for this model.
"""

from __future__ import annotations

from typing import Any

from edgefab.runtime.bench import BenchOptions, seeded_inputs, summarize, timed_runs


def pytorch_entry(manifest: dict[str, Any], options: BenchOptions) -> dict[str, Any]:
    """``edgefab bench``'s PyTorch row: timings of the manifest's architecture, or why there are none."""
    architecture = manifest.get("build", {}).get("architecture")
    if manifest.get("kind") == "generator" or not architecture:
        return {"skipped": "no architecture in the manifest (a compiled ONNX model or a generator)"}
    if manifest.get("compression", {}).get("method") == "snn":
        return {"skipped": "the package is a spiking network; its architecture is the ANN's"}
    import torch

    from edgefab.arch import ArchSpec
    from edgefab.factory.network import build_network

    network = build_network(ArchSpec.from_dict(architecture)).eval()
    feeds = seeded_inputs(manifest["inputs"], options.seed)
    threads = int(manifest.get("target", {}).get("threads", 0) or 0)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)  # the same thread count as the package's engines
    try:
        with torch.inference_mode():
            samples = timed_runs(
                lambda f: network(*(torch.from_numpy(v) for v in f.values())), feeds, options
            )
    finally:
        torch.set_num_threads(previous)
    note = "same architecture rebuilt with fresh weights (the package has none for PyTorch)"
    return {**summarize(samples), "note": note}

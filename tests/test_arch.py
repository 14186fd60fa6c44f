import json

import pytest
import torch

from edgefab.arch import ArchSpec, BlockSpec, round_channels
from edgefab.factory.network import build_network
from edgefab.factory.presets import simple_classifier


def test_archspec_json_round_trip():
    spec = simple_classifier((1, 28, 28), 10)
    again = ArchSpec.from_dict(json.loads(spec.to_json()))
    assert again == spec
    assert spec.notation()[0] == "k3_e1"
    assert BlockSpec(16, skip=True).notation() == "skip"


def test_scaled_network_runs_and_shrinks():
    spec = simple_classifier((3, 32, 32), 5)
    small, big = build_network(spec.scaled(0.5)), build_network(spec)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(small) < count(big)
    assert small(torch.zeros(2, 3, 32, 32)).shape == (2, 5)


def test_round_channels():
    assert round_channels(16 * 0.35) == 8
    assert round_channels(24) == 24
    assert round_channels(100) == 104


def test_spec_macs_match_the_exported_graph(tmp_path):
    from edgefab.export.onnx_export import export_onnx
    from edgefab.export.stats import count_macs

    for spec in (simple_classifier((1, 28, 28), 10).scaled(0.5), simple_classifier((3, 64, 48), 7)):
        model = export_onnx(build_network(spec), (1, *spec.input_shape), tmp_path / "m.onnx")
        assert spec.macs() == count_macs(model)


LOWER_LAYERS = {
    # importing these must not pull in any layer above them (nor torch, but for the factory)
    "edgefab.runtime, edgefab.runtime.runner, edgefab.runtime.tvm_engine": (
        "edgefab.export",
        "edgefab.factory",
        "edgefab.search",
        "edgefab.pipeline",
        "edgefab.compress",
    ),
    "edgefab.factory.customize, edgefab.factory.store, edgefab.factory.supertrain": (
        "edgefab.search",
        "edgefab.pipeline",
        "edgefab.compress",
    ),
    "edgefab.targets, edgefab.targets.latency": (
        "edgefab.search",
        "edgefab.factory",
        "edgefab.export",
        "edgefab.pipeline",
    ),
}


@pytest.mark.parametrize("modules", list(LOWER_LAYERS))
def test_lower_layers_import_nothing_above_them(modules):
    import subprocess
    import sys

    torch_free = not modules.startswith("edgefab.factory")  # the factory is made of torch modules
    above = LOWER_LAYERS[modules]
    code = (
        f"import sys, {modules};"
        f"bad = [m for m in sys.modules if (m == 'torch' and {torch_free}) or m.startswith({above!r})];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr

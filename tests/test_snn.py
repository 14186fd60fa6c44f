"""IIR-SNN (issue 7): LIF neurons, surrogate gradient, conversion, export to ONNX Runtime and TVM,
the energy arithmetic, bad input, and one build with --compress snn."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from edgefab.arch import ArchSpec, BlockSpec
from edgefab.cli import app
from edgefab.compress.snn import (
    LIF,
    MIN_THRESHOLD,
    SpikeFunction,
    SynapticLayer,
    convert,
    synaptic_layers,
)
from edgefab.compress.snn_energy import energy_summary, estimate_energy
from edgefab.compress.snn_norm import attach_norms, fold_norms
from edgefab.compress.snn_train import (
    SnnOptions,
    check_timesteps,
    distillation_loss,
    parse_timesteps,
    train_stage,
)
from edgefab.errors import EdgefabError
from edgefab.factory.network import build_network
from edgefab.spaces import get_space

runner = CliRunner()
TINY = ArchSpec(
    input_shape=(1, 12, 12),
    num_classes=4,
    stem_channels=8,
    stem_stride=1,
    blocks=(BlockSpec(8, 3, 1, 1), BlockSpec(12, 3, 3, 2), BlockSpec(12, 5, 3, 1)),
    head_channels=32,
    name="tiny",
)


def _trained_like(spec: ArchSpec, seed: int = 0) -> nn.Module:
    """A network with non-trivial batch-norm statistics (what folding must get right)."""
    torch.manual_seed(seed)
    net = build_network(spec)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.4)
    return net.eval()


@pytest.fixture(scope="module")
def tiny_snn():
    torch.manual_seed(1)
    ann = _trained_like(TINY)
    calibration = torch.randn(64, *TINY.input_shape)
    return ann, convert(ann, calibration), calibration


# --- neurons ----------------------------------------------------------------------------------------


def test_lif_integrates_fires_and_soft_resets():
    lif = LIF(threshold=1.0).eval()
    state, outputs, membranes = None, [], []
    for _ in range(4):
        out, state = lif(torch.tensor([0.6]), state)
        outputs.append(out.item())
        membranes.append(state[0].item())
    # 0.6, 1.2 -> fires, 1.2 + 0.6 - 1 = 0.8 (the rest is kept), 1.4 -> fires
    assert outputs == [0.0, 1.0, 0.0, 1.0]
    assert membranes == pytest.approx([0.6, 1.2, 0.8, 1.4])


def test_lif_leak_and_its_clamp():
    leaky = LIF(threshold=1.0, leak=0.5).eval()
    out, state = leaky(torch.tensor([0.6]), None)
    out, state = leaky(torch.tensor([0.6]), state)
    assert state[0].item() == pytest.approx(0.9) and out.item() == 0.0  # 0.5 * 0.6 + 0.6
    over = LIF(threshold=1.0, leak=1.7).eval()  # clamped to 1: no growth of the membrane
    _, state = over(torch.tensor([0.6]), None)
    _, state = over(torch.tensor([0.6]), state)
    assert state[0].item() == pytest.approx(1.2)


def test_spike_value_is_the_conversion_threshold_not_the_trained_one():
    lif = LIF(threshold=2.0).eval()
    with torch.no_grad():
        lif.threshold.fill_(0.5)
    out, _ = lif(torch.tensor([0.7]), None)
    assert out.item() == 2.0  # fires against 0.5, carries the fixed amplitude


def test_surrogate_gradient_is_piecewise_linear():
    z = torch.tensor([-1.5, -0.5, 0.0, 0.25, 0.5, 1.5], requires_grad=True)
    spikes = SpikeFunction.apply(z, 0.3)  # any alpha: the slope scales with it
    assert spikes.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]  # strictly above the threshold fires
    spikes.sum().backward()
    assert z.grad.tolist() == pytest.approx([0.0, 0.15, 0.3, 0.225, 0.15, 0.0])


def test_threshold_and_leak_get_gradients():
    lif = LIF(threshold=1.0, leak=0.9).train()
    out1, state = lif(torch.tensor([0.8, 1.1]), None)
    out2, _ = lif(torch.tensor([0.5, 0.5]), state)
    (out1.sum() + out2.sum()).backward()
    assert lif.threshold.grad is not None and float(lif.threshold.grad) < 0  # lower threshold, more spikes
    assert lif.leak.grad is not None and float(lif.leak.grad) != 0


def test_training_keeps_leaks_and_thresholds_in_range_and_learning(tiny_snn):
    """A clamp in the forward pass alone passes no gradient once a raw leak has left [0, 1]."""
    import copy

    _, snn, calibration = tiny_snn
    net = copy.deepcopy(snn)
    net.timesteps = 3
    for unit in net.units().values():
        unit.lif.leak.data.fill_(0.99)
    labels = torch.arange(len(calibration)) % TINY.num_classes
    options = SnnOptions(lr=1e-2, threshold_lr_scale=30.0, batch_size=16)  # large steps: leaks overshoot
    train_stage(net, calibration, labels, options, epochs=1)
    leaks = [unit.lif.leak.item() for unit in net.units().values()]
    assert all(0.0 <= leak <= 1.0 for leak in leaks), leaks
    assert any(leak < 0.99 for leak in leaks)  # they still learn
    assert all(unit.lif.threshold.item() >= MIN_THRESHOLD for unit in net.units().values())


def test_training_norm_starts_as_identity_and_folds_back_exactly(tiny_snn):
    import copy

    _, snn, calibration = tiny_snn
    net = copy.deepcopy(snn).eval()
    net.timesteps = 1
    with torch.no_grad():
        before = net(calibration)
        attach_norms(net, calibration)
        assert torch.allclose(net(calibration), before, atol=1e-4)  # identity on the data it was set on
        for unit in net.units().values():  # what a stage of training does to it
            unit.norm.weight.mul_(1.3)
            unit.norm.bias.add_(0.2)
            unit.norm.running_mean.add_(0.1)
            unit.norm.running_var.mul_(0.8)
        normed = net(calibration)
        assert not torch.allclose(normed, before, atol=1e-2)
        fold_norms(net)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
        assert set(net.state_dict()) == set(snn.state_dict())  # the plain network's layout again
        assert torch.allclose(net(calibration), normed, atol=1e-4)


def test_training_norm_is_used_at_t1_only(tiny_snn):
    """At T>1 a norm shared by the steps sees per-step batch statistics in training but their
    average after folding (measured: T=5 fell to 10 %); at T=1 the two are the same."""
    import copy

    _, snn, calibration = tiny_snn
    labels = torch.arange(len(calibration)) % TINY.num_classes
    options = SnnOptions(train_norm=True, batch_size=16)
    seen = []
    for timesteps in (2, 1):
        net = copy.deepcopy(snn)
        net.timesteps = timesteps
        hook = net.head.register_forward_pre_hook(
            lambda m, a, t=timesteps: seen.append((t, m.norm is not None)) if m.training else None
        )
        train_stage(net, calibration, labels, options, epochs=1)
        hook.remove()
        assert net.head.norm is None and set(net.state_dict()) == set(snn.state_dict())
    assert seen == [(2, False)] * 8 + [(1, True)] * 4  # 4 training steps; the head runs once per timestep


def test_distillation_loss():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]], requires_grad=True)
    assert distillation_loss(logits, logits.detach(), 4.0).item() == pytest.approx(0.0, abs=1e-6)
    targets = torch.tensor([[-1.0, 0.5, 2.0], [0.0, 1.0, 0.0]])
    loss = distillation_loss(logits, targets, 4.0)
    loss.backward()
    assert loss.item() > 0 and logits.grad[0, 0] > 0 and logits.grad[0, 2] < 0  # pulled to the teacher


# --- conversion -------------------------------------------------------------------------------------


def test_folding_keeps_the_ann(tiny_snn):
    ann, snn, calibration = tiny_snn
    with torch.no_grad():
        assert float((snn.ann_forward(calibration) - ann(calibration)).abs().max()) < 1e-5


def test_thresholds_start_at_the_percentile_of_pre_activations(tiny_snn):
    ann, snn, calibration = tiny_snn
    pre: list[torch.Tensor] = []  # the input of every ReLU6 of the ANN, in network order
    hooks = [m.register_forward_hook(lambda m, i, o: pre.append(i[0].clone())) for m in ann.modules()
             if isinstance(m, nn.ReLU6)]  # fmt: skip
    with torch.no_grad():
        ann(calibration)
    for hook in hooks:
        hook.remove()
    expected = [min(float(np.percentile(p.numpy(), 99.7)), 6.0) for p in pre]
    found = [float(unit.lif.threshold.detach()) for unit in snn.units().values()]
    assert found == pytest.approx(expected, rel=1e-5)
    assert list(snn.units()) == ["stem", "blocks.0.depthwise", "blocks.1.expand", "blocks.1.depthwise",
                                 "blocks.2.expand", "blocks.2.depthwise", "head"]  # fmt: skip


def test_converts_single_path_nas_networks():
    space = get_space("digits-28")
    rng = np.random.default_rng(0)
    spec = space.arch(space.sample(rng), 10)
    snn = convert(_trained_like(spec), torch.randn(16, *spec.input_shape))
    snn.timesteps = 2
    assert snn.eval()(torch.randn(2, *spec.input_shape)).shape == (2, 10)


def test_unknown_layers_are_named():
    ann = _trained_like(TINY)
    ann.stem[2] = nn.Hardswish()
    with pytest.raises(EdgefabError, match=r"stem\.2 \(Hardswish\)"):
        convert(ann, torch.randn(4, *TINY.input_shape))
    other = nn.Sequential(nn.Conv2d(1, 4, 3), nn.GELU())
    with pytest.raises(EdgefabError, match=r"not an edgefab Network.*1 \(GELU\)"):
        convert(other, torch.randn(4, 1, 8, 8))


def test_synaptic_layers_say_what_drives_them(tiny_snn):
    _, snn, _ = tiny_snn
    layers = {layer.name: layer for layer in synaptic_layers(snn, TINY.input_shape)}
    assert layers["stem"].input == "image"
    assert layers["blocks.0.depthwise"].events == (("stem", layers["blocks.0.depthwise"].macs),)
    # block 0's output is projection + residual: block 1's expand sees a sum, made of two spike sources
    expand = layers["blocks.1.expand"]
    assert expand.input == "analog" and [s for s, _ in expand.events] == ["blocks.0.depthwise", "stem"]
    assert layers["head"].input == "analog" and layers["classifier"].input == "analog"


# --- energy -----------------------------------------------------------------------------------------


def test_energy_arithmetic_by_hand():
    layers = [
        SynapticLayer("stem", 100, "image"),
        SynapticLayer("a", 200, "spikes", (("stem", 200),)),
        SynapticLayer("b", 50, "analog", (("a", 150),)),
    ]
    rates = {"stem": 0.5, "a": 0.1}
    energy = estimate_energy(layers, rates, timesteps=2)
    assert energy["ann_pj"] == pytest.approx(350 * 4.6)
    # stem once as MACs; a: 200 ops x 0.5 x 2 steps as ACs; b: 50 MACs x 2 steps (dense) or 150 x 0.1 x 2 ACs
    assert energy["snn_dense_pj"] == pytest.approx(100 * 4.6 + 200 * 0.5 * 2 * 0.9 + 50 * 2 * 4.6)
    assert energy["snn_event_driven_pj"] == pytest.approx(
        100 * 4.6 + 200 * 0.5 * 2 * 0.9 + 150 * 0.1 * 2 * 0.9
    )
    assert energy["ratio_dense"] == pytest.approx(1610 / 1100)
    int8 = energy_summary(layers, rates, 2)["int8"]
    assert int8["ann_pj"] == pytest.approx(350 * 0.23)
    assert int8["snn_dense_pj"] == pytest.approx(100 * 0.23 + 200 * 0.5 * 2 * 0.03 + 50 * 2 * 0.23)


# --- bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [(3, 5), (5, 3, 3), (2, 0), (), (5, -1)])
def test_timesteps_must_decrease_and_be_positive(bad):
    with pytest.raises(EdgefabError):
        check_timesteps(bad)
    with pytest.raises(EdgefabError):
        SnnOptions(timesteps=bad)


@pytest.mark.parametrize("bad", [{"distill": 1.5}, {"distill": -0.1}, {"temperature": 0.0}])
def test_distillation_settings_are_checked(bad):
    with pytest.raises(EdgefabError, match="distillation weight"):
        SnnOptions(**bad)


def test_timesteps_parsing():
    assert parse_timesteps("5,3,2,1") == (5, 3, 2, 1)
    with pytest.raises(EdgefabError, match="comma-separated integers"):
        parse_timesteps("5,three")


def test_cli_refuses_bad_snn_options_before_training(tmp_path):
    bad_values = [("1,3", "strictly decreasing"), ("3,0", "1 or more"), ("5,three", "comma-separated")]
    for bad, message in bad_values:
        result = runner.invoke(app, ["build", "--target", "host", "--compress", "snn", "--timesteps", bad,
                                     "--out", str(tmp_path)])  # fmt: skip
        assert result.exit_code == 2 and message in result.output, result.output
        assert result.output.startswith("error: ") and "Usage:" not in result.output  # one line, no usage
        assert len(result.output.strip().splitlines()) == 1
    result = runner.invoke(app, ["build", "--target", "host", "--compress", "prune", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "unknown --compress" in result.output
    result = runner.invoke(app, ["build", "--target", "host", "--snn-epochs", "3", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--snn-epochs applies only with --compress snn" in result.output
    result = runner.invoke(app, ["snn", "report", str(tmp_path)])
    assert result.exit_code == 2


# --- export -----------------------------------------------------------------------------------------


def test_t1_exports_to_a_plain_graph_that_runs_in_ort_and_tvm(tiny_snn, tmp_path):
    from edgefab.export.graph import run_onnxruntime
    from edgefab.export.onnx_export import INPUT_NAME, export_onnx
    from edgefab.pipeline.common import compile_with_tvm
    from edgefab.pipeline.snn import LOGIT_TOLERANCE, onnx_agreement
    from edgefab.targets import load_target

    _, snn, calibration = tiny_snn
    snn.timesteps = 1
    path = tmp_path / "snn.onnx"
    proto = export_onnx(snn, (1, *TINY.input_shape), path)
    ops = {node.op_type for node in proto.graph.node}
    assert {"Greater", "Cast"} <= ops and all(n.domain in ("", "ai.onnx") for n in proto.graph.node)
    samples = calibration[:16].numpy()
    parity = onnx_agreement(snn, path, samples)
    assert parity["top1_agreement"] == 1.0
    feeds = {INPUT_NAME: samples[:1]}
    tvm = compile_with_tvm(onnx.load(str(path)), load_target("host"), tmp_path, feeds,
                           run_onnxruntime(path, feeds), LOGIT_TOLERANCE)  # fmt: skip
    assert tvm.artifact is not None, tvm.error
    with torch.no_grad():
        expected = snn(torch.from_numpy(samples[:1])).numpy()
    from edgefab.runtime.tvm_engine import TVMEngine

    found = TVMEngine(tvm.artifact.path, [INPUT_NAME]).run(feeds)[0]
    assert found.argmax() == expected.argmax() and np.abs(found - expected).max() <= LOGIT_TOLERANCE


def test_longer_t_exports_unrolled(tiny_snn, tmp_path):
    from edgefab.export.onnx_export import export_onnx
    from edgefab.pipeline.snn import onnx_agreement

    _, snn, calibration = tiny_snn
    snn.timesteps = 3
    proto = export_onnx(snn, (1, *TINY.input_shape), tmp_path / "t3.onnx")
    assert sum(node.op_type == "Greater" for node in proto.graph.node) == 3 * len(snn.units())
    assert onnx_agreement(snn, tmp_path / "t3.onnx", calibration[:16].numpy())["top1_agreement"] == 1.0
    snn.timesteps = 1


# --- end to end ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_build_with_compress_snn(tmp_path, monkeypatch):
    from edgefab.data import load_dataset
    from edgefab.pipeline.build import BuildOptions, build
    from edgefab.runtime import load

    seen = []  # the build's own recipe with a shorter last stage (20 epochs by default): the wiring
    monkeypatch.setattr("edgefab.pipeline.snn.SnnOptions", lambda **kw: seen.append(kw) or SnnOptions(**kw))

    digits = load_dataset("mnist")
    keep = np.arange(0, len(digits), 10)  # 800 digits
    data = tmp_path / "digits.npz"
    np.savez(data, images=digits.images[keep, 0], labels=digits.labels[keep])
    options = BuildOptions(target="host", data=str(data), out=tmp_path / "out", epochs=1, factory="none",
                           compress="snn", timesteps=(3, 1), snn_epochs=3)  # fmt: skip
    path, manifest = build(options)
    assert seen[0]["last_stage_epochs"] == 3
    assert path.name.endswith("-snn")
    section = manifest["compression"]
    assert section["timesteps"] == [3, 1] and section["shipped_timesteps"] == 1
    assert set(section["accuracy"]) == {"ann", "T3", "T1"}
    assert manifest["figures"]["snn_parity"]["top1_agreement"] == 1.0
    report = json.loads((path / "snn.json").read_text())
    assert [s["timesteps"] for s in report["stages"]] == [3, 1]
    assert load(path).predict(digits.images[:4]).shape[0] == 4
    result = runner.invoke(app, ["snn", "report", str(path), "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["stages"][1]["timesteps"] == 1
    result = runner.invoke(app, ["snn", "report", str(path)])
    assert result.exit_code == 0 and "spike rate per layer" in result.output

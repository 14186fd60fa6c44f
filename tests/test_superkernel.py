"""The Single-Path superkernel: decisions from group norms, straight-through gradients, exact extraction."""

import pytest
import torch

from edgefab.factory.superkernel import SuperMBConv, indicator


def test_indicator_is_hard_forward_and_sigmoid_backward():
    threshold = torch.zeros((), requires_grad=True)
    value = torch.tensor(0.3, requires_grad=True)
    out = indicator(value, threshold)
    assert out.item() == 1.0
    out.backward()
    expected = torch.sigmoid(torch.tensor(0.3)) * (1 - torch.sigmoid(torch.tensor(0.3)))
    assert torch.isclose(value.grad, expected) and torch.isclose(threshold.grad, -expected)


def _force(layer: SuperMBConv, choice: str) -> None:
    """Set thresholds so the layer decides ``choice`` (weights stay as they are)."""
    big = torch.tensor(1e6)
    with torch.no_grad():
        layer.t_kernel.fill_(-big if "k5" in choice else big)
        layer.t_expand.fill_(-big if "e6" in choice else big)
        if layer.t_keep is not None:
            layer.t_keep.fill_(big if choice == "skip" else -big)


@pytest.mark.parametrize("choice", ["k3_e3", "k3_e6", "k5_e3", "k5_e6", "skip"])
def test_extracted_block_computes_what_the_superkernel_computes(choice):
    torch.manual_seed(0)
    layer = SuperMBConv(8, 8, 1, skippable=True)
    for module in layer.modules():  # non-trivial batch-norm statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    layer.eval()
    _force(layer, choice)
    assert layer.choice() == choice
    x = torch.randn(2, 8, 9, 9)
    with torch.no_grad():
        expected = layer(x)
        if choice == "skip":
            assert torch.equal(expected, x)
            return
        block = layer.extract(choice).eval()
        assert torch.allclose(block(x), expected, atol=1e-5)


def test_fresh_layer_starts_largest_and_thresholds_get_gradients():
    layer = SuperMBConv(8, 16, 2, skippable=False)
    assert layer.choice() == "k5_e6"
    layer(torch.randn(2, 8, 8, 8)).sum().backward()
    assert layer.t_kernel.grad is not None and layer.t_expand.grad is not None
    with pytest.raises(ValueError):
        SuperMBConv(8, 16, 2, skippable=True)

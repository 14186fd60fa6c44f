"""IIR-SNN conversion: an edgefab classifier (:class:`~edgefab.factory.network.Network`) as a
spiking network of leaky integrate-and-fire (LIF) neurons.

The method is IIR-SNN (Chowdhury, Rathi, Roy, "One timestep is all you need"), built on DIET-SNN
(Rathi, Roy): this module converts; :mod:`edgefab.compress.snn_train` trains through time.

Conversion, layer by layer:

- **Batch norm is folded** into the convolution before it (weights scaled, a bias added), so every
  synaptic layer is a plain convolution (or the linear classifier). (A T=1 stage trains with a norm
  on each LIF input again, folded back after it: :mod:`edgefab.compress.snn_norm`.)
- **Every ReLU6 becomes a LIF layer** with one trainable threshold ``v`` and one trainable leak
  ``l`` (clamped to ``[0, 1]``; 1 is a non-leaky integrate-and-fire neuron, where training starts;
  training also projects the parameters back into range after each step, see ``snn_train``).
  Membrane: ``u[t] = l * u[t-1] + I[t] - v * o[t-1]`` (soft reset: the threshold is subtracted,
  what is left over is kept), spike ``o[t] = u[t] > v``. ``u`` starts at 0.
- **A spike carries a fixed value ``a``**, the layer's threshold at conversion, rather than 1. This
  is DIET-SNN's conversion (binary spikes, the next layer's weights scaled by the threshold;
  convolutions are linear, so the two are the same network) without rewriting the weights, and it
  keeps the ANN's scale where a spike train meets a bias or a residual sum: a LIF neuron firing at
  rate ``r`` passes on ``r * a``, about the ANN's ``min(relu(x), a)``. ``a`` is a buffer, not trained,
  so the threshold ``v`` stays a pure threshold (a trainable ``a`` would also be a gain, and training
  then raises it). A deployment folds ``a`` into the consuming weights, so a consumer only adds.
- **Piecewise-linear surrogate gradient**: ``d o / d z = alpha * max(0, 1 - |z|)`` with
  ``z = u / v - 1``; thresholds get gradients through ``z``, leaks through ``u``. ``alpha`` is 1
  (with AdamW, 0.5, 1 and 2 gave the same T=1 accuracy within 0.3 points).
- **Direct input encoding**: the analog image drives the first convolution at every timestep; its
  output is the same at every step, so it is computed once and fed to the stem's LIF each step.
- **Non-spiking output**: global average pool (linear) and the classifier accumulate over the
  timesteps; the logits are the mean over ``T`` (the ANN's logit scale, so conversion starts close).
- **Thresholds start at a percentile** (default the 99.7th, DIET-SNN's choice) of each layer's
  pre-activations (the input of its ReLU6) on training data, capped at 6 (ReLU6's own ceiling).
  No percentile converts well at 5 steps (``floor(T * I / v) / T`` rounds down at every layer:
  8-16 % on the digits, 97 % at T=100); training at T=5 fixes it (BENCHMARKS.md).

What the parts without an activation become (MobileNetV2's linear bottleneck has no ReLU after
the 1x1 projection nor after the residual add):

- The **projection convolution** stays linear: it is driven by the depthwise layer's spikes and its
  output is not spiked. Putting a LIF neuron there would add a nonlinearity (and a sign clip) the
  ANN does not have.
- The **residual add** stays a sum: block input (spikes or an earlier sum) plus the projection.
- Such a sum is a *membrane-input sum*: it is the input current of the next LIF layer, through the
  next convolution (the next block's expand, or the head). That convolution therefore sees real
  values, not spikes: :mod:`edgefab.compress.snn_energy` counts it two ways, as multiply-accumulates
  at every timestep (``dense``: what the exported graph computes) and as the accumulates of the
  spikes that make the sum through the merged linear weights (``event_driven``).

Layers the converter does not know (squeeze-excitation, hard-swish, any other module) raise an
:class:`EdgefabError` naming them; nothing is approximated silently.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from edgefab.errors import EdgefabError

SURROGATE_ALPHA = 1.0
THRESHOLD_PERCENTILE = 99.7
RELU6_CEILING = 6.0
MIN_THRESHOLD = 1e-3  # keeps u / v finite if training drives a threshold to zero

_ACTIVATIONS = (nn.ReLU6, nn.ReLU)
_KNOWN_LEAVES = (nn.Conv2d, nn.BatchNorm2d, nn.Linear, nn.AdaptiveAvgPool2d, *_ACTIVATIONS)


class SpikeFunction(torch.autograd.Function):
    """Heaviside step forward, piecewise-linear surrogate backward."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, alpha: float) -> torch.Tensor:
        ctx.save_for_backward(z)
        ctx.alpha = alpha
        return (z > 0).to(z.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (z,) = ctx.saved_tensors
        return grad * ctx.alpha * torch.clamp(1.0 - z.abs(), min=0.0), None


LifState = tuple[torch.Tensor, torch.Tensor] | None  # (membrane u, last spikes o)


class LIF(nn.Module):
    """A layer of leaky integrate-and-fire neurons sharing one threshold and one leak."""

    def __init__(self, threshold: float, leak: float = 1.0, alpha: float = SURROGATE_ALPHA):
        super().__init__()
        self.threshold = nn.Parameter(torch.tensor(float(threshold)))
        self.leak = nn.Parameter(torch.tensor(float(leak)))
        self.register_buffer("amplitude", torch.tensor(float(threshold)))  # the value a spike carries
        self.alpha = alpha
        self.counts: list[float] | None = None  # [spikes, neuron-steps] while recording

    def forward(self, current: torch.Tensor, state: LifState) -> tuple[torch.Tensor, LifState]:
        """One timestep: the spikes (valued ``amplitude``) and the new state."""
        v = self.threshold.clamp(min=MIN_THRESHOLD)
        if state is None:
            u = current  # u[0] = 0 and no spike yet: the first step is the current itself
        else:
            previous_u, previous_spikes = state
            u = self.leak.clamp(0.0, 1.0) * previous_u + current - previous_spikes * v  # soft reset
        z = u / v - 1.0
        spikes = SpikeFunction.apply(z, self.alpha) if self.training else (z > 0).to(u.dtype)
        if self.counts is not None:
            self.counts[0] += float(spikes.sum())
            self.counts[1] += spikes.numel()
        return spikes * self.amplitude, (u, spikes)


def fold_batchnorm(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> nn.Conv2d:
    """``conv`` followed by ``norm`` (eval statistics) as one convolution with a bias."""
    scale = norm.weight.detach() / torch.sqrt(norm.running_var + norm.eps)
    bias = norm.bias.detach() - norm.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias.detach() * scale
    folded = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
        dilation=conv.dilation, groups=conv.groups, bias=True,
    )  # fmt: skip
    with torch.no_grad():
        folded.weight.copy_(conv.weight.detach() * scale.reshape(-1, 1, 1, 1))
        folded.bias.copy_(bias)
    return folded


class SpikingConv(nn.Module):
    """A folded convolution feeding a LIF layer (a conv-BN-ReLU6 unit of the ANN)."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv
        self.norm: nn.BatchNorm2d | None = None  # only while a stage trains (edgefab.compress.snn_norm)
        self.lif = LIF(1.0)

    def current(self, x: torch.Tensor) -> torch.Tensor:
        """The LIF layer's input current: the convolution (then the training-time norm, if any)."""
        out = self.conv(x)
        return out if self.norm is None else self.norm(out)

    def forward(self, x: torch.Tensor, states: dict) -> torch.Tensor:
        """One timestep; ``states`` holds every LIF layer's state, keyed by module."""
        out, states[self] = self.lif(self.current(x), states.get(self))
        return out


class SpikingBlock(nn.Module):
    """An MBConv block: spiking expand and depthwise units, linear projection, residual sum."""

    def __init__(
        self, expand: SpikingConv | None, depthwise: SpikingConv, project: nn.Conv2d, residual: bool
    ):
        super().__init__()
        self.expand = expand
        self.depthwise = depthwise
        self.project = project
        self.residual = residual

    def forward(self, x: torch.Tensor, states: dict) -> torch.Tensor:
        """One timestep: the block's output is a membrane-input sum, not spikes."""
        h = self.expand(x, states) if self.expand is not None else x
        out = self.project(self.depthwise(h, states))
        return x + out if self.residual else out


class SpikingNetwork(nn.Module):
    """The converted classifier, run for ``timesteps`` steps; output: mean logits over the steps."""

    def __init__(
        self, stem: SpikingConv, blocks: list[SpikingBlock], head: SpikingConv, classifier: nn.Linear
    ):
        super().__init__()
        self.stem = stem
        self.blocks = nn.ModuleList(blocks)
        self.head = head
        self.classifier = classifier
        self.timesteps = 1

    def units(self) -> dict[str, SpikingConv]:
        """Every LIF unit by name, in network order."""
        found = {"stem": self.stem}
        for i, block in enumerate(self.blocks):
            if block.expand is not None:
                found[f"blocks.{i}.expand"] = block.expand
            found[f"blocks.{i}.depthwise"] = block.depthwise
        found["head"] = self.head
        return found

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run ``self.timesteps`` steps (unrolled: the exported graph is a plain feed-forward graph)."""
        drive = self.stem.current(x)  # direct encoding: the same analog drive at every step
        states: dict = {}
        total = None
        for _ in range(self.timesteps):
            stem_out, states[self.stem] = self.stem.lif(drive, states.get(self.stem))
            h = stem_out
            for block in self.blocks:
                h = block(h, states)
            pooled = torch.flatten(self.head(h, states).mean(dim=(2, 3)), 1)
            logits = self.classifier(pooled)
            total = logits if total is None else total + logits
        return total / self.timesteps

    @torch.no_grad()
    def ann_forward(self, x: torch.Tensor, record: dict[str, list] | None = None) -> torch.Tensor:
        """The folded ANN (ReLU6 in place of every LIF); ``record`` collects each unit's pre-activations."""
        names = {unit: name for name, unit in self.units().items()}

        def unit(module: SpikingConv, inputs: torch.Tensor) -> torch.Tensor:
            pre = module.current(inputs)
            if record is not None:
                record.setdefault(names[module], []).append(pre)
            return pre.clamp(0.0, RELU6_CEILING)

        h = unit(self.stem, x)
        for block in self.blocks:
            inner = unit(block.expand, h) if block.expand is not None else h
            out = block.project(unit(block.depthwise, inner))
            h = h + out if block.residual else out
        pooled = torch.flatten(unit(self.head, h).mean(dim=(2, 3)), 1)
        return self.classifier(pooled)

    def record_spikes(self, on: bool) -> None:
        """Start (reset) or stop counting spikes in every LIF layer."""
        for unit in self.units().values():
            unit.lif.counts = [0.0, 0] if on else None

    def spike_rates(self) -> dict[str, float]:
        """Fraction of neurons firing per timestep, per LIF layer, since ``record_spikes(True)``."""
        rates = {}
        for name, unit in self.units().items():
            spikes, steps = unit.lif.counts or (0.0, 0)
            rates[name] = spikes / steps if steps else 0.0
        return rates


@dataclass(frozen=True)
class SynapticLayer:
    """One convolution or linear layer of the SNN, for the energy estimate.

    ``events`` says what an event-driven chip would do: for each LIF layer whose spikes reach this
    layer, the accumulates per timestep if every one of its neurons fired (scaled by its rate).
    A layer fed by a membrane-input sum gets it through the merged weights of the linear layers
    between (projection then this layer: one accumulate per spike and output the merged kernel
    reaches); the classifier gets the head's spikes through the (linear) average pool.
    """

    name: str
    macs: int  # multiply-accumulates of one timestep (= the ANN layer's)
    input: str  # "image" (analog, the same every step), "spikes" or "analog" (a membrane-input sum)
    events: tuple[tuple[str, int], ...] = ()  # (source LIF layer, accumulates at rate 1)


def _shapes(net: SpikingNetwork, input_shape: tuple[int, ...]) -> tuple[dict, dict, dict]:
    """MACs and input size of every synaptic module, neurons of every LIF layer (one sample)."""
    macs: dict[nn.Module, int] = {}
    inputs: dict[nn.Module, int] = {}

    def hook(module, args, output):
        macs[module] = int(output[0].numel() * module.weight[0].numel())  # outputs x fan-in
        inputs[module] = int(args[0][0].numel())

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    record: dict[str, list] = {}
    try:
        net.ann_forward(torch.zeros(1, *input_shape), record)
    finally:
        for handle in handles:
            handle.remove()
    return macs, inputs, {name: int(pre[0][0].numel()) for name, pre in record.items()}


def synaptic_layers(net: SpikingNetwork, input_shape: tuple[int, ...]) -> list[SynapticLayer]:
    """Every synaptic layer with its MACs per timestep and what drives it."""
    macs, inputs, neurons = _shapes(net, input_shape)

    def layer(name: str, module: nn.Conv2d, terms: list[tuple[str, bool]]) -> SynapticLayer:
        if len(terms) == 1 and not terms[0][1]:  # plain spikes of one LIF layer
            return SynapticLayer(name, macs[module], "spikes", ((terms[0][0], macs[module]),))
        fanout = macs[module] / inputs[module]  # outputs (x fan-in share) one input value reaches
        events = tuple(
            (source, round(neurons[source] * fanout * (module.groups if merged else 1)))
            for source, merged in terms
        )
        return SynapticLayer(name, macs[module], "analog", events)

    layers = [SynapticLayer("stem", macs[net.stem.conv], "image")]
    terms = [("stem", False)]  # the block input: (LIF source, reached through a projection?)
    for i, block in enumerate(net.blocks):
        first = block.expand if block.expand is not None else block.depthwise
        kind = "expand" if block.expand is not None else "depthwise"
        layers.append(layer(f"blocks.{i}.{kind}", first.conv, terms))
        if block.expand is not None:
            layers.append(
                layer(f"blocks.{i}.depthwise", block.depthwise.conv, [(f"blocks.{i}.expand", False)])
            )
        layers.append(layer(f"blocks.{i}.project", block.project, [(f"blocks.{i}.depthwise", False)]))
        terms = [(f"blocks.{i}.depthwise", True)] + (terms if block.residual else [])
    layers.append(layer("head", net.head.conv, terms))
    classifier = net.classifier
    events = (("head", neurons["head"] * classifier.out_features),)  # each spike adds one weight row
    layers.append(SynapticLayer("classifier", macs[classifier], "analog", events))
    return layers


# --- conversion -------------------------------------------------------------------------------------


def unknown_layers(network: nn.Module) -> list[str]:
    """Names (and types) of the modules the converter cannot map, empty when it can convert all."""
    from edgefab.factory.network import MBConv, Network

    containers = (Network, MBConv, nn.Sequential)
    found = []
    for name, module in network.named_modules():
        if isinstance(module, containers):
            continue
        if not isinstance(module, _KNOWN_LEAVES) or (
            isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size not in (1, (1, 1))
        ):
            found.append(f"{name or '<root>'} ({type(module).__name__})")
    if not isinstance(network, Network):
        found.insert(0, f"<root> ({type(network).__name__}, not an edgefab Network)")
    return found


def _unit(sequence: nn.Sequential, name: str, activation: bool) -> nn.Conv2d:
    """The folded convolution of a conv-BN(-ReLU6) unit, checking its layout."""
    layers = list(sequence)
    kinds = [nn.Conv2d, nn.BatchNorm2d] + ([_ACTIVATIONS] if activation else [])
    if len(layers) != len(kinds) or not all(isinstance(m, k) for m, k in zip(layers, kinds, strict=False)):
        found = ", ".join(type(m).__name__ for m in layers)
        raise EdgefabError(
            f"{name}: expected Conv2d, BatchNorm2d{', ReLU6' if activation else ''}; found {found}"
        )
    return fold_batchnorm(layers[0], layers[1])


def _block(mbconv: nn.Module, name: str) -> SpikingBlock:
    units = list(mbconv.body)
    if len(units) not in (2, 3):
        raise EdgefabError(f"{name}: an MBConv body of {len(units)} units cannot be converted")
    expand = SpikingConv(_unit(units[0], f"{name}.body.0", True)) if len(units) == 3 else None
    depthwise = SpikingConv(_unit(units[-2], f"{name}.body.{len(units) - 2}", True))
    project = _unit(units[-1], f"{name}.body.{len(units) - 1}", False)
    return SpikingBlock(expand, depthwise, project, bool(mbconv.residual))


def convert(
    network: nn.Module,
    calibration: torch.Tensor,
    percentile: float = THRESHOLD_PERCENTILE,
    alpha: float = SURROGATE_ALPHA,
) -> SpikingNetwork:
    """The spiking version of ``network`` (a trained edgefab ``Network``, left unchanged).

    ``calibration``: preprocessed training images whose pre-activations set the initial thresholds.
    """
    unknown = unknown_layers(network)
    if unknown:
        raise EdgefabError(
            f"the SNN converter does not know layer(s) {', '.join(unknown)}; it converts edgefab "
            "Networks of conv-BN-ReLU6 units (no squeeze-excitation or hard-swish)"
        )
    network = network.eval()
    blocks = [_block(block, f"blocks.{i}") for i, block in enumerate(network.blocks)]
    classifier = nn.Linear(network.classifier.in_features, network.classifier.out_features)
    classifier.load_state_dict(network.classifier.state_dict())
    net = SpikingNetwork(
        SpikingConv(_unit(network.stem, "stem", True)),
        blocks,
        SpikingConv(_unit(network.head, "head", True)),
        classifier,
    )
    for unit in net.units().values():
        unit.lif.alpha = alpha
    init_thresholds(net, calibration, percentile)
    return net


def init_thresholds(
    net: SpikingNetwork, calibration: torch.Tensor, percentile: float = THRESHOLD_PERCENTILE
) -> dict[str, float]:
    """Set each LIF threshold to ``percentile`` of its pre-activations on ``calibration`` (capped at 6)."""
    if not 0.0 < percentile <= 100.0:
        raise EdgefabError(f"threshold percentile must be in (0, 100], got {percentile}")
    record: dict[str, list] = {}
    for start in range(0, len(calibration), 128):
        net.ann_forward(calibration[start : start + 128], record)
    chosen = {}
    for name, unit in net.units().items():
        values = torch.cat([t.flatten() for t in record[name]]).numpy()
        value = float(np.percentile(values, percentile))
        chosen[name] = min(max(value, MIN_THRESHOLD * 10), RELU6_CEILING)
        with torch.no_grad():
            unit.lif.threshold.fill_(chosen[name])
            unit.lif.amplitude.fill_(chosen[name])
    return chosen

"""The LPIPS-style distillation distance: a real distance, its network trained here and loaded safely."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edgefab.cli import app
from edgefab.data import load_dataset
from edgefab.errors import EdgefabError
from edgefab.flow.distill import DistillOptions, make_distance, pseudo_huber
from edgefab.flow.frechet import DigitFeatures
from edgefab.flow.perceptual import PerceptualDistance, PerceptualNet, load_perceptual, perceptual_net
from edgefab.flow.slim import FIRST_WIDTH, SlimOptions, student_config
from edgefab.flow.unet import UNetConfig, VelocityUNet, parameter_count
from edgefab.runtime.package import sha256_file
from tests.test_flow import bars_npz, tiny_teacher  # noqa: F401 (fixtures)

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(bars_npz):  # noqa: F811
    return perceptual_net(load_dataset(str(bars_npz)))


def test_distance_is_zero_for_equal_images_symmetric_and_a_metric_under_sqrt(trained):
    distance = PerceptualDistance(trained.net)
    generator = torch.Generator().manual_seed(0)
    a, b, c = (torch.rand(16, 1, 8, 8, generator=generator) * 2 - 1 for _ in range(3))
    assert torch.equal(distance(a, a), torch.zeros(16))
    assert torch.allclose(distance(a, b), distance(b, a))
    assert (distance(a, b) > 0).all()
    # sqrt(d) is a Euclidean distance between normalised feature stacks: the triangle inequality holds
    ab, bc, ac = (distance(x, y).sqrt() for x, y in ((a, b), (b, c), (a, c)))
    assert (ac <= ab + bc + 1e-6).all()
    # more distortion, farther: on average over images and noise draws
    noise = torch.randn(16, 1, 8, 8, generator=generator)
    assert float(distance(a, a + 0.05 * noise).mean()) < float(distance(a, a + 0.5 * noise).mean())


def test_distance_passes_gradients_to_the_images_not_the_network(trained):
    distance = PerceptualDistance(trained.net)
    a = torch.zeros(4, 1, 8, 8, requires_grad=True)
    distance(a, torch.ones(4, 1, 8, 8)).sum().backward()
    assert a.grad is not None and float(a.grad.abs().sum()) > 0
    assert all(p.grad is None and not p.requires_grad for p in distance.net.parameters())


def test_make_distance_names_and_refusals(trained):
    a, b = torch.zeros(2, 1, 8, 8), torch.ones(2, 1, 8, 8)
    assert make_distance("pseudo-huber") is pseudo_huber
    perceptual = PerceptualDistance(trained.net)
    lpips = make_distance("lpips", perceptual)
    both = make_distance("lpips+pseudo-huber", perceptual)
    assert float(lpips(a, a)) == 0.0 and float(both(a, a)) == 0.0
    assert torch.allclose(both(a, b), lpips(a, b) + pseudo_huber(a, b))
    with pytest.raises(EdgefabError, match="unknown --loss 'l2'"):
        make_distance("l2")
    with pytest.raises(EdgefabError, match="perceptual network"):
        make_distance("lpips")


def test_network_is_not_the_frechet_classifier_and_is_cached_as_safetensors(trained, bars_npz):  # noqa: F811
    frechet_shapes = [tuple(v.shape) for v in DigitFeatures((1, 8, 8), 2).state_dict().values()]
    assert frechet_shapes != [tuple(v.shape) for v in trained.net.state_dict().values()]
    assert trained.path.endswith(".safetensors") and not trained.cached
    again = perceptual_net(load_dataset(str(bars_npz)))
    assert again.cached and again.path == trained.path
    reloaded = load_perceptual(trained.path, 1, 2)
    assert all(torch.equal(v, reloaded.state_dict()[k]) for k, v in trained.net.state_dict().items())


def test_a_pickle_is_never_loaded(tmp_path):
    marker = tmp_path / "unpickled"

    class Trap:
        def __reduce__(self):
            return (marker.write_text, ("ran",))

    path = tmp_path / "perceptual.safetensors"
    path.write_bytes(pickle.dumps({"layers.0.weight": Trap()}))
    with pytest.raises(EdgefabError, match="not a perceptual network"):
        load_perceptual(str(path), 1, 2)
    assert not marker.exists()
    torch.save(PerceptualNet(1, 2).state_dict(), path)  # a torch pickle of the right weights: refused too
    with pytest.raises(EdgefabError, match="not a perceptual network"):
        load_perceptual(str(path), 1, 2)


def test_flow_slim_with_lpips_ships_its_network(tiny_teacher, tmp_path):  # noqa: F811
    out = tmp_path / "slim"
    args = ["flow", "slim", str(tiny_teacher), "--out", str(out), "--pairs", "32", "--solver", "euler:2"]
    args += ["--reflow-steps", "10", "--anneal-steps", "5", "--distill-steps", "5", "--batch-size", "16"]
    args += ["--first-width", "0.5"]
    result = runner.invoke(app, [*args, "--eval-samples", "0", "--loss", "lpips", "--json"])
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "flow.json").read_text())
    distill = meta["distillation"]
    assert distill["loss"] == "lpips" and "not the Frechet classifier" in distill["perceptual"]["network"]
    shipped = out / distill["perceptual"]["file"]
    assert sha256_file(shipped) == distill["perceptual"]["sha256"]
    assert isinstance(load_perceptual(str(shipped), 1, 2), PerceptualNet)
    assert np.isfinite(distill["loss_last_100"])


def test_unknown_loss_is_refused_before_work(tiny_teacher, tmp_path):  # noqa: F811
    result = runner.invoke(
        app, ["flow", "slim", str(tiny_teacher), "--out", str(tmp_path / "s"), "--loss", "l1"]
    )
    assert result.exit_code == 2 and "unknown --loss 'l1'" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "s").exists()


def test_cli_loss_default_is_the_library_default():
    import inspect

    from edgefab.flow_cli import slim

    assert inspect.signature(slim).parameters["loss"].default == DistillOptions.loss
    assert inspect.signature(slim).parameters["first_width"].default == FIRST_WIDTH == SlimOptions.first_width


def test_one_class_data_is_refused_for_lpips(tmp_path):
    path = tmp_path / "one.npz"
    np.savez(path, images=np.zeros((20, 8, 8), np.uint8), labels=np.zeros(20, np.int64))
    with pytest.raises(EdgefabError, match="use --loss pseudo-huber"):
        perceptual_net(load_dataset(str(path)))


def test_default_student_layout_stays_under_a_third_of_the_teacher():
    teacher = UNetConfig()
    student = student_config(teacher, SlimOptions.width, SlimOptions.first_width)
    assert student.channels == (24, 32, 32)
    ratio = parameter_count(VelocityUNet(student)) / parameter_count(VelocityUNet(teacher))
    assert ratio <= 1 / 3
    with pytest.raises(EdgefabError, match="--first-width: width 0.3"):
        student_config(teacher, 0.5, 0.3)

"""SlimFlow: rectified flow, annealing reflow, flow-guided distillation, Frechet distance, generator packages.

Models here are tiny (8x8 images, 8 channels per level) so that every step runs in seconds; the
figures that matter come from benchmarks/slimflow.py.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edgefab.cli import app
from edgefab.errors import EdgefabError
from edgefab.flow.checkpoint import load_checkpoint
from edgefab.flow.distill import pseudo_huber
from edgefab.flow.frechet import frechet_distance
from edgefab.flow.rectified import OptimOptions, euler_sample, interpolate, rk45_sample
from edgefab.flow.reflow import SCHEDULES, Pairs, anneal_beta, annealed_noise, parse_solver
from edgefab.flow.unet import UNetConfig, VelocityUNet, check_config

TINY_CHANNELS = (8, 8, 8)
runner = CliRunner()


def _bars(count: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """8x8 images of one bright bar, vertical (class 0) or horizontal (class 1), at random places."""
    rng = np.random.default_rng(0)
    images = np.zeros((count, 8, 8), np.uint8)
    labels = np.arange(count) % 2
    for image, label, place in zip(images, labels, rng.integers(1, 7, count), strict=True):
        if label:
            image[place, 1:7] = 255
        else:
            image[1:7, place] = 255
    return images, labels.astype(np.int64)


@pytest.fixture(scope="module")
def bars_npz(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("flowdata") / "bars.npz"
    images, labels = _bars()
    np.savez(path, images=images, labels=labels)
    return path


@pytest.fixture(scope="module")
def tiny_teacher(bars_npz, tmp_path_factory) -> Path:
    from edgefab.flow.teacher import TeacherOptions, train_teacher
    from edgefab.pipeline.common import SilentProgress

    out = tmp_path_factory.mktemp("flows") / "teacher"
    options = TeacherOptions(
        str(bars_npz),
        out,
        base_channels=TINY_CHANNELS,
        optim=OptimOptions(steps=40, batch_size=16),
        grid_steps=2,
    )
    return train_teacher(options, SilentProgress())[0]


@pytest.fixture(scope="module")
def tiny_slim(tiny_teacher, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("flows") / "slim"
    args = ["flow", "slim", str(tiny_teacher), "--out", str(out), "--pairs", "32", "--solver", "euler:2"]
    args += ["--reflow-steps", "20", "--anneal-steps", "10", "--distill-steps", "10", "--batch-size", "16"]
    args += ["--first-width", "0.5"]  # 8 x 0.75 channels would not divide into groups of 4
    result = runner.invoke(app, [*args, "--eval-samples", "16", "--json"])
    assert result.exit_code == 0, result.output
    return out


# --- the model ---------------------------------------------------------------------------------


def test_width_scales_channels_and_must_divide_them():
    assert UNetConfig(width=0.5).channels == (16, 32, 32)
    model = VelocityUNet(UNetConfig((1, 8, 8), TINY_CHANNELS, 0.5))
    assert model(torch.zeros(3, 1, 8, 8), torch.rand(3)).shape == (3, 1, 8, 8)
    for width in (0.3, 0.1, 0.0):
        with pytest.raises(EdgefabError, match="width"):
            check_config(UNetConfig(width=width))
    with pytest.raises(EdgefabError, match="divisible by 4"):
        check_config(UNetConfig(image_shape=(1, 30, 30)))


# --- rectified flow ------------------------------------------------------------------------------


class _Decay(torch.nn.Module):
    """v(x, t) = -x: the exact flow from 0 to 1 multiplies by e^-1."""

    def forward(self, x, t):
        return -x


def test_interpolation_ends_and_solvers_agree_with_the_exact_flow():
    x0, x1 = torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4)
    assert torch.equal(interpolate(x0, x1, torch.tensor([0.0, 1.0]))[0], x0[0])
    assert torch.equal(interpolate(x0, x1, torch.tensor([0.0, 1.0]))[1], x1[1])
    z = torch.randn(3, 1, 4, 4)
    exact = z * math.exp(-1)
    assert torch.allclose(euler_sample(_Decay(), z, 1), torch.zeros_like(z))  # one step: z - z
    assert (euler_sample(_Decay(), z, 200) - exact).abs().max() < 5e-3
    adaptive, evaluations = rk45_sample(_Decay(), z, rtol=1e-6, atol=1e-6)
    assert (adaptive - exact).abs().max() < 1e-4
    assert 6 <= evaluations < 200  # adaptive: few evaluations on a smooth field


def test_anneal_schedules_go_from_one_to_zero():
    for schedule in SCHEDULES:
        values = [anneal_beta(step, 100, schedule) for step in range(0, 120)]
        assert values[0] == 1.0 and values[100] == 0.0 and values[119] == 0.0, schedule
        assert all(a >= b for a, b in zip(values, values[1:], strict=False)), schedule
    assert anneal_beta(50, 100, "linear") == 0.5
    with pytest.raises(EdgefabError, match="schedule"):
        anneal_beta(0, 10, "sigmoid")


def test_annealed_noise_keeps_unit_variance_and_its_coupling():
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(20000, 1, 2, 2, generator=generator)
    for beta in (0.0, 0.6, 1.0):
        noise = annealed_noise(z, beta, generator)
        assert abs(float(noise.std()) - 1) < 0.02
        correlation = float(torch.corrcoef(torch.stack([noise.flatten(), z.flatten()]))[0, 1])
        assert abs(correlation - math.sqrt(1 - beta**2)) < 0.02


def test_pseudo_huber_and_frechet_distance():
    a = torch.zeros(4, 1, 8, 8)
    assert float(pseudo_huber(a, a)) == 0.0
    far = torch.full_like(a, 10.0)
    assert abs(float(pseudo_huber(a, far)) - 80.0) < 0.05  # ~ the L2 norm far away
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, 4))
    assert frechet_distance(x, x) < 1e-6
    assert abs(frechet_distance(x, x + 3.0) - 36.0) < 1e-6  # a pure mean shift: ||3 * 1||^2


def test_pairs_round_trip_and_solver_specs(tmp_path):
    pairs = Pairs(torch.randn(5, 1, 8, 8), torch.rand(5, 1, 8, 8), "euler:4", 4.0)
    loaded = Pairs.load(pairs.save(tmp_path / "pairs.npz"))
    assert torch.equal(loaded.noise, pairs.noise) and torch.equal(loaded.images, pairs.images)
    assert (loaded.solver, loaded.evaluations) == ("euler:4", 4.0)
    assert parse_solver("euler:32") == ("euler", 32) and parse_solver("rk45") == ("rk45", 0)
    for bad in ("euler", "euler:0", "heun:4"):
        with pytest.raises(EdgefabError, match="solver"):
            parse_solver(bad)


# --- the pipeline ----------------------------------------------------------------------------------


def test_slim_checkpoint_holds_a_smaller_student_and_scores(tiny_teacher, tiny_slim):
    slim = load_checkpoint(tiny_slim, "slimflow", "test")
    teacher = load_checkpoint(tiny_teacher, "rectified-flow", "test").models["velocity"]
    two_flow, one_step = slim.models["two_flow"], slim.models["one_step"]
    assert one_step.config.channels == (4, 4, 4) and teacher.config.channels == TINY_CHANNELS
    assert sum(p.numel() for p in one_step.parameters()) < sum(p.numel() for p in teacher.parameters()) / 3
    assert any(
        not torch.equal(a, b)
        for a, b in zip(two_flow.state_dict().values(), one_step.state_dict().values(), strict=True)
    )
    meta = slim.meta
    assert meta["frechet"]["one_step"]["one_step"] >= 0 and meta["frechet"]["real_vs_real_floor"] >= 0
    assert (
        meta["distillation"]["t_range"] == [0.2, 0.8] and "pseudo-Huber" in meta["distillation"]["distance"]
    )
    assert meta["device"] == ("cuda" if torch.cuda.is_available() else "cpu")  # --device auto, resolved
    pairs = Pairs.load(tiny_slim / "pairs.npz")
    assert pairs.noise.shape == (32, 1, 8, 8) and pairs.solver == "euler:2"
    for grid in ("one_step.png", "two_flow.png"):
        assert (tiny_slim / grid).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_generator_package_builds_runs_and_writes_a_png(tiny_slim, tmp_path):
    from PIL import Image

    result = runner.invoke(
        app, ["build", "--target", "host", "--model", str(tiny_slim), "--out", str(tmp_path), "--json"]
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)["manifest"]
    assert manifest["kind"] == "generator"
    assert manifest["inputs"] == [{"name": "noise", "shape": [1, 1, 8, 8], "dtype": "float32"}]
    assert manifest["generator"]["output_image_shape"] == [1, 1, 8, 8]
    assert manifest["generator"]["value_range"] == [0.0, 1.0]
    slim_meta = json.loads((tiny_slim / "flow.json").read_text())
    assert manifest["build"]["channels"] == slim_meta["channels"] == [4, 4, 4]
    assert manifest["engines"]["tvm"]["max_abs_diff_vs_onnxruntime"] < 1e-4
    package = tmp_path / "slim-host"
    noise = np.random.default_rng(1).standard_normal((6, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "noise.npy", noise)
    for engine in ("onnxruntime", "tvm"):
        png = tmp_path / f"{engine}.png"
        args = ["package", "run", str(package), "--input", str(tmp_path / "noise.npy"), "--engine", engine]
        ran = runner.invoke(app, [*args, "--out", str(png)])
        assert ran.exit_code == 0, ran.output
        assert Image.open(png).format == "PNG"
    images = [np.asarray(Image.open(tmp_path / f"{e}.png")) for e in ("onnxruntime", "tvm")]
    assert np.abs(images[0].astype(int) - images[1].astype(int)).max() <= 1  # same images, either engine
    from edgefab.flow.checkpoint import load_checkpoint as load
    from edgefab.pipeline.flow_build import OneStepGenerator

    expected = OneStepGenerator(load(tiny_slim, "slimflow", "test").models["one_step"])(
        torch.from_numpy(noise)
    )
    from edgefab.runtime import load as load_package

    found = np.concatenate([load_package(package).run({"noise": n[None]})["image"] for n in noise])
    assert np.abs(found - expected.detach().numpy()).max() < 1e-4


@pytest.mark.slow
def test_report_rows_and_goals(tiny_slim, tmp_path):
    result = runner.invoke(
        app,
        [
            "flow",
            "report",
            str(tiny_slim),
            "--samples",
            "16",
            "--many-steps",
            "3",
            "--out",
            str(tmp_path),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    solvers = [(row["key"], row["solver"]) for row in report["rows"]]
    assert solvers == [
        ("teacher", "euler:1"),
        ("teacher", "euler:3"),
        ("two_flow", "euler:1"),
        ("one_step", "euler:1"),
    ]
    teacher_one, teacher_many = report["rows"][0], report["rows"][1]
    assert teacher_many["macs_per_sample"] == 3 * teacher_one["macs_per_sample"] > 0
    assert set(report["goals"]) == {
        "beats_teacher_one_step_widely",
        "within_1.5x_of_teacher_many_steps",
        "at_most_a_third_of_parameters",
    }
    assert report["goals"]["at_most_a_third_of_parameters"]["met"] is True
    assert (tmp_path / "report.json").is_file() and (tmp_path / "one_step-euler1.png").is_file()


# --- bad input ----------------------------------------------------------------------------------------


def _fails(args: list[str], *words: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for word in words:
        assert word in result.output, result.output


def test_wrong_kind_of_checkpoint_is_refused(tiny_teacher, tiny_slim, tmp_path):
    _fails(
        ["flow", "slim", str(tiny_slim), "--out", str(tmp_path / "x")],
        "slimflow checkpoint",
        "edgefab flow train",
    )
    _fails(
        ["build", "--target", "host", "--model", str(tiny_teacher), "--out", str(tmp_path)],
        "edgefab flow slim",
    )
    _fails(["flow", "report", str(tmp_path)], "not a flow checkpoint")
    _fails(["build", "--model", str(tiny_slim), "--quantize", "int8", "--out", str(tmp_path)], "--quantize")
    _fails(["build", "--model", str(tiny_slim), "--data", "mnist", "--out", str(tmp_path)], "--data")
    assert not any(tmp_path.iterdir())  # refused before any work


def test_damaged_checkpoint_is_refused(tiny_teacher, tmp_path):
    import shutil

    copy = tmp_path / "teacher"
    shutil.copytree(tiny_teacher, copy)
    with open(copy / "velocity.safetensors", "r+b") as handle:
        handle.seek(-4, 2)
        handle.write(b"\0\0\0\1")
    _fails(["flow", "slim", str(copy), "--out", str(tmp_path / "s")], "damaged")


def test_width_that_does_not_divide_the_channels_is_refused_before_work(tiny_teacher, tmp_path):
    _fails(
        ["flow", "slim", str(tiny_teacher), "--width", "0.3", "--out", str(tmp_path / "s")], "does not divide"
    )
    _fails(["flow", "train", "--width", "0.3", "--out", str(tmp_path / "t")], "does not divide")
    assert not (tmp_path / "s").exists() and not (tmp_path / "t").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_flow_training_on_a_gpu_is_reproducible_from_its_seed(tmp_path):
    """A teacher and a SlimFlow student trained twice on a GPU from one seed have the same weights
    (deterministic kernels, as the supernet's training), and torch's global setting is as it was.
    On the digits at the default widths: the tiny models above came out the same on an H200 even
    without deterministic kernels, these did not."""
    from edgefab.flow.distill import DistillOptions
    from edgefab.flow.reflow import AnnealOptions
    from edgefab.flow.slim import SlimOptions, slim
    from edgefab.flow.teacher import TeacherOptions, train_teacher
    from edgefab.pipeline.common import SilentProgress

    def teacher(out: Path) -> dict:
        options = TeacherOptions("mnist", out, optim=OptimOptions(steps=150), grid_steps=2, device="cuda")
        return load_checkpoint(train_teacher(options, SilentProgress())[0], "rectified-flow", "test").models

    def student(out: Path) -> dict:  # from the first teacher the loop below trains
        anneal = AnnealOptions(OptimOptions(steps=60), anneal_steps=30)
        distill = DistillOptions(OptimOptions(steps=40, lr=1e-4))
        options = SlimOptions(tmp_path / "teacher1", out, pairs=256, solver="euler:4", anneal=anneal,
                              distill=distill, eval_samples=0, device="cuda")  # fmt: skip
        return load_checkpoint(slim(options, SilentProgress())[0], "slimflow", "test").models

    for train in (teacher, student):
        first, second = train(tmp_path / f"{train.__name__}1"), train(tmp_path / f"{train.__name__}2")
        for name, model in first.items():
            pairs = zip(model.state_dict().values(), second[name].state_dict().values(), strict=True)
            assert all(torch.equal(a, b) for a, b in pairs), f"{train.__name__}: {name} differs"
    assert not torch.are_deterministic_algorithms_enabled()


def test_unknown_or_absent_device_is_refused_before_work(tiny_teacher, tmp_path):
    import torch

    _fails(["flow", "slim", str(tiny_teacher), "--device", "tpu", "--out", str(tmp_path / "s")], "--device")
    if not torch.cuda.is_available():
        _fails(["flow", "train", "--device", "cuda", "--out", str(tmp_path / "t")], "no CUDA GPU", "cpu")
    assert not (tmp_path / "s").exists() and not (tmp_path / "t").exists()


def test_data_without_images_is_refused(tmp_path):
    np.savez(tmp_path / "labels.npz", labels=np.arange(10))
    _fails(["flow", "train", "--data", str(tmp_path / "labels.npz"), "--out", str(tmp_path / "t")], "images")
    _fails(
        ["flow", "train", "--data", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "t")],
        "does not exist",
    )


def test_flow_layer_imports_nothing_above_it():
    code = (
        "import sys, edgefab.flow.slim, edgefab.flow.teacher, edgefab.flow.evaluate;"
        "bad = [m for m in sys.modules if m.startswith(('edgefab.pipeline', 'edgefab.search',"
        " 'edgefab.factory', 'edgefab.compress', 'edgefab.export', 'edgefab.cli'))];"
        "import edgefab.runtime.generate;"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    torch_free = (
        "import sys, edgefab.runtime.generate, edgefab.runtime.grid; sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", torch_free]).returncode == 0


def test_report_refuses_a_slim_checkpoint_whose_teacher_is_gone(tiny_slim, tmp_path):
    import shutil

    copy = tmp_path / "slim"
    shutil.copytree(tiny_slim, copy)
    meta = json.loads((copy / "flow.json").read_text())
    meta["teacher"]["path"] = str(tmp_path / "moved-teacher")
    (copy / "flow.json").write_text(json.dumps(meta))
    _fails(["flow", "report", str(copy), "--samples", "4"], "is gone")


def test_cli_defaults_are_the_library_defaults():
    """The CLI repeats the pair count and solver as literals (it imports no torch at start-up): keep
    them equal."""
    import inspect

    from edgefab.flow.slim import PAIRS, SOLVER, SlimOptions
    from edgefab.flow_cli import slim

    parameters = inspect.signature(slim).parameters
    assert parameters["pairs"].default == PAIRS == SlimOptions.pairs
    assert parameters["solver"].default == SOLVER == SlimOptions.solver

"""The assembler's denoised targets (ridge accuracy predictor) and ``edgefab factory assemble``."""

import json
import shutil

import numpy as np
from scipy.stats import spearmanr

from edgefab.data.tasks import parse_task
from edgefab.factory.assembler import AssemblerConfig, module_features, predicted_accuracy, train_assembler
from edgefab.factory.space import FACTORY_SPACES

SPACE = FACTORY_SPACES["digits-28"]
# the stage-width decisions: after one per searchable layer, before the stem's and head's widths
STAGE_WIDTHS = slice(len(SPACE.space.searchable()), len(SPACE.space.searchable()) + len(SPACE.widths))
DIGITS = [str(d) for d in range(10)]


def noisy_pool(members: int, samples: int, seed: int = 0):
    """A synthetic pool whose true accuracy grows with its stage widths (0.95 -> 0.97), measured on
    ``samples`` images: differences between neighbours are mostly measurement noise, as on real pools."""
    rng = np.random.default_rng(seed)
    pool = [SPACE.smallest(), SPACE.largest()] + [SPACE.sample(rng) for _ in range(members - 2)]
    size = np.array([sum(SPACE.values(s)[STAGE_WIDTHS]) for s in pool], float)
    truth = 0.95 + 0.02 * (size - size.min()) / np.ptp(size)
    labels = rng.integers(0, 10, samples)
    correct = rng.random((members, samples)) < truth[:, None]
    onehot = np.eye(10)[labels][None]  # right: the true class's logit is highest; wrong: lowest
    logits = np.where(correct[..., None], onehot, -onehot)
    return pool, logits, labels, truth, size


def test_ridge_predictor_recovers_the_trend_under_the_noise():
    pool, logits, labels, truth, _ = noisy_pool(192, 600)
    measured = (logits.argmax(-1) == labels).mean(-1)
    fitted, penalty = predicted_accuracy(module_features(SPACE, pool), measured[None])
    assert penalty > 0
    assert spearmanr(fitted[0], truth)[0] > spearmanr(measured, truth)[0] + 0.2
    assert abs(fitted.mean() - measured.mean()) < 1e-9  # the intercept is not shrunk


def test_denoised_assembler_spends_the_budget_on_capacity():
    """At mid to full budgets, the assembler trained on denoised targets puts more probability on
    wide stages than the one trained on the raw noisy accuracies (which chases lucky members)."""
    pool, logits, labels, _, size = noisy_pool(128, 200)
    latency = {"synthetic": 0.05 + 0.001 * size}
    task = parse_task("all", DIGITS)
    widths = [np.asarray(w, float) for w in SPACE.widths]
    expected = {}
    for denoise in (False, True):
        config = AssemblerConfig(scenarios=40, steps=200, denoise=denoise)
        assembler, summary = train_assembler(SPACE, pool, logits, labels, latency, config)
        stages = [p for budget in (0.5, 0.7, 1.0) for p in assembler.distribution(task, budget)[STAGE_WIDTHS]]
        expected[denoise] = sum(float(p @ w) for p, w in zip(stages, widths * 3, strict=True))
        assert (summary["ridge_penalty"] is not None) == denoise
    assert expected[True] > expected[False] + 12, expected  # channels, summed over stages and budgets


def test_assemble_reproduces_the_trained_factory(tiny_factory, tmp_path):
    """Retraining a factory's assembler with the settings it was trained with gives the same bytes,
    in place, and the CLI reports it."""
    from typer.testing import CliRunner

    from edgefab.cli import app
    from edgefab.pipeline.factory_train import FactoryJob, assemble_factory

    folder = tmp_path / "copy"
    shutil.copytree(tiny_factory[0], folder)
    first = json.loads((folder / "factory.json").read_text())
    _, meta = assemble_factory(folder, FactoryJob(pool=8, pool_samples=100, assembler_steps=20))
    assert meta["files"] == first["files"]
    assert meta["assembler"] == first["assembler"]
    arguments = ["factory", "assemble", str(folder), "--pool", "8", "--pool-samples", "60", "--steps", "30"]
    result = CliRunner().invoke(app, [*arguments, "--json"])
    assert result.exit_code == 0, result.output
    meta = json.loads(result.output)
    assert meta["assembler"]["steps"] == 30 and meta["pool"]["scored_on"] == 60
    result = CliRunner().invoke(app, ["factory", "assemble", str(tmp_path / "absent")])
    assert result.exit_code == 2 and "is not a factory" in result.output
    before = (folder / "factory.json").read_bytes()
    result = CliRunner().invoke(app, ["factory", "assemble", str(folder), "--targets", "pixel,nowhere"])
    assert result.exit_code != 0 and "unknown target 'nowhere'" in result.output
    assert (folder / "factory.json").read_bytes() == before


def test_assemble_for_the_host_target(tiny_factory, tmp_path):
    """An assembler can learn the budgets of the machine it runs on: the pool is costed with the host
    table, the factory's layer shapes measured first."""
    from edgefab.pipeline.factory_train import FactoryJob, assemble_factory

    folder = tmp_path / "copy"
    shutil.copytree(tiny_factory[0], folder)
    job = FactoryJob(pool=8, pool_samples=60, assembler_steps=10, assembler_targets=("host",))
    _, meta = assemble_factory(folder, job)
    assert meta["assembler"]["targets"] == ["host"]


def test_pool_images_are_the_scored_ones_and_the_cli_default_agrees():
    """A benchmark finds the images a pool was scored on from the factory's seed and count alone."""
    from edgefab.factory_cli import FACTORY_ASSEMBLER_TARGETS, FACTORY_POOL_SAMPLES
    from edgefab.pipeline.factory_train import FactoryJob, pool_images

    assert FactoryJob().pool_samples == FACTORY_POOL_SAMPLES
    assert ",".join(FactoryJob().assembler_targets) == FACTORY_ASSEMBLER_TARGETS
    first = pool_images(1597, 0, 600)
    assert len(set(first.tolist())) == 600 and first.max() < 1597
    assert (pool_images(1597, 0, 600) == first).all() and not (pool_images(1597, 1, 600) == first).all()


def test_pool_members_cover_the_tight_budgets():
    """The pool's (and spread training's) sampling reaches the fastest third of the latency range,
    where uniform sampling puts under 1 % of sub-networks, so the assembler has something to learn
    there."""
    from edgefab.targets.latency import latency_model

    space, model = FACTORY_SPACES["digits-28"], latency_model("pixel")
    cost = lambda s: np.log(model.total_ms(space.arch(s, 10)))  # noqa: E731
    low, high = cost(space.smallest()), cost(space.largest())
    rng = np.random.default_rng(0)
    position = np.array([(cost(space.sample_from_end(rng)) - low) / (high - low) for _ in range(100)])
    assert (position < 1 / 3).sum() >= 15 and (position > 2 / 3).sum() >= 15

"""Single-Path NAS: spaces as data, the paper's runtime formula, budget handling, a real small search."""

import json

import numpy as np
import pytest
import torch

from edgefab.errors import EdgefabError
from edgefab.search.costs import cost_table
from edgefab.search.spnas import repair_budget
from edgefab.search.supernet import SuperNet
from edgefab.spaces import get_space
from edgefab.targets.latency import latency_model


@pytest.fixture(scope="module")
def pixel_table():
    return cost_table(get_space("mnasnet-224"), 1000, latency_model("pixel"))


def test_mnasnet_space_matches_the_published_layout():
    space = get_space("mnasnet-224")
    assert len(space.slots) == 22
    assert space.slots[0].fixed == "k3_e1" and space.slots[21].fixed == "k3_e6"
    assert [i for i, s in enumerate(space.slots) if s.stride == 2] == [1, 5, 9, 17]
    assert [i for i, s in enumerate(space.slots) if s.skippable] == [
        2,
        3,
        4,
        6,
        7,
        8,
        10,
        11,
        12,
        14,
        15,
        16,
        18,
        19,
        20,
    ]
    spec = space.arch(space.largest(), 1000)
    assert spec.stem_channels == 32 and spec.head_channels == 1280 and spec.blocks[13].out_channels == 96


def test_pixel_costs_reproduce_the_paper(pixel_table):
    space = get_space("mnasnet-224")
    everywhere = lambda c: [s.fixed or c for s in space.slots]  # noqa: E731
    assert pixel_table.fixed_ms == pytest.approx(19.6, abs=0.01)
    assert pixel_table.total(everywhere("k3_e3")) == pytest.approx(65.7, abs=0.05)
    assert pixel_table.total(everywhere("k5_e6")) == pytest.approx(131.5, abs=0.05)
    model = latency_model("pixel")
    rng = np.random.default_rng(0)
    for _ in range(5):
        choices = space.sample(rng)
        assert pixel_table.total(choices) == pytest.approx(
            model.total_ms(space.arch(choices, 1000)), rel=1e-9
        )


def test_differentiable_runtime_equals_the_table_at_hard_decisions(pixel_table):
    net = SuperNet(get_space("mnasnet-224"), 1000)
    runtime = net.runtime(pixel_table)
    assert float(runtime.detach()) == pytest.approx(131.46, abs=0.05)
    runtime.backward()
    assert all(t.grad is not None for t in net.thresholds())
    with torch.no_grad():  # force every searchable layer to k3_e3, skip where allowed
        for layer in net.super_layers().values():
            layer.t_kernel.fill_(1e6)
            layer.t_expand.fill_(1e6)
            if layer.t_keep is not None:
                layer.t_keep.fill_(1e6)
    assert float(net.runtime(pixel_table).detach()) == pytest.approx(
        pixel_table.total(net.choices()), abs=1e-4
    )
    assert net.choices().count("skip") == 15


def test_budget_repair_lands_within_ten_percent(pixel_table):
    space = get_space("mnasnet-224")
    margins = {i: {"k5": 1.0, "e6": 1.0, "keep": 1.0} for i in space.searchable()}
    for budget in (50.0, 79.0, 110.0):
        for start in (space.largest(), space.smallest()):
            choices = repair_budget(space, pixel_table, start, budget, margins)
            total = pixel_table.total(choices)
            assert 0.9 * budget <= total <= budget, (budget, total)


def test_bad_space_and_choices():
    with pytest.raises(EdgefabError, match="unknown search space 'resnet'.*digits-28"):
        get_space("resnet")
    space = get_space("digits-28")
    with pytest.raises(EdgefabError, match="allows"):
        space.arch(["k7_e6"] * len(space.slots), 10)
    with pytest.raises(EdgefabError, match="choices"):
        space.arch(["k3_e3"], 10)


@pytest.mark.slow
def test_small_search_end_to_end(tmp_path):
    from edgefab.pipeline.search import SpnasJob, run_spnas

    space = get_space("digits-28")
    table = cost_table(space, 10, latency_model("pixel"))
    low, high = table.total(space.smallest()), table.total(space.largest())
    budget = low + 0.4 * (high - low)
    job = SpnasJob(
        "pixel", budget, "digits-28", "mnist", tmp_path / "run", epochs=2, warmup_epochs=1,
        finetune_epochs=1, train_samples=1024,
    )  # fmt: skip
    path, summary = run_spnas(job)
    assert sorted(p.name for p in path.iterdir()) == [
        "arch.json",
        "history.json",
        "model.onnx",
        "weights.safetensors",
    ]
    assert 0.9 * budget <= summary["predicted_ms"] <= budget
    assert summary["predicted_ms"] == pytest.approx(table.total(summary["notation"]), abs=1e-3)
    assert json.loads((path / "arch.json").read_text())["notation"] == summary["notation"]
    assert len(json.loads((path / "history.json").read_text())) == 2
    assert summary["accuracy"] > 0.5  # 1,024 samples, 3 epochs in all: far above chance (0.1)
    assert summary["measured"] is None  # pixel is not this machine


def test_search_bad_inputs(tmp_path):
    from edgefab.pipeline.search import SpnasJob, run_spnas

    with pytest.raises(EdgefabError, match=r"below the smallest network of digits-28 \([\d.]+ ms"):
        run_spnas(SpnasJob("pixel", 0.001, "digits-28", out=tmp_path / "a"))
    with pytest.raises(EdgefabError, match="space cifar-32 takes 3x32x32"):
        run_spnas(SpnasJob("pixel", 1.0, "cifar-32", out=tmp_path / "b"))
    with pytest.raises(EdgefabError, match="unknown search space"):
        run_spnas(SpnasJob("pixel", 1.0, "nas-bench", out=tmp_path / "c"))
    assert list(tmp_path.iterdir()) == []


def test_profile_a_search_space_on_host():
    from typer.testing import CliRunner

    from edgefab.cli import app

    command = ["profile", "--target", "host", "--space", "digits-28", "--networks", "3", "--seconds", "2"]
    result = CliRunner().invoke(app, [*command, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["networks"] == 3 and report["layers"] > 10 and report["statistic"] == "fastest call"
    space = get_space("digits-28")
    table = cost_table(space, 10, latency_model("host"))
    assert "overhead fitted on 3 networks" in table.source
    assert 0 < table.total(space.smallest()) < table.total(space.largest())
    unknown = CliRunner().invoke(app, ["profile", "--target", "host", "--space", "nope"])
    assert unknown.exit_code == 2 and "digits-28" in unknown.output

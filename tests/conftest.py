"""Shared fixtures: an isolated cache, and packages built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SHARED_MODELS = SHARED / "models"


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test session trains into its own cache, so tests never depend on a user's cache."""
    folder = tmp_path_factory.mktemp("edgefab-cache")
    patch = pytest.MonkeyPatch()
    patch.setenv("EDGEFAB_CACHE_DIR", str(folder))
    yield folder
    patch.undo()


@pytest.fixture(scope="session")
def host_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The main job's package for `host` (trains once; later builds hit the cache)."""
    from edgefab.pipeline.build import BuildOptions, build

    out = tmp_path_factory.mktemp("build")
    return build(BuildOptions(target="host", out=out, archive=True))


@pytest.fixture(scope="session")
def pixel_build(host_build, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The main job itself, `edgefab build --target pixel` (training comes from the cache)."""
    from edgefab.pipeline.build import BuildOptions, build

    out = tmp_path_factory.mktemp("build")
    return build(BuildOptions(target="pixel", out=out))


@pytest.fixture(scope="session")
def tiny_factory(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A factory trained for a few steps: enough to exercise every step, not to be accurate."""
    from edgefab.pipeline.factory_train import FactoryJob, train_factory

    out = tmp_path_factory.mktemp("factory") / "tiny"
    job = FactoryJob(out=out, epochs=1, pool=8, pool_samples=100, assembler_steps=20, train_samples=256)
    return train_factory(job)

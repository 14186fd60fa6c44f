from pathlib import Path

import pytest

from edgefab.errors import EdgefabError
from edgefab.targets import list_targets, load_target
from edgefab.targets.latency import fit_power_law, predict_from_macs

PIXEL_TABLE = [(582e6, 138.0), (300e6, 73.8), (209e6, 55.8), (97e6, 28.7), (59e6, 19.7)]


def test_builtin_targets_and_alias():
    names = {t.name for t in list_targets()}
    assert {"host", "pixel"} <= names
    pixel = load_target("pixel1")
    assert pixel.name == "pixel"
    assert pixel.tvm["mtriple"] == "aarch64-linux-android"
    assert load_target("host").runs_here


def test_unknown_target_lists_known_ones():
    with pytest.raises(EdgefabError, match=r"unknown target 'nokia'.*host.*pixel"):
        load_target("nokia")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "phone.toml"
    path.write_text(text)
    return path


GOOD = """
name = "my-phone"
device = "a phone"
processor = "cpu"
os = "android"
arch = "arm64"
[tvm]
kind = "llvm"
mtriple = "aarch64-linux-android"
"""


def test_user_toml(tmp_path):
    target = load_target(_write(tmp_path, GOOD))
    assert target.name == "my-phone" and not target.runs_here
    assert target.to_dict()["tvm"]["kind"] == "llvm"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD.replace('device = "a phone"\n', ""), "missing field 'device'"),
        (GOOD.replace('processor = "cpu"', "processor = 3"), "field 'processor' must be a str"),
        (GOOD.replace('processor = "cpu"', 'processor = "npu"'), "field 'processor' must be one of"),
        ("colour = 'red'\n" + GOOD, "unknown field 'colour'"),
        ("name = ", "not valid TOML"),
    ],
)
def test_bad_toml_names_the_field(tmp_path, text, message):
    with pytest.raises(EdgefabError, match=message):
        load_target(_write(tmp_path, text))


def test_missing_toml_file(tmp_path):
    with pytest.raises(EdgefabError, match="does not exist"):
        load_target(tmp_path / "absent.toml")


def test_pixel_prediction_fits_published_networks():
    a, b = fit_power_law(PIXEL_TABLE)
    for macs, ms in PIXEL_TABLE:
        assert abs(a * macs**b - ms) / ms < 0.15
    figure = predict_from_macs(load_target("pixel"), 300_000_000)
    assert figure.source == "predicted" and 60 < figure.ms < 90
    assert "extrapolated" in predict_from_macs(load_target("pixel"), 1_000_000).method
    assert predict_from_macs(load_target("host"), 1_000_000) is None

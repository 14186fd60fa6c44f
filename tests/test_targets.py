from pathlib import Path

import pytest

from edgefab.errors import EdgefabError
from edgefab.targets import list_targets, load_target
from edgefab.targets.latency import predicted_latency


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
    assert target.layout == "NCHW"  # no layout field: plain NCHW
    assert load_target(_write(tmp_path, 'layout = "NCHW4c"\n' + GOOD)).layout == "NCHW4c"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD.replace('device = "a phone"\n', ""), "missing field 'device'"),
        (GOOD.replace('processor = "cpu"', "processor = 3"), "field 'processor' must be a str"),
        (GOOD.replace('processor = "cpu"', 'processor = "npu"'), "field 'processor' must be one of"),
        ("colour = 'red'\n" + GOOD, "unknown field 'colour'"),
        ('layout = "NHWC"\n' + GOOD, "field 'layout' must be one of"),
        ('layout = "NCHW8c"\n' + GOOD.replace('"cpu"', '"gpu"'), "field 'layout' must be NCHW on a GPU"),
        ("name = ", "not valid TOML"),
    ],
)
def test_bad_toml_names_the_field(tmp_path, text, message):
    with pytest.raises(EdgefabError, match=message):
        load_target(_write(tmp_path, text))


def test_missing_toml_file(tmp_path):
    with pytest.raises(EdgefabError, match="does not exist"):
        load_target(tmp_path / "absent.toml")


def test_predicted_latency_of_a_third_party_graph():
    from edgefab.export.graph import fix_input_shapes, load_onnx, simplify
    from tests.conftest import SHARED_MODELS

    model = simplify(
        fix_input_shapes(load_onnx(SHARED_MODELS / "ppocr_mobile_v2_cls.onnx"), {"x": [1, 3, 48, 192]})
    )
    figure = predicted_latency(load_target("pixel"), model)
    assert figure.source == "predicted" and 0.5 < figure.ms < 50
    assert "published table" in figure.method

"""The command line: exit codes, one-line errors, --json output."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from edgefab.cli import app

runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


def assert_user_error(result, *fragments: str):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("error:"), result.output
    for fragment in fragments:
        assert fragment in result.output


def test_targets_list_and_show():
    result = invoke("targets", "list", "--json")
    assert result.exit_code == 0
    assert {"host", "pixel"} <= {t["name"] for t in json.loads(result.output)}
    shown = json.loads(invoke("targets", "show", "pixel1", "--json").output)
    assert shown["name"] == "pixel" and shown["tvm"]["mtriple"] == "aarch64-linux-android"
    assert "pixel" in invoke("targets", "list").output


def test_unknown_target():
    assert_user_error(invoke("targets", "show", "nokia"), "unknown target 'nokia'", "host", "pixel")
    assert_user_error(invoke("build", "--target", "nokia"), "unknown target")


def test_unknown_data_source(tmp_path):
    assert_user_error(
        invoke("build", "--target", "host", "--data", "imagenet21k", "--out", tmp_path), "unknown data source"
    )


def test_compile_bad_inputs(tmp_path):
    assert_user_error(invoke("compile", tmp_path / "absent.onnx"), "does not exist")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage" * 10)
    assert_user_error(invoke("compile", corrupt), "not a valid ONNX file")


def test_compile_malformed_input_spec(tmp_path):
    from tests.conftest import SHARED_MODELS

    model = SHARED_MODELS / "ppocr_mobile_v2_cls.onnx"
    assert_user_error(invoke("compile", model, "--input", "x:1,3,forty", "--out", tmp_path), "bad input spec")
    assert_user_error(
        invoke("compile", model, "--input", "y:1,3,48,192", "--out", tmp_path), "unknown input 'y'"
    )
    assert list(tmp_path.iterdir()) == []


def test_package_commands(host_build, tmp_path):
    path, manifest = host_build
    inspected = json.loads(invoke("package", "inspect", path, "--json").output)
    assert inspected["files"] == manifest["files"]
    shown = invoke("package", "inspect", path).output
    assert "accuracy" in shown and "layout NCHW8c" in shown  # host's default inner layout
    verified = json.loads(invoke("package", "verify", path, "--json").output)
    assert verified == {"package": str(path), "ok": True, "files": 3}

    from edgefab.data import load_dataset, train_val_split

    _, val = train_val_split(load_dataset("mnist"))
    np.save(tmp_path / "digits.npy", val.images[:20, 0])
    result = invoke(
        "package", "run", path, "--input", tmp_path / "digits.npy", "--json", "--out", tmp_path / "o.npz"
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["rows"]
    correct = sum(row[1] == str(label) for row, label in zip(rows, val.labels[:20], strict=True))
    assert correct >= 18
    assert np.load(tmp_path / "o.npz")["logits"].shape == (20, 10)
    tvm = invoke("package", "run", path, "--input", tmp_path / "digits.npy", "--engine", "tvm", "--json")
    assert json.loads(tvm.output)["engine"] == "tvm"


def test_package_run_bad_input(host_build, tmp_path):
    path, _ = host_build
    np.save(tmp_path / "wrong.npy", np.zeros((2, 3, 5), np.uint8))
    assert_user_error(
        invoke("package", "run", path, "--input", tmp_path / "wrong.npy"), "expected (N, 1, 28, 28)"
    )
    assert_user_error(invoke("package", "run", path, "--input", tmp_path / "absent.npy"), "does not exist")
    assert_user_error(
        invoke("package", "run", path, "--input", tmp_path / "wrong.npy", "--engine", "gpu"), "unknown engine"
    )


def test_tampered_package_cli(host_build, tmp_path):
    import shutil

    copy = tmp_path / "pkg"
    shutil.copytree(host_build[0], copy)
    (copy / "labels.json").write_text('["a"]\n')
    assert_user_error(
        invoke("package", "verify", copy), "labels.json was modified", "expected sha256", "found"
    )
    assert_user_error(invoke("package", "inspect", tmp_path), "no manifest.json")


@pytest.mark.parametrize("budget", ["0", "-1"])
def test_nonpositive_budget(budget, tmp_path):
    assert_user_error(
        invoke("build", "--target", "host", "--latency-ms", budget, "--out", tmp_path),
        "--latency-ms must be positive",
    )


@pytest.mark.parametrize(
    "command",
    [["build", "--target", "pixel", "--seed", "-1"], ["factory", "train", "--split-seed", "-1"],
     ["search", "optuna", "--target", "pixel", "--seed", "-1"], ["flow", "train", "--seed", "-1"]],
)  # fmt: skip
def test_negative_seed_is_a_usage_error(command, tmp_path):
    result = invoke(*command, "--out", tmp_path / "out")  # numpy refuses negative seeds with a traceback
    assert result.exit_code == 2 and "seed" in result.output and "greater than or equal to 0" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [["build", "--factory", "none"], ["factory", "train"]])
def test_negative_shift_is_a_usage_error(command, tmp_path):
    result = invoke(*command, "--shift", "-1", "--out", tmp_path / "out")
    assert result.exit_code == 2 and "shift" in result.output
    assert "greater than or equal to 0" in result.output
    assert not (tmp_path / "out").exists()


def test_build_with_budget_json(host_build, tmp_path):
    result = invoke(
        "build", "--target", "host", "--latency-ms", "1.0", "--data", "mnist", "--out", tmp_path, "--json"
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["package"] == str(tmp_path / "mnist-host")
    assert data["manifest"]["build"]["latency_budget_ms"] == 1.0
    assert data["manifest"]["figures"]["accuracy"] >= 0.97


def test_unknown_layout_cli(tmp_path):
    from tests.conftest import SHARED_MODELS

    model = SHARED_MODELS / "ppocr_mobile_v2_cls.onnx"
    result = invoke("compile", model, "-i", "x:1,3,48,192", "--out", tmp_path, "--layout", "NHWC")
    assert_user_error(result, "unknown layout 'NHWC'", "NCHW8c", "--layout")
    assert not any(tmp_path.iterdir())  # refused before any work


def test_unwritable_output_cli(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_user_error(
        invoke("build", "--target", "host", "--out", blocker / "sub"), "cannot create output folder"
    )


def test_console_script_exit_code_and_one_line():
    import subprocess
    import sys
    from pathlib import Path

    executable = Path(sys.executable).parent / "edgefab"  # the venv's console script
    result = subprocess.run([executable, "targets", "show", "nokia"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: unknown target 'nokia'")


def test_progress_writes_plain_lines_where_stderr_is_no_terminal(capsys):
    """A long run logged to a file shows its stages and every tenth of a stage while it works (rich
    alone would draw only its last frame at the end); disabled (``--json``) it writes nothing."""
    from edgefab.console import RichProgress

    with RichProgress() as progress:
        progress.stage("training")
        for step in range(1, 101):
            progress.advance(step, 100)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].endswith("] training") and lines[0].startswith("[")
    counts = [line.split("]")[1].strip() for line in lines[1:]]
    assert counts == ["1/100"] + [f"{k}/100" for k in range(10, 101, 10)]
    with RichProgress(enabled=False) as progress:
        progress.stage("hidden")
        progress.advance(1, 2)
    assert capsys.readouterr().err == ""

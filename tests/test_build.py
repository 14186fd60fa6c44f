"""The main job: `edgefab build` for host and pixel, the package it writes, and the runtime loading it."""

import json
import platform
import tarfile

import numpy as np
import onnx
import pytest

from edgefab.data import load_dataset, train_val_split
from edgefab.errors import EdgefabError, PackageIntegrityError
from edgefab.pipeline.build import BuildOptions, build
from edgefab.runtime import load, read_manifest, verify_package
from edgefab.runtime.package import sha256_file


def _validation_digits(n: int = 64):
    _, val = train_val_split(load_dataset("mnist"))
    return val.images[:n, 0], val.labels[:n]


def test_host_package_contents(host_build):
    path, manifest = host_build
    assert manifest == read_manifest(path)  # what build returned is what it wrote
    assert sorted(manifest["files"]) == ["labels.json", "model.onnx", "model.so"]
    for name, digest in manifest["files"].items():
        assert sha256_file(path / name) == digest
    assert manifest["format_version"] == 1 and manifest["kind"] == "classifier"
    assert manifest["inputs"] == [{"name": "input", "shape": [1, 1, 28, 28], "dtype": "float32"}]
    assert json.loads((path / "labels.json").read_text()) == [str(d) for d in range(10)]
    prep = manifest["preprocessing"]
    assert prep["layout"] == "NCHW" and 0.1 < prep["mean"][0] < 0.2
    assert path.with_name(path.name + ".tar.gz").is_file()


def test_host_package_figures(host_build):
    _, manifest = host_build
    figures = manifest["figures"]
    assert figures["accuracy"] >= 0.97
    assert figures["onnx_parity_max_abs_diff"] < 1e-4
    assert figures["parameters"] > 10_000 and figures["macs"] > 100_000
    assert figures["latency"]["source"] == "measured" and figures["latency"]["ms"] > 0
    assert figures["tvm_latency"]["source"] == "measured"
    assert manifest["engines"]["tvm"]["max_abs_diff_vs_onnxruntime"] < 1e-4
    assert manifest["recommended_engine"] in ("onnxruntime", "tvm")


def test_exported_graph_is_checked_opset(host_build):
    path, _ = host_build
    model = onnx.load(str(path / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version >= 17


def test_runtime_engines_agree_and_classify(host_build):
    path, _ = host_build
    images, labels = _validation_digits()
    ort_logits = load(path, engine="onnxruntime").predict(images)
    tvm_package = load(path, engine="tvm")
    assert np.abs(ort_logits - tvm_package.predict(images)).max() < 1e-4
    assert (ort_logits.argmax(1) == labels).mean() > 0.9


def test_tampered_package_is_refused(host_build, tmp_path):
    import shutil

    path, _ = host_build
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    with open(copy / "model.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(
        PackageIntegrityError, match=r"model.onnx was modified: expected sha256 \w+\.\.\., found"
    ):
        verify_package(copy)
    (copy / "labels.json").unlink()
    with pytest.raises(PackageIntegrityError, match="labels.json is missing"):
        load(copy)


def test_the_main_job_customises_the_shipped_factory(host_build):
    _, manifest = host_build
    assert manifest["build"]["model"] == "factory"
    factory = manifest["build"]["factory"]
    assert factory["path"] == "shipped" and factory["space"] == "digits-28"
    assert manifest["build"]["task"]["text"] == "all"
    assert factory["candidates_scored"] and "measured table" in factory["latency_model"]


def test_the_simple_family_trains_once_and_then_comes_from_the_cache(host_build, tmp_path):
    _, first = build(BuildOptions(target="pixel", factory="none", out=tmp_path / "a"))
    _, again = build(BuildOptions(target="pixel", factory="none", out=tmp_path / "b"))
    assert first["build"]["model"] == "simple family" and first["build"]["why"] == "--factory none"
    assert again["build"]["training"]["cached"] is True
    assert again["figures"]["accuracy"] == first["figures"]["accuracy"] >= 0.97
    _, shifted = build(BuildOptions(target="pixel", factory="none", epochs=1, shift=2, out=tmp_path / "c"))
    assert shifted["build"]["training"]["shift"] == 2 and shifted["build"]["training"]["cached"] is False


def test_a_grouping_task_in_seconds(pixel_build, tmp_path):
    task = "groups=even:0,2,4,6,8/odd:1,3,5,7,9"
    path, manifest = build(BuildOptions(target="pixel", task=task, latency_ms=0.5, out=tmp_path))
    assert manifest["outputs"][0]["shape"] == [1, 2]
    assert json.loads((path / "labels.json").read_text()) == ["even", "odd"]
    assert manifest["build"]["factory"]["task_head"] == "grouped classes"  # it beats the fitted head
    assert manifest["figures"]["accuracy"] > 0.9 and manifest["figures"]["latency"]["ms"] <= 0.5
    assert sum(manifest["build"]["factory"]["seconds"].values()) < 60  # seconds, even on a loaded machine


def test_pixel_package(pixel_build):
    path, manifest = pixel_build
    tvm = manifest["engines"]["tvm"]
    assert tvm["runs_here"] is False
    assert manifest["target"]["tvm"]["mtriple"] == "aarch64-linux-android"
    library = path / tvm["file"]
    if tvm["format"] == "shared-library":
        assert library.read_bytes()[18:20] == (183).to_bytes(2, "little")  # ELF e_machine: AArch64
    else:
        assert tvm["format"] == "object-archive" and "-shared" in tvm["note"]
        with tarfile.open(library) as archive:
            assert any(m.name.endswith(".o") for m in archive.getmembers())
    latency = manifest["figures"]["latency"]
    assert latency["source"] == "predicted" and "Pixel 1" in latency["method"]
    assert manifest["recommended_engine"] == "onnxruntime"
    with pytest.raises(EdgefabError, match="cannot run on this machine"):
        load(path, engine="tvm")
    images, labels = _validation_digits(16)
    assert (load(path).predict(images).argmax(1) == labels).mean() > 0.8


def test_budget_too_small_names_the_smallest(host_build, tmp_path):
    message = r"no sub-network of the factory meets 1e-05 ms on pixel: the smallest costs [\d.]+ ms"
    with pytest.raises(EdgefabError, match=message):
        build(BuildOptions(target="pixel", latency_ms=0.00001, out=tmp_path))
    with pytest.raises(EdgefabError, match=r"no model meets 1e-05 ms on pixel: the smallest costs [\d.]+ ms"):
        build(BuildOptions(target="pixel", latency_ms=0.00001, factory="none", out=tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_budget_picks_a_model_that_fits(host_build, tmp_path):
    _, manifest = build(BuildOptions(target="pixel", latency_ms=0.5, out=tmp_path))
    assert manifest["figures"]["latency"]["ms"] <= 0.5
    assert manifest["build"]["latency_budget_ms"] == 0.5


class _Interrupt:
    def stage(self, description):
        if description.startswith("compiling"):
            raise KeyboardInterrupt

    def advance(self, done, total):
        pass


def test_interrupted_build_leaves_nothing(host_build, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        build(BuildOptions(target="host", out=tmp_path), progress=_Interrupt())
    assert list(tmp_path.iterdir()) == []


def test_interrupted_rebuild_keeps_the_old_package(host_build, tmp_path):
    path, _ = build(BuildOptions(target="host", out=tmp_path))
    before = sha256_file(path / "manifest.json")
    with pytest.raises(KeyboardInterrupt):
        build(BuildOptions(target="host", out=tmp_path), progress=_Interrupt())
    assert sha256_file(path / "manifest.json") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_unwritable_output(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(EdgefabError, match="cannot create output folder"):
        build(BuildOptions(target="host", out=blocker / "sub"))


def test_machine_recorded(host_build):
    assert host_build[1]["engines"]["tvm"]["machine"] == platform.machine()

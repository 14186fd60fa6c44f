"""Flow checkpoints on disk: ``flow.json`` saying what the folder holds + safetensors weights.

Two kinds:

- ``rectified-flow``: a multi-step teacher (``edgefab flow train``), one model ``velocity``;
- ``slimflow``: the SlimFlow result (``edgefab flow slim``), models ``two_flow`` (the annealed
  2-flow student) and ``one_step`` (after flow-guided distillation, the one that ships), plus the
  reflow pairs in ``pairs.npz`` and the teacher's path.

Every weight file's SHA-256 is in ``flow.json``, so a damaged file is refused rather than loaded,
and a command given the wrong kind says which kind it got and which command makes the right one.
Folders are written atomically (``edgefab.runtime.package.staged_folder``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from edgefab.devices import model_device
from edgefab.errors import EdgefabError
from edgefab.flow.unet import UNetConfig, VelocityUNet
from edgefab.runtime.package import sha256_file, staged_folder

FORMAT = "edgefab-flow"
FORMAT_VERSION = 1
META_FILE = "flow.json"
TEACHER, SLIMFLOW = "rectified-flow", "slimflow"
MAKER = {TEACHER: "edgefab flow train", SLIMFLOW: "edgefab flow slim"}
WHAT = {TEACHER: "a rectified-flow teacher", SLIMFLOW: "a SlimFlow one-step student"}


@dataclass
class FlowCheckpoint:
    """A loaded checkpoint: its metadata and its models (eval mode)."""

    path: Path
    meta: dict[str, Any]
    models: dict[str, VelocityUNet]

    @property
    def kind(self) -> str:
        return self.meta["kind"]


def save_checkpoint(
    folder: Path,
    kind: str,
    models: dict[str, VelocityUNet],
    meta: dict[str, Any],
    extra: dict[str, Path] | None = None,
) -> Path:
    """Write ``folder`` atomically: one safetensors file per model, ``extra`` files copied, and flow.json."""
    import shutil

    folder = Path(folder)
    check_checkpoint_folder(folder)
    with staged_folder(folder) as staging:
        entries = {}
        for name, model in models.items():
            file = f"{name}.safetensors"
            save_file({k: v.cpu().contiguous() for k, v in model.state_dict().items()}, str(staging / file))
            (staging / file).chmod(0o644)  # safetensors writes owner-only files; checkpoints are shared data
            entries[name] = {
                "file": file,
                "config": model.config.to_dict(),
                "sha256": sha256_file(staging / file),
            }
        for name, source in (extra or {}).items():
            shutil.copyfile(source, staging / name)
        full = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind, **meta, "models": entries}
        (staging / META_FILE).write_text(json.dumps(full, indent=2) + "\n")
    return folder


def check_checkpoint_folder(folder: Path) -> None:
    """Fail before any training if a checkpoint cannot be written at ``folder``."""
    folder = Path(folder)
    if folder.exists() and not (folder / META_FILE).is_file():
        raise EdgefabError(f"{folder} exists and is not a flow checkpoint; remove it or choose another --out")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EdgefabError(f"cannot create {folder.parent}: {exc.strerror}; choose another --out") from None


def read_meta(path: Path) -> dict[str, Any]:
    """``flow.json`` of a checkpoint folder; anything else is an :class:`EdgefabError`."""
    folder = Path(path)
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise EdgefabError(
            f"{folder} is not a flow checkpoint (no {META_FILE}); make a teacher with edgefab flow train"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise EdgefabError(f"{meta_path} is not valid JSON ({exc.msg}); make the checkpoint again") from None
    if meta.get("format") != FORMAT or meta.get("kind") not in MAKER:
        raise EdgefabError(f"{meta_path} is not an edgefab flow checkpoint; make one with edgefab flow train")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise EdgefabError(f"{folder} has flow format {meta['format_version']}; upgrade edgefab to read it")
    return meta


def is_flow_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a folder with a ``flow.json`` (of any content)."""
    return (Path(path) / META_FILE).is_file()


def load_checkpoint(path: Path, kind: str, purpose: str) -> FlowCheckpoint:
    """Load a checkpoint of ``kind`` for ``purpose`` (words for the error), checking every hash.

    A checkpoint of another kind is refused naming both kinds and the command that makes the
    right one.
    """
    folder = Path(path)
    meta = read_meta(folder)
    if meta["kind"] != kind:
        raise EdgefabError(
            f"{folder} is {WHAT[meta['kind']]} ({meta['kind']} checkpoint); {purpose} needs "
            f"{WHAT[kind]}: make one with {MAKER[kind]}"
        )
    models = {}
    for name, entry in meta["models"].items():
        file = folder / entry["file"]
        if not file.is_file() or sha256_file(file) != entry["sha256"]:
            raise EdgefabError(f"{file} is missing or damaged (checksum differs); make the checkpoint again")
        model = VelocityUNet(UNetConfig.from_dict(entry["config"]))
        try:
            model.load_state_dict(load_file(str(file)))
        except (SafetensorError, RuntimeError) as exc:
            raise EdgefabError(f"{file} does not fit its config ({str(exc).splitlines()[0]})") from None
        models[name] = model.eval().requires_grad_(False)
    return FlowCheckpoint(folder, meta, models)


def load_any(path: Path) -> FlowCheckpoint:
    """Load a checkpoint of whichever kind it is (reports)."""
    return load_checkpoint(path, read_meta(Path(path))["kind"], "this")


def clone_weights(source: VelocityUNet) -> VelocityUNet:
    """A new model with ``source``'s config and a copy of its weights, on its device, trainable."""
    model = VelocityUNet(source.config).to(model_device(source))
    model.load_state_dict({k: v.clone() for k, v in source.state_dict().items()})
    return model.requires_grad_(True)


def state_equal(a: VelocityUNet, b: VelocityUNet) -> bool:
    """Whether two models hold identical weights."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)

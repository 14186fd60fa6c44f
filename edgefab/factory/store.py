"""A factory on disk: ``factory.json`` (what it is, for which data) + two safetensors files.

``supernet.safetensors`` holds the modular supernet's weights, ``assembler.safetensors`` the
assembler's; ``factory.json`` names the space, the data it was trained on (name, classes, input
shape, fingerprint), the preprocessing, how it was trained, and each file's SHA-256 so that a
damaged file is refused with a clear message instead of loading garbage. The package ships one
factory for the embedded digits (``edgefab/factory/shipped/digits``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from edgefab.errors import EdgefabError
from edgefab.factory.assembler import Assembler
from edgefab.factory.space import FactorySpace, factory_space
from edgefab.factory.supernet import ModularSupernet

FORMAT = 1
META_FILE, SUPERNET_FILE, ASSEMBLER_FILE = "factory.json", "supernet.safetensors", "assembler.safetensors"
SHIPPED = Path(__file__).parent / "shipped" / "digits"


@dataclass
class Factory:
    """A trained supernet and assembler, with what they were trained on."""

    meta: dict[str, Any]
    supernet: ModularSupernet
    assembler: Assembler
    path: Path | None = None

    @property
    def space(self) -> FactorySpace:
        return self.supernet.fspace

    @property
    def classes(self) -> list[str]:
        return list(self.meta["data"]["classes"])

    @property
    def prep(self) -> dict:
        return self.meta["preprocessing"]


def save_factory(folder: Path, factory: Factory) -> None:
    """Write the three files into ``folder`` (which must exist; the caller renames it into place)."""
    tensors = {SUPERNET_FILE: factory.supernet.state_dict(), ASSEMBLER_FILE: factory.assembler.state_dict()}
    files = {}
    for name, state in tensors.items():
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / name))
        (folder / name).chmod(0o644)  # safetensors writes owner-only files; a factory is shared data
        files[name] = _sha256(folder / name)
    meta = {**factory.meta, "format": FORMAT, "files": files}
    (folder / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def load_factory(path: Path | str = SHIPPED) -> Factory:
    """Load a factory folder, checking its format and every file's checksum."""
    folder = Path(path)
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise EdgefabError(f"{folder} is not a factory (no {META_FILE}); make one with edgefab factory train")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as error:
        raise EdgefabError(f"{meta_path} is not valid JSON ({error.msg}); train the factory again") from None
    if meta.get("format") != FORMAT:
        raise EdgefabError(f"{folder}: factory format {meta.get('format')} is not {FORMAT}; train it again")
    for name in (SUPERNET_FILE, ASSEMBLER_FILE):
        file = folder / name
        if not file.is_file() or _sha256(file) != meta["files"].get(name):
            raise EdgefabError(
                f"factory file {file} is missing or corrupted (checksum differs); train it again"
            )
    space = trained_space(meta)
    num_classes = len(meta["data"]["classes"])
    supernet = ModularSupernet(space, num_classes)
    assembler = Assembler(num_classes, [len(o) for _, o in space.decisions()])
    _load_state(supernet, folder / SUPERNET_FILE)
    _load_state(assembler, folder / ASSEMBLER_FILE)
    return Factory(meta, supernet.eval(), assembler.eval(), folder)


def trained_space(meta: dict[str, Any]) -> FactorySpace:
    """The space a factory was trained on: its built-in search space with the widths it recorded
    (so a factory keeps loading after the built-in space's width options change)."""
    space = factory_space(meta["space"])
    try:
        return FactorySpace(
            space.space,
            tuple(tuple(w) for w in meta["widths"]),
            tuple(meta.get("stem_widths", ())),
            tuple(meta.get("head_widths", ())),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise EdgefabError(
            f"factory widths do not fit space {meta['space']} ({error}); train it again"
        ) from None


def _load_state(module: torch.nn.Module, file: Path) -> None:
    try:
        module.load_state_dict(load_file(str(file)))
    except (SafetensorError, RuntimeError) as error:
        first = str(error).splitlines()[0]
        raise EdgefabError(f"{file} does not fit this factory's space ({first}); train it again") from None


def _sha256(file: Path) -> str:
    return hashlib.sha256(file.read_bytes()).hexdigest()

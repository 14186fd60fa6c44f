"""The runtime package format: a folder with ``manifest.json`` and the files it lists.

Writing is atomic: everything goes into a hidden temporary folder beside the destination, which
is renamed into place only once it is complete, so an interrupted build leaves no package. Every
file's sha256 is in the manifest, and :func:`verify_package` checks them all.

This module imports neither torch nor the build code: it is what a device-side loader needs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgefab.errors import EdgefabError, PackageIntegrityError

FORMAT = "edgefab-package"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_output_folder(out_dir: Path) -> None:
    """Fail early (before any long work) if a package cannot be written at ``out_dir``."""
    parent = out_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EdgefabError(f"cannot create output folder {parent}: {exc.strerror}") from None
    if not os.access(parent, os.W_OK):
        raise EdgefabError(f"output folder {parent} is not writable; choose another with --out")
    if out_dir.exists() and not (out_dir / MANIFEST).is_file():
        raise EdgefabError(
            f"{out_dir} exists and is not an edgefab package; remove it or choose another --out"
        )


def write_package(
    out_dir: Path, manifest: dict[str, Any], files: dict[str, Path], archive: bool = False
) -> Path:
    """Write a package folder at ``out_dir`` holding ``files`` (package name -> source path).

    The manifest gets the format fields and every file's sha256. An existing package at
    ``out_dir`` is replaced only when the new one is complete. With ``archive``, a
    ``<out_dir>.tar.gz`` of the folder is written too.
    """
    out_dir = Path(out_dir)
    check_output_folder(out_dir)
    with staged_folder(out_dir) as staging:
        hashes = {}
        for name, source in sorted(files.items()):
            shutil.copyfile(source, staging / name)
            hashes[name] = sha256_file(staging / name)
        full = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest, "files": hashes}
        (staging / MANIFEST).write_text(json.dumps(full, indent=2, sort_keys=False) + "\n")
    if archive:
        write_archive(out_dir)
    return out_dir


@contextmanager
def staged_folder(out_dir: Path) -> Iterator[Path]:
    """A temporary folder beside ``out_dir`` to write into; when the body completes it replaces
    ``out_dir`` (an existing one only then), when the body fails it is removed and ``out_dir`` stays."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    try:
        yield staging
        os.chmod(staging, 0o755)  # mkdtemp makes it private; the result is an ordinary folder
        _swap_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _swap_into_place(staging: Path, out_dir: Path) -> None:
    if not out_dir.exists():
        staging.rename(out_dir)
        return
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    out_dir.rename(old)
    staging.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)


def write_archive(package_dir: Path) -> Path:
    """``<package>.tar.gz`` of a package folder, written atomically beside it."""
    target = package_dir.with_name(package_dir.name + ".tar.gz")
    partial = target.with_name(f".{target.name}.partial")
    with tarfile.open(partial, "w:gz") as tar:
        tar.add(package_dir, arcname=package_dir.name)
    partial.replace(target)
    return target


def read_manifest(package_dir: Path) -> dict[str, Any]:
    """The package's manifest; a missing or malformed one is an :class:`EdgefabError`."""
    path = Path(package_dir) / MANIFEST
    if not Path(package_dir).is_dir():
        raise EdgefabError(f"{package_dir} is not a package folder")
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise EdgefabError(f"{package_dir} has no {MANIFEST}: not an edgefab package") from None
    except json.JSONDecodeError as exc:
        raise PackageIntegrityError(f"{path} is not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if manifest.get("format") != FORMAT:
        raise EdgefabError(f"{path} is not an edgefab package manifest")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise EdgefabError(
            f"{path} has format version {manifest['format_version']}; this edgefab reads up to "
            f"{FORMAT_VERSION}: upgrade edgefab"
        )
    return manifest


def verify_package(package_dir: Path) -> dict[str, Any]:
    """Check every file against its manifest hash; returns the manifest.

    Raises :class:`PackageIntegrityError` naming the first file that is missing or differs,
    with the expected and found hashes.
    """
    package_dir = Path(package_dir)
    manifest = read_manifest(package_dir)
    for name, expected in manifest.get("files", {}).items():
        path = package_dir / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise PackageIntegrityError(f"manifest names a file outside the package: {name}")
        if not path.is_file():
            raise PackageIntegrityError(
                f"package file {name} is missing (expected sha256 {expected[:16]}...)"
            )
        found = sha256_file(path)
        if found != expected:
            raise PackageIntegrityError(
                f"package file {name} was modified: expected sha256 {expected[:16]}..., found {found[:16]}..."
            )
    return manifest

"""Device profiles ("targets") as data.

A target is a TOML file: the built-in ones live beside this module, and a user may pass the path
of their own anywhere ``--target`` is taken. This layer knows nothing of search, factory or
export: it only describes devices.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgefab.errors import EdgefabError

_BUILTIN_DIR = Path(__file__).parent

# field -> (python type, required?)
_FIELDS: dict[str, tuple[type | tuple[type, ...], bool]] = {
    "name": (str, True),
    "device": (str, True),
    "processor": (str, True),
    "os": (str, True),
    "arch": (str, True),
    "tvm": (dict, True),
    "runtime": (str, False),
    "aliases": (list, False),
    "threads": (int, False),
    "precision": (str, False),
    "ort_provider": (str, False),
    "runs_here": (bool, False),
    "cross_compilers": (list, False),
    "latency": (dict, False),
    "limitations": (list, False),
    "layout": (str, False),
}
_PROCESSORS = ("cpu", "gpu")
#: inner layouts of a CPU library: NCHW, or the channels in blocks of 4, 8 or 16 (see edgefab.export.layout)
LAYOUTS = ("NCHW", "NCHW4c", "NCHW8c", "NCHW16c")


@dataclass(frozen=True)
class Target:
    """A device profile: what to compile for and how its latency is known."""

    name: str
    device: str
    processor: str
    os: str
    arch: str
    tvm: dict[str, Any]
    runtime: str = "onnxruntime, tvm"
    aliases: tuple[str, ...] = ()
    threads: int = 0
    precision: str = "float32"
    ort_provider: str = "CPUExecutionProvider"
    runs_here: bool = False
    cross_compilers: tuple[str, ...] = ()
    latency: dict[str, Any] = field(default_factory=dict)
    limitations: tuple[str, ...] = ()  # what this TVM cannot do for the device, said up front
    layout: str = "NCHW"  # inner layout of TVM's CPU library here, unless a build asks for another
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The profile as JSON-serialisable data (for manifests and ``--json``)."""
        return {
            "name": self.name,
            "device": self.device,
            "processor": self.processor,
            "os": self.os,
            "arch": self.arch,
            "tvm": dict(self.tvm),
            "runtime": self.runtime,
            "threads": self.threads,
            "precision": self.precision,
            "ort_provider": self.ort_provider,
            "runs_here": self.runs_here,
            "latency": dict(self.latency),
            "limitations": list(self.limitations),
            "layout": self.layout,
        }


def _parse(data: dict[str, Any], source: str) -> Target:
    for key, (kind, required) in _FIELDS.items():
        if key not in data:
            if required:
                raise EdgefabError(f"target file {source}: missing field '{key}'")
            continue
        if not isinstance(data[key], kind):
            raise EdgefabError(
                f"target file {source}: field '{key}' must be a {kind.__name__}, got {data[key]!r}"
            )
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise EdgefabError(f"target file {source}: unknown field '{unknown[0]}'")
    if data["processor"] not in _PROCESSORS:
        raise EdgefabError(f"target file {source}: field 'processor' must be one of {_PROCESSORS}")
    layout = data.get("layout", "NCHW")
    if layout not in LAYOUTS:
        raise EdgefabError(f"target file {source}: field 'layout' must be one of {LAYOUTS}, got {layout!r}")
    if layout != "NCHW" and data["processor"] == "gpu":
        raise EdgefabError(f"target file {source}: field 'layout' must be NCHW on a GPU (dlight rules)")
    if "kind" not in data["tvm"]:
        raise EdgefabError(f"target file {source}: field 'tvm.kind' is missing")
    _check_latency(data.get("latency", {}), source)
    values = dict(data)
    values["aliases"] = tuple(values.get("aliases", ()))
    values["cross_compilers"] = tuple(values.get("cross_compilers", ()))
    values["limitations"] = tuple(values.get("limitations", ()))
    return Target(**values, source=source)


_LATENCY_MODELS = ("measured", "published-spnas", "published-ofa", "roofline")
_ROOFLINE_FIELDS = ("peak_gflops", "bandwidth_gbs", "launch_us")


def _check_latency(latency: dict[str, Any], source: str) -> None:
    """The ``[latency]`` table: ``model`` names a known model, a roofline has its peak figures."""
    model = latency.get("model")
    if model is None:
        return
    if model not in _LATENCY_MODELS:
        raise EdgefabError(f"target file {source}: field 'latency.model' must be one of {_LATENCY_MODELS}")
    for key in _ROOFLINE_FIELDS if model == "roofline" else ():
        if key not in latency:
            raise EdgefabError(f"target file {source}: missing field 'latency.{key}' (model 'roofline')")
        value = latency[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise EdgefabError(f"target file {source}: field 'latency.{key}' must be a positive number")


def _read_toml(path: Path) -> Target:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise EdgefabError(f"cannot read target file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise EdgefabError(f"target file {path} is not valid TOML: {exc}") from None
    return _parse(data, str(path))


def list_targets() -> list[Target]:
    """Every built-in target, sorted by name."""
    return sorted((_read_toml(p) for p in _BUILTIN_DIR.glob("*.toml")), key=lambda t: t.name)


def load_target(name_or_path: str | Path) -> Target:
    """A built-in target by name or alias, or a user's TOML file by path."""
    text = str(name_or_path)
    if text.endswith(".toml") or Path(text).is_file():
        path = Path(text)
        if not path.is_file():
            raise EdgefabError(f"target file {path} does not exist")
        return _read_toml(path)
    builtins = list_targets()
    for target in builtins:
        if text == target.name or text in target.aliases:
            return target
    known = ", ".join(t.name for t in builtins)
    raise EdgefabError(f"unknown target '{text}'; known targets: {known} (or a path to a .toml file)")

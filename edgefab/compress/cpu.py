"""Which INT8 data types are safe on the CPU that will run a quantized model.

ONNX Runtime's x86 integer kernels without VNNI multiply uint8 activations by int8 weights with
``vpmaddubsw``, which adds pairs of products into a saturating int16: with full-range (per-channel)
int8 weights the sums clip and the model silently loses accuracy (s8s8 is run as u8s8 internally,
so it clips too). VNNI (``vpdpbusd``) accumulates into int32 and ARM's kernels widen first, so
both are unaffected. On x86 without VNNI the safe settings are u8 weights (u8u8, a 16-bit multiply
that cannot clip) or ``reduce_range`` (7-bit weights); u8u8 keeps the full 8 bits and measured
faster here, so it is the automatic choice.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

from edgefab.targets import Target

VNNI_FLAGS = ("avx512_vnni", "avx_vnni")
_X86 = ("x86_64", "amd64", "i386", "i686", "x86")
_ARM = ("aarch64", "arm64", "armv7", "armv8", "arm")


@dataclass(frozen=True)
class CpuInfo:
    """What matters about a CPU for INT8 kernels: its architecture family and VNNI."""

    arch: str  # "x86", "arm" or the raw machine name
    vnni: bool | None  # None: unknown (x86 that is not this machine)
    description: str

    @property
    def saturates(self) -> bool:
        """Whether u8s8/s8s8 per-channel kernels may saturate here (x86 without known VNNI)."""
        return self.arch == "x86" and not self.vnni


def _family(machine: str) -> str:
    machine = machine.lower()
    if machine in _X86:
        return "x86"
    if machine.startswith(_ARM):
        return "arm"
    return machine


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The feature flags of this machine's first CPU (empty where /proc/cpuinfo is missing)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def host_cpu(cpuinfo: Path = Path("/proc/cpuinfo")) -> CpuInfo:
    """This machine's CPU."""
    family = _family(platform.machine())
    flags = cpu_flags(cpuinfo)
    vnni = bool(flags & set(VNNI_FLAGS)) if family == "x86" else None
    found = ", ".join(sorted(flags & set(VNNI_FLAGS))) or "no VNNI"
    description = f"this machine ({platform.machine()}, {found})" if family == "x86" else platform.machine()
    return CpuInfo(family, vnni, description)


def target_cpu(target: Target) -> CpuInfo:
    """The CPU that runs a package for ``target``: this machine for targets that run here."""
    if target.runs_here:
        return host_cpu()
    family = _family(target.arch)
    return CpuInfo(family, None, f"target {target.name} ({target.arch})")


@dataclass(frozen=True)
class Int8Types:
    """Resolved INT8 data types and why they were chosen."""

    activation_type: str  # "uint8" or "int8"
    weight_type: str
    reduce_range: bool
    why: str


def safe_int8_types(cpu: CpuInfo) -> Int8Types:
    """The data types to quantize with for ``cpu``: u8u8 where kernels saturate, else s8s8."""
    if cpu.saturates:
        return Int8Types(
            "uint8",
            "uint8",
            False,
            f"{cpu.description}: x86 without VNNI saturates u8s8/s8s8 per-channel int8 (vpmaddubsw "
            "int16 pair sums), so weights are uint8 (u8u8, no saturation, full 8 bits)",
        )
    return Int8Types(
        "int8",
        "int8",
        False,
        f"{cpu.description}: no int16 saturation in its int8 kernels, so s8s8 (ONNX Runtime's "
        "default for QDQ)",
    )

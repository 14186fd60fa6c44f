"""A target's TVM target dict resolved for this machine, and the linker for code that runs on it.

Both ``edgefab compile`` (export) and ``edgefab profile --runtime tvm`` (targets) build libraries for
a device, so this sits in the lower layer and export imports it. TVM is imported inside functions.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from typing import Any

from edgefab.errors import EdgefabError
from edgefab.targets import Target


def resolve_tvm_target(target: Target) -> dict[str, Any]:
    """The target's ``tvm`` dict, with ``mcpu = "native"`` replaced by this machine's CPU and triple."""
    from tvm.target import codegen

    resolved = dict(target.tvm)
    if resolved.get("mcpu") == "native":
        # Record the real CPU (and LLVM's default triple) so a manifest says what the code is for.
        resolved["mcpu"] = codegen.llvm_get_system_cpu()
        resolved.setdefault("mtriple", codegen.llvm_get_system_triple())
    return resolved


def find_cross_compiler(target: Target) -> str | None:
    """The first of ``target.cross_compilers`` present here (``$VAR`` names an environment variable)."""
    for entry in target.cross_compilers:
        if entry.startswith("$"):
            value = os.environ.get(entry[1:], "")
            if value and shutil.which(value):
                return entry
        elif shutil.which(entry):
            return entry
    return None


def device_linker(target: Target) -> Callable | None:
    """``export_library``'s linker for code that runs on the target (None: this machine's compiler)."""
    if target.runs_here:
        return None
    compiler = find_cross_compiler(target)
    if compiler is None:
        tried = ", ".join(target.cross_compilers) or "none"
        raise EdgefabError(
            f"target {target.name}: measuring on the device needs code linked for it, and no cross "
            f"compiler was found (tried: {tried}); install one or set the variable it names"
        )
    return linker(compiler, resolve_tvm_target(target))[0]


def linker(compiler: str, tvm_target: dict[str, Any]) -> tuple[Callable, str]:
    """The ``export_library`` ``fcompile`` for a cross compiler entry, and a note on how it links."""
    from tvm.support import cc, ndk

    if compiler == "$TVM_NDK_CC":
        return ndk.create_shared, f"linked with the Android NDK ($TVM_NDK_CC={os.environ['TVM_NDK_CC']})"
    executable = os.environ[compiler[1:]] if compiler.startswith("$") else compiler
    if "android" in device_triple(tvm_target) and "android" not in executable:
        # A GNU/Linux toolchain would record glibc (NEEDED libc.so.6, memcpy@GLIBC_2.17) that
        # Android's bionic loader cannot satisfy; without its libc the few libc/libm symbols stay
        # undefined and resolve in the process at load time, like the TVM runtime symbols do.
        fcompile = cc.cross_compiler(executable, options=["-nostdlib"])
        return fcompile, f"linked with {executable} -nostdlib (no glibc dependency, for Android's loader)"
    return cc.cross_compiler(executable), f"linked with {executable}"


def device_triple(tvm_target: dict[str, Any]) -> str:
    """The triple the linked code runs under: the target's own, or its host's for a GPU target."""
    host = tvm_target.get("host")
    host_triple = host.get("mtriple", "") if isinstance(host, dict) else ""
    return str(tvm_target.get("mtriple") or host_triple)

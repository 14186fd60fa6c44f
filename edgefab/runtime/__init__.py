"""Run and verify edgefab packages. Imports neither torch nor edgefab's build code."""

from edgefab.runtime.loader import Package, load, preprocess
from edgefab.runtime.package import read_manifest, verify_package, write_package

__all__ = ["Package", "load", "preprocess", "read_manifest", "verify_package", "write_package"]

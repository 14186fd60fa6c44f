"""User-facing errors.

Anything the user can fix (a bad path, an unknown target, a malformed spec) is raised as an
:class:`EdgefabError`. The CLI prints its message as one line and exits with code 2; nothing else
in edgefab catches it.
"""


class EdgefabError(Exception):
    """An error caused by user input: printed as one line, exit code 2, no traceback."""


class UnsupportedOperatorError(EdgefabError):
    """A compiler (TVM) cannot take an operator of the graph."""

    def __init__(self, op_types: list[str], engine: str = "TVM Relax"):
        self.op_types = sorted(set(op_types))
        super().__init__(
            f"{engine} cannot import operator(s) {', '.join(self.op_types)}; "
            "the ONNX Runtime engine is still packaged"
        )


class PackageIntegrityError(EdgefabError):
    """A package file is missing or its hash differs from the manifest."""

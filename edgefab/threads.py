"""A context manager for torch's intra-op thread count.

Small tensors (the assembler's MLP, a linear head on pooled features, the flow students' small
convolutions) run fastest on one thread: extra threads only add synchronisation, which on a loaded
machine costs up to 30x here. Used by the factory and the flow code alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the body with ``count`` intra-op threads, then restore the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)

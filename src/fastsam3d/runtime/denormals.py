"""Flush subnormal floats to zero on the CPU (FTZ/DAZ) while training.

Trained weights can make gradients subnormal (nonzero float32 values below 1.2e-38), which
x86 CPUs compute with in microcode, many times slower than with normal numbers: the lite
encoder's forward + backward pass ran 1.6x slower on them, the forward pass alone not at all,
so only training flushes them (measurements: docs/performance.md P9). Flushing changes only
values below 1.2e-38.

The mode is a property of each CPU thread, and a new thread copies it from the thread that
creates it. torch's intra-op threads start at the first parallel operation, so the mode must
be set before that one (the training commands do it first thing); set later, it reaches the
calling thread only.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch

log = logging.getLogger(__name__)


@contextlib.contextmanager
def flushed_denormals() -> Iterator[bool]:
    """Flush-to-zero on for this thread (and the torch threads it starts) inside the block,
    off again after it (the process default). Yields whether the CPU supports it (x86 with
    SSE3; elsewhere nothing changes)."""
    supported = bool(torch.set_flush_denormal(True))
    if not supported:
        log.info("this CPU cannot flush subnormal floats; training may slow down on them")
    try:
        yield supported
    finally:
        if supported:
            torch.set_flush_denormal(False)

"""Flush subnormal floats to zero on the CPU (FTZ/DAZ) while training.

Trained weights can make gradients subnormal (nonzero float32 values below 1.2e-38), and
x86 CPUs compute with those in microcode, many times slower than with normal numbers. Measured
on the 2-core machine (lite image encoder, one 128^3 region, 2 threads, median of 5, two rounds
side by side): forward + backward takes 0.63 s with the weights of experiment ``e36`` and
0.39-0.41 s with subnormals flushed (shipped weights: 0.39-0.50 and 0.34-0.40 s); the forward
pass alone takes 0.10-0.12 s either way, so inference is not affected. In a whole training
step (encoder, five decoder rounds, click simulation; 2.6 s at step 1250 of ``e37``) the
encoder's share is small, and the gain there was within the noise of a 16-step sample.
Flushing changes only values below 1.2e-38.

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

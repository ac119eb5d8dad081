"""Flush-to-zero while training: subnormal floats become zero inside the block only."""

from __future__ import annotations

import torch

from fastsam3d.runtime.denormals import flushed_denormals

SUBNORMAL = 1e-39  # below float32's smallest normal number (1.18e-38)


def _product() -> float:
    x = torch.tensor([SUBNORMAL], dtype=torch.float32)
    return float(x * 1.0)  # one element: computed on this thread


def test_subnormals_are_flushed_inside_the_block_and_kept_after_it() -> None:
    assert _product() > 0.0  # the process default keeps them
    with flushed_denormals() as supported:
        inside = _product()
    after = _product()
    if supported:
        assert inside == 0.0
    else:  # a CPU without the mode: nothing changes
        assert inside > 0.0
    assert after > 0.0


def test_the_mode_is_cleared_when_the_block_fails() -> None:
    try:
        with flushed_denormals():
            raise RuntimeError("a failed step")
    except RuntimeError:
        pass
    assert _product() > 0.0

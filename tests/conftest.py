"""Shared test fixtures: seeded generators, tiny models, the vendored upstream references."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch

import fastsam3d
from fastsam3d.conformance import FIXTURES_DIR
from fastsam3d.modeling.sam3d import Sam3D

FIXTURES = FIXTURES_DIR


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.fixture
def tiny_model() -> Sam3D:
    """Teacher layout at 32^3 (padded-window block + global block), eval mode."""
    return fastsam3d.load_model("test-tiny", seed=3, random_weights=True)


@pytest.fixture
def tiny_student() -> Sam3D:
    """Student layout at 32^3 (2 MLP-only + 2 attention blocks, FastSAM3D formula)."""
    return fastsam3d.load_model("test-tiny-student", seed=4, random_weights=True)


def manifest(name: str) -> dict[str, Any]:
    """Vendored upstream key/shape manifest (``fastsam3d`` or ``sam_med3d_vit_b``)."""
    data: dict[str, Any] = json.loads((FIXTURES / "manifests" / f"{name}.json").read_text())
    return data


def tiny_inputs(model: Sam3D, gen: torch.Generator, batch: int = 1, n_points: int = 3):
    """Random image, points inside the volume and labels for ``model``'s input size."""
    s = model.cfg.image_size
    image = torch.randn(batch, 1, s, s, s, generator=gen)
    points = torch.randint(0, s, (batch, n_points, 3), generator=gen).float()
    labels = torch.randint(0, 2, (batch, n_points), generator=gen)
    return image, points, labels

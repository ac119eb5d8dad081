"""Dice and normalised surface Dice against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fastsam3d.eval.metrics import dice, normalized_surface_dice, surface_voxels


def _mask(shape=(10, 10, 10), *voxels) -> np.ndarray:
    m = np.zeros(shape, bool)
    for v in voxels:
        m[v] = True
    return m


def test_dice_hand_cases() -> None:
    a = _mask((5, 5, 5), (0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0))
    b = _mask((5, 5, 5), (0, 0, 0), (0, 0, 1))
    assert dice(a, a) == 1.0
    assert dice(a, b) == pytest.approx(2 * 2 / (4 + 2))
    assert dice(a, _mask((5, 5, 5), (4, 4, 4))) == 0.0
    assert dice(a, np.zeros_like(a)) == 0.0
    assert math.isnan(dice(np.zeros_like(a), np.zeros_like(a)))
    with pytest.raises(ValueError, match="shapes differ"):
        dice(a, np.zeros((4, 4, 4), bool))


def test_surface_of_a_solid_cube() -> None:
    cube = np.zeros((7, 7, 7), bool)
    cube[1:6, 1:6, 1:6] = True
    surface = surface_voxels(cube)
    assert surface.sum() == 5**3 - 3**3  # everything but the 3^3 interior
    assert not surface[3, 3, 3]
    edge = np.ones((3, 3, 3), bool)  # touching the image border: the border counts as outside
    assert surface_voxels(edge).sum() == 26


@pytest.mark.parametrize(
    ("offset", "spacing", "tolerance", "expected"),
    [
        ((2, 0, 0), (1.0, 1.0, 1.0), 2.0, 1.0),  # 2 mm apart, tolerance 2 mm: within
        ((3, 0, 0), (1.0, 1.0, 1.0), 2.0, 0.0),  # 3 mm: outside
        ((2, 0, 0), (1.5, 1.0, 1.0), 2.0, 0.0),  # 2 voxels of 1.5 mm = 3 mm
        ((0, 0, 1), (1.0, 1.0, 3.0), 2.0, 0.0),  # one slice of 3 mm
        ((0, 1, 0), (1.0, 1.0, 3.0), 2.0, 1.0),  # one row of 1 mm
        ((1, 1, 0), (1.0, 1.0, 1.0), 1.5, 1.0),  # sqrt(2) mm <= 1.5
        ((1, 1, 1), (1.0, 1.0, 1.0), 1.5, 0.0),  # sqrt(3) mm > 1.5
    ],
)
def test_nsd_of_single_voxels(offset, spacing, tolerance, expected) -> None:
    a = _mask((8, 8, 8), (3, 3, 3))
    b = _mask((8, 8, 8), tuple(3 + o for o in offset))
    assert normalized_surface_dice(a, b, spacing, tolerance) == expected


def test_nsd_partial_agreement() -> None:
    """Two voxels vs one: the shared voxel is within tolerance both ways, the far one is not:
    (1 + 1) / (2 + 1)."""
    a = _mask((12, 12, 12), (2, 2, 2), (9, 9, 9))
    b = _mask((12, 12, 12), (2, 2, 2))
    assert normalized_surface_dice(a, b, (1.0, 1.0, 1.0), 1.0) == pytest.approx(2 / 3)


def test_nsd_empty_cases_and_identity() -> None:
    cube = np.zeros((9, 9, 9), bool)
    cube[2:7, 2:7, 2:7] = True
    assert normalized_surface_dice(cube, cube, (0.7, 0.7, 2.5)) == 1.0
    assert normalized_surface_dice(cube, np.zeros_like(cube), (1, 1, 1)) == 0.0
    assert math.isnan(normalized_surface_dice(np.zeros_like(cube), np.zeros_like(cube), (1, 1, 1)))

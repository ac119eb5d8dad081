"""Annotation: the objects of one scan share one bounded embedding cache."""

from __future__ import annotations

import numpy as np
import pytest

import fastsam3d
from fastsam3d.data.frame import roi_around
from fastsam3d.data.volume import Volume
from fastsam3d.interactive.annotation import Annotation
from fastsam3d.interactive.cache import EmbeddingCache
from fastsam3d.interactive.session import Session

# 60 x 50 x 40 mm image, 48 mm regions (test-tiny: 32 voxels of 1.5 mm). A region is centred on
# the click, moved to stay inside the image: the corner clicks share the corner region.
INSIDE, NEAR = (30, 25, 20), (31, 25, 20)
CORNER, CORNER2 = (2, 2, 2), (5, 4, 3)


def _volume(seed: int = 0) -> Volume:
    array = np.random.default_rng(seed).normal(size=(60, 50, 40)).astype(np.float32)
    return Volume.from_array(array, spacing=(1.0, 1.0, 1.0))


@pytest.fixture
def counted(monkeypatch) -> tuple[fastsam3d.Sam3D, list[int]]:
    """The tiny model with its encoder calls counted."""
    model = fastsam3d.load_model("test-tiny", seed=1, random_weights=True)
    calls: list[int] = []
    original = model.encode
    monkeypatch.setattr(model, "encode", lambda x: calls.append(1) or original(x))
    return model, calls


def test_a_second_object_in_an_encoded_region_costs_no_encode(counted) -> None:
    model, calls = counted
    annotation = Annotation(_volume(), model, source="scan", uploaded=False)
    annotation.add_object("kidney")
    first = annotation.click(INSIDE, True)
    assert first is not None
    assert first.timings_ms["encode"] > 0
    assert len(calls) == 1
    annotation.add_object("cyst")
    second = annotation.click(INSIDE, True)  # the same region as the first object's
    assert second is not None
    assert second.label == 2
    assert second.new_region  # a new region for this object, its embedding was cached
    assert second.timings_ms["encode"] == second.timings_ms["preprocess"] == 0.0
    assert len(calls) == 1
    # the same mask as an object with a cache of its own
    alone = Session(model, runtime="torch")
    alone.set_image(annotation.volume)
    alone.add_click(INSIDE)
    assert np.array_equal(annotation.get(2).session.mask, alone.mask)
    assert len(calls) == 2
    # a region new to every object is encoded once, then shared
    annotation.click(CORNER, True, label=2)
    assert len(calls) == 3
    annotation.click(CORNER2, False, label=1)
    assert len(calls) == 3
    assert annotation.embeddings.hits == 2


def test_regions_on_a_lattice_share_embeddings_of_nearby_clicks(counted) -> None:
    model, calls = counted
    annotation = Annotation(_volume(), model, source="s", uploaded=False, region_grid_mm=16.0)
    annotation.add_object()
    annotation.click(INSIDE, True)
    annotation.add_object()
    second = annotation.click(NEAR, True)  # centred: another region; on the lattice: the same
    assert second is not None
    assert second.timings_ms["encode"] == 0.0
    assert len(calls) == 1
    # the region depends on the clicks only, not on what is cached: the same mask alone
    alone = Session(model, runtime="torch", region_grid_mm=16.0)
    alone.set_image(annotation.volume)
    alone.add_click(NEAR)
    assert np.array_equal(annotation.get(2).session.mask, alone.mask)
    centred = Annotation(_volume(), model, source="s", uploaded=False)
    centred.add_object()
    centred.click(INSIDE, True)
    centred.add_object()
    centred.click(NEAR, True)
    assert len(calls) == 4  # alone: 1, centred: one per object
    with pytest.raises(ValueError, match="region_grid_mm"):
        Session(model, region_grid_mm=0.0)


def test_the_shared_cache_is_bounded(counted) -> None:
    model, calls = counted
    annotation = Annotation(_volume(), model, source="scan", uploaded=False, cache_size=1)
    annotation.add_object()
    annotation.click(INSIDE, True)
    annotation.add_object()
    annotation.click(CORNER, True)  # evicts the first region
    assert len(annotation.embeddings) == 1
    annotation.click(INSIDE, False, label=1)
    assert len(calls) == 3
    assert len(annotation.embeddings) == 1


def test_images_with_the_same_geometry_do_not_share_embeddings(counted) -> None:
    model, calls = counted
    cache = EmbeddingCache(size=4)
    a, b = (
        Session(model, runtime="torch", cache=cache),
        Session(model, runtime="torch", cache=cache),
    )
    a.set_image(_volume(0))
    b.set_image(_volume(1))  # same grid, other voxels: same region keys
    a.add_click(INSIDE)
    b.add_click(INSIDE)
    assert len(calls) == 2
    assert len(cache) == 2
    b.set_image(_volume(2))  # a shared cache keeps the other session's entries
    assert len(cache) == 2
    a.add_click(NEAR)
    assert len(calls) == 2
    roi = roi_around(a.volume, np.array(INSIDE, float), a.frame)
    assert cache.get(b.volume, model, b.frame, roi) is None
    cache.forget(a.volume)
    assert len(cache) == 1


def test_a_cache_holds_at_least_one_embedding() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        EmbeddingCache(size=0)

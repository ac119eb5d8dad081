"""Click simulators: polarity follows the error type, determinism, each rule's placement."""

from __future__ import annotations

import edt
import numpy as np
import pytest

from fastsam3d.eval.clicks import CenterClicker, RandomClicker, UpstreamClicker, make_simulator

SIMULATORS = [
    UpstreamClicker(),
    UpstreamClicker(logit_quirk=True),
    CenterClicker(),
    RandomClicker(),
]
SPACING = (1.0, 1.2, 2.0)


def _blob(shape, center, radius) -> np.ndarray:
    idx = np.indices(shape).reshape(3, -1).T
    return (np.linalg.norm(idx - center, axis=1) <= radius).reshape(shape)


@pytest.mark.parametrize("sim", SIMULATORS, ids=lambda s: f"{s.name}-{s.prediction_threshold}")
def test_clicks_land_on_errors_of_the_right_kind(sim) -> None:
    rng = np.random.default_rng(0)
    for trial in range(40):
        shape = (20, 18, 16)
        gt = _blob(shape, rng.uniform(4, 12, 3), rng.uniform(3, 6))
        pred = (
            _blob(shape, rng.uniform(4, 12, 3), rng.uniform(2, 6))
            if trial % 4
            else np.zeros(shape, bool)
        )
        for step in range(4):
            click = sim.next_click(pred, gt, rng, SPACING, step)
            if click is None:
                assert np.array_equal(pred, gt)
                break
            i, j, k = click.index
            if click.positive:
                assert gt[i, j, k]
                assert not pred[i, j, k]
            else:
                assert pred[i, j, k]
                assert not gt[i, j, k]
            pred = pred.copy()
            pred[max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2, max(k - 1, 0) : k + 2] = (
                click.positive
            )


@pytest.mark.parametrize("sim", SIMULATORS, ids=lambda s: f"{s.name}-{s.prediction_threshold}")
def test_first_click_is_inside_the_truth_and_seeded(sim) -> None:
    gt = _blob((24, 24, 24), (12, 10, 13), 7)
    empty = np.zeros_like(gt)
    a = [sim.next_click(empty, gt, np.random.default_rng(5), SPACING, 0) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    assert a[0].positive
    assert gt[a[0].index]


def test_no_error_no_click() -> None:
    gt = _blob((10, 10, 10), (5, 5, 5), 3)
    for sim in SIMULATORS:
        assert sim.next_click(gt, gt, np.random.default_rng(0), SPACING, 0) is None


def test_center_clicker_picks_the_deepest_error_voxel() -> None:
    gt = np.zeros((21, 21, 21), bool)
    gt[3:18, 5:16, 7:14] = True  # 15 x 11 x 7 box, isotropic spacing
    dist = edt.edt(np.pad(gt, 1), black_border=True)[1:-1, 1:-1, 1:-1]
    for seed in range(5):
        click = CenterClicker().next_click(
            np.zeros_like(gt), gt, np.random.default_rng(seed), (1, 1, 1), 0
        )
        assert click is not None
        assert click.index[2] == 10  # the thinnest axis fixes the centre plane
        assert dist[click.index] == dist.max()  # a deepest voxel (ties broken at random)


def test_upstream_core_clicks_stay_in_the_inner_half() -> None:
    gt = _blob((30, 30, 30), (15, 14, 16), 10)
    dist = edt.edt(np.pad(gt, 1), black_border=True)[1:-1, 1:-1, 1:-1]
    sim = UpstreamClicker()
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(30):
        click = sim.next_click(np.zeros_like(gt), gt, rng, (1.0, 1.0, 1.0), 0)
        assert dist[click.index] > dist.max() / 2
        seen.add(click.index)
    assert len(seen) > 5  # uniform among candidates, not a fixed point
    pred = _blob((30, 30, 30), (15, 14, 16), 9)
    late = sim.next_click(pred, gt, rng, (1.0, 1.0, 1.0), 2)  # later clicks: anywhere in the error
    assert late is not None
    assert late.positive


def test_upstream_prefers_the_larger_error_region() -> None:
    gt = _blob((30, 30, 30), (10, 15, 15), 6)
    pred = _blob((30, 30, 30), (20, 15, 15), 3)  # small false positive, large false negative
    click = UpstreamClicker().next_click(pred, gt, np.random.default_rng(0), (1, 1, 1), 0)
    assert click.positive
    bigger_fp = _blob((30, 30, 30), (20, 15, 15), 8) & ~gt
    click = UpstreamClicker().next_click(bigger_fp | gt, gt, np.random.default_rng(0), (1, 1, 1), 1)
    assert not click.positive


def test_make_simulator() -> None:
    assert make_simulator("upstream", logit_quirk=True).prediction_threshold == 0.5
    assert make_simulator("center").name == "center"
    with pytest.raises(ValueError, match="unknown simulator"):
        make_simulator("oracle")
    with pytest.raises(ValueError, match="quirk"):
        make_simulator("random", logit_quirk=True)


def _reference_deepest(fn: np.ndarray, fp: np.ndarray, spacing) -> tuple[float, bool] | None:
    """Both error regions transformed on the whole grid: (depth, from the false negatives)."""
    best = None
    for region, negative in ((fn, True), (fp, False)):
        if region.any():
            top = float(edt.edt(np.pad(region, 1), anisotropy=spacing, black_border=True).max())
            if best is None or top > best[0]:
                best = (top, negative)
    return best


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), SPACING, (0.7, 0.7, 3.3)])
def test_one_transform_where_the_other_region_cannot_be_deeper_gives_the_same_clicks(
    spacing,
) -> None:
    """The deeper error region is the one transforming both would find (ties to the false
    negatives), and the clicks are those of transforming both."""
    from fastsam3d.eval.clicks import _deepest_error, _depth_bound

    rng = np.random.default_rng(3)
    skipped = 0
    for _ in range(60):
        shape = (24, 20, 18)
        gt = _blob(shape, rng.uniform(4, 16, 3), rng.uniform(1, 8))
        pred = _blob(shape, rng.uniform(4, 16, 3), rng.uniform(1, 8))
        fn, fp = gt & ~pred, pred & ~gt
        expected = _reference_deepest(fn, fp, spacing)
        found = _deepest_error(fn, fp, spacing)
        if expected is None:
            assert found is None
            continue
        assert found is not None
        top, dist, box = found
        assert top == pytest.approx(expected[0])
        region = fn if expected[1] else fp
        assert np.array_equal(dist > 0, region[box])  # the same region was chosen
        for r in (fn, fp):
            if r.any():
                ys = np.flatnonzero(r.any(axis=(1, 2)))
                xs = np.flatnonzero(r.any(axis=(0, 2)))
                zs = np.flatnonzero(r.any(axis=(0, 1)))
                b = (
                    slice(ys[0], ys[-1] + 1),
                    slice(xs[0], xs[-1] + 1),
                    slice(zs[0], zs[-1] + 1),
                )
                deepest = edt.edt(np.pad(r, 1), anisotropy=spacing, black_border=True).max()
                assert deepest <= _depth_bound(b, spacing) * (1 + 1e-6)
                skipped += _depth_bound(b, spacing) * (1 + 1e-5) < top
        for sim in (CenterClicker(), UpstreamClicker()):
            a = sim.next_click(pred, gt, np.random.default_rng(9), spacing, 0)
            assert a is not None
            assert a.positive == expected[1]
    assert skipped > 5  # the shortcut is taken, not only allowed

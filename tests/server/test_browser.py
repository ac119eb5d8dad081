"""End to end: ``fastsam3d serve`` in a subprocess, the NiiVue page in headless Chromium
(Debian's, driven by Playwright), real mouse clicks on the bundled CT.

Needs /usr/bin/chromium (``scripts/setup.sh --browser``) and the NiiVue bundle the package
ships. Without them the tests skip, unless ``FASTSAM3D_REQUIRE_BROWSER=1``
(set by ``scripts/test.sh``), where a missing piece fails. Screenshots go to
``test-artifacts/browser/`` (or ``$FASTSAM3D_ARTIFACTS/browser``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from scipy import ndimage

from fastsam3d import samples
from fastsam3d.data.align import labels_on_grid
from fastsam3d.data.io import read_volume
from fastsam3d.server import routes
from fastsam3d.server.config import default_niivue
from fastsam3d.server.encoding import decode_compact
from fastsam3d.server.process import serving
from fastsam3d.server.routes import fill

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("FASTSAM3D_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(os.environ.get("FASTSAM3D_ARTIFACTS", REPO / "test-artifacts")) / "browser"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def _missing() -> str | None:
    if not CHROMIUM.is_file():
        return f"{CHROMIUM} not installed (bash scripts/setup.sh --browser)"
    if not default_niivue().is_file():
        return f"NiiVue bundle missing at {default_niivue()} (a broken checkout?)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright not installed (pip install -e .[test])"
    return None


@pytest.fixture(scope="module")
def browser_ready() -> None:
    reason = _missing()
    if reason is None:
        return
    if os.environ.get("FASTSAM3D_REQUIRE_BROWSER") == "1":
        pytest.fail(f"browser tests required but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def server(browser_ready, tmp_path_factory) -> Iterator[tuple[str, Path]]:
    data = tmp_path_factory.mktemp("data")
    shutil.copy(samples.sample("ct").image, data / "example_ct.nii.gz")
    args = ["--data-dir", str(data), "--recovery-dir", str(data.parent / "recovery")]
    with serving([*args, "--threads", "2"]) as running:
        yield running.url, data


@pytest.fixture(scope="module")
def page(server) -> Iterator:
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        pg = browser.new_page(viewport={"width": 1280, "height": 800})
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.errors = errors
        yield pg
        browser.close()


def _deepest_voxel(mask: np.ndarray) -> np.ndarray:
    """The voxel of ``mask`` farthest from its boundary (surely inside)."""
    depth = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1, 1:-1]
    return np.array(np.unravel_index(int(np.argmax(depth)), mask.shape), dtype=float)


def _server_labels(url: str, sid: str) -> np.ndarray:
    r = httpx.get(url + fill(routes.LABELS, sid=sid))
    shape = tuple(int(v) for v in r.headers["x-shape"].split(","))
    return decode_compact(r.content, shape)


def _click_world(page, mm: np.ndarray, negative: bool = False) -> None:
    point = page.evaluate("mm => window.fastsam3d.pagePointFor(mm)", [float(v) for v in mm])
    assert point is not None
    if negative:
        page.keyboard.down("Shift")
    page.mouse.click(point["x"], point["y"])
    if negative:
        page.keyboard.up("Shift")


def _wait_revision(page, after: int) -> None:
    page.wait_for_function(f"window.fastsam3d.revision > {after}", timeout=60_000)


def _revision(page) -> int:
    return int(page.evaluate("window.fastsam3d.revision"))


def _overlay(page) -> int:
    return int(page.evaluate("window.fastsam3d.overlayVoxels"))


def test_click_refine_undo_redo_save(server, page) -> None:
    url, data = server
    sample = samples.sample("ct")
    volume = read_volume(sample.image)
    labels = labels_on_grid(read_volume(sample.labels), volume)
    liver = labels == samples.label_value(sample.label_set, "liver")

    page.goto(url + fill(routes.PAGE, {"open": "example_ct.nii.gz"}))
    page.wait_for_function("window.fastsam3d && window.fastsam3d.ready", timeout=60_000)
    assert page.evaluate("window.fastsam3d.errors") == []
    sid = page.evaluate("window.fastsam3d.sessionId")
    assert sid
    page.screenshot(path=str(ARTIFACTS / "01-opened.png"))

    # a positive click in the liver: the overlay appears and matches the server's label map
    inside = _deepest_voxel(liver)
    rev = _revision(page)
    _click_world(page, volume.index_to_world(inside[None], "ras")[0])
    _wait_revision(page, rev)
    state = httpx.get(url + fill(routes.SESSION, sid=sid)).json()
    clicked = np.array(state["objects"][0]["clicks"][0]["index"])
    assert np.abs(clicked - inside).max() < 0.51  # the page sent the voxel under the mouse
    server_labels = _server_labels(url, sid)
    after_positive = _overlay(page)
    assert after_positive > 0
    assert after_positive == int(np.count_nonzero(server_labels))
    assert page.inner_text("#voxels") == f"voxels: {after_positive}"
    assert server_labels[tuple(np.round(inside).astype(int))] == 1
    assert "last click:" in page.inner_text("#latency")
    assert page.evaluate("window.fastsam3d.lastLatencyMs") > 0
    page.screenshot(path=str(ARTIFACTS / "02-positive-click.png"))
    print("page timings of the first click (ms):", page.evaluate("window.fastsam3d.timings"))

    # a negative click inside the mask, far from the first click, shrinks it
    mask = server_labels == 1
    depth = ndimage.distance_transform_edt(mask)
    coords = np.argwhere(mask & (depth >= 1))
    far = coords[np.argmax(np.linalg.norm(coords - inside, axis=1))].astype(float)
    rev = _revision(page)
    _click_world(page, volume.index_to_world(far[None], "ras")[0], negative=True)
    _wait_revision(page, rev)
    after_negative = _overlay(page)
    state = httpx.get(url + fill(routes.SESSION, sid=sid)).json()
    assert state["objects"][0]["clicks"][1]["positive"] is False
    assert after_negative < after_positive
    assert after_negative == int(np.count_nonzero(_server_labels(url, sid)))
    page.screenshot(path=str(ARTIFACTS / "03-negative-click.png"))

    # undo (button) restores the positive-click mask exactly; redo (Ctrl+Y) the refined one
    rev = _revision(page)
    page.click("#undo-btn")
    _wait_revision(page, rev)
    assert _overlay(page) == after_positive
    assert np.array_equal(_server_labels(url, sid), server_labels)
    page.screenshot(path=str(ARTIFACTS / "04-undo.png"))
    rev = _revision(page)
    page.keyboard.press("Control+y")
    _wait_revision(page, rev)
    assert _overlay(page) == after_negative

    # save writes a file next to the scan with the input's geometry
    page.keyboard.press("Control+s")
    page.wait_for_function("window.fastsam3d.lastSaved", timeout=30_000)
    saved = read_volume(data / "example_ct_labels.nii.gz")
    assert saved.shape == volume.shape
    assert np.allclose(saved.affine, volume.affine)
    assert int(np.count_nonzero(saved.array)) == after_negative
    assert (data / "example_ct_labels.json").is_file()
    page.screenshot(path=str(ARTIFACTS / "05-saved.png"))
    assert page.errors == []


def test_second_object_and_bad_upload(page) -> None:
    sid = page.evaluate("window.fastsam3d.sessionId")
    before = _overlay(page)
    page.keyboard.press("n")
    page.wait_for_function("window.fastsam3d.state.objects.length === 2", timeout=30_000)
    assert page.locator("#objects li").count() == 2
    assert page.locator("#objects li.active").get_attribute("data-label") == "2"

    # a file that is not an image: a clear message in the page, the session stays as it was
    page.set_input_files(
        "#upload-input",
        files=[{"name": "notes.nii.gz", "mimeType": "application/gzip", "buffer": b"no image"}],
    )
    page.wait_for_selector("#error:not([hidden])", timeout=30_000)
    message = page.inner_text("#error")
    assert "400" in message
    assert "notes.nii.gz" in message
    assert page.evaluate("window.fastsam3d.sessionId") == sid
    assert _overlay(page) == before
    page.screenshot(path=str(ARTIFACTS / "06-bad-upload.png"))


def test_restore_a_closed_session_from_its_autosave(server, page) -> None:
    url, _ = server
    before_sid = page.evaluate("window.fastsam3d.sessionId")
    state = httpx.get(url + fill(routes.SESSION, sid=before_sid)).json()
    first = next(o for o in state["objects"] if o["label"] == 1)
    expected = int(np.count_nonzero(_server_labels(url, before_sid)))
    # opening the scan again closes the current session; its autosave becomes restorable
    page.click("#open-btn")
    page.wait_for_function(f"window.fastsam3d.sessionId !== '{before_sid}'", timeout=60_000)
    page.wait_for_function(
        f"[...document.querySelectorAll('#restore-select option')]"
        f".some(o => o.value === '{before_sid}')",
        timeout=30_000,
    )
    page.select_option("#restore-select", before_sid)
    reopened = page.evaluate("window.fastsam3d.sessionId")
    page.click("#restore-btn")
    page.wait_for_function(f"window.fastsam3d.sessionId !== '{reopened}'", timeout=60_000)
    page.wait_for_function(f"window.fastsam3d.overlayVoxels === {expected}", timeout=30_000)
    names = page.locator("#objects li .name").all_inner_texts()
    assert names == [o["name"] for o in state["objects"]]  # the empty second object too
    assert names[0] == first["name"]
    page.screenshot(path=str(ARTIFACTS / "07-restored.png"))
    assert page.errors == []


def test_missing_niivue_is_explained_in_the_page(page, tmp_path) -> None:
    env = {**os.environ, "FASTSAM3D_NIIVUE": str(tmp_path / "missing.js")}
    with serving(["--recovery-dir", ""], env=env) as running:
        pg = page.context.browser.new_page()  # the module's browser, a second tab
        try:
            pg.goto(running.url)
            pg.wait_for_selector("#error:not([hidden])", timeout=30_000)
            text = pg.inner_text("#error")
            assert "NiiVue bundle" in text
            assert "FASTSAM3D_NIIVUE" in text
            pg.screenshot(path=str(ARTIFACTS / "08-niivue-missing.png"))
        finally:
            pg.close()

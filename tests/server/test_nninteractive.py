"""The nnInteractive remote protocol, driven by the real ``nninteractive-client`` (PyPI) against
``fastsam3d serve`` in a subprocess."""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Iterator

import httpx
import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from fastsam3d import samples
from fastsam3d.data.align import labels_on_grid
from fastsam3d.data.io import read_volume
from fastsam3d.server import routes
from fastsam3d.server.nnwire import pack
from fastsam3d.server.process import serving
from fastsam3d.server.routes import fill

remote = pytest.importorskip("nnInteractive.inference.remote")
Client = remote.nnInteractiveRemoteInferenceSession
TOKEN = "protocol-test-token"


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("nni-data")
    args = ["--data-dir", str(data), "--token", TOKEN, "--threads", "2", "--max-sessions", "3"]
    with serving(args) as running:
        yield running.url


@pytest.fixture(scope="module")
def ct() -> tuple[np.ndarray, tuple[float, ...], np.ndarray]:
    """The bundled CT as the client holds it: ``(1, X, Y, Z)``, spacing, liver mask."""
    sample = samples.sample("ct")
    volume = read_volume(sample.image)
    labels = labels_on_grid(read_volume(sample.labels), volume)
    liver = labels == samples.label_value("total", "liver")
    assert len(set(volume.shape)) == 3  # asymmetric: an axis swap cannot go unnoticed
    return volume.array[None].astype(np.float32), volume.spacing, liver


def _deepest(mask: np.ndarray) -> list[int]:
    depth = ndimage.distance_transform_edt(mask)
    return [int(v) for v in np.unravel_index(int(np.argmax(depth)), mask.shape)]


def _server_labels(url: str, sid: str) -> np.ndarray:
    resp = httpx.get(
        url + fill(routes.LABELS_FILE, sid=sid, fmt="nii.gz"),
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=60,
    )
    resp.raise_for_status()
    image = nib.Nifti1Image.from_bytes(gzip.decompress(resp.content))
    return np.asarray(image.dataobj)


def _open(url: str, ct) -> tuple[object, str]:
    image, spacing, _ = ct
    client = Client(url, api_key=TOKEN)
    client.set_image(image, {"spacing": list(spacing)})
    client.set_target_buffer(np.zeros(image.shape[1:], dtype=np.uint8))
    # the fastsam3d session behind the lease (an extra key the client ignores)
    return client, client.lease_status()["session_id"]


def test_click_undo_reset_mirror_the_server(server, ct) -> None:
    _, _, liver = ct
    client, sid = _open(server, ct)
    try:
        assert client.supported_interactions["points"] is True  # napari-nninteractive's keys
        assert client.supported_interactions["bbox2d"] is False
        assert client.supports_undo
        client.add_point_interaction(_deepest(liver), include_interaction=True)
        first = client.target_buffer.copy()
        assert first.sum() > 0
        np.testing.assert_array_equal(first, _server_labels(server, sid))
        # the mask lies on the liver of the asymmetric volume: no axis is swapped
        overlap = (first > 0) & liver
        assert overlap.sum() > 0.5 * first.sum()
        # a negative click outside the liver, then undo: the buffer returns exactly
        outside = _deepest(~liver & (ndimage.binary_dilation(liver, iterations=4)))
        client.add_point_interaction(outside, include_interaction=False)
        np.testing.assert_array_equal(client.target_buffer, _server_labels(server, sid))
        assert client.undo() is True
        np.testing.assert_array_equal(client.target_buffer, first)
        np.testing.assert_array_equal(client.target_buffer, _server_labels(server, sid))
        # clicks queued without prediction, then one prediction
        client.add_point_interaction(outside, include_interaction=False, run_prediction=False)
        np.testing.assert_array_equal(client.target_buffer, first)
        assert client._predict() is not None
        np.testing.assert_array_equal(client.target_buffer, _server_labels(server, sid))
        assert client._predict() is None  # nothing queued
        client.reset_interactions()
        assert client.target_buffer.sum() == 0
        assert _server_labels(server, sid).sum() == 0
        assert client.undo() is False
    finally:
        client.close()


def test_initial_segmentation_and_a_second_client_is_isolated(server, ct) -> None:
    _, _, liver = ct
    first, sid1 = _open(server, ct)
    second, sid2 = _open(server, ct)
    try:
        assert sid1 != sid2
        start = np.zeros(liver.shape, dtype=np.uint8)
        start[10:20, 10:20, 10:20] = 1
        second.add_initial_seg_interaction(start)
        np.testing.assert_array_equal(second.target_buffer, start)
        np.testing.assert_array_equal(_server_labels(server, sid2), start)
        first.add_point_interaction(_deepest(liver), include_interaction=True)
        np.testing.assert_array_equal(second.target_buffer, start)
        np.testing.assert_array_equal(_server_labels(server, sid2), start)
        np.testing.assert_array_equal(first.target_buffer, _server_labels(server, sid1))
    finally:
        first.close()
        second.close()


def test_bad_input_gets_a_reason_and_the_session_stays_usable(server, ct) -> None:
    image, spacing, liver = ct
    client = Client(server, api_key=TOKEN)
    try:
        with pytest.raises(httpx.HTTPStatusError) as before:
            client.add_point_interaction([5, 5, 5], include_interaction=True)
        assert before.value.response.status_code == 409
        assert "set_image" in before.value.response.json()["detail"]
        for bad, reason in (
            (image[0, :, :, 0], "expected (1, X, Y, Z)"),
            (image[None], "expected (1, X, Y, Z)"),
            (np.where(liver, np.nan, image[0])[None].astype(np.float32), "NaN"),
        ):
            resp = client._http.post(
                routes.NNI_SET_IMAGE,
                content=pack(bad),
                headers={"X-Meta": json.dumps({"image_properties": {"spacing": list(spacing)}})},
            )
            assert resp.status_code == 400, resp.text
            assert reason in resp.json()["detail"]
        resp = client._http.post(
            routes.NNI_SET_IMAGE, content=b"not a packed array", headers={"X-Meta": "{}"}
        )
        assert resp.status_code == 400
        assert "NNIA" in resp.json()["detail"]
        client.set_image(image, {"spacing": list(spacing)})
        client.set_target_buffer(np.zeros(image.shape[1:], dtype=np.uint8))
        outside = [image.shape[1] + 3, 2, 2]
        with pytest.raises(httpx.HTTPStatusError) as err:
            client.add_point_interaction(outside, include_interaction=True)
        assert err.value.response.status_code == 400
        assert "outside the image" in err.value.response.json()["detail"]
        with pytest.raises(httpx.HTTPStatusError) as err:
            client.add_bbox_interaction([[1, 5], [1, 5], [1, 5]], include_interaction=True)
        assert "not supported" in err.value.response.json()["detail"]
        client.add_point_interaction(_deepest(liver), include_interaction=True)  # still usable
        assert client.target_buffer.sum() > 0
    finally:
        client.close()


def test_token_capacity_and_idle_expiry(tmp_path, ct) -> None:
    image, spacing, _ = ct
    args = ["--data-dir", str(tmp_path), "--token", TOKEN, "--max-sessions", "1"]
    with serving([*args, "--idle-minutes", "0.05"]) as running:
        with pytest.raises(httpx.HTTPStatusError) as err:
            Client(running.url, api_key="wrong")
        assert err.value.response.status_code == 401
        client = Client(running.url, api_key=TOKEN)
        try:
            with pytest.raises(remote.ServerAtCapacityError):
                Client(running.url, api_key=TOKEN)
            assert client.lease_status()["idle_timeout_seconds"] == pytest.approx(3.0)
            time.sleep(4.0)
            with pytest.raises(remote.SessionExpiredError):
                client.set_image(image, {"spacing": list(spacing)})
            again = Client(running.url, api_key=TOKEN)  # the slot is free again
            again.close()
        finally:
            client.close()

"""HTTP API of ``fastsam3d serve``, in process: every endpoint and its error cases."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from fastapi.testclient import TestClient

import fastsam3d
from fastsam3d.data.io import read_volume
from fastsam3d.server import Limits, ServerConfig, SessionStore, create_app, routes
from fastsam3d.server.encoding import compact_labels, decode_compact, display_image, nifti_gz
from fastsam3d.server.routes import fill

SHAPE = (40, 36, 30)
AFFINE = np.array(
    [[-1.2, 0, 0, 30.0], [0, 1.1, 0, -20.0], [0, 0, 2.0, 5.0], [0, 0, 0, 1]], dtype=float
)


def _nifti_bytes(array: np.ndarray, affine: np.ndarray = AFFINE) -> bytes:
    return gzip.compress(nib.Nifti1Image(array, affine).to_bytes())


def _image() -> np.ndarray:
    rng = np.random.default_rng(0)
    image = rng.normal(0, 20, SHAPE).astype(np.float32)
    image[10:30, 8:28, 8:22] += 300
    return image


@pytest.fixture(scope="module")
def model() -> fastsam3d.Sam3D:
    return fastsam3d.load_model("test-tiny", seed=1, random_weights=True)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    (folder / "sub").mkdir(parents=True)
    (folder / "scan.nii.gz").write_bytes(_nifti_bytes(_image()))
    (folder / "sub" / "flat.nii.gz").write_bytes(_nifti_bytes(np.zeros((20, 20, 1), np.float32)))
    (folder / "broken.nii.gz").write_text("this is not an image\n")
    (tmp_path / "outside.nii.gz").write_bytes(_nifti_bytes(_image()))
    return folder


def _client(model, data_dir: Path, **kwargs) -> TestClient:
    config = ServerConfig(data_dir=data_dir, recovery_dir=data_dir.parent / "recovery", **kwargs)
    return TestClient(create_app(model, config))


@pytest.fixture
def client(model, data_dir: Path):
    with _client(model, data_dir) as c:
        yield c


def _open(client: TestClient, path: str = "scan.nii.gz") -> str:
    r = client.post(routes.SESSIONS, json={"path": path})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _labels(client: TestClient, sid: str) -> np.ndarray:
    r = client.get(fill(routes.LABELS, sid=sid))
    assert r.status_code == 200
    shape = tuple(int(v) for v in r.headers["x-shape"].split(","))
    return decode_compact(r.content, shape)


def _click(client: TestClient, sid: str, point, **kwargs) -> dict:
    r = client.post(fill(routes.CLICKS, sid=sid), json={"point": list(point), **kwargs})
    assert r.status_code == 200, r.text
    return r.json()


# -- server ------------------------------------------------------------------------------------


def test_health_files_and_schema(client: TestClient) -> None:
    health = client.get(routes.HEALTH).json()
    assert health["status"] == "ok"
    assert health["sessions"] == 0
    assert health["limits"]["max_sessions"] == 16
    files = client.get(routes.FILES).json()["files"]
    assert files == ["broken.nii.gz", "scan.nii.gz", "sub/flat.nii.gz"]
    paths = client.get("/openapi.json").json()["paths"]
    for path in (  # the public paths, spelled out: fastsam3d.server.routes must keep them
        "/api/sessions",
        "/api/sessions/upload",
        "/api/sessions/{sid}",
        "/api/sessions/{sid}/clicks",
        "/api/sessions/{sid}/undo",
        "/api/sessions/{sid}/redo",
        "/api/sessions/{sid}/reset",
        "/api/sessions/{sid}/objects",
        "/api/sessions/{sid}/objects/{label}/activate",
        "/api/sessions/{sid}/labels",
        "/api/sessions/{sid}/labels.{fmt}",
        "/api/sessions/{sid}/save",
        "/api/recovery",
    ):
        assert path in paths, path


def test_every_route_path_is_served(client: TestClient) -> None:
    schema = set(client.get("/openapi.json").json()["paths"])
    hidden = {routes.PAGE, routes.STATIC, routes.NIIVUE, routes.HEALTHZ}  # not in the schema
    names = [name for name in vars(routes) if name.isupper()]
    paths = [getattr(routes, n) for n in names if isinstance(getattr(routes, n), str)]
    assert len(paths) > 30
    for path in [*paths, *routes.NNI_UNSUPPORTED.values()]:
        assert path in schema or path in hidden, path


def test_fill_quotes_fields_and_adds_queries() -> None:
    assert fill(routes.CLICKS, sid="a b/c") == "/api/sessions/a%20b%2Fc/clicks"
    assert fill(routes.UNDO, {"object": 2}, sid="x") == "/api/sessions/x/undo?object=2"
    assert fill(routes.LABELS, {"since": None}, sid="x") == "/api/sessions/x/labels"
    assert fill(routes.LABELS_FILE, sid="x", fmt="nii.gz") == "/api/sessions/x/labels.nii.gz"
    with pytest.raises(ValueError, match=r"missing \['sid'\]"):
        fill(routes.CLICKS)
    with pytest.raises(ValueError, match=r"unknown \['sid'\]"):
        fill(routes.HEALTH, sid="x")


def test_dicom_folders_are_listed(model, tmp_path: Path) -> None:
    from tests.helpers import write_dicom_series

    write_dicom_series(_image().astype(np.int16), AFFINE, tmp_path / "series")
    with _client(model, tmp_path) as c:
        assert c.get(routes.FILES).json()["files"] == ["series"]
        sid = _open(c, "series")
        assert c.get(fill(routes.SESSION, sid=sid)).json()["shape"] == list(SHAPE)


def test_page_and_static_files(client: TestClient) -> None:
    page = client.get(routes.PAGE)
    assert page.status_code == 200
    assert fill(routes.STATIC, name="app.js") in page.text
    assert client.get(fill(routes.STATIC, name="app.js")).status_code == 200
    assert client.get("/static/../app.py").status_code == 404
    assert client.get(fill(routes.STATIC, name="nothing.js")).status_code == 404


def test_missing_niivue_is_explained(model, data_dir: Path) -> None:
    with _client(model, data_dir, niivue=data_dir / "none.js") as c:
        r = c.get(routes.NIIVUE)
        assert r.status_code == 404
        assert "FASTSAM3D_NIIVUE" in r.json()["detail"]
        assert c.get(routes.HEALTH).json()["viewer"] is False


# -- opening -----------------------------------------------------------------------------------


def test_open_path_returns_geometry(client: TestClient) -> None:
    r = client.post(routes.SESSIONS, json={"path": "scan.nii.gz"})
    assert r.status_code == 201
    state = r.json()
    assert state["shape"] == list(SHAPE)
    assert np.allclose(state["affine"], AFFINE)
    assert state["spacing"] == pytest.approx([1.2, 1.1, 2.0])
    assert state["orientation"] == "LAS"
    assert state["objects"] == []
    assert state["uploaded"] is False


@pytest.mark.parametrize(
    ("path", "status", "words"),
    [
        ("../outside.nii.gz", 403, "outside the data folder"),
        ("sub/../../outside.nii.gz", 403, "outside the data folder"),
        ("/etc/passwd", 403, "relative to the data folder"),
        ("", 403, "relative to the data folder"),
        ("missing.nii.gz", 404, "no file 'missing.nii.gz'"),
        ("broken.nii.gz", 400, "broken.nii.gz"),
        ("sub/flat.nii.gz", 400, "not a 3D volume"),
    ],
)
def test_open_path_errors(client: TestClient, path: str, status: int, words: str) -> None:
    r = client.post(routes.SESSIONS, json={"path": path})
    assert r.status_code == status
    assert words in r.json()["detail"]


def test_symlink_out_of_the_data_folder_is_refused(client: TestClient, data_dir: Path) -> None:
    (data_dir / "link.nii.gz").symlink_to(data_dir.parent / "outside.nii.gz")
    r = client.post(routes.SESSIONS, json={"path": "link.nii.gz"})
    assert r.status_code == 403


def test_upload_opens_a_session(client: TestClient) -> None:
    r = client.post(
        fill(routes.UPLOAD, {"filename": "my scan.nii.gz"}), content=_nifti_bytes(_image())
    )
    assert r.status_code == 201, r.text
    state = r.json()
    assert state["uploaded"] is True
    assert state["source"] == "upload:my scan.nii.gz"
    assert state["shape"] == list(SHAPE)


@pytest.mark.parametrize(
    ("name", "body", "status", "words"),
    [
        ("notes.txt", b"hello", 415, "upload a NIfTI"),
        ("scan.nii.gz", b"", 400, "empty"),
        ("scan.nii.gz", b"not gzip at all", 400, "scan.nii.gz"),
        ("flat.nii.gz", None, 400, "not a 3D volume"),
    ],
)
def test_upload_errors(client: TestClient, name: str, body, status: int, words: str) -> None:
    if body is None:
        body = _nifti_bytes(np.zeros((16, 16, 1), np.float32))
    r = client.post(fill(routes.UPLOAD, {"filename": name}), content=body)
    assert r.status_code == status
    assert words in r.json()["detail"]
    assert "fastsam3d-upload-" not in r.json()["detail"]  # no server paths in messages


def test_upload_over_the_limit(model, data_dir: Path) -> None:
    with _client(model, data_dir, limits=Limits(max_upload_bytes=1000)) as c:
        r = c.post(fill(routes.UPLOAD, {"filename": "big.nii.gz"}), content=b"x" * 5000)
        assert r.status_code == 413
        assert "limit" in r.json()["detail"]

        def chunks():  # no Content-Length: the limit holds while streaming
            for _ in range(5):
                yield b"x" * 400

        r = c.post(fill(routes.UPLOAD, {"filename": "big.nii.gz"}), content=chunks())
        assert r.status_code == 413


def test_image_over_the_voxel_limit(model, data_dir: Path) -> None:
    with _client(model, data_dir, limits=Limits(max_voxels=1000)) as c:
        r = c.post(routes.SESSIONS, json={"path": "scan.nii.gz"})
        assert r.status_code == 413
        assert "exceeds the limit 1000" in r.json()["detail"]


# -- sessions, objects, clicks -----------------------------------------------------------------


def test_session_lifecycle(client: TestClient) -> None:
    sid = _open(client)
    assert client.get(fill(routes.SESSION, sid=sid)).json()["id"] == sid
    assert client.get(routes.HEALTH).json()["sessions"] == 1
    assert client.delete(fill(routes.SESSION, sid=sid)).status_code == 204
    r = client.get(fill(routes.SESSION, sid=sid))
    assert r.status_code == 404
    assert "no open session" in r.json()["detail"]
    assert client.delete(fill(routes.SESSION, sid=sid)).status_code == 404
    assert client.post(fill(routes.CLICKS, sid=sid), json={"point": [1, 1, 1]}).status_code == 404


def test_image_and_overlay_share_the_input_geometry(client: TestClient) -> None:
    sid = _open(client)
    image = nib.Nifti1Image.from_bytes(
        gzip.decompress(client.get(fill(routes.IMAGE, sid=sid)).content)
    )
    overlay = nib.Nifti1Image.from_bytes(
        gzip.decompress(client.get(fill(routes.OVERLAY, sid=sid)).content)
    )
    for img in (image, overlay):
        assert img.shape == SHAPE
        assert np.allclose(img.affine, AFFINE)
    assert np.allclose(image.get_fdata(), _image(), atol=1e-4)
    assert overlay.get_data_dtype() == np.uint8


def test_click_undo_redo_reset(client: TestClient) -> None:
    sid = _open(client)
    first = _click(client, sid, (20, 18, 15))
    assert first["click"]["object"] == 1
    assert first["click"]["new_region"] is True
    assert first["objects"][0]["name"] == "object 1"  # created by the first click
    labels1 = _labels(client, sid)
    assert int(np.count_nonzero(labels1)) == first["labelled_voxels"] == first["click"]["voxels"]
    second = _click(client, sid, (24, 20, 15), positive=False)
    labels2 = _labels(client, sid)
    assert second["objects"][0]["clicks"][1]["positive"] is False
    assert second["objects"][0]["can_undo"]
    assert not second["objects"][0]["can_redo"]

    undone = client.post(fill(routes.UNDO, sid=sid)).json()
    assert np.array_equal(_labels(client, sid), labels1)
    assert undone["objects"][0]["can_redo"]
    redone = client.post(fill(routes.REDO, sid=sid)).json()
    assert np.array_equal(_labels(client, sid), labels2)
    assert redone["objects"][0]["clicks"] == second["objects"][0]["clicks"]

    client.post(fill(routes.UNDO, sid=sid))
    _click(client, sid, (22, 19, 15))  # a new click drops the redo stack
    r = client.post(fill(routes.REDO, sid=sid))
    assert r.status_code == 409
    assert "nothing to redo" in r.json()["detail"]

    reset = client.post(fill(routes.RESET, sid=sid)).json()
    assert reset["labelled_voxels"] == 0
    assert reset["objects"][0]["clicks"] == []
    r = client.post(fill(routes.UNDO, sid=sid))
    assert r.status_code == 409
    assert "nothing to undo" in r.json()["detail"]


def test_world_clicks_name_the_same_voxel(client: TestClient) -> None:
    index = np.array([20.0, 18.0, 15.0])
    ras = (AFFINE @ np.append(index, 1))[:3]
    lps = ras * [-1, -1, 1]
    states = []
    for point, frame in ((index, "voxel"), (ras, "ras"), (lps, "lps")):
        sid = _open(client)
        states.append(_click(client, sid, point, frame=frame))
        assert states[-1]["objects"][0]["clicks"][0]["index"] == pytest.approx(index.tolist())
        client.delete(fill(routes.SESSION, sid=sid))
    assert len({s["labelled_voxels"] for s in states}) == 1


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"point": [100, 1, 1]}, 422, "outside the image"),
        ({"point": [1, 1]}, 422, "point"),
        ({"point": [1, 1, 1], "frame": "ijk"}, 422, "frame"),
        ({"point": [1, 1, 1], "object": 7}, 404, "no object with label 7"),
    ],
)
def test_click_errors(client: TestClient, body: dict, status: int, words: str) -> None:
    sid = _open(client)
    r = client.post(fill(routes.CLICKS, sid=sid), json=body)
    assert r.status_code == status
    assert words in json.dumps(r.json()["detail"])


def test_objects_keep_their_own_history(client: TestClient) -> None:
    sid = _open(client)
    _click(client, sid, (20, 18, 15))
    one = _labels(client, sid) == 1
    state = client.post(fill(routes.OBJECTS, sid=sid), json={"name": "lesion"}).json()
    assert [(o["label"], o["name"]) for o in state["objects"]] == [(1, "object 1"), (2, "lesion")]
    assert state["active"] == 2
    _click(client, sid, (12, 10, 10))
    two = _labels(client, sid) == 2
    assert two.any()
    # undo of object 2 does not touch object 1
    client.post(fill(routes.UNDO, sid=sid))
    labels = _labels(client, sid)
    assert not (labels == 2).any()
    assert np.array_equal(labels == 1, one)
    # explicit object in the query / body
    client.post(fill(routes.REDO, {"object": 2}, sid=sid))
    assert np.array_equal(_labels(client, sid) == 2, two)
    r = client.post(fill(routes.UNDO, {"object": 1}, sid=sid))
    assert r.status_code == 200
    assert not (_labels(client, sid) == 1).any()
    # activate, rename, delete
    assert client.post(fill(routes.ACTIVATE, sid=sid, label=1)).json()["active"] == 1
    renamed = client.patch(fill(routes.OBJECT, sid=sid, label=2), json={"name": "tumour"}).json()
    assert renamed["objects"][1]["name"] == "tumour"
    bad = client.patch(fill(routes.OBJECT, sid=sid, label=2), json={"name": ""})
    assert bad.status_code == 422
    assert client.post(fill(routes.ACTIVATE, sid=sid, label=9)).status_code == 404
    after = client.delete(fill(routes.OBJECT, sid=sid, label=2)).json()
    assert [o["label"] for o in after["objects"]] == [1]
    assert after["labelled_voxels"] == 0
    assert client.post(fill(routes.OBJECTS, sid=sid), json={}).json()["objects"][1]["label"] == 2


def test_label_map_puts_later_objects_on_top(client: TestClient) -> None:
    sid = _open(client)
    _click(client, sid, (20, 18, 15))
    client.post(fill(routes.OBJECTS, sid=sid), json={})
    _click(client, sid, (20, 18, 15))  # same point: same mask, object 2 wins
    labels = _labels(client, sid)
    state = client.get(fill(routes.SESSION, sid=sid)).json()
    assert state["objects"][0]["voxels"] == state["objects"][1]["voxels"] > 0
    assert set(np.unique(labels)) == {0, 2}


def test_a_second_object_reuses_the_region_embedding(client: TestClient) -> None:
    """The objects of a session share one embedding cache: a new object clicked in a region
    already encoded costs a decode only."""
    sid = _open(client)
    first = _click(client, sid, (20, 18, 15))["click"]
    assert first["model_ms"]["encode"] > 0
    client.post(fill(routes.OBJECTS, sid=sid), json={"name": "second"})
    second = _click(client, sid, (20, 18, 15))["click"]
    assert second["object"] == 2
    assert second["new_region"] is True
    assert second["model_ms"]["encode"] == second["model_ms"]["preprocess"] == 0.0


def test_region_lattice_is_configurable(model, data_dir: Path) -> None:
    with _client(model, data_dir, region_grid_mm=16.0) as c:
        sid = _open(c)
        annotation = c.app.state.sessions.get(sid)
        assert annotation.add_object().session.region_grid_mm == 16.0


# -- isolation and failures --------------------------------------------------------------------


def test_sessions_are_isolated(client: TestClient) -> None:
    a, b = _open(client), _open(client)
    _click(client, a, (20, 18, 15))
    assert _labels(client, b).sum() == 0
    assert client.get(fill(routes.SESSION, sid=b)).json()["objects"] == []
    _click(client, b, (10, 10, 10))
    _click(client, b, (12, 10, 10), positive=False)
    assert len(client.get(fill(routes.SESSION, sid=a)).json()["objects"][0]["clicks"]) == 1


def test_a_failing_session_does_not_affect_others(client: TestClient, monkeypatch) -> None:
    a, b = _open(client), _open(client)
    _click(client, a, (20, 18, 15))
    before = _labels(client, a)
    store = client.app.state.sessions
    broken = store.get(a).objects[0].session

    def explode() -> None:
        raise RuntimeError("simulated out-of-memory")

    monkeypatch.setattr(broken, "predict", explode)
    r = client.post(fill(routes.CLICKS, sid=a), json={"point": [10, 10, 10]})
    assert r.status_code == 500
    assert "simulated out-of-memory" in r.json()["detail"]
    assert a in r.json()["detail"]
    # the failed click left nothing behind, the other session works
    assert len(client.get(fill(routes.SESSION, sid=a)).json()["objects"][0]["clicks"]) == 1
    assert np.array_equal(_labels(client, a), before)
    assert _click(client, b, (20, 18, 15))["labelled_voxels"] > 0
    monkeypatch.undo()
    assert len(_click(client, a, (10, 10, 10))["objects"][0]["clicks"]) == 2


def test_session_limit_and_idle_expiry(model, data_dir: Path) -> None:
    now = [0.0]
    store = SessionStore(model, Limits(max_sessions=2, idle_seconds=60), None, clock=lambda: now[0])
    config = ServerConfig(data_dir=data_dir)
    with TestClient(create_app(model, config, store=store)) as c:
        a, b = _open(c), _open(c)
        r = c.post(routes.SESSIONS, json={"path": "scan.nii.gz"})
        assert r.status_code == 503
        assert "limit 2" in r.json()["detail"]
        now[0] = 50.0
        c.get(fill(routes.SESSION, sid=b))  # b is used, a idles
        now[0] = 100.0
        _open(c)  # a has idled 100 s > 60 s and is closed to make room
        assert c.get(fill(routes.SESSION, sid=a)).status_code == 404
        assert c.get(fill(routes.SESSION, sid=b)).status_code == 200


def test_access_token(model, data_dir: Path) -> None:
    with _client(model, data_dir, token="s3cret") as c:
        assert c.get(routes.HEALTH).status_code == 401
        assert c.get(routes.HEALTH, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get(routes.HEALTH, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get(fill(routes.HEALTH, {"token": "s3cret"})).status_code == 200
        assert c.get(routes.PAGE).status_code == 200  # the page itself holds no data


# -- output ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["nii.gz", "nrrd"])
def test_download_keeps_the_input_geometry(client: TestClient, tmp_path: Path, fmt: str) -> None:
    sid = _open(client)
    _click(client, sid, (20, 18, 15))
    r = client.get(fill(routes.LABELS_FILE, sid=sid, fmt=fmt))
    assert r.status_code == 200
    assert f'filename="scan_labels.{fmt}"' in r.headers["content-disposition"]
    path = tmp_path / f"down.{fmt}"
    path.write_bytes(r.content)
    saved = read_volume(path)
    assert saved.shape == SHAPE
    assert np.allclose(saved.affine, AFFINE, atol=1e-5)
    assert np.array_equal(np.asarray(saved.array), _labels(client, sid))
    assert client.get(fill(routes.LABELS_FILE, sid=sid, fmt="png")).status_code == 422


def test_save_next_to_the_image(client: TestClient, data_dir: Path) -> None:
    sid = _open(client)
    _click(client, sid, (20, 18, 15))
    client.patch(fill(routes.OBJECT, sid=sid, label=1), json={"name": "kidney"})
    r = client.post(fill(routes.SAVE, sid=sid), json={})
    assert r.status_code == 200, r.text
    assert r.json()["path"] == "scan_labels.nii.gz"
    saved = read_volume(data_dir / "scan_labels.nii.gz")
    assert np.allclose(saved.affine, AFFINE)
    assert np.array_equal(np.asarray(saved.array), _labels(client, sid))
    legend = json.loads((data_dir / "scan_labels.json").read_text())
    assert legend["objects"] == [{"label": 1, "name": "kidney", "color": [230, 25, 75]}]
    # an existing file is kept unless asked
    again = client.post(fill(routes.SAVE, sid=sid), json={})
    assert again.status_code == 409
    assert client.post(fill(routes.SAVE, sid=sid), json={"overwrite": True}).status_code == 200
    nrrd = client.post(fill(routes.SAVE, sid=sid), json={"format": "nrrd", "name": "out.nrrd"})
    assert nrrd.json()["path"] == "out.nrrd"
    assert np.allclose(read_volume(data_dir / "out.nrrd").affine, AFFINE, atol=1e-5)
    for name in ("../escape.nii.gz", "sub/x.nii.gz", "wrong.nrrd"):
        bad = client.post(fill(routes.SAVE, sid=sid), json={"name": name})
        assert bad.status_code == 422, name
    assert not (data_dir.parent / "escape.nii.gz").exists()


def test_uploaded_images_are_downloaded_not_saved(client: TestClient) -> None:
    r = client.post(fill(routes.UPLOAD, {"filename": "up.nii.gz"}), content=_nifti_bytes(_image()))
    sid = r.json()["id"]
    saved = client.post(fill(routes.SAVE, sid=sid), json={})
    assert saved.status_code == 409
    assert "download" in saved.json()["detail"]
    assert client.get(fill(routes.LABELS_FILE, sid=sid, fmt="nii.gz")).status_code == 200


def test_autosave_to_the_recovery_folder(client: TestClient, data_dir: Path) -> None:
    sid = _open(client)
    _click(client, sid, (20, 18, 15))
    client.post(fill(routes.OBJECTS, sid=sid), json={"name": "second"})
    _click(client, sid, (12, 10, 10))
    client.app.state.sessions.flush()
    folder = data_dir.parent / "recovery" / sid
    saved = read_volume(folder / "labels.nii.gz")
    assert np.array_equal(np.asarray(saved.array), _labels(client, sid))
    assert np.allclose(saved.affine, AFFINE)
    meta = json.loads((folder / "session.json").read_text())
    assert [o["name"] for o in meta["objects"]] == ["object 1", "second"]
    listed = client.get(routes.RECOVERY).json()["sessions"]
    assert [s["id"] for s in listed] == [sid]
    assert listed[0]["open"] is True
    r = client.get(fill(routes.RECOVERED_LABELS, rid=sid))
    assert r.status_code == 200
    assert client.get(fill(routes.RECOVERED_LABELS, rid="../../etc")).status_code == 404
    # the autosave outlives the session (and the server)
    client.delete(fill(routes.SESSION, sid=sid))
    assert (folder / "labels.nii.gz").exists()


# -- encodings ---------------------------------------------------------------------------------


def test_compact_encoding_round_trip() -> None:
    labels = np.zeros((5, 4, 3), np.uint8)
    labels[1, 2, 0] = 3
    labels[4, 0, 2] = 1
    raw = gzip.decompress(compact_labels(labels))
    assert raw[1 + 2 * 5] == 3  # Fortran order: i fastest
    assert np.array_equal(decode_compact(raw, labels.shape), labels)
    with pytest.raises(ValueError, match="uint8"):
        compact_labels(labels.astype(np.int32))
    with pytest.raises(ValueError, match="do not fill"):
        decode_compact(raw[:-1], labels.shape)


def test_display_image_types() -> None:
    from fastsam3d.data.volume import Volume

    ct = Volume.from_array(np.array([[[-1024, 3000]]], np.int32).repeat(2, 0), (1, 1, 1))
    assert display_image(ct).dtype == np.int16
    big = Volume.from_array(np.array([[[0, 70000]]], np.int32).repeat(2, 0), (1, 1, 1))
    assert display_image(big).dtype == np.float32
    img = nib.Nifti1Image.from_bytes(gzip.decompress(nifti_gz(display_image(ct), ct)))
    assert np.array_equal(np.asarray(img.dataobj), [[[-1024, 3000]], [[-1024, 3000]]])
    with pytest.raises(ValueError, match="differs"):
        nifti_gz(np.zeros((1, 1, 1)), ct)


def test_cli_serve_refuses_a_missing_data_folder(tmp_path: Path, capsys) -> None:
    from fastsam3d.cli import main

    code = main(["serve", "--data-dir", str(tmp_path / "nope"), "--recovery-dir", ""])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err


def test_bundled_samples_are_the_default_data(model) -> None:
    from fastsam3d import samples

    with TestClient(create_app(model, ServerConfig(data_dir=samples.ROOT))) as c:
        files = c.get(routes.FILES).json()["files"]
        assert "example_ct.nii.gz" in files
        assert "example_ct_dicom" in files


def test_undo_depth_limit_is_explained(model, data_dir: Path) -> None:
    with _client(model, data_dir, limits=Limits(history=1)) as c:
        sid = _open(c)
        _click(c, sid, (20, 18, 15))
        state = _click(c, sid, (22, 18, 15))
        assert c.post(fill(routes.UNDO, sid=sid)).status_code == 200
        r = c.post(fill(routes.UNDO, sid=sid))
        assert r.status_code == 409
        assert "only the last 1 clicks can be undone" in r.json()["detail"]
        after = c.get(fill(routes.SESSION, sid=sid)).json()["objects"][0]
        assert after["can_undo"] is False
        assert len(after["clicks"]) == len(state["objects"][0]["clicks"]) - 1


def test_idle_sessions_close_without_new_requests(model, data_dir: Path) -> None:
    import time

    now = [0.0]
    store = SessionStore(model, Limits(idle_seconds=60), None, clock=lambda: now[0])
    config = ServerConfig(data_dir=data_dir, sweep_seconds=0.05)
    with TestClient(create_app(model, config, store=store)) as c:
        sid = _open(c)
        now[0] = 1000.0
        deadline = time.monotonic() + 10
        while sid in store.ids() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sid not in store.ids()


def test_restore_an_autosave_after_a_restart(model, data_dir: Path) -> None:
    recovery = data_dir.parent / "recovery"
    with _client(model, data_dir) as first:
        sid = _open(first)
        _click(first, sid, (20, 18, 15))
        first.post(fill(routes.OBJECTS, sid=sid), json={"name": "lesion"})
        _click(first, sid, (12, 10, 10))
        up = first.post(
            fill(routes.UPLOAD, {"filename": "up.nii.gz"}), content=_nifti_bytes(_image())
        )
        uid = up.json()["id"]
        _click(first, uid, (20, 18, 15))
        first.app.state.sessions.flush()
        labels, up_labels = _labels(first, sid), _labels(first, uid)
    # a new server on the same folders: the annotations come back
    with _client(model, data_dir) as second:
        listed = {s["id"]: s for s in second.get(routes.RECOVERY).json()["sessions"]}
        assert listed[sid]["open"] is False
        assert [o["name"] for o in listed[sid]["objects"]] == ["object 1", "lesion"]
        assert listed[uid]["uploaded"] is True
        r = second.post(fill(routes.RESTORE, rid=sid))
        assert r.status_code == 201, r.text
        state = r.json()
        assert state["restored_from"] == sid
        assert state["source"] == "scan.nii.gz"
        assert [(o["label"], o["name"]) for o in state["objects"]] == [
            (1, "object 1"),
            (2, "lesion"),
        ]
        assert all(o["clicks"] == [] for o in state["objects"])
        assert np.array_equal(_labels(second, state["id"]), labels)
        # the restored objects can be refined and saved like any other
        assert _click(second, state["id"], (22, 18, 15), object=1)["labelled_voxels"] > 0
        assert second.post(fill(routes.SAVE, sid=state["id"]), json={}).status_code == 200
        restored_upload = second.post(fill(routes.RESTORE, rid=uid)).json()
        assert restored_upload["uploaded"] is True
        assert np.array_equal(_labels(second, restored_upload["id"]), up_labels)
        assert second.post(fill(routes.RESTORE, rid="nothing")).status_code == 404
    assert (recovery / uid / "upload" / "up.nii.gz").is_file()


def test_old_autosaves_are_pruned_at_start(model, data_dir: Path) -> None:
    import os

    old = data_dir.parent / "recovery" / "old-session"
    old.mkdir(parents=True)
    (old / "session.json").write_text("{}")
    (old / "labels.nii.gz").write_bytes(b"")
    os.utime(old / "session.json", (1e9, 1e9))
    with _client(model, data_dir, recovery_days=1.0) as c:
        assert c.get(routes.RECOVERY).json()["sessions"] == []
    assert not old.exists()


def test_autosave_follows_object_names(client: TestClient, data_dir: Path) -> None:
    sid = _open(client)
    client.post(fill(routes.OBJECTS, sid=sid), json={"name": "first"})
    client.app.state.sessions.flush()
    client.patch(fill(routes.OBJECT, sid=sid, label=1), json={"name": "renamed"})
    client.post(fill(routes.OBJECTS, sid=sid), json={"name": "empty"})
    client.app.state.sessions.flush()
    meta = json.loads((data_dir.parent / "recovery" / sid / "session.json").read_text())
    assert [o["name"] for o in meta["objects"]] == ["renamed", "empty"]


def _box_update(client: TestClient, sid: str, since: int) -> tuple[str, bytes, int]:
    r = client.get(fill(routes.LABELS, {"since": since}, sid=sid))
    assert r.status_code == 200
    return r.headers["x-box"], r.content, int(r.headers["x-revision"])


def test_label_updates_send_only_the_changed_box(client: TestClient) -> None:
    sid = _open(client)
    held = _labels(client, sid).copy()  # what a viewer holds, at revision 0
    revision = 0
    for point, positive in (((20, 18, 15), True), ((24, 20, 15), False), ((5, 5, 5), True)):
        _click(client, sid, point, positive=positive)
        box, data, revision_now = _box_update(client, sid, revision)
        bounds = [int(v) for v in box.split(",")]
        assert bounds != [0, SHAPE[0], 0, SHAPE[1], 0, SHAPE[2]]  # a part of the grid
        sl = tuple(slice(bounds[2 * a], bounds[2 * a + 1]) for a in range(3))
        held[sl] = decode_compact(data, tuple(s.stop - s.start for s in sl))
        assert np.array_equal(held, _labels(client, sid))
        revision = revision_now
    # a rename changes no voxel: an empty update
    client.patch(fill(routes.OBJECT, sid=sid, label=1), json={"name": "x"})
    box, data, revision = _box_update(client, sid, revision)
    assert box == ""
    assert data == b""
    # an unknown or future revision gets the whole grid
    assert _box_update(client, sid, revision + 5)[0] == f"0,{SHAPE[0]},0,{SHAPE[1]},0,{SHAPE[2]}"
    # undo recomposes the whole grid
    client.post(fill(routes.UNDO, sid=sid))
    box, data, _ = _box_update(client, sid, revision)
    assert box == f"0,{SHAPE[0]},0,{SHAPE[1]},0,{SHAPE[2]}"
    assert np.array_equal(decode_compact(data, SHAPE), _labels(client, sid))


def test_nninteractive_leases_share_the_session_cap(model, data_dir: Path) -> None:
    """A claimed lease holds a place: with a cap of 1 the API cannot open a session beside it,
    and the lease can still open its own image."""
    from fastsam3d.server.nnwire import pack

    with _client(model, data_dir, limits=Limits(max_sessions=1)) as client:
        token = client.post(routes.NNI_CLAIM).json()["lease_token"]
        r = client.post(routes.SESSIONS, json={"path": "scan.nii.gz"})
        assert r.status_code == 503
        assert "limit 1" in r.json()["detail"]
        r = client.post(
            routes.NNI_SET_IMAGE,
            content=pack(_image()[None]),
            headers={"X-Lease-Token": token, "X-Meta": '{"image_properties": {}}'},
        )
        assert r.status_code == 200, r.text
        assert client.post(routes.NNI_CLAIM).status_code == 503
        client.post(routes.NNI_RELEASE, headers={"X-Lease-Token": token})
        assert client.post(routes.SESSIONS, json={"path": "scan.nii.gz"}).status_code == 201

"""HTTP API and web page of ``fastsam3d serve`` (FastAPI).

Open a volume (a path under the data folder, or an upload), create objects, click, undo/redo,
reset, fetch the label map (compact bytes or NIfTI/NRRD) and save it next to the image. The
OpenAPI schema is at ``/openapi.json`` and browsable at ``/docs``. Every error is a 4xx/5xx with
a JSON ``detail`` that says what was wrong. Coordinates: ``point`` is a voxel index ``(i, j, k)``
of the image array (``frame="voxel"``) or world mm (``"ras"``/``"lps"``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from ..data.io import read_volume, write_label_map
from ..data.volume import Volume, VolumeError
from ..files import atomic_output
from ..interactive.session import Box3
from .annotation import Annotation, AnnotationError
from .encoding import compact_labels, display_image, nifti_gz
from .nninteractive import add_nninteractive_routes
from .store import Limits, SessionLimitError, SessionStore, UnknownSession

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
UPLOAD_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")
SAVE_FORMATS = {"nii.gz": ".nii.gz", "nii": ".nii", "nrrd": ".nrrd", "mha": ".mha"}


def default_niivue() -> Path:
    """Where ``scripts/setup.sh`` installs NiiVue (npm): ``<repo>/web/node_modules/...``;
    ``FASTSAM3D_NIIVUE`` overrides."""
    env = os.environ.get("FASTSAM3D_NIIVUE")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[3]
    return repo / "web" / "node_modules" / "@niivue" / "niivue" / "dist" / "index.js"


@dataclass(frozen=True)
class ServerConfig:
    """What one server serves.

    Attributes:
        data_dir: images may be opened by path only from inside this folder.
        recovery_dir: autosaves of every session (``None``: off).
        limits: session, upload and image size limits.
        token: when set, every API call needs ``Authorization: Bearer <token>`` (or
            ``?token=<token>``).
        niivue: NiiVue's ES module bundle (from npm).
        model_name: shown by ``/api/health``.
        prompting: ``"newest"`` or ``"all"`` clicks per prediction, ``"auto"``: the model's.
        sweep_seconds: how often idle sessions are looked for.
        recovery_days: autosaves older than this are deleted when the server starts.
    """

    data_dir: Path
    recovery_dir: Path | None = None
    limits: Limits = field(default_factory=Limits)
    token: str | None = None
    niivue: Path = field(default_factory=default_niivue)
    model_name: str = ""
    prompting: str = "auto"
    sweep_seconds: float = 30.0
    recovery_days: float = 14.0


# -- request bodies ----------------------------------------------------------------------------


class OpenPath(BaseModel):
    path: str = Field(description="image file or DICOM folder, relative to the data folder")


class ObjectIn(BaseModel):
    name: str | None = Field(default=None, description="display name (default 'object N')")


class RenameIn(BaseModel):
    name: str


class ClickIn(BaseModel):
    point: tuple[float, float, float] = Field(description="voxel index (i, j, k) or world mm")
    positive: bool = True
    frame: Literal["voxel", "ras", "lps"] = "voxel"
    object: int | None = Field(default=None, description="label value (default: active object)")


class SaveIn(BaseModel):
    format: Literal["nii.gz", "nii", "nrrd", "mha"] = "nii.gz"
    name: str | None = Field(
        default=None, description="file name (default '<image>_labels.<format>'), no folders"
    )
    overwrite: bool = False


# -- application -------------------------------------------------------------------------------


def create_app(model: Any, config: ServerConfig, *, store: SessionStore | None = None) -> FastAPI:
    """The FastAPI application serving ``model`` (already prepared, shared read-only)."""
    data_dir = config.data_dir.resolve()
    if not data_dir.is_dir():
        raise ValueError(f"data folder {config.data_dir} does not exist or is not a folder")
    sessions = store or SessionStore(
        model, config.limits, config.recovery_dir, prompting=config.prompting
    )
    pruned = sessions.prune_recovery(config.recovery_days)
    if pruned:
        log.info("deleted %d autosaves older than %s days", len(pruned), config.recovery_days)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async def sweep() -> None:  # idle sessions close even when nobody opens new ones
            while True:
                await asyncio.sleep(config.sweep_seconds)
                await run_in_threadpool(sessions.expire)

        sweeper = asyncio.create_task(sweep())
        yield
        sweeper.cancel()
        sessions.shutdown()

    app = FastAPI(
        title="fastsam3d",
        summary="Click-to-segment 3D CT/MR volumes with a FastSAM3D-family model",
        version=_version(),
        lifespan=lifespan,
    )
    app.state.sessions = sessions
    app.state.config = config

    def check_token(request: Request) -> None:
        if config.token is None:
            return
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else ""
        given = given or request.query_params.get("token", "")
        if not secrets.compare_digest(given.encode(), config.token.encode()):
            raise HTTPException(401, "missing or wrong access token (Authorization: Bearer ...)")

    auth = [Depends(check_token)]
    add_nninteractive_routes(app, sessions, auth)

    @app.exception_handler(UnknownSession)
    async def _unknown_session(_: Request, exc: UnknownSession) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(AnnotationError)
    async def _annotation_error(_: Request, exc: AnnotationError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(SessionLimitError)
    async def _full(_: Request, exc: SessionLimitError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @contextmanager
    def session(sid: str) -> Iterator[Annotation]:
        """The session, locked; an unexpected error is a 500 naming the session, which stays
        usable (each step leaves the annotation as it was when it fails)."""
        annotation = sessions.get(sid)
        with annotation.lock:
            try:
                yield annotation
            except (HTTPException, AnnotationError):
                raise
            except ValueError as exc:  # bad point, clicks too far apart
                raise HTTPException(422, str(exc)) from exc
            except Exception as exc:
                log.exception("session %s failed", sid)
                raise HTTPException(
                    500, f"internal error in session {sid}: {type(exc).__name__}: {exc}"
                ) from exc
            finally:
                annotation.touched = sessions.clock()

    def state(sid: str, annotation: Annotation) -> dict[str, Any]:
        out = annotation.describe()
        out["id"] = sid
        return out

    def changed(sid: str, annotation: Annotation) -> dict[str, Any]:
        sessions.autosave(sid, annotation)
        out = state(sid, annotation)
        out["labelled_voxels"] = annotation.labelled_voxels
        return out

    # -- server ---------------------------------------------------------------------------

    @app.get("/api/health", dependencies=auth)
    def health() -> dict[str, Any]:
        """Model, open sessions and limits."""
        limits = config.limits
        return {
            "status": "ok",
            "model": config.model_name,
            "sessions": len(sessions.ids()),
            "limits": {
                "max_sessions": limits.max_sessions,
                "idle_seconds": limits.idle_seconds,
                "max_upload_bytes": limits.max_upload_bytes,
                "max_voxels": limits.max_voxels,
                "undo_depth": limits.history,
                "model_slots": limits.model_slots,
            },
            "viewer": config.niivue.is_file(),
        }

    @app.get("/api/files", dependencies=auth)
    def files() -> dict[str, Any]:
        """Images under the data folder (files and DICOM folders), relative paths."""
        return {"data_dir": str(data_dir), "files": _list_images(data_dir)}

    @app.get("/api/recovery", dependencies=auth)
    def recovery() -> dict[str, Any]:
        """Autosaved sessions in the recovery folder (label maps survive a restart)."""
        return {"recovery_dir": str(config.recovery_dir or ""), "sessions": sessions.recovered()}

    def autosave_folder(rid: str) -> Path:
        if config.recovery_dir is None or not rid.replace("-", "").replace("_", "").isalnum():
            raise HTTPException(404, f"no autosave {rid!r}")
        folder = config.recovery_dir / rid
        if not (folder / "labels.nii.gz").is_file() or not (folder / "session.json").is_file():
            raise HTTPException(404, f"no autosave {rid!r} in {config.recovery_dir}")
        return folder

    @app.get("/api/recovery/{rid}/labels.nii.gz", dependencies=auth)
    def recovered_labels(rid: str) -> FileResponse:
        """Download an autosaved label map."""
        path = autosave_folder(rid) / "labels.nii.gz"
        return FileResponse(path, media_type="application/gzip", filename=f"{rid}_labels.nii.gz")

    @app.post("/api/recovery/{rid}/restore", status_code=201, dependencies=auth)
    def restore(rid: str) -> dict[str, Any]:
        """A new session on an autosave's image with its objects (names, label values, masks;
        click histories are not restored). The autosave itself is kept."""
        folder = autosave_folder(rid)
        try:
            meta = json.loads((folder / "session.json").read_text())
            source = str(meta["source"])
            names = {int(o["label"]): str(o["name"]) for o in meta.get("objects", [])}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise HTTPException(422, f"autosave {rid}: unreadable session.json ({exc})") from exc
        uploaded = bool(meta.get("uploaded"))
        if uploaded:
            image_path = sessions.recovery_image(rid)
            if image_path is None:
                raise HTTPException(409, f"autosave {rid}: the uploaded image was not kept")
        else:
            image_path = _inside(data_dir, source)
        try:
            volume = read_volume(image_path)
            labels = np.asarray(read_volume(folder / "labels.nii.gz").array)
        except VolumeError as exc:
            raise HTTPException(422, f"autosave {rid}: {exc}") from exc
        _check_size(volume, source, config.limits)
        if labels.shape != volume.shape or labels.dtype.kind not in "iu" or labels.max() > 255:
            raise HTTPException(
                422, f"autosave {rid}: its label map does not fit the image {volume.shape}"
            )
        sid = sessions.open(volume, source, uploaded=uploaded)
        annotation = sessions.get(sid)
        with annotation.lock:
            annotation.import_labels(labels.astype(np.uint8), names)
            sessions.autosave(sid, annotation)
            out = state(sid, annotation)
        out["restored_from"] = rid
        return out

    # -- sessions -------------------------------------------------------------------------

    def opened(volume: Volume, source: str, upload_dir: Path | None) -> dict[str, Any]:
        _check_size(volume, source, config.limits)
        sid = sessions.open(volume, source, upload_dir)
        return state(sid, sessions.get(sid))

    @app.post("/api/sessions", status_code=201, dependencies=auth)
    def open_path(body: OpenPath) -> dict[str, Any]:
        """Open an image under the data folder."""
        path = _inside(data_dir, body.path)
        try:
            volume = read_volume(path)
        except VolumeError as exc:
            raise HTTPException(400, str(exc)) from exc
        return opened(volume, str(path.relative_to(data_dir)), None)

    @app.post("/api/sessions/upload", status_code=201, dependencies=auth)
    async def open_upload(
        request: Request,
        filename: Annotated[
            str, Query(description="original file name (its suffix tells the format)")
        ],
    ) -> dict[str, Any]:
        """Open an uploaded image: the request body is the file (NIfTI, NRRD or MHA)."""
        name = Path(filename).name
        if not name.lower().endswith(UPLOAD_SUFFIXES):
            raise HTTPException(
                415, f"{name!r}: upload a NIfTI (.nii, .nii.gz), NRRD (.nrrd) or MHA (.mha) file"
            )
        limit = config.limits.max_upload_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise HTTPException(413, f"{name}: {int(declared)} bytes exceeds the limit {limit}")
        folder = Path(tempfile.mkdtemp(prefix="fastsam3d-upload-"))
        target = folder / name
        try:
            size = 0
            with target.open("wb") as out:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise HTTPException(413, f"{name}: upload exceeds the limit {limit} bytes")
                    out.write(chunk)
            if size == 0:
                raise HTTPException(400, f"{name}: the upload is empty")
            try:
                volume = await run_in_threadpool(read_volume, target)
            except VolumeError as exc:
                raise HTTPException(400, str(exc).replace(str(folder) + os.sep, "")) from exc
            return await run_in_threadpool(opened, volume, f"upload:{name}", folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    @app.get("/api/sessions/{sid}", dependencies=auth)
    def get_session(sid: str) -> dict[str, Any]:
        """Image geometry, objects (label, name, colour, voxels, clicks) and the active one."""
        with session(sid) as a:
            return state(sid, a)

    @app.delete("/api/sessions/{sid}", status_code=204, dependencies=auth)
    def close_session(sid: str) -> Response:
        """Close a session (its autosave stays in the recovery folder)."""
        sessions.close(sid)
        return Response(status_code=204)

    @app.get("/api/sessions/{sid}/image.nii.gz", dependencies=auth)
    def image(sid: str) -> Response:
        """The image as NIfTI (int16 or float32) with its voxel -> RAS affine, for viewers."""
        with session(sid) as a:
            if a.display_nifti is None:  # built once per session, dropped with it
                a.display_nifti = nifti_gz(display_image(a.volume), a.volume)
            return Response(a.display_nifti, media_type="application/gzip")

    @app.get("/api/sessions/{sid}/overlay.nii.gz", dependencies=auth)
    def overlay(sid: str) -> Response:
        """The label map as uint8 NIfTI with the same header as ``image.nii.gz`` (viewers load it
        once as an overlay, then copy ``/labels`` into its voxels)."""
        with session(sid) as a:
            data = nifti_gz(a.label_map(), a.volume)
        return Response(data, media_type="application/gzip")

    # -- objects --------------------------------------------------------------------------

    @app.post("/api/sessions/{sid}/objects", status_code=201, dependencies=auth)
    def add_object(sid: str, body: ObjectIn) -> dict[str, Any]:
        """A new empty object (next free label value); it becomes the active one."""
        with session(sid) as a:
            a.add_object(body.name)
            return changed(sid, a)

    @app.patch("/api/sessions/{sid}/objects/{label}", dependencies=auth)
    def rename_object(sid: str, label: int, body: RenameIn) -> dict[str, Any]:
        with session(sid) as a:
            a.rename(label, body.name)
            return changed(sid, a)

    @app.delete("/api/sessions/{sid}/objects/{label}", dependencies=auth)
    def delete_object(sid: str, label: int) -> dict[str, Any]:
        with session(sid) as a:
            a.remove(label)
            return changed(sid, a)

    @app.post("/api/sessions/{sid}/objects/{label}/activate", dependencies=auth)
    def activate(sid: str, label: int) -> dict[str, Any]:
        """Make an object the target of the next clicks, undo, redo and reset."""
        with session(sid) as a:
            a.activate(label)
            return state(sid, a)

    # -- clicks and history ---------------------------------------------------------------

    @app.post("/api/sessions/{sid}/clicks", dependencies=auth)
    def click(sid: str, body: ClickIn) -> dict[str, Any]:
        """Add a positive or negative click to an object and predict its mask."""
        t0 = time.perf_counter()
        with session(sid) as a:
            outcome = a.click(body.point, body.positive, body.frame, body.object)
            assert outcome is not None  # predicted at once
            out = changed(sid, a)
        out["click"] = {
            "object": outcome.label,
            "voxels": outcome.voxels,
            "new_region": outcome.new_region,
            "iou": outcome.iou,
            "model_ms": outcome.timings_ms,
            "server_ms": 1e3 * (time.perf_counter() - t0),
        }
        return out

    def history(action: Callable[[Annotation, int | None], object]) -> Callable[..., Any]:
        def endpoint(
            sid: str,
            object: Annotated[
                int | None, Query(description="label value (default: active)")
            ] = None,
        ) -> dict[str, Any]:
            with session(sid) as a:
                action(a, object)
                return changed(sid, a)

        return endpoint

    app.post("/api/sessions/{sid}/undo", dependencies=auth, summary="Undo the last click")(
        history(lambda a, o: a.undo(o))
    )
    app.post("/api/sessions/{sid}/redo", dependencies=auth, summary="Redo an undone click")(
        history(lambda a, o: a.redo(o))
    )
    app.post("/api/sessions/{sid}/reset", dependencies=auth, summary="Clear an object")(
        history(lambda a, o: a.reset(o))
    )

    # -- label map ------------------------------------------------------------------------

    @app.get("/api/sessions/{sid}/labels", dependencies=auth)
    def labels(
        sid: str,
        since: Annotated[
            int | None,
            Query(description="a revision the client holds: send only the box changed since"),
        ] = None,
    ) -> Response:
        """Compact label map: uint8 voxels of the box ``X-Box`` (``i0,i1,j0,j1,k0,k1``,
        half-open; the whole grid without ``since``; empty when nothing changed), Fortran order
        (i fastest), gzip content-encoding; ``X-Shape`` is the whole grid's."""
        with session(sid) as a:
            shape, revision = a.volume.shape, a.revision
            box: Box3 | None = (slice(0, shape[0]), slice(0, shape[1]), slice(0, shape[2]))
            if since is not None:
                box = a.changed_since(since)
            if box is None:
                data, bounds = compact_labels(np.zeros((0, 0, 0), np.uint8)), ""
            else:
                data = compact_labels(np.ascontiguousarray(a.label_map()[box]))
                bounds = ",".join(f"{sl.start},{sl.stop}" for sl in box)
        return Response(
            data,
            media_type="application/octet-stream",
            headers={
                "Content-Encoding": "gzip",
                "X-Shape": ",".join(map(str, shape)),
                "X-Box": bounds,
                "X-Order": "F",
                "X-Dtype": "uint8",
                "X-Revision": str(revision),
            },
        )

    @app.get("/api/sessions/{sid}/labels.{fmt}", dependencies=auth)
    def download(sid: str, fmt: Literal["nii.gz", "nii", "nrrd", "mha", "dcm"]) -> Response:
        """The label map as a file on the image's exact grid (download); ``dcm``: a DICOM
        Segmentation with one segment per object (names and colours from the objects), for
        sessions opened from a DICOM series."""
        with session(sid) as a:
            stem = _stem(a.source)
            with tempfile.TemporaryDirectory(prefix="fastsam3d-dl-") as tmp:
                target = Path(tmp) / f"labels.{fmt}"
                if fmt == "dcm":
                    path = _write_seg(a, target)
                else:
                    path = write_label_map(a.label_map(), a.volume, target)
                data = path.read_bytes()
        return Response(
            data,
            media_type="application/octet-stream",
            headers={"Content-Disposition": f'attachment; filename="{stem}_labels.{fmt}"'},
        )

    @app.post("/api/sessions/{sid}/save", dependencies=auth)
    def save(sid: str, body: SaveIn) -> dict[str, Any]:
        """Write the label map next to the image (images opened from the data folder only)."""
        with session(sid) as a:
            if a.uploaded:
                raise HTTPException(
                    409,
                    "this image was uploaded, it has no folder on the server: download the "
                    f"label map instead (GET /api/sessions/{sid}/labels.{body.format})",
                )
            image_path = data_dir / a.source
            suffix = SAVE_FORMATS[body.format]
            name = body.name or f"{_stem(a.source)}_labels{suffix}"
            if Path(name).name != name or not name.endswith(suffix):
                raise HTTPException(
                    422, f"save name {name!r} must be a plain file name ending in {suffix}"
                )
            target = image_path.parent / name  # a DICOM series: next to its folder
            legend = target.with_name(name[: -len(suffix)] + ".json")
            if target.exists() and not body.overwrite:
                raise HTTPException(409, f"{target.relative_to(data_dir)} exists; set overwrite")
            objects = [
                {"label": o.label, "name": o.name, "color": list(o.color)} for o in a.objects
            ]
            write_label_map(a.label_map(), a.volume, target)
            with atomic_output(legend) as tmp:
                tmp.write_text(json.dumps({"image": a.source, "objects": objects}, indent=1))
            return {
                "path": str(target.relative_to(data_dir)),
                "legend": str(legend.relative_to(data_dir)),
                "objects": objects,
            }

    # -- web page -------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> FileResponse:
        path = STATIC / name
        if Path(name).name != name or not path.is_file():
            raise HTTPException(404, f"no static file {name!r}")
        return FileResponse(path)

    @app.get("/vendor/niivue.js", include_in_schema=False)
    def niivue() -> FileResponse:
        if not config.niivue.is_file():
            raise HTTPException(
                404,
                f"NiiVue is not installed ({config.niivue} missing): run `bash scripts/setup.sh`"
                " (npm ci --prefix web) or set FASTSAM3D_NIIVUE",
            )
        return FileResponse(config.niivue, media_type="text/javascript")

    return app


# -- helpers -----------------------------------------------------------------------------------


def _version() -> str:
    from .._version import __version__

    return __version__


def _inside(root: Path, relative: str) -> Path:
    """``root / relative`` if it stays inside ``root`` (symlinks resolved), else 403."""
    if not relative or Path(relative).is_absolute() or "\x00" in relative:
        raise HTTPException(403, f"path {relative!r}: give a path relative to the data folder")
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise HTTPException(403, f"path {relative!r} lies outside the data folder")
    if not path.exists():
        raise HTTPException(404, f"no file {relative!r} in the data folder")
    return path


def _write_seg(annotation: Annotation, path: Path) -> Path:
    """The annotation's objects as a DICOM SEG (409 for images not read from DICOM)."""
    from ..data.dicom_seg import SegmentInfo, write_dicom_seg

    source = annotation.volume.source
    if source is None or source.format != "dicom":
        raise HTTPException(
            409,
            "a DICOM SEG references the DICOM series it was made on; this session's image is "
            f"{'an upload' if source is None else source.format}: download .nii.gz instead",
        )
    if not annotation.objects:
        raise HTTPException(409, "no objects to write: add an object first")
    segments = [SegmentInfo(o.label, o.name, o.color) for o in annotation.objects]
    try:
        return write_dicom_seg(annotation.label_map(), annotation.volume, path, segments)
    except VolumeError as err:
        raise HTTPException(409, str(err)) from None


def _check_size(volume: Volume, source: str, limits: Limits) -> None:
    """413 for images over the voxel limit (2D images are refused by ``read_volume``)."""
    shape = volume.shape
    if int(np.prod(shape)) > limits.max_voxels:
        raise HTTPException(
            413, f"{source}: {int(np.prod(shape))} voxels exceeds the limit {limits.max_voxels}"
        )


def _stem(source: str) -> str:
    name = Path(source.removeprefix("upload:")).name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _is_dicom(path: Path) -> bool:
    """A DICOM Part 10 file: ``DICM`` after the 128-byte preamble."""
    try:
        with path.open("rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _list_images(root: Path, depth: int = 3) -> list[str]:
    found: list[str] = []

    def walk(folder: Path, level: int) -> None:
        try:
            entries = sorted(folder.iterdir())
        except OSError:
            return
        if any(_is_dicom(e) for e in entries[:3] if e.is_file()):
            found.append(str(folder.relative_to(root)))
            return
        for entry in entries:
            if entry.is_file() and entry.name.lower().endswith(IMAGE_SUFFIXES):
                found.append(str(entry.relative_to(root)))
            elif entry.is_dir() and level < depth and not entry.name.startswith("."):
                walk(entry, level + 1)

    walk(root, 0)
    return found

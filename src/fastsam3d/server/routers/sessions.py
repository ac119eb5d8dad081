"""Server status, the images one can open, and sessions: open (a path or an upload), describe,
close, and the image and label overlay as NIfTI for viewers."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from ...data.formats import SINGLE_FILE_SUFFIXES
from ...data.io import read_volume
from ...data.volume import Volume, VolumeError
from .. import routes
from ..deps import AUTH, IMAGE_SUFFIXES, Server, ServerState, check_size, inside
from ..encoding import display_image, nifti_gz

UPLOAD_SUFFIXES = SINGLE_FILE_SUFFIXES

router = APIRouter(dependencies=AUTH)


class OpenPath(BaseModel):
    path: str = Field(description="image file or DICOM folder, relative to the data folder")


@router.get(routes.HEALTH)
def health(server: Server) -> dict[str, Any]:
    """Model, open sessions and limits."""
    config = server.config
    limits = config.limits
    return {
        "status": "ok",
        "model": config.model_name,
        "sessions": len(server.store.ids()),
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


@router.get(routes.FILES)
def files(server: Server) -> dict[str, Any]:
    """Images under the data folder (files and DICOM folders), relative paths."""
    return {"data_dir": str(server.data_dir), "files": _list_images(server.data_dir)}


def _opened(
    server: ServerState, volume: Volume, source: str, upload_dir: Path | None
) -> dict[str, Any]:
    check_size(volume, source, server.config.limits)
    sid = server.store.open(volume, source, upload_dir)
    return server.state(sid, server.store.get(sid))


@router.post(routes.SESSIONS, status_code=201)
def open_path(body: OpenPath, server: Server) -> dict[str, Any]:
    """Open an image under the data folder."""
    path = inside(server.data_dir, body.path)
    try:
        volume = read_volume(path)
    except VolumeError as exc:
        raise HTTPException(400, str(exc)) from exc
    return _opened(server, volume, str(path.relative_to(server.data_dir)), None)


@router.post(routes.UPLOAD, status_code=201)
async def open_upload(
    request: Request,
    server: Server,
    filename: Annotated[str, Query(description="original file name (its suffix tells the format)")],
) -> dict[str, Any]:
    """Open an uploaded image: the request body is the file (NIfTI, NRRD or MHA)."""
    name = Path(filename).name
    if not name.lower().endswith(UPLOAD_SUFFIXES):
        raise HTTPException(
            415, f"{name!r}: upload a NIfTI (.nii, .nii.gz), NRRD (.nrrd) or MHA (.mha) file"
        )
    limit = server.config.limits.max_upload_bytes
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
        return await run_in_threadpool(_opened, server, volume, f"upload:{name}", folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


@router.get(routes.SESSION)
def get_session(sid: str, server: Server) -> dict[str, Any]:
    """Image geometry, objects (label, name, colour, voxels, clicks) and the active one."""
    with server.session(sid) as a:
        return server.state(sid, a)


@router.delete(routes.SESSION, status_code=204)
def close_session(sid: str, server: Server) -> Response:
    """Close a session (its autosave stays in the recovery folder)."""
    server.store.close(sid)
    return Response(status_code=204)


@router.get(routes.IMAGE)
def image(sid: str, server: Server) -> Response:
    """The image as NIfTI (int16 or float32) with its voxel -> RAS affine, for viewers."""
    with server.session(sid) as a:
        if a.display_nifti is None:  # built once per session, dropped with it
            a.display_nifti = nifti_gz(display_image(a.volume), a.volume)
        return Response(a.display_nifti, media_type="application/gzip")


@router.get(routes.OVERLAY)
def overlay(sid: str, server: Server) -> Response:
    """The label map as uint8 NIfTI with the same header as ``image.nii.gz`` (viewers load it
    once as an overlay, then copy ``/labels`` into its voxels)."""
    with server.session(sid) as a:
        data = nifti_gz(a.label_map(), a.volume)
    return Response(data, media_type="application/gzip")


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

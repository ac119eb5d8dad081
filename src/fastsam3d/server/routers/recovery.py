"""Autosaves in the recovery folder: list them, download one's label map, restore one as a new
session (label maps survive a restart of the server)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

from ...data.io import read_volume
from ...data.volume import VolumeError
from .. import routes
from ..deps import AUTH, Server, ServerState, check_size, inside

router = APIRouter(dependencies=AUTH)


@router.get(routes.RECOVERY)
def recovery(server: Server) -> dict[str, Any]:
    """Autosaved sessions in the recovery folder (label maps survive a restart)."""
    folder = server.config.recovery_dir
    return {"recovery_dir": str(folder or ""), "sessions": server.store.recovered()}


def _autosave_folder(server: ServerState, rid: str) -> Path:
    root = server.config.recovery_dir
    if root is None or not rid.replace("-", "").replace("_", "").isalnum():
        raise HTTPException(404, f"no autosave {rid!r}")
    folder = root / rid
    if not (folder / "labels.nii.gz").is_file() or not (folder / "session.json").is_file():
        raise HTTPException(404, f"no autosave {rid!r} in {root}")
    return folder


@router.get(routes.RECOVERED_LABELS)
def recovered_labels(rid: str, server: Server) -> FileResponse:
    """Download an autosaved label map."""
    path = _autosave_folder(server, rid) / "labels.nii.gz"
    return FileResponse(path, media_type="application/gzip", filename=f"{rid}_labels.nii.gz")


@router.post(routes.RESTORE, status_code=201)
def restore(rid: str, server: Server) -> dict[str, Any]:
    """A new session on an autosave's image with its objects (names, label values, masks;
    click histories are not restored). The autosave itself is kept."""
    folder = _autosave_folder(server, rid)
    try:
        meta = json.loads((folder / "session.json").read_text())
        source = str(meta["source"])
        names = {int(o["label"]): str(o["name"]) for o in meta.get("objects", [])}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise HTTPException(422, f"autosave {rid}: unreadable session.json ({exc})") from exc
    uploaded = bool(meta.get("uploaded"))
    if uploaded:
        image_path = server.store.recovery_image(rid)
        if image_path is None:
            raise HTTPException(409, f"autosave {rid}: the uploaded image was not kept")
    else:
        image_path = inside(server.data_dir, source)
    try:
        volume = read_volume(image_path)
        labels = np.asarray(read_volume(folder / "labels.nii.gz").array)
    except VolumeError as exc:
        raise HTTPException(422, f"autosave {rid}: {exc}") from exc
    check_size(volume, source, server.config.limits)
    if labels.shape != volume.shape or labels.dtype.kind not in "iu" or labels.max() > 255:
        raise HTTPException(
            422, f"autosave {rid}: its label map does not fit the image {volume.shape}"
        )
    sid = server.store.open(volume, source, uploaded=uploaded)
    annotation = server.store.get(sid)
    with annotation.lock:
        annotation.import_labels(labels.astype(np.uint8), names)
        server.store.autosave(sid, annotation)
        out = server.state(sid, annotation)
    out["restored_from"] = rid
    return out

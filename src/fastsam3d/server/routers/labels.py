"""A session's label map: compact updates for the viewer, downloads (NIfTI, NRRD, MHA, DICOM
SEG), and saving next to the image."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Response
from pydantic import BaseModel, Field

from ...data.formats import LABEL_MAP_SUFFIXES
from ...data.io import write_label_map
from ...data.volume import VolumeError
from ...files import atomic_output
from ...interactive.annotation import Annotation
from ...interactive.session import Box3
from .. import routes
from ..deps import AUTH, Server, stem
from ..encoding import compact_labels

SAVE_FORMATS = {suffix[1:]: suffix for suffix in LABEL_MAP_SUFFIXES}

router = APIRouter(dependencies=AUTH)


class SaveIn(BaseModel):
    format: Literal["nii.gz", "nii", "nrrd", "mha"] = "nii.gz"
    name: str | None = Field(
        default=None, description="file name (default '<image>_labels.<format>'), no folders"
    )
    overwrite: bool = False


SinceQuery = Annotated[
    int | None, Query(description="a revision the client holds: send only the box changed since")
]


@router.get(routes.LABELS)
def labels(sid: str, server: Server, since: SinceQuery = None) -> Response:
    """Compact label map: uint8 voxels of the box ``X-Box`` (``i0,i1,j0,j1,k0,k1``,
    half-open; the whole grid without ``since``; empty when nothing changed), Fortran order
    (i fastest), gzip content-encoding; ``X-Shape`` is the whole grid's."""
    with server.session(sid) as a:
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


@router.get(routes.LABELS_FILE)
def download(
    sid: str, fmt: Literal["nii.gz", "nii", "nrrd", "mha", "dcm"], server: Server
) -> Response:
    """The label map as a file on the image's exact grid (download); ``dcm``: a DICOM
    Segmentation with one segment per object (names and colours from the objects), for
    sessions opened from a DICOM series."""
    with server.session(sid) as a:
        name = stem(a.source)
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
        headers={"Content-Disposition": f'attachment; filename="{name}_labels.{fmt}"'},
    )


@router.post(routes.SAVE)
def save(sid: str, body: SaveIn, server: Server) -> dict[str, Any]:
    """Write the label map next to the image (images opened from the data folder only)."""
    data_dir = server.data_dir
    with server.session(sid) as a:
        if a.uploaded:
            download = routes.fill(routes.LABELS_FILE, sid=sid, fmt=body.format)
            raise HTTPException(
                409,
                "this image was uploaded, it has no folder on the server: download the "
                f"label map instead (GET {download})",
            )
        image_path = data_dir / a.source
        suffix = SAVE_FORMATS[body.format]
        name = body.name or f"{stem(a.source)}_labels{suffix}"
        if Path(name).name != name or not name.endswith(suffix):
            raise HTTPException(
                422, f"save name {name!r} must be a plain file name ending in {suffix}"
            )
        target = image_path.parent / name  # a DICOM series: next to its folder
        legend = target.with_name(name[: -len(suffix)] + ".json")
        if target.exists() and not body.overwrite:
            raise HTTPException(409, f"{target.relative_to(data_dir)} exists; set overwrite")
        objects = [{"label": o.label, "name": o.name, "color": list(o.color)} for o in a.objects]
        write_label_map(a.label_map(), a.volume, target)
        with atomic_output(legend) as tmp:
            tmp.write_text(json.dumps({"image": a.source, "objects": objects}, indent=1))
        return {
            "path": str(target.relative_to(data_dir)),
            "legend": str(legend.relative_to(data_dir)),
            "objects": objects,
        }


def _write_seg(annotation: Annotation, path: Path) -> Path:
    """The annotation's objects as a DICOM SEG (409 for images not read from DICOM)."""
    from ...data.dicom_seg import SegmentInfo, write_dicom_seg

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

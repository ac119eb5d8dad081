"""The nnInteractive remote protocol, served beside fastsam3d's own API.

Clients of the protocol (``nninteractive-client``'s ``nnInteractiveRemoteInferenceSession``,
the napari plugin ``napari-nninteractive``) claim a *lease*, upload an image, point to a target
buffer of their own and send interactions; every answer that changed the mask carries only the
changed box of the target buffer (``X-Meta: {"ran_prediction", "bbox"}`` and a packed array,
:mod:`fastsam3d.server.nnwire`).

Mapping onto this server: a lease owns at most one :class:`~fastsam3d.server.store` session (an
:class:`~fastsam3d.interactive.annotation.Annotation` with one object, label 1), created by
``set_image``; the store's limits apply (a lease counts as a session from its claim on; idle
leases and sessions expire after the same idle time), so do the bearer token and autosave.

Frames: the client sends the image as ``(C, X, Y, Z)`` (one channel) with
``image_properties["spacing"]`` in the order of ``X, Y, Z``; the annotation's voxel index
``(i, j, k)`` is the client's ``(x, y, z)`` and point coordinates are voxel indices in that
order. The target buffer is ``(X, Y, Z)``; its values are 1 inside the object, 0 outside.

Supported: points (positive and negative, with or without ``run_prediction``), ``predict``,
``undo``, ``reset_interactions``, ``add_initial_seg_interaction`` (the object starts from the
given mask). Not supported (answered with 400 and the reason): boxes, scribbles and lassos
(the models take points only).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool

from ..data.volume import Volume
from ..interactive.annotation import Annotation
from . import routes
from .deps import AUTH
from .nnwire import WireError, pack, unpack
from .store import SessionLimitError, SessionStore, UnknownSession

log = logging.getLogger(__name__)

META_HEADER = "X-Meta"
LEASE_HEADER = "X-Lease-Token"
LIVENESS_SECONDS = 60.0
"""A lease whose client sent nothing (not even a heartbeat) this long is released."""
SESSION_VERSION = "fastsam3d-points-1"
T = TypeVar("T")


@dataclass
class Lease:
    """One client's claim: its session (after ``set_image``) and what its buffer mirrors."""

    token: str
    touched: float
    alive: float
    sid: str | None = None
    buffer_shape: tuple[int, ...] | None = None
    revision: int = 0
    autozoom: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock)


class LeaseTable:
    """Leases of one server, counted against the store's session limit."""

    def __init__(self, store: SessionStore) -> None:
        self.store = store
        self._leases: dict[str, Lease] = {}
        self._lock = threading.Lock()
        store.reserved = self.imageless  # a claimed lease holds a place in the session cap

    def imageless(self) -> int:
        """Leases without an image yet (each holds one place of the session cap)."""
        with self._lock:
            return sum(1 for lease in self._leases.values() if lease.sid is None)

    def claim(self) -> Lease:
        self.expire()
        self.store.expire()
        limit = self.store.limits.max_sessions
        imageless = self.imageless()
        with self._lock:
            used = len(self.store.ids()) + imageless
            if used >= limit:
                raise HTTPException(
                    503, f"server is at capacity: {used} of {limit} sessions in use; try later"
                )
            now = self.store.clock()
            lease = Lease(secrets.token_urlsafe(16), now, now)
            self._leases[lease.token] = lease
        return lease

    def get(self, token: str | None, *, touch: bool = True) -> Lease:
        """The lease (410 when unknown or expired); ``touch`` resets its idle clock."""
        self.expire()
        with self._lock:
            lease = self._leases.get(token or "")
        if lease is None:
            raise HTTPException(410, "lease expired or unknown: claim a new session (POST /claim)")
        now = self.store.clock()
        lease.alive = now
        if touch:
            lease.touched = now
        return lease

    def release(self, lease: Lease) -> None:
        with self._lock:
            self._leases.pop(lease.token, None)
        self.close_session(lease)

    def expire(self) -> None:
        """Drop leases idle longer than the store's idle time, or silent past liveness."""
        now = self.store.clock()
        idle = self.store.limits.idle_seconds
        with self._lock:
            old = [
                lease
                for lease in self._leases.values()
                if now - lease.touched > idle or now - lease.alive > LIVENESS_SECONDS
            ]
            for lease in old:
                del self._leases[lease.token]
        for lease in old:
            log.info("nnInteractive lease expired")
            self.close_session(lease)

    def remaining(self, lease: Lease) -> float:
        return max(0.0, self.store.limits.idle_seconds - (self.store.clock() - lease.touched))

    def close_session(self, lease: Lease) -> None:
        """Close the lease's session, if it has one."""
        if lease.sid is not None:
            with contextlib.suppress(UnknownSession):
                self.store.close(lease.sid)
            lease.sid = None

    # -- requests ---------------------------------------------------------------------------

    def of(self, request: Request, touch: bool = True) -> Lease:
        """The lease named by the request's ``X-Lease-Token`` header."""
        return self.get(request.headers.get(LEASE_HEADER), touch=touch)

    def annotation(self, lease: Lease) -> Annotation:
        """The lease's session (409 before ``set_image``, 410 once it expired)."""
        if lease.sid is None:
            raise HTTPException(409, "no image yet: call set_image before interactions")
        try:
            return self.store.get(lease.sid)
        except UnknownSession:
            self.release(lease)
            raise HTTPException(410, "the session expired after idling; claim again") from None

    def locked(self, lease: Lease, work: Callable[[Annotation], T]) -> T:
        """Run ``work(annotation)`` under the lease's and the annotation's locks."""
        with lease.lock:
            annotation = self.annotation(lease)
            with annotation.lock:
                try:
                    return work(annotation)
                except HTTPException:
                    raise
                except ValueError as err:
                    raise HTTPException(400, str(err)) from err
                finally:
                    annotation.touched = self.store.clock()

    def diff(self, lease: Lease, annotation: Annotation, ran: bool) -> Response:
        """The changed box of the label map since the lease's last answer."""
        box = annotation.changed_since(lease.revision) if ran else None
        lease.revision = annotation.revision
        self.store.autosave(lease.sid or "", annotation)
        meta: dict[str, Any] = {"ran_prediction": ran, "bbox": None}
        body = b""
        if box is not None:
            meta["bbox"] = [[s.start, s.stop] for s in box]
            body = pack(np.ascontiguousarray(annotation.label_map()[box]))
        return Response(
            body, media_type="application/octet-stream", headers={META_HEADER: json.dumps(meta)}
        )


def add_nninteractive_routes(app: FastAPI, store: SessionStore) -> LeaseTable:
    """Serve the protocol on ``app`` over ``store`` (``app.state.leases``: the leases)."""
    leases = LeaseTable(store)
    app.state.leases = leases
    app.include_router(router)
    return leases


async def lease_table(request: Request) -> LeaseTable:
    """The leases of the app serving ``request``."""
    leases: LeaseTable = request.app.state.leases
    return leases


Leases = Annotated[LeaseTable, Depends(lease_table)]

router = APIRouter(dependencies=AUTH, tags=["nnInteractive"])


@router.post(routes.NNI_CLAIM)
def claim(leases: Leases) -> dict[str, Any]:
    lease = leases.claim()
    return {
        "lease_token": lease.token,
        "idle_timeout_seconds": leases.store.limits.idle_seconds,
        "liveness_timeout_seconds": LIVENESS_SECONDS,
    }


@router.post(routes.NNI_RELEASE)
def release(request: Request, leases: Leases) -> dict[str, bool]:
    leases.release(leases.of(request))
    return {"released": True}


@router.post(routes.NNI_HEARTBEAT)
def heartbeat(request: Request, leases: Leases) -> dict[str, float]:
    lease = leases.of(request, touch=False)
    return {"remaining_seconds": leases.remaining(lease)}


@router.get(routes.NNI_LEASE_STATUS)
def lease_status(request: Request, leases: Leases) -> dict[str, Any]:
    lease = leases.of(request, touch=False)
    return {
        "remaining_seconds": leases.remaining(lease),
        "idle_timeout_seconds": leases.store.limits.idle_seconds,
        "session_id": lease.sid,  # the same session in fastsam3d's own API
    }


@router.get(routes.NNI_CAPABILITIES)
def capabilities() -> dict[str, Any]:
    return {
        # the key names napari-nninteractive reads (it enables its tools from them)
        "supported_interactions": {
            "points": True,
            "bbox2d": False,
            "bbox3d": False,
            "scribble": False,
            "lasso": False,
            "initial_seg": True,
        },
        "channel_mapping": {},
        "num_interaction_channels": 0,
        "supports_initial_label": True,
        "supports_zero_shot_label_refinement": False,
        # scribbles are not supported; napari-nninteractive still reads a per-axis width
        "preferred_scribble_thickness": [1, 1, 1],
        "interaction_decay": 1.0,
        "inference_session_version": SESSION_VERSION,
        "license": (
            "fastsam3d-lite weights: Apache-2.0 (model card); published SAM-Med3D / "
            "FastSAM3D weights: their authors' terms"
        ),
        "supports_undo": True,
        "do_autozoom": False,
    }


@router.post(routes.NNI_SET_IMAGE)
async def set_image(request: Request, leases: Leases) -> dict[str, Any]:
    lease = leases.of(request)
    meta = _json_body(request.headers.get(META_HEADER, "{}").encode(), f"set_image {META_HEADER}")
    raw = await request.body()
    limit = leases.store.limits.max_upload_bytes
    if len(raw) > limit:
        raise HTTPException(413, f"set_image: body of {len(raw)} bytes exceeds {limit}")
    return await run_in_threadpool(_open_image, leases, lease, raw, meta)


def _open_image(
    leases: LeaseTable, lease: Lease, raw: bytes, meta: dict[str, Any]
) -> dict[str, Any]:
    store = leases.store
    try:
        image = unpack(raw, 8 * store.limits.max_voxels)
    except WireError as err:
        raise HTTPException(400, f"set_image: {err}") from None
    volume = _volume(image, meta.get("image_properties") or {})
    voxels = int(np.prod(volume.shape))
    if voxels > store.limits.max_voxels:
        raise HTTPException(
            413, f"set_image: {voxels} voxels exceeds the limit {store.limits.max_voxels}"
        )
    with lease.lock:
        leases.close_session(lease)
        lease.sid = ""  # opening: the lease's reserved place becomes the session's
        try:
            sid = store.open(volume, "nnInteractive client image", uploaded=True)
        except SessionLimitError as err:
            lease.sid = None
            raise HTTPException(503, str(err)) from None
        store.get(sid).add_object("object")
        lease.sid, lease.buffer_shape, lease.revision = sid, None, 0
    # session_id: the same session in fastsam3d's own API (/api/sessions/{id}/...)
    return {"original_image_shape": list(image.shape), "session_id": sid}


@router.post(routes.NNI_SET_TARGET_BUFFER)
async def set_target_buffer(request: Request, leases: Leases) -> dict[str, Any]:
    lease = leases.of(request)
    shape = _json_body(await request.body(), "set_target_buffer").get("shape")

    def work(annotation: Annotation) -> dict[str, Any]:
        expected = list(annotation.volume.shape)
        if not isinstance(shape, list) or list(shape) != expected:
            raise HTTPException(
                400, f"set_target_buffer: shape {shape} must equal the image's {expected}"
            )
        lease.buffer_shape = tuple(shape)
        # a new buffer starts empty on the client: the next answer sends all that is set
        lease.revision = -1 if annotation.labelled_voxels else annotation.revision
        return {"ok": True}

    return leases.locked(lease, work)


@router.post(routes.NNI_SET_DO_AUTOZOOM)
async def set_do_autozoom(request: Request, leases: Leases) -> dict[str, Any]:
    lease = leases.of(request)
    lease.autozoom = bool(_json_body(await request.body(), "set_do_autozoom").get("do_autozoom"))
    return {"ok": True, "note": "fastsam3d picks its own 128^3 region per click"}


@router.post(routes.NNI_ADD_POINT)
async def add_point(request: Request, leases: Leases) -> Response:
    lease = leases.of(request)
    body = _json_body(await request.body(), "add_point_interaction")
    point = _point(body.get("coordinates"), "add_point_interaction")
    positive = bool(body.get("include_interaction", True))
    run = bool(body.get("run_prediction", True))

    def work(annotation: Annotation) -> Response:
        _inside(point, annotation.volume.shape)
        outcome = annotation.click(point, positive, "voxel", 1, predict=run)
        return leases.diff(lease, annotation, outcome is not None)

    return await run_in_threadpool(leases.locked, lease, work)


@router.post(routes.NNI_PREDICT)
async def predict(request: Request, leases: Leases) -> Response:
    lease = leases.of(request)

    def work(annotation: Annotation) -> Response:
        outcome = annotation.predict(1)
        return leases.diff(lease, annotation, outcome is not None)

    return await run_in_threadpool(leases.locked, lease, work)


@router.post(routes.NNI_UNDO)
async def undo(request: Request, leases: Leases) -> Response:
    lease = leases.of(request)

    def work(annotation: Annotation) -> Response:
        obj = annotation.get(1)
        if not obj.session.prompts:
            return leases.diff(lease, annotation, False)
        annotation.undo(1)
        return leases.diff(lease, annotation, True)

    return await run_in_threadpool(leases.locked, lease, work)


@router.post(routes.NNI_RESET)
async def reset(request: Request, leases: Leases) -> dict[str, Any]:
    lease = leases.of(request)

    def work(annotation: Annotation) -> dict[str, Any]:
        annotation.reset(1)
        lease.revision = annotation.revision  # the client zeroed its own buffer
        return {"ok": True}

    return await run_in_threadpool(leases.locked, lease, work)


@router.post(routes.NNI_INITIAL_SEG)
async def initial_seg(request: Request, leases: Leases) -> Response:
    lease = leases.of(request)
    raw = await request.body()

    def work(annotation: Annotation) -> Response:
        try:
            mask = unpack(raw, 8 * leases.store.limits.max_voxels)
        except WireError as err:
            raise HTTPException(400, f"add_initial_seg_interaction: {err}") from None
        if mask.shape != annotation.volume.shape:
            raise HTTPException(
                400,
                f"add_initial_seg_interaction: shape {list(mask.shape)} must equal the "
                f"image's {list(annotation.volume.shape)}",
            )
        annotation.set_mask(1, mask > 0)
        lease.revision = annotation.revision  # the client wrote the mask itself
        return leases.diff(lease, annotation, False)

    return await run_in_threadpool(leases.locked, lease, work)


def _unsupported(kind: str) -> Any:
    def endpoint(request: Request, leases: Leases) -> None:
        leases.of(request)
        raise HTTPException(
            400,
            f"{kind} interactions are not supported by fastsam3d (its models take points); "
            "see /capabilities",
        )

    return endpoint


for _kind, _path in routes.NNI_UNSUPPORTED.items():
    router.post(_path)(_unsupported(_kind))


def _json_body(raw: bytes, where: str) -> dict[str, Any]:
    try:
        body = json.loads(raw or b"{}")
    except json.JSONDecodeError as err:
        raise HTTPException(400, f"{where}: body is not JSON ({err})") from None
    if not isinstance(body, dict):
        raise HTTPException(400, f"{where}: body must be a JSON object")
    return body


def _volume(image: np.ndarray, properties: dict[str, Any]) -> Volume:
    """The client's ``(1, X, Y, Z)`` image as a volume with its spacing (mm) on the diagonal."""
    if image.ndim != 4:
        raise HTTPException(
            400, f"set_image: image of shape {list(image.shape)}; expected (1, X, Y, Z)"
        )
    if image.shape[0] != 1:
        raise HTTPException(
            400, f"set_image: {image.shape[0]} channels; fastsam3d's models take one"
        )
    if min(image.shape[1:]) < 2:
        raise HTTPException(400, f"set_image: spatial shape {list(image.shape[1:])} is not 3D")
    data = image[0].astype(np.float32, copy=False)
    if not np.isfinite(data).all():
        raise HTTPException(400, "set_image: the image holds NaN or infinite values")
    spacing = properties.get("spacing", (1.0, 1.0, 1.0))
    if (
        not isinstance(spacing, list | tuple)
        or len(spacing) != 3
        or not all(isinstance(s, int | float) and math.isfinite(s) and s > 0 for s in spacing)
    ):
        raise HTTPException(
            400, f"set_image: image_properties.spacing {spacing!r}; expected 3 positive numbers"
        )
    return Volume(data, np.diag([*map(float, spacing), 1.0]))


def _point(value: Any, where: str) -> tuple[float, float, float]:
    if (
        not isinstance(value, list)
        or len(value) != 3
        or not all(isinstance(v, int | float) and math.isfinite(v) for v in value)
    ):
        raise HTTPException(400, f"{where}: coordinates {value!r}; expected [x, y, z] numbers")
    return (float(value[0]), float(value[1]), float(value[2]))


def _inside(point: tuple[float, float, float], shape: tuple[int, ...]) -> None:
    if not all(0 <= p <= n - 1 for p, n in zip(point, shape, strict=True)):
        raise HTTPException(
            400,
            f"point {list(point)} is outside the image (voxel indices 0..{[n - 1 for n in shape]})",
        )

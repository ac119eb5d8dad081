"""Objects of a session (add, rename, delete, activate), clicks, and each object's history
(undo, redo, reset)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from ...interactive.annotation import Annotation
from .. import routes
from ..deps import AUTH, Server

router = APIRouter(dependencies=AUTH)


class ObjectIn(BaseModel):
    name: str | None = Field(default=None, description="display name (default 'object N')")


class RenameIn(BaseModel):
    name: str


class ClickIn(BaseModel):
    point: tuple[float, float, float] = Field(description="voxel index (i, j, k) or world mm")
    positive: bool = True
    frame: Literal["voxel", "ras", "lps"] = "voxel"
    object: int | None = Field(default=None, description="label value (default: active object)")


@router.post(routes.OBJECTS, status_code=201)
def add_object(sid: str, body: ObjectIn, server: Server) -> dict[str, Any]:
    """A new empty object (next free label value); it becomes the active one."""
    with server.session(sid) as a:
        a.add_object(body.name)
        return server.changed(sid, a)


@router.patch(routes.OBJECT)
def rename_object(sid: str, label: int, body: RenameIn, server: Server) -> dict[str, Any]:
    with server.session(sid) as a:
        a.rename(label, body.name)
        return server.changed(sid, a)


@router.delete(routes.OBJECT)
def delete_object(sid: str, label: int, server: Server) -> dict[str, Any]:
    with server.session(sid) as a:
        a.remove(label)
        return server.changed(sid, a)


@router.post(routes.ACTIVATE)
def activate(sid: str, label: int, server: Server) -> dict[str, Any]:
    """Make an object the target of the next clicks, undo, redo and reset."""
    with server.session(sid) as a:
        a.activate(label)
        return server.state(sid, a)


@router.post(routes.CLICKS)
def click(sid: str, body: ClickIn, server: Server) -> dict[str, Any]:
    """Add a positive or negative click to an object and predict its mask."""
    t0 = time.perf_counter()
    with server.session(sid) as a:
        outcome = a.click(body.point, body.positive, body.frame, body.object)
        assert outcome is not None  # predicted at once
        out = server.changed(sid, a)
    out["click"] = {
        "object": outcome.label,
        "voxels": outcome.voxels,
        "new_region": outcome.new_region,
        "iou": outcome.iou,
        "model_ms": outcome.timings_ms,
        "server_ms": 1e3 * (time.perf_counter() - t0),
    }
    return out


ObjectQuery = Annotated[int | None, Query(description="label value (default: active)")]


def _history(action: Callable[[Annotation, int | None], object]) -> Callable[..., Any]:
    """An endpoint applying ``action`` to one object of a session."""

    def endpoint(sid: str, server: Server, object: ObjectQuery = None) -> dict[str, Any]:
        with server.session(sid) as a:
            action(a, object)
            return server.changed(sid, a)

    return endpoint


router.post(routes.UNDO, summary="Undo the last click")(_history(lambda a, o: a.undo(o)))
router.post(routes.REDO, summary="Redo an undone click")(_history(lambda a, o: a.redo(o)))
router.post(routes.RESET, summary="Clear an object")(_history(lambda a, o: a.reset(o)))

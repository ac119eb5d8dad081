"""What every router of the server shares: the server's state, the token check, session lookup
under the session's lock, the error handlers and checks on paths and image sizes."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from ..data.formats import VOLUME_SUFFIXES, strip_suffix
from ..data.volume import Volume
from ..interactive.annotation import Annotation, AnnotationError
from .config import ServerConfig
from .store import Limits, SessionLimitError, SessionStore, UnknownSession

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = VOLUME_SUFFIXES


@dataclass(frozen=True)
class ServerState:
    """One server's sessions and configuration (``app.state.server``)."""

    store: SessionStore
    config: ServerConfig
    data_dir: Path  # config.data_dir, resolved

    @contextmanager
    def session(self, sid: str) -> Iterator[Annotation]:
        """The session, locked; an unexpected error is a 500 naming the session, which stays
        usable (each step leaves the annotation as it was when it fails)."""
        annotation = self.store.get(sid)
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
                annotation.touched = self.store.clock()

    def state(self, sid: str, annotation: Annotation) -> dict[str, Any]:
        """What the API answers about a session: image geometry, objects, active object."""
        out = annotation.describe()
        out["id"] = sid
        return out

    def changed(self, sid: str, annotation: Annotation) -> dict[str, Any]:
        """:meth:`state` after a change (queues an autosave), with the labelled voxel count."""
        self.store.autosave(sid, annotation)
        out = self.state(sid, annotation)
        out["labelled_voxels"] = annotation.labelled_voxels
        return out


async def server_state(request: Request) -> ServerState:
    """The :class:`ServerState` of the app serving ``request``."""
    state: ServerState = request.app.state.server
    return state


Server = Annotated[ServerState, Depends(server_state)]
"""Endpoint parameter type: the server's state."""


async def check_token(request: Request) -> None:
    """401 unless the request carries the server's token (when it has one)."""
    token = (await server_state(request)).config.token
    if token is None:
        return
    header = request.headers.get("authorization", "")
    given = header[7:] if header.lower().startswith("bearer ") else ""
    given = given or request.query_params.get("token", "")
    if not secrets.compare_digest(given.encode(), token.encode()):
        raise HTTPException(401, "missing or wrong access token (Authorization: Bearer ...)")


AUTH = [Depends(check_token)]
"""Router dependencies of every API route (not the page itself, which holds no data)."""


def add_error_handlers(app: FastAPI) -> None:
    """Answer the errors of the store and of annotations with their HTTP status."""

    async def unknown_session(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    async def annotation_error(_: Request, exc: Exception) -> JSONResponse:
        status = exc.status if isinstance(exc, AnnotationError) else 409
        return JSONResponse({"detail": str(exc)}, status_code=status)

    async def full(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    app.add_exception_handler(UnknownSession, unknown_session)
    app.add_exception_handler(AnnotationError, annotation_error)
    app.add_exception_handler(SessionLimitError, full)


def inside(root: Path, relative: str) -> Path:
    """``root / relative`` if it stays inside ``root`` (symlinks resolved), else 403."""
    if not relative or Path(relative).is_absolute() or "\x00" in relative:
        raise HTTPException(403, f"path {relative!r}: give a path relative to the data folder")
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise HTTPException(403, f"path {relative!r} lies outside the data folder")
    if not path.exists():
        raise HTTPException(404, f"no file {relative!r} in the data folder")
    return path


def check_size(volume: Volume, source: str, limits: Limits) -> None:
    """413 for images over the voxel limit (2D images are refused by ``read_volume``)."""
    voxels = int(np.prod(volume.shape))
    if voxels > limits.max_voxels:
        raise HTTPException(413, f"{source}: {voxels} voxels exceeds the limit {limits.max_voxels}")


def stem(source: str) -> str:
    """The image's file name without folders, ``upload:`` and image suffix."""
    return strip_suffix(Path(source.removeprefix("upload:")).name)

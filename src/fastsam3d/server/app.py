"""HTTP API and web page of ``fastsam3d serve`` (FastAPI).

Open a volume (a path under the data folder, or an upload), create objects, click, undo/redo,
reset, fetch the label map (compact bytes or NIfTI/NRRD) and save it next to the image. The
OpenAPI schema is at ``/openapi.json`` and browsable at ``/docs``. Every error is a 4xx/5xx with
a JSON ``detail`` that says what was wrong. Coordinates: ``point`` is a voxel index ``(i, j, k)``
of the image array (``frame="voxel"``) or world mm (``"ras"``/``"lps"``).

The routes live in :mod:`fastsam3d.server.routers` (one module per area) and
:mod:`fastsam3d.server.nninteractive`, their paths in :mod:`fastsam3d.server.routes`; what
they share (token check, locked session lookup, error handlers) in
:mod:`fastsam3d.server.deps`. Every router works on the one :class:`SessionStore` of the app.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from ..contract import PromptableModel
from ..errors import InputError
from .config import ServerConfig, default_niivue
from .deps import ServerState, add_error_handlers
from .nninteractive import add_nninteractive_routes
from .routers import labels, objects, pages, recovery, sessions
from .store import SessionStore

__all__ = ["ServerConfig", "create_app", "default_niivue"]

log = logging.getLogger(__name__)


def create_app(
    model: PromptableModel, config: ServerConfig, *, store: SessionStore | None = None
) -> FastAPI:
    """The FastAPI application serving ``model`` (already prepared, shared read-only).

    ``store``: the sessions to serve (default: a new store with ``config``'s limits).
    """
    data_dir = config.data_dir.resolve()
    if not data_dir.is_dir():
        raise InputError(f"data folder {config.data_dir} does not exist or is not a folder")
    store = store or SessionStore(
        model,
        config.limits,
        config.recovery_dir,
        prompting=config.prompting,
        region_grid_mm=config.region_grid_mm,
    )
    pruned = store.prune_recovery(config.recovery_days)
    if pruned:
        log.info("deleted %d autosaves older than %s days", len(pruned), config.recovery_days)

    app = FastAPI(
        title="fastsam3d",
        summary="Click-to-segment 3D CT/MR volumes with a FastSAM3D-family model",
        version=_version(),
        lifespan=_lifespan(store, config.sweep_seconds),
    )
    app.state.server = ServerState(store, config, data_dir)
    app.state.sessions = store
    app.state.config = config
    add_error_handlers(app)
    add_nninteractive_routes(app, store)
    for area in (sessions, recovery, objects, labels, pages):
        app.include_router(area.router)
    return app


def _lifespan(store: SessionStore, sweep_seconds: float) -> Any:
    """Sweeps idle sessions while the app runs (even when nobody opens new ones); closes every
    session when it stops."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async def sweep() -> None:
            while True:
                await asyncio.sleep(sweep_seconds)
                await run_in_threadpool(store.expire)

        sweeper = asyncio.create_task(sweep())
        yield
        sweeper.cancel()
        store.shutdown()

    return lifespan


def _version() -> str:
    from .._version import __version__

    return __version__

"""The web page, its static files and NiiVue (no token: they hold no data), and ``/healthz``."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

from .. import routes
from ..deps import Server

STATIC = Path(__file__).resolve().parents[1] / "static"

router = APIRouter(include_in_schema=False)


@router.get(routes.HEALTHZ)
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(routes.PAGE)
def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")


@router.get(routes.STATIC)
def static(name: str) -> FileResponse:
    path = STATIC / name
    if Path(name).name != name or not path.is_file():
        raise HTTPException(404, f"no static file {name!r}")
    return FileResponse(path)


@router.get(routes.NIIVUE)
def niivue(server: Server) -> FileResponse:
    bundle = server.config.niivue
    if not bundle.is_file():
        raise HTTPException(
            404,
            f"NiiVue bundle {bundle} missing: point FASTSAM3D_NIIVUE at NiiVue's dist/index.js "
            "or reinstall fastsam3d (the package ships it)",
        )
    return FileResponse(bundle, media_type="text/javascript")

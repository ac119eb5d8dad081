"""``fastsam3d serve``: the web viewer, the HTTP API and the nnInteractive protocol."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..config import PROMPTING_CHOICES
from .common import (
    apply_threads,
    compute_parent,
    load_for_command,
    model_parent,
    prepared,
    single_checkpoint,
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve",
        parents=[model_parent(), compute_parent()],
        help="local web viewer and HTTP API for click-to-segment sessions",
        description="Serves the NiiVue web page at http://HOST:PORT/, the HTTP API (schema at "
        "/docs) and the nnInteractive remote protocol (napari). Images open from --data-dir "
        "(default: the bundled sample scans) or by upload. Binds to loopback unless --host says "
        "otherwise; --token protects the API.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--prompting", default="auto", choices=PROMPTING_CHOICES)
    p.add_argument("--data-dir", help="folder images may be opened from (default: bundled samples)")
    p.add_argument(
        "--recovery-dir",
        default=str(Path.home() / ".cache" / "fastsam3d" / "recovery"),
        help="autosave of every session's label map ('' to turn off)",
    )
    p.add_argument(
        "--recovery-days", type=float, default=14.0, help="delete older autosaves at start"
    )
    p.add_argument("--token", help="require this access token (default: $FASTSAM3D_TOKEN if set)")
    p.add_argument("--max-sessions", type=int, default=16)
    p.add_argument("--idle-minutes", type=float, default=30.0)
    p.add_argument("--max-upload-mb", type=float, default=512.0)
    p.add_argument("--undo-depth", type=int, default=50, help="undoable clicks per object")
    p.add_argument(
        "--model-slots", type=int, default=1, help="model calls at a time (others queue)"
    )
    p.add_argument(
        "--region-grid-mm",
        type=float,
        help="place new regions on a lattice of this pitch (e.g. 48) so objects clicked near "
        "each other share an encoding (faster; masks differ slightly from centred regions)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from .. import samples
    from ..server import Limits, ServerConfig, create_app

    apply_threads(args)
    loopback = args.host in ("127.0.0.1", "localhost", "::1")
    token = args.token or os.environ.get("FASTSAM3D_TOKEN") or None
    if not loopback and token is None:
        print(
            f"warning: serving on {args.host} without --token: anyone who reaches this port can "
            "open images from the data folder",
            file=sys.stderr,
        )
    files = single_checkpoint(args)
    model, label = load_for_command(args.model, files, args.device)
    runner, runtime = prepared(model, args)
    config = ServerConfig(
        data_dir=Path(args.data_dir) if args.data_dir else samples.ROOT,
        recovery_dir=Path(args.recovery_dir) if args.recovery_dir else None,
        limits=Limits(
            max_sessions=args.max_sessions,
            idle_seconds=60 * args.idle_minutes,
            max_upload_bytes=int(args.max_upload_mb * 1024**2),
            history=args.undo_depth,
            model_slots=args.model_slots,
        ),
        token=token,
        model_name=f"{label} [{runtime}]",
        prompting=args.prompting,
        recovery_days=args.recovery_days,
        region_grid_mm=args.region_grid_mm,
    )
    app = create_app(runner, config)
    if not config.niivue.is_file():
        print(f"warning: {config.niivue} missing: the web page cannot load NiiVue")
    print(f"fastsam3d serve: http://{args.host}:{args.port}/ (API schema: /docs)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0

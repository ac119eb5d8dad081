"""What one ``fastsam3d serve`` serves: :class:`ServerConfig` and where NiiVue is found."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .store import Limits


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
        region_grid_mm: place new regions on a lattice of this pitch (mm) so that objects
            clicked near each other share region embeddings (a decode instead of an encode);
            ``None``: regions centred on the clicks.
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
    region_grid_mm: float | None = None

"""What one ``fastsam3d serve`` serves: :class:`ServerConfig` and where NiiVue is found."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .store import Limits

VENDORED_NIIVUE = Path(__file__).resolve().parent / "static" / "vendor" / "niivue.js"
"""NiiVue's ES module as shipped in the package (``scripts/update_niivue.py`` refreshes it)."""


def default_niivue() -> Path:
    """The NiiVue bundle shipped in the package; ``FASTSAM3D_NIIVUE`` overrides."""
    env = os.environ.get("FASTSAM3D_NIIVUE")
    return Path(env) if env else VENDORED_NIIVUE


@dataclass(frozen=True)
class ServerConfig:
    """What one server serves.

    Attributes:
        data_dir: images may be opened by path only from inside this folder.
        recovery_dir: autosaves of every session (``None``: off).
        limits: session, upload and image size limits.
        token: when set, every API call needs ``Authorization: Bearer <token>`` (or
            ``?token=<token>``).
        niivue: NiiVue's ES module bundle (default: the one shipped in the package).
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

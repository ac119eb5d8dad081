"""The server's sessions: creation under limits, lookup, idle expiry, autosave for recovery.

Each session is an :class:`~fastsam3d.interactive.annotation.Annotation` behind an unguessable
id. Sessions never share mutable state: each has its own image, objects, histories, embedding
cache and lock; only the read-only model is shared. After every change the session's label map
and a JSON description are written (atomically, by one background thread, newest revision wins)
to ``<recovery>/<id>/labels.nii.gz`` and ``session.json``, so a server restart loses nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from ..contract import PromptableModel
from ..data.io import write_label_map
from ..data.volume import Volume
from ..files import atomic_output
from ..interactive.annotation import Annotation

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Limits:
    """Resource limits of one server.

    Attributes:
        max_sessions: open sessions at a time (idle ones are closed first when full).
        idle_seconds: a session untouched this long is closed.
        max_upload_bytes: largest accepted upload.
        max_voxels: largest accepted image (voxels).
        history: clicks per object that can be undone.
        model_slots: model calls running at a time; more requests wait their turn (bounds
            memory and keeps the CPU cores from being oversubscribed).
    """

    max_sessions: int = 16
    idle_seconds: float = 1800.0
    max_upload_bytes: int = 512 * 1024**2
    max_voxels: int = 1024**3 // 2
    history: int = 50
    model_slots: int = 1


class SessionLimitError(RuntimeError):
    """No room for another session."""


class UnknownSession(KeyError):
    """No open session has this id (never opened, closed, or expired)."""

    def __str__(self) -> str:
        return f"no open session {self.args[0]!r} (closed, expired after idling, or never opened)"


class SessionStore:
    """Open sessions of one server.

    Args:
        model: prepared model shared (read-only) by every session.
        limits: see :class:`Limits`.
        recovery_dir: where autosaves go (``None``: no autosave).
        prompting: how the objects' sessions prompt the model (``"auto"``: the model's way).
        region_grid_mm: new regions on a lattice of this pitch, so objects near each other
            share region embeddings (``None``: regions centred on the clicks, as before).
        clock: monotonic seconds (injectable for tests of idle expiry).
    """

    def __init__(
        self,
        model: PromptableModel,
        limits: Limits,
        recovery_dir: Path | None,
        *,
        prompting: str = "auto",
        region_grid_mm: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model = model
        self.limits = limits
        self.recovery_dir = recovery_dir
        self.prompting = prompting
        self.region_grid_mm = region_grid_mm
        self.clock = clock
        self._sessions: dict[str, Annotation] = {}
        self.reserved: Callable[[], int] = lambda: 0
        """Places held outside the store that count against ``max_sessions`` (the nnInteractive
        leases that have no image yet)."""
        self._uploads: dict[str, Path] = {}
        self._lock = threading.Lock()
        self._saver = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastsam3d-autosave")
        self._saved: dict[str, int] = {}
        self._workers = ThreadPoolExecutor(
            max_workers=max(1, limits.model_slots), thread_name_prefix="fastsam3d-model"
        )
        if recovery_dir is not None:
            recovery_dir.mkdir(parents=True, exist_ok=True)

    # -- lifecycle --------------------------------------------------------------------------

    def open(
        self,
        volume: Volume,
        source: str,
        upload_dir: Path | None = None,
        *,
        uploaded: bool | None = None,
    ) -> str:
        """A new session on ``volume``; returns its id.

        ``upload_dir``: the folder holding an uploaded image (removed when the session closes;
        its file is kept in the recovery folder so an autosave can be restored).
        ``uploaded``: default ``upload_dir is not None``.

        Raises:
            SessionLimitError: ``max_sessions`` are open and none has idled out.
        """
        self.expire()
        with self._lock:
            used = len(self._sessions) + self.reserved()
            if used >= self.limits.max_sessions:
                raise SessionLimitError(
                    f"{used} sessions are open (limit {self.limits.max_sessions}); "
                    "close one (DELETE /api/sessions/{id}) or wait for idle ones to expire "
                    f"({self.limits.idle_seconds:.0f} s)"
                )
            sid = secrets.token_urlsafe(12)
            annotation = Annotation(
                volume,
                self.model,
                source=source,
                uploaded=upload_dir is not None if uploaded is None else uploaded,
                prompting=_prompting(self.prompting),
                history=self.limits.history,
                run=self.run_model,
                region_grid_mm=self.region_grid_mm,
            )
            annotation.touched = self.clock()
            self._sessions[sid] = annotation
            if upload_dir is not None:
                self._uploads[sid] = upload_dir
        if upload_dir is not None and self.recovery_dir is not None:
            keep = self.recovery_dir / sid / "upload"
            keep.mkdir(parents=True, exist_ok=True)
            for file in upload_dir.iterdir():
                shutil.copy2(file, keep / file.name)
        log.info("session %s opened on %s", sid, source)
        return sid

    def get(self, sid: str) -> Annotation:
        """The session, marked as used now."""
        with self._lock:
            annotation = self._sessions.get(sid)
        if annotation is None:
            raise UnknownSession(sid)
        annotation.touched = self.clock()
        return annotation

    def close(self, sid: str) -> None:
        with self._lock:
            annotation = self._sessions.pop(sid, None)
            upload = self._uploads.pop(sid, None)
        if annotation is None:
            raise UnknownSession(sid)
        if upload is not None:
            shutil.rmtree(upload, ignore_errors=True)
        log.info("session %s closed", sid)

    def expire(self) -> list[str]:
        """Close sessions idle longer than ``idle_seconds``; returns their ids."""
        now = self.clock()
        with self._lock:
            old = [
                sid
                for sid, a in self._sessions.items()
                if now - a.touched > self.limits.idle_seconds and not a.lock.locked()
            ]
        for sid in old:
            with contextlib.suppress(UnknownSession):  # closed meanwhile
                self.close(sid)
        return old

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._sessions)

    def run_model(self, work: Callable[[], T]) -> T:
        """Run ``work`` on one of the model worker threads and wait for its result."""
        return self._workers.submit(work).result()

    def shutdown(self) -> None:
        """Finish pending autosaves, drop every session and its uploads."""
        self._workers.shutdown(wait=True)
        self._saver.shutdown(wait=True)
        for sid in self.ids():
            self.close(sid)

    # -- autosave ---------------------------------------------------------------------------

    def autosave(self, sid: str, annotation: Annotation) -> None:
        """Queue a write of the session's label map. The writer thread takes the snapshot
        (under the session's lock) when it gets to it, so a click pays nothing for it and a
        burst of changes is written once."""
        if self.recovery_dir is not None:
            self._saver.submit(self._write_recovery, sid, annotation)

    def _write_recovery(self, sid: str, annotation: Annotation) -> None:
        assert self.recovery_dir is not None
        with annotation.lock:
            revision = annotation.revision
            if self._saved.get(sid, -1) >= revision:
                return
            labels = annotation.label_map().copy()
            meta = annotation.describe()
        meta.update(id=sid, saved_at=time.time())
        volume = annotation.volume
        folder = self.recovery_dir / sid
        try:
            folder.mkdir(parents=True, exist_ok=True)
            write_label_map(labels, volume, folder / "labels.nii.gz")
            with atomic_output(folder / "session.json") as tmp:
                tmp.write_text(json.dumps(meta, indent=1))
            self._saved[sid] = revision
        except Exception:  # an autosave failure must not break the session
            log.exception("autosave of session %s failed", sid)

    def flush(self) -> None:
        """Wait until queued autosaves are written."""
        self._saver.submit(lambda: None).result()

    def recovery_image(self, rid: str) -> Path | None:
        """The kept copy of an autosaved session's uploaded image, if any."""
        if self.recovery_dir is None:
            return None
        files = sorted((self.recovery_dir / rid / "upload").glob("*"))
        return files[0] if files else None

    def prune_recovery(self, days: float) -> list[str]:
        """Delete autosaves not written for ``days`` days; returns their ids."""
        if self.recovery_dir is None or not self.recovery_dir.is_dir():
            return []
        cutoff = time.time() - days * 86400
        gone = []
        for meta in self.recovery_dir.glob("*/session.json"):
            if meta.stat().st_mtime < cutoff and meta.parent.name not in self._sessions:
                shutil.rmtree(meta.parent, ignore_errors=True)
                gone.append(meta.parent.name)
        return gone

    def recovered(self) -> list[dict[str, Any]]:
        """Autosaves found in the recovery folder (this run's and earlier runs')."""
        if self.recovery_dir is None or not self.recovery_dir.is_dir():
            return []
        found = []
        for meta_path in sorted(self.recovery_dir.glob("*/session.json")):
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            found.append(
                {
                    "id": meta_path.parent.name,
                    "source": meta.get("source"),
                    "saved_at": meta.get("saved_at"),
                    "objects": [
                        {"label": o["label"], "name": o["name"], "voxels": o["voxels"]}
                        for o in meta.get("objects", [])
                    ],
                    "open": meta_path.parent.name in self._sessions,
                    "uploaded": bool(meta.get("uploaded")),
                }
            )
        return found


def _prompting(value: str) -> Literal["newest", "all", "auto"]:
    if value == "newest":
        return "newest"
    return "all" if value == "all" else "auto"

"""Several objects segmented by clicks in one volume: what one server session holds.

An :class:`Annotation` owns one image and a list of :class:`AnnotatedObject` s. Each object has a
label value (1..255), a name, a colour and its own :class:`~fastsam3d.interactive.session.Session`,
so each keeps its own click history (undo) and its own redo stack. The sessions share one
:class:`~fastsam3d.interactive.cache.EmbeddingCache`: a region encoded for one object costs the
others a decode only. The label map puts the objects together in creation order (a later object
wins where two overlap).

Coordinates: clicks are voxel indices ``(i, j, k)`` of the image array, or world millimetres
in RAS or LPS. Not thread-safe by itself: callers (the server) hold :attr:`Annotation.lock`
around every call.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ..contract import PromptableModel
from ..data.volume import Volume, WorldConvention, orientation_codes
from ..errors import InputError
from .cache import EmbeddingCache
from .session import Box3, Click, Session

PointFrame = Literal["voxel", "ras", "lps"]
MAX_LABEL = 255
ALL = object()  # "every voxel may have changed"

# Distinct colours (RGB 0-255) for label values 1, 2, ... (cycled).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
)


class AnnotationError(InputError):
    """A request that does not fit the annotation's state (nothing to undo, too many objects).

    ``status``: the HTTP status a server answers with (409 conflict, 404 unknown object, 422
    invalid value)."""

    status = 409


class UnknownObject(AnnotationError):
    """No object has the requested label value."""

    status = 404


@dataclass
class AnnotatedObject:
    """One structure: label value, display name and colour, and the clicks that made it."""

    label: int
    name: str
    session: Session
    redo: list[Click] = field(default_factory=list)

    @property
    def color(self) -> tuple[int, int, int]:
        return PALETTE[(self.label - 1) % len(PALETTE)]

    voxels_cached: int | None = None  # reset by the annotation whenever the mask changes

    @property
    def voxels(self) -> int:
        """Voxels of the mask (counted once per change, not per request)."""
        if self.voxels_cached is None:
            self.voxels_cached = int(np.count_nonzero(self.session.mask))
        return self.voxels_cached

    def describe(self) -> dict[str, Any]:
        clicks = self.session.prompts
        return {
            "label": self.label,
            "name": self.name,
            "color": list(self.color),
            "voxels": self.voxels,
            "clicks": [{"index": list(c.index), "positive": c.positive} for c in clicks],
            "can_undo": self.session.can_undo,
            "can_redo": bool(self.redo),
        }


@dataclass(frozen=True)
class ClickOutcome:
    """What one click did: the object's state after it and the time the model took."""

    label: int
    voxels: int
    new_region: bool
    iou: float
    timings_ms: dict[str, float]


class Annotation:
    """An image and the objects segmented in it.

    Args:
        volume: the image, ``(I, J, K)`` on its own grid.
        model: a prepared model shared by every session of the server (read-only).
        source: where the image came from (a path under the data folder, or an upload name).
        prompting: how each object's :class:`Session` prompts the model (``"auto"``: as the
            model was trained).
        history: clicks per object that can be undone (bounds memory).
        cache_size: region embeddings kept for all objects together (an embedding of the
            bundled model is about 3 MB).
        region_grid_mm: new regions on a lattice of this pitch (see
            :class:`~fastsam3d.interactive.session.Session`): nearby objects then share more
            embeddings; ``None`` (default): regions centred on the clicks.
        run: runs each model call (the server passes its model worker threads: a bound on
            parallel model work, and few threads holding the large temporary buffers).
    """

    def __init__(
        self,
        volume: Volume,
        model: PromptableModel,
        *,
        source: str,
        uploaded: bool,
        prompting: Literal["newest", "all", "auto"] = "auto",
        history: int = 50,
        run: Callable[[Callable[[], Any]], Any] | None = None,
        cache_size: int = 8,
        region_grid_mm: float | None = None,
    ) -> None:
        self.volume = volume
        self.model = model
        self.source = source
        self.uploaded = uploaded
        self.prompting: Literal["newest", "all", "auto"] = prompting
        self.history = history
        self.run: Callable[[Callable[[], Any]], Any] = run or (lambda work: work())
        self.region_grid_mm = region_grid_mm
        self.embeddings = EmbeddingCache(cache_size)
        """Region embeddings of the image, shared by every object's session."""
        self.objects: list[AnnotatedObject] = []
        self.active: int | None = None
        self.lock = threading.Lock()
        self.created = time.time()
        self.touched = time.monotonic()
        self.revision = 0  # bumped by every change of the label map or its legend
        self._labels = np.zeros(volume.shape, dtype=np.uint8)
        self.labelled_voxels = 0  # non-zero voxels of the label map, kept with it
        # (revision, box of changed voxels or None) of the recent changes, oldest first
        self._changes: deque[tuple[int, Box3 | None]] = deque([(0, None)], maxlen=256)
        self.display_nifti: bytes | None = None  # the image as NIfTI for viewers (a server's)

    # -- objects ----------------------------------------------------------------------------

    def add_object(self, name: str | None = None, label: int | None = None) -> AnnotatedObject:
        """A new, empty object (label value ``label``, default the smallest free one); it
        becomes the active one."""
        used = {o.label for o in self.objects}
        if label is None:
            label = next((v for v in range(1, MAX_LABEL + 1) if v not in used), None)
            if label is None:
                raise AnnotationError(f"at most {MAX_LABEL} objects per session")
        elif not 1 <= label <= MAX_LABEL or label in used:
            raise AnnotationError(f"label value {label} is taken or outside 1..{MAX_LABEL}")
        name = (name or "").strip() or f"object {label}"
        _check_name(name)
        session = Session(
            self.model,
            prompting=self.prompting,
            runtime="torch",
            max_history=self.history,
            cache=self.embeddings,
            region_grid_mm=self.region_grid_mm,
        )
        session.set_image(self.volume)
        obj = AnnotatedObject(label, name, session)
        self.objects.append(obj)
        self.active = label
        self._changed(None)
        return obj

    def get(self, label: int | None = None) -> AnnotatedObject:
        """The object with ``label``, or the active one (created on demand when there is none)."""
        if label is None:
            if self.active is None:
                return self.add_object()
            label = self.active
        for obj in self.objects:
            if obj.label == label:
                return obj
        known = ", ".join(str(o.label) for o in self.objects) or "none"
        raise UnknownObject(f"no object with label {label} (objects: {known})")

    def activate(self, label: int) -> AnnotatedObject:
        obj = self.get(label)
        self.active = obj.label
        return obj

    def rename(self, label: int, name: str) -> AnnotatedObject:
        name = name.strip()
        _check_name(name)
        obj = self.get(label)
        obj.name = name
        self._changed(None)
        return obj

    def remove(self, label: int) -> None:
        obj = self.get(label)
        self.objects.remove(obj)
        if self.active == label:
            self.active = self.objects[-1].label if self.objects else None
        self._changed(ALL)

    def import_labels(self, labels: np.ndarray, names: dict[int, str] | None = None) -> None:
        """One object per non-zero value of an ``(I, J, K)`` label map on the image's grid, its
        mask set from the map (no clicks to undo); ``names`` by label value (named values
        absent from the map become empty objects)."""
        if labels.shape != self.volume.shape:
            raise AnnotationError(
                f"label map shape {labels.shape} differs from the image {self.volume.shape}"
            )
        names = names or {}
        values = {int(v) for v in np.unique(labels) if v != 0} | set(names)
        for value in sorted(values):
            obj = self.add_object(names.get(value), label=value)
            obj.session.set_mask(labels == value)
        self._changed(ALL, *self.objects)

    def set_mask(self, label: int, mask: np.ndarray) -> AnnotatedObject:
        """Start object ``label`` from an ``(I, J, K)`` mask on the image's grid (its clicks
        and redo stack are forgotten; later clicks refine the mask)."""
        obj = self.get(label)
        if mask.shape != self.volume.shape:
            raise AnnotationError(
                f"mask shape {mask.shape} differs from the image {self.volume.shape}"
            )
        obj.session.set_mask(mask.astype(bool))
        obj.redo.clear()
        self._changed(ALL, obj)
        return obj

    # -- clicks -----------------------------------------------------------------------------

    def click(
        self,
        point: Sequence[float],
        positive: bool,
        frame: PointFrame = "voxel",
        label: int | None = None,
        *,
        predict: bool = True,
    ) -> ClickOutcome | None:
        """Add a click to an object (default: the active one) and predict its new mask.

        A click clears the object's redo stack. If the prediction fails, the object is left
        exactly as it was and the error is raised. ``predict=False`` only queues the click
        (returns ``None``); :meth:`predict` then predicts from every queued click at once.
        """
        obj = self.get(label)
        world: WorldConvention | None = None if frame == "voxel" else frame
        session = obj.session
        if not predict:
            session.add_click(point, positive, world=world, predict=False)
            obj.redo.clear()
            self.active = obj.label
            return None
        before = len(session.prompts)
        try:
            result = self.run(lambda: session.add_click(point, positive, world=world))
        except BaseException:
            while len(session.prompts) > before:  # the pending click of a failed prediction
                session.undo()
            raise
        assert result is not None
        obj.redo.clear()
        self.active = obj.label
        self._changed(result.changed, obj)
        return ClickOutcome(
            obj.label, obj.voxels, result.new_region, result.iou, dict(result.timings_ms)
        )

    def pending(self, label: int | None = None) -> int:
        """Clicks of the object queued with ``predict=False`` and not yet predicted."""
        return self.get(label).session.pending_clicks

    def predict(self, label: int | None = None) -> ClickOutcome | None:
        """Predict the object's mask from its queued clicks (``None``: nothing queued). On
        failure the queued clicks stay queued and the mask is unchanged."""
        obj = self.get(label)
        session = obj.session
        if not session.pending_clicks:
            return None
        result = self.run(session.predict)
        self.active = obj.label
        self._changed(result.changed, obj)
        return ClickOutcome(
            obj.label, obj.voxels, result.new_region, result.iou, dict(result.timings_ms)
        )

    def undo(self, label: int | None = None) -> AnnotatedObject:
        """Take back the object's last click; the mask returns exactly to what it was."""
        obj = self.get(label)
        clicks = obj.session.prompts
        if not obj.session.undo():
            more = f" (only the last {self.history} clicks can be undone)" if clicks else ""
            raise AnnotationError(f"nothing to undo for object {obj.label} ({obj.name}){more}")
        removed = clicks[len(obj.session.prompts) :]
        obj.redo.extend(reversed(removed))
        self._changed(ALL, obj)
        return obj

    def redo(self, label: int | None = None) -> AnnotatedObject:
        """Replay the last undone click (the model is deterministic: the same mask returns)."""
        obj = self.get(label)
        if not obj.redo:
            raise AnnotationError(f"nothing to redo for object {obj.label} ({obj.name})")
        click = obj.redo.pop()
        pending = obj.redo[:]
        self.click(click.index, click.positive, "voxel", obj.label)
        obj.redo[:] = pending  # click() cleared the stack; a redo keeps the rest of it
        return obj

    def reset(self, label: int | None = None) -> AnnotatedObject:
        """Forget the object's clicks and mask (cannot be undone)."""
        obj = self.get(label)
        obj.session.reset()
        obj.redo.clear()
        self._changed(ALL, obj)
        return obj

    # -- output -----------------------------------------------------------------------------

    def label_map(self) -> np.ndarray:
        """``(I, J, K)`` uint8 label map: 0 background, each object's label value where its mask
        is set (later objects win where masks overlap). Kept up to date box by box; the array
        returned is read-only and changes with the annotation (copy it to keep a snapshot)."""
        view = self._labels.view()
        view.flags.writeable = False
        return view

    def changed_since(self, revision: int) -> Box3 | None:
        """Index box holding every voxel of the label map that changed after ``revision``
        (``None``: none changed; the whole grid when ``revision`` is unknown or too old)."""
        full = tuple(slice(0, n) for n in self.volume.shape)
        if revision == self.revision:
            return None
        if revision > self.revision or revision < self._changes[0][0] - 1:
            return (full[0], full[1], full[2])
        boxes = [box for rev, box in self._changes if rev > revision and box is not None]
        if not boxes:
            return None
        lo = np.min([[b.start for b in box] for box in boxes], axis=0)
        hi = np.max([[b.stop for b in box] for box in boxes], axis=0)
        return (
            slice(int(lo[0]), int(hi[0])),
            slice(int(lo[1]), int(hi[1])),
            slice(int(lo[2]), int(hi[2])),
        )

    def _changed(self, box: Box3 | object | None, *objects: AnnotatedObject) -> None:
        """A new revision: voxels changed in ``box`` (``ALL``: anywhere; ``None``: only the
        object list or names), the masks of ``objects`` changed. Recomposes the label map
        there."""
        self.revision += 1
        for obj in objects:
            obj.voxels_cached = None
        if box is ALL:
            box = tuple(slice(0, n) for n in self.volume.shape)
        if box is not None:
            assert isinstance(box, tuple)
            block = np.zeros(tuple(sl.stop - sl.start for sl in box), dtype=np.uint8)
            for obj in self.objects:
                block[obj.session.mask[box]] = obj.label
            before = int(np.count_nonzero(self._labels[box]))
            self._labels[box] = block
            self.labelled_voxels += int(np.count_nonzero(block)) - before
        self._changes.append((self.revision, box if box is None else tuple(box)))

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "uploaded": self.uploaded,
            "shape": list(self.volume.shape),
            "spacing": [float(s) for s in self.volume.spacing],
            "affine": np.asarray(self.volume.affine, dtype=float).tolist(),
            "orientation": "".join(orientation_codes(self.volume.affine)),
            "objects": [o.describe() for o in self.objects],
            "active": self.active,
            "revision": self.revision,
        }


def _check_name(name: str) -> None:
    if not name or len(name) > 64 or any(ord(c) < 32 for c in name):
        error = AnnotationError(f"object name must be 1-64 printable characters, got {name!r}")
        error.status = 422
        raise error

"""Image embeddings of model regions, shared by the sessions on one scan.

Encoding a ``128^3`` region is most of a click's cost; decoding a prompt is cheap. The objects
of one :class:`~fastsam3d.interactive.annotation.Annotation` each have their own
:class:`~fastsam3d.interactive.session.Session` but pass them one :class:`EmbeddingCache`, so
an object clicked in a region another object already encoded costs a decode only.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import torch

from ..contract import PromptableModel
from ..data.frame import FrameSpec, Roi
from ..data.volume import Volume
from ..errors import InputError

_Key = tuple[int, int, FrameSpec, bytes]


class EmbeddingCache:
    """The ``size`` most recently used region embeddings (least recently used dropped first).

    An entry belongs to one image, model, frame and region. Images and models are told apart
    by identity and kept alive while they have entries, so sessions on different images or
    models may share a cache without mixing embeddings. Thread-safe. ``hits`` and ``misses``
    count lookups.
    """

    def __init__(self, size: int = 4) -> None:
        if size < 1:
            raise InputError(f"an embedding cache holds at least 1 entry, got size {size}")
        self.size = size
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[_Key, tuple[Volume, Any, torch.Tensor]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(volume: Volume, model: PromptableModel, frame: FrameSpec, roi: Roi) -> _Key:
        return (id(volume), id(model), frame, roi.key())

    def get(
        self, volume: Volume, model: PromptableModel, frame: FrameSpec, roi: Roi
    ) -> torch.Tensor | None:
        """The cached embedding of ``roi`` (``None`` when absent); marks it as used."""
        key = self._key(volume, model, frame, roi)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[2]

    def put(
        self,
        volume: Volume,
        model: PromptableModel,
        frame: FrameSpec,
        roi: Roi,
        embedding: torch.Tensor,
    ) -> None:
        """Keep an embedding, dropping the least recently used ones beyond ``size``."""
        key = self._key(volume, model, frame, roi)
        with self._lock:
            self._entries[key] = (volume, model, embedding)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def forget(self, volume: Volume) -> None:
        """Drop the entries of one image."""
        with self._lock:
            for key in [k for k, entry in self._entries.items() if entry[0] is volume]:
                del self._entries[key]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

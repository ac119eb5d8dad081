"""Importing Meta's ``segment-anything`` model classes without its package ``__init__``.

``segment_anything/__init__.py`` imports the predictor and the automatic mask generator, which
import torchvision; torchvision cannot be installed beside this project's torch. The model classes
(``segment_anything.modeling``: ``ImageEncoderViT``, ``PromptEncoder``, ``MaskDecoder``,
``TwoWayTransformer``, ``Sam``) need only torch and numpy. :func:`sam_modeling` imports that
subpackage alone: when ``segment_anything`` is not imported yet, it registers a bare package
module (its ``__path__`` from :func:`importlib.util.find_spec`, which locates the package without
running it) under that name and imports ``segment_anything.modeling`` into it. A later
``import segment_anything`` in the same process then gets that bare package (no predictor); a
process that imported the full package first keeps it and its ``modeling``.

``segment-anything`` is untyped: its classes are returned as :data:`typing.Any`.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

from ..errors import InputError

PACKAGE = "segment_anything"
REQUIREMENT = "segment-anything==1.0"
BARE_MARKER = "__fastsam3d_bare_package__"
"""Attribute set on the bare package module this helper registers."""


def sam_modeling() -> Any:
    """The ``segment_anything.modeling`` module, imported without ``segment_anything/__init__``.

    Raises:
        InputError: ``segment-anything`` is not installed (extra ``baselines2d``).
    """
    loaded = sys.modules.get(f"{PACKAGE}.modeling")
    if loaded is not None:
        return loaded
    if PACKAGE not in sys.modules:
        spec = importlib.util.find_spec(PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise InputError(
                f"the 2D baselines need Meta's segment-anything package: pip install "
                f"'{REQUIREMENT}' (or the extra: pip install 'fastsam3d[baselines2d]')"
            )
        bare = types.ModuleType(PACKAGE, "segment-anything, loaded without its __init__")
        bare.__path__ = list(spec.submodule_search_locations)
        bare.__spec__ = spec
        bare.__file__ = spec.origin
        bare.__package__ = PACKAGE
        setattr(bare, BARE_MARKER, True)
        sys.modules[PACKAGE] = bare
    return importlib.import_module(f"{PACKAGE}.modeling")


def sam_module(name: str) -> Any:
    """A submodule of ``segment_anything.modeling``, e.g. ``"common"`` or ``"image_encoder"``."""
    sam_modeling()
    return importlib.import_module(f"{PACKAGE}.modeling.{name}")

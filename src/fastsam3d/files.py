"""Atomic file output: write beside the destination, then rename over it.

A failed or interrupted write never leaves a half-written file at the destination and never
replaces a good one. Published files get the permissions a plain ``open(path, "w")`` would give
(``0o666`` minus the umask), not ``tempfile``'s private ``0o600`` (nor that of writers such as
safetensors that recreate the file they are given).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _default_mode() -> int:
    """``0o666`` without the bits of the process umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def temp_beside(path: Path, suffix: str = ".tmp") -> Path:
    """A new empty file ``.<name>.<random><suffix>`` in ``path``'s folder (created if needed).

    The caller writes it and moves it over ``path`` with :func:`os.replace`, and removes it if
    anything fails (``Path.unlink(missing_ok=True)`` in a ``finally``).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        os.fchmod(fd, _default_mode())
    finally:
        os.close(fd)
    return Path(name)


def publish(tmp: Path, path: Path) -> None:
    """Give the finished temporary file ``tmp`` the default permissions and move it to ``path``."""
    os.chmod(tmp, _default_mode())
    os.replace(tmp, path)

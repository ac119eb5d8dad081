"""Atomic file output: write beside the destination, then rename over it.

A failed or interrupted write never leaves a half-written file at the destination and never
replaces a good one. Published files get the permissions a plain ``open(path, "w")`` would give
(``0o666`` minus the umask), not ``tempfile``'s private ``0o600`` (nor that of writers such as
safetensors that recreate the file they are given).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _default_mode() -> int:
    """``0o666`` without the bits of the process umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _temp_beside(path: Path, suffix: str) -> Path:
    """A new empty file ``.<name>.<pid>.<random><suffix>`` in ``path``'s folder (created if
    needed): unique per process and call, so concurrent writers (torchrun ranks, two runs
    sharing a cache) never write into each other's temporary file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}.{os.getpid()}."
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    os.close(fd)
    return Path(name)


@contextmanager
def atomic_output(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; on success it gets the default
    permissions and replaces ``path``; on any error ``path`` is left as it was. The temporary
    file never survives.

    ``suffix``: the temporary file's ending (writers that pick a format by it need the real one).
    """
    tmp = _temp_beside(path, suffix)
    try:
        yield tmp
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)

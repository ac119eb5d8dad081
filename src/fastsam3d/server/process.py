"""``fastsam3d serve`` in a child process on a free loopback port (load tests, browser tests)."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from .routes import HEALTHZ


class ServerStartError(RuntimeError):
    """The server exited or did not answer ``/healthz`` in time."""


@dataclass(frozen=True)
class RunningServer:
    url: str
    process: subprocess.Popen[bytes]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serving(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 120.0,
) -> Iterator[RunningServer]:
    """Start ``fastsam3d serve --port <free> *args``, wait until it answers, stop it on exit.

    Raises:
        ServerStartError: with the end of the server's output.
    """
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "fastsam3d.cli", "serve", "--port", str(port), *args]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=None if env is None else dict(env)
        )
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    if httpx.get(url + HEALTHZ, timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    output = log.read().decode(errors="replace")[-2000:]
                    raise ServerStartError(f"the server did not start: {output}")
                time.sleep(0.2)
            yield RunningServer(url, process)
        finally:
            process.terminate()
            process.wait(timeout=30)

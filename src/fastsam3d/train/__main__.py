"""``python -m fastsam3d.train --config C.toml [--resume PATH]`` (also under torchrun)."""

from __future__ import annotations

import sys

from ..cli import main


def run() -> int:
    argv = sys.argv[1:]
    if "--config" not in " ".join(argv) and not any(a.startswith("--config") for a in argv):
        print(
            "usage: python -m fastsam3d.train --config C.toml [--resume PATH|auto]", file=sys.stderr
        )
        return 2
    from .config import load_config

    path = argv[argv.index("--config") + 1] if "--config" in argv else argv[0].split("=", 1)[1]
    try:
        kind = load_config(path).kind
    except ValueError as err:
        print(f"fastsam3d.train: error: {err}", file=sys.stderr)
        return 2
    return main([kind, *argv])


if __name__ == "__main__":
    sys.exit(run())

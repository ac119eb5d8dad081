"""Command line: ``fastsam3d <command>``, one module per command over the Python API.

Every command returns an exit code. The library's input errors
(:class:`~fastsam3d.errors.InputError`: files, values, prompts, checkpoints) and the operating
system's (missing or unreadable files) print one line to stderr and return 2; anything else is
a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Sequence

from .._version import __version__
from ..errors import InputError
from . import bench, demo, evaluate, models, samples, segment, selfcheck, serve, train

COMMANDS = (models, bench, selfcheck, segment, evaluate, train, demo, serve, samples)
"""Command modules, in the order ``--help`` lists them; each has ``register(subparsers)``."""


def build_parser() -> argparse.ArgumentParser:
    """The ``fastsam3d`` parser with every command's subparser."""
    parser = argparse.ArgumentParser(
        prog="fastsam3d", description="Fast promptable 3D segmentation of CT and MRI."
    )
    parser.add_argument("--version", action="version", version=f"fastsam3d {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


_POINT_FLAGS = ("--point", "--negative")
_NUMBER_LIST = re.compile(r"^-[\d.]")


def _join_negative_points(argv: Sequence[str]) -> list[str]:
    """``--point -12.5,3,4`` -> ``--point=-12.5,3,4`` (argparse would take it for an option)."""
    out: list[str] = []
    for token in argv:
        if out and out[-1] in _POINT_FLAGS and _NUMBER_LIST.match(token):
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fastsam3d`` console script."""
    parser = build_parser()
    args = parser.parse_args(_join_negative_points(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    try:
        code: int = args.func(args)
    except (InputError, OSError) as err:
        print(f"fastsam3d {args.command}: error: {err}", file=sys.stderr)
        return 2
    return code

"""``fastsam3d samples``: list, verify and fetch the bundled sample scans."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import samples
from ..errors import InputError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("samples", help="the bundled sample scans: list, verify, fetch")
    p.add_argument("action", choices=("list", "verify", "fetch"))
    p.add_argument("dest", nargs="?", help="fetch: destination folder")
    p.add_argument("--all", action="store_true", help="fetch: the whole reference folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.action == "list":
        for s in samples.SAMPLES.values():
            print(
                f"{s.name:<9} {s.description}\n{'':<9} image  {s.image}\n{'':<9} labels {s.labels}"
            )
        return 0
    if args.action == "verify":
        problems = samples.verify()
        for p in problems:
            print(p)
        print("bundled samples match their checksums" if not problems else "checksum problems")
        return 0 if not problems else 1
    if not args.dest:
        raise InputError("samples fetch needs a destination folder: fastsam3d samples fetch DIR")
    written = samples.fetch(Path(args.dest), everything=args.all)
    print(f"wrote {len(written)} files to {args.dest} (checksums verified)")
    return 0

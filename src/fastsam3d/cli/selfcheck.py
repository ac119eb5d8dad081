"""``fastsam3d selfcheck``: reproduce upstream's reference outputs through the user's loading
path (fixture weights written as an upstream checkpoint, loaded, every output compared)."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from ..conformance import (
    FIXTURES_DIR,
    check_fixture,
    fixture_state_dict,
    fixtures,
    load_reference,
    model_shapes,
    write_upstream_checkpoint,
)
from ..errors import InputError
from .common import apply_threads, compute_parent


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "selfcheck",
        parents=[compute_parent(runtime=False, device=False)],
        help="reproduce upstream's reference outputs from the bundled fixtures",
        description="Rebuilds the fixture weights, writes them as an upstream training "
        "checkpoint, loads that file like a user would and compares every output with the "
        "reference outputs of the upstream code (on the CPU, fp32).",
    )
    p.add_argument(
        "--fixtures",
        default=str(FIXTURES_DIR),
        help="folder of *_io_compact.pt (default: the ones shipped in the package)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    apply_threads(args)
    folder = Path(args.fixtures)
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for fx in fixtures():
            path = folder / fx.filename
            if not path.is_file():
                raise InputError(f"fixture {path} not found; pass --fixtures DIR")
            ref = load_reference(path)
            state = fixture_state_dict(model_shapes(fx.config))
            ckpt = write_upstream_checkpoint(Path(tmp) / f"{path.stem}.pth", state, "training")
            for impl in ("sdpa", "eager"):
                rows = check_fixture(fx, ref, ckpt, impl)
                bad = [r for r in rows if not r.ok]
                failures += len(bad)
                worst = max(rows, key=lambda r: r.max_abs)
                print(
                    f"{'OK  ' if not bad else 'FAIL'} {fx.name:<28} {impl:<5} {len(rows):>2} "
                    f"outputs, max |diff| {worst.max_abs:.2e} ({worst.key})"
                )
                for r in bad:
                    print(f"     {r.key}: max |diff| {r.max_abs:.3e}")
    if failures:
        print(f"{failures} outputs differ from upstream beyond atol = rtol = 1e-4")
        return 1
    print("all outputs match upstream (atol = rtol = 1e-4)")
    return 0

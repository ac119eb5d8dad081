"""``python -m fastsam3d.train --config C.toml [--resume PATH|auto] [--steps N]`` (also under
torchrun): the config's own kind (training or distillation)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..errors import InputError
from .run import run_training


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastsam3d.train", description=__doc__)
    parser.add_argument("--config", required=True, help="TOML file")
    parser.add_argument("--resume", help="checkpoint to continue from, or 'auto'")
    parser.add_argument("--steps", type=int, help="override [run] steps")
    args = parser.parse_args(argv)
    try:
        trainer, _ = run_training(args.config, resume=args.resume, steps=args.steps)
    except (InputError, OSError) as err:
        print(f"fastsam3d.train: error: {err}", file=sys.stderr)
        return 2
    if trainer.rank == 0:
        print(f"wrote {trainer.out / 'model.safetensors'} (step {trainer.step})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

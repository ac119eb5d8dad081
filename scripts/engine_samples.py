"""Draw what the training data engine makes (the model card's sample grid).

    .venv/bin/python scripts/engine_samples.py [--config configs/lite/v4/student.toml]
        [--out docs/eval/engine-samples.png] [--samples 0,1,2,3,4,5]

Builds the engine exactly as the config's ``[data]`` table does (same seed) and draws, per sample,
three orthogonal slices through its first target with every target's outline.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fastsam3d.data.frame import FrameSpec
from fastsam3d.eval.datasets import load_cases
from fastsam3d.registry import get_spec
from fastsam3d.train.config import load_config
from fastsam3d.train.engine import EngineRegions, sample_grid


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/lite/v4/student.toml")
    parser.add_argument("--out", default="docs/eval/engine-samples.png")
    parser.add_argument("--samples", default="0,1,2,3,4,5,6,7")
    args = parser.parse_args()
    config = load_config(args.config)
    if not config.data.engine.enabled:
        raise SystemExit(f"{args.config}: [data.engine] is not enabled")
    spec = config.model or config.student
    assert spec is not None
    frame = FrameSpec(size=get_spec(spec.name).config.image_size)
    cases = load_cases(config.data.root, config.data.layout)
    engine = EngineRegions(cases, config.data, frame, config.run.seed)
    indices = [int(i) for i in args.samples.split(",")]
    print(f"wrote {sample_grid(engine, indices, Path(args.out))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Weighted averages of fine-tunes of one model ("model soups", WiSE-FT).

Fine-tunes that start from the same weights usually stay in one basin of the loss, so their
weighted mean is a working model whose behaviour lies between theirs, often closer to the
better of the two on each test. Experiment ``e38`` uses it to ask whether a model fitted to the
training CT (``e37``) and the shipped one can be mixed into one that keeps both results.

    python -m fastsam3d.train.soup OUT.safetensors runs/exp/e37/model.safetensors:0.5 \\
        src/fastsam3d/weights/fastsam3d-lite.safetensors:0.5

Inputs are our native model files with the same configuration (so the same parameters), or a
run's training checkpoints with ``--config RUN/model.safetensors`` (the mean of a run's last
checkpoints, as in stochastic weight averaging); the weights must be positive and sum to 1.
Tensors that are not floating point come from the first file.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from ..errors import InputError


def parse_ingredient(text: str) -> tuple[Path, float]:
    """``PATH:WEIGHT`` -> ``(path, weight)``."""
    path, sep, weight = text.rpartition(":")
    try:
        value = float(weight)
    except ValueError:
        value = float("nan")
    if not sep or not path or not value > 0:
        raise InputError(f"expected PATH:WEIGHT with a positive weight, got {text!r}")
    return Path(path), value


def soup_state(
    states: Sequence[dict[str, torch.Tensor]], weights: Sequence[float]
) -> dict[str, torch.Tensor]:
    """``sum_i weights[i] * states[i]`` for floating-point tensors (accumulated in float64,
    returned in each tensor's dtype); other tensors from ``states[0]``."""
    if len(states) != len(weights) or not states:
        raise InputError(f"{len(states)} models and {len(weights)} weights")
    if abs(sum(weights) - 1.0) > 1e-6 or min(weights) <= 0:
        raise InputError(f"weights must be positive and sum to 1, got {list(weights)}")
    keys = states[0].keys()
    for i, state in enumerate(states[1:], start=1):
        if state.keys() != keys:
            missing = sorted(set(keys) ^ set(state.keys()))[:5]
            raise InputError(f"model {i} has other parameters than model 0 (e.g. {missing})")
    out = {}
    for key, first in states[0].items():
        if not first.is_floating_point():
            out[key] = first.clone()
            continue
        total = torch.zeros(first.shape, dtype=torch.float64)
        for state, weight in zip(states, weights, strict=True):
            if state[key].shape != first.shape:
                raise InputError(
                    f"{key}: shapes differ ({tuple(first.shape)} vs {tuple(state[key].shape)})"
                )
            total += weight * state[key].double()
        out[key] = total.to(first.dtype)
    return out


def make_soup(
    out: Path, ingredients: Sequence[tuple[Path, float]], config_from: Path | None = None
) -> Path:
    """Average model files and write ``out`` in our native format.

    Args:
        ingredients: ``(file, weight)``: native model files (their configuration inside, as
            ``fastsam3d train`` writes ``model.safetensors``), or, with ``config_from``, any
            checkpoint :func:`fastsam3d.load_model` reads, e.g. a run's
            ``checkpoints/step_N.pt`` (averaging a run's last checkpoints).
        config_from: a native model file whose configuration the files without one share.
    """
    from ..checkpoint import read_checkpoint, save_native

    shared, shared_name = None, None
    if config_from is not None:
        _, report = read_checkpoint(config_from)
        if report.model_config is None:
            raise InputError(f"{config_from}: not one of our model files (no configuration)")
        shared, shared_name = report.model_config, report.model_name
    states, config, name = [], None, None
    for path, _ in ingredients:
        state, report = read_checkpoint(path)
        own = report.model_config or shared
        if own is None:
            raise InputError(
                f"{path}: not one of our model files (no configuration inside); pass --config "
                "with the run's model.safetensors"
            )
        if config is None:
            config, name = own, report.model_name or shared_name
        elif own.to_dict() != config.to_dict():
            raise InputError(
                f"{path}: its configuration differs from {ingredients[0][0]}'s; a soup needs "
                "one architecture"
            )
        states.append(state)
    assert config is not None
    state = soup_state(states, [w for _, w in ingredients])
    return save_native(out, state, config, name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fastsam3d.train.soup", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("out", help="output model file (.safetensors)")
    parser.add_argument("models", nargs="+", help="PATH:WEIGHT, weights summing to 1")
    parser.add_argument(
        "--config",
        type=Path,
        help="native model file whose configuration inputs without one share (training "
        "checkpoints: the run's model.safetensors)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = make_soup(Path(args.out), [parse_ingredient(m) for m in args.models], args.config)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

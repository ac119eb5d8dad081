"""``fastsam3d train`` / ``distill`` (a TOML config) and ``fastsam3d experiment`` (train, then
score on training-CT and held-out structures with the image-dependence probe)."""

from __future__ import annotations

import argparse

from ..errors import InputError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for name, text in (
        ("train", "interactive training / fine-tuning from a TOML config ([model], [interactive])"),
        (
            "distill",
            "layer-wise then logit-level distillation from a TOML config ([teacher], [student])",
        ),
    ):
        p = sub.add_parser(name, help=text, description=text + ". See configs/*.toml.")
        p.add_argument("--config", required=True, help="TOML file")
        p.add_argument(
            "--resume", help="checkpoint to continue from, or 'auto' (OUT/last.pt if present)"
        )
        p.add_argument("--steps", type=int, help="override [run] steps")
        p.set_defaults(func=run_train)

    p = sub.add_parser(
        "experiment",
        help="train a config, then score it (training-CT and held-out Dice, image dependence)",
        description="Train CONFIG (resuming from its last.pt), evaluate it on structures of the "
        "training CT and on the held-out CT at 1/3/5/10 clicks (realistic protocol, centre "
        "clicks, seed 0), run the image-dependence probe, and record config, summary and one "
        "line in OUT/README.md.",
    )
    p.add_argument("config", nargs="?", help="TOML training config")
    p.add_argument(
        "--checkpoint", help="score this model file instead of training (baselines, stages)"
    )
    p.add_argument("--name", help="run name (default: the config's file name)")
    p.add_argument("--note", help="what the run tests (goes into the table)")
    p.add_argument("--out", default="docs/eval/experiments", help="records folder")
    p.set_defaults(func=run_experiment)


def run_train(args: argparse.Namespace) -> int:
    from ..runtime.denormals import flushed_denormals
    from ..train.run import run_training

    with flushed_denormals():  # before torch starts its threads, which copy the mode
        trainer, rows = run_training(
            args.config, args.command, resume=args.resume, steps=args.steps
        )
    if trainer.rank == 0:
        if rows:
            speed = sorted(r["samples_per_s"] for r in rows)[len(rows) // 2]
            print(f"step {trainer.step}: loss {rows[-1]['loss']:.4f}, median {speed:.3f} samples/s")
        print(f"wrote {trainer.out / 'model.safetensors'} and checkpoints in {trainer.out}")
    return 0


def run_experiment(args: argparse.Namespace) -> int:
    from ..runtime.denormals import flushed_denormals
    from ..train.experiment import run_experiment as train_and_score
    from ..train.experiment import score_checkpoint

    if args.checkpoint and not args.name:
        raise InputError("--checkpoint needs --name (the run's name in the table)")
    if not args.checkpoint and not args.config:
        raise InputError("give a TOML config to train, or --checkpoint to score a model file")
    with flushed_denormals():  # before torch starts its threads, which copy the mode
        if args.checkpoint:
            summary = score_checkpoint(
                args.checkpoint, args.out, name=args.name, note=args.note or ""
            )
        else:
            summary = train_and_score(args.config, args.out, name=args.name, note=args.note or "")
    print(summary.line())
    return 0

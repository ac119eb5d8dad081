"""Training under torchrun across two "nodes" (c10d rendezvous on this machine, one gloo process
each, separate output folders as on nodes without a shared disk)."""

from __future__ import annotations

import csv
import socket
from pathlib import Path

import numpy as np
import torch

import fastsam3d
from fastsam3d.train.config import parse_config
from fastsam3d.train.loop import Trainer

from ..helpers import finish_torchrun, start_torchrun
from .conftest import train_config, write_toml


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _two_nodes(configs: list[Path], *args: str) -> None:
    """``torchrun --nnodes 2 --node-rank R ... -m fastsam3d.train --config configs[R] ARGS``."""
    endpoint = f"127.0.0.1:{_free_port()}"
    rendezvous = ["--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "test"]
    procs = [
        start_torchrun(
            [
                *("--nnodes", "2", "--node-rank", str(node), "--nproc-per-node", "1"),
                *rendezvous,
                *("-m", "fastsam3d.train", "--config", str(config), *args),
            ]
        )
        for node, config in enumerate(configs)
    ]
    finish_torchrun(procs)


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def test_two_nodes_resume_and_equal_one_process_with_twice_the_batch(tmp_path) -> None:
    """2 ranks x batch 1 == 1 process x batch 2 (up to summation order): every step's samples
    and clicks depend only on the global sample index, the loss is a mean over equally sized
    micro-batches and DDP averages gradients. (This needs per-sample independence: with
    ``free_rounds`` or ``mask_only_iterations > 1`` a micro-batch shares its first sample's
    draw, and ``embedding_loss_weight`` averages over the structures present in the
    micro-batch; then only the ``grad_accum`` equivalence of ``test_loop`` holds exactly.)

    The 2-node run stops after 2 steps and resumes with ``--resume auto``: the second node's
    folder holds no checkpoint, so it must take rank 0's."""
    single = train_config(str(tmp_path / "one"), steps=3)
    single["data"]["batch_size"] = 2
    one = Trainer(parse_config(single), "train", progress=False).run()
    configs = []
    for node in range(2):
        cfg = train_config(str(tmp_path / f"node{node}"), steps=3)
        cfg["run"]["checkpoint_every"] = 2
        configs.append(write_toml(cfg, tmp_path / f"node{node}.toml"))
    _two_nodes(configs, "--steps", "2")
    _two_nodes(configs, "--resume", "auto")

    written = [n for n in range(2) if (tmp_path / f"node{n}" / "model.safetensors").exists()]
    assert len(written) == 1  # rank 0's node, whichever the rendezvous made rank 0
    out, other = tmp_path / f"node{written[0]}", tmp_path / f"node{1 - written[0]}"
    assert _files(other) == []  # only rank 0 writes
    assert _files(out) == [
        "checkpoints",
        "checkpoints/step_000002.pt",
        "checkpoints/step_000003.pt",
        "last.pt",
        "metrics.csv",
        "model.safetensors",
    ]  # and no temporary file is left over
    with (out / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    np.testing.assert_allclose(
        [float(r["loss"]) for r in rows], [r["loss"] for r in one], rtol=1e-4, atol=1e-6
    )
    a = fastsam3d.load_model(None, tmp_path / "one" / "model.safetensors").state_dict()
    b = fastsam3d.load_model(None, out / "model.safetensors").state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    state = torch.load(out / "last.pt", weights_only=True)
    ranks = state["rng"]["ranks"]
    assert state["step"] == 3
    assert len(ranks) == 2
    assert not torch.equal(ranks[0]["torch"], ranks[1]["torch"])  # per-rank generators

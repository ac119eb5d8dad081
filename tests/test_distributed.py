"""torchrun plumbing without processes: environment, device per rank, backend choice, and which
samples each rank draws."""

from __future__ import annotations

import threading

import pytest
import torch

from fastsam3d import distributed
from fastsam3d.runtime.exported import wait_for_local_rank0
from fastsam3d.train.config import parse_config
from fastsam3d.train.data import StepBatches
from fastsam3d.train.loop import Trainer

from .train.conftest import train_config


def _torchrun_env(monkeypatch, rank: int, world: int, local: int) -> None:
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("LOCAL_RANK", str(local))


def _fake_gpus(monkeypatch, count: int) -> list[int]:
    chosen: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    return chosen


def test_launch_reads_torchrun_and_rejects_nonsense(monkeypatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.launch() == distributed.Launch(0, 1, 0)
    _torchrun_env(monkeypatch, 5, 8, 1)
    assert distributed.launch() == distributed.Launch(5, 8, 1)
    monkeypatch.setenv("RANK", "8")
    with pytest.raises(ValueError, match="inconsistent"):
        distributed.launch()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ValueError, match="integers"):
        distributed.launch()


def test_cuda_means_the_local_rank_gpu_under_torchrun(monkeypatch) -> None:
    _torchrun_env(monkeypatch, 11, 16, 3)
    chosen = _fake_gpus(monkeypatch, 8)
    assert distributed.resolve_device("cuda") == torch.device("cuda", 3)
    assert distributed.resolve_device("auto") == torch.device("cuda", 3)
    assert distributed.process_device("cuda") == torch.device("cuda", 3)
    assert chosen == [3, 3, 3]  # made current: plain "cuda" tensors land there too
    assert distributed.process_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="all on one GPU"):
        distributed.resolve_device("cuda:0")
    _fake_gpus(monkeypatch, 2)
    with pytest.raises(ValueError, match="LOCAL_RANK 3 but this process sees only 2"):
        distributed.resolve_device("cuda")


def test_outside_torchrun_devices_are_left_alone(monkeypatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    chosen = _fake_gpus(monkeypatch, 2)
    assert distributed.resolve_device("cuda:1") == torch.device("cuda", 1)
    assert distributed.process_device("cuda") == torch.device("cuda")
    assert chosen == []


def test_backend_is_nccl_on_cuda_gloo_on_cpu_and_nccl_needs_cuda() -> None:
    assert distributed.backend_for(torch.device("cpu")) == "gloo"
    assert distributed.backend_for(torch.device("cuda", 0)) == "nccl"
    assert distributed.backend_for(torch.device("cuda", 0), "gloo") == "gloo"
    with pytest.raises(ValueError, match="'nccl' needs CUDA devices"):
        distributed.backend_for(torch.device("cpu"), "nccl")
    with pytest.raises(ValueError, match="auto, nccl or gloo"):
        distributed.backend_for(torch.device("cpu"), "mpi")


def test_trainer_refuses_nccl_and_missing_cuda_on_a_cpu(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = train_config(str(tmp_path / "a"), steps=1)
    cfg["run"].update(device="cpu", backend="nccl")
    with pytest.raises(ValueError, match="'nccl' needs CUDA devices"):
        Trainer(parse_config(cfg), "train", progress=False)
    cfg["run"].update(device="cuda", backend="auto")
    with pytest.raises(ValueError, match="no CUDA device available"):
        Trainer(parse_config(cfg), "train", progress=False)
    cfg["run"]["backend"] = "mpi"
    with pytest.raises(ValueError, match="must be one of"):
        parse_config(cfg)


def test_ranks_draw_disjoint_shares_of_the_same_global_batches() -> None:
    """Sample ``k`` is a pure function of ``(seed, k)``, so ranks differ exactly when their
    indices do: 2 ranks x batch 2 cover what 1 process draws with batch 4 (or 2 x accum 2)."""
    steps, batch = 3, 2
    one = list(StepBatches(0, steps, 0, 1, 2 * batch, 1))
    ranks = [list(StepBatches(0, steps, r, 2, batch, 1)) for r in range(2)]
    accum = list(StepBatches(0, steps, 0, 1, batch, 2))
    for step in range(steps):
        a, b = ranks[0][step], ranks[1][step]
        assert not set(a) & set(b)
        assert sorted(a + b) == one[step] == accum[2 * step] + accum[2 * step + 1]
    resumed = [list(StepBatches(1, steps, r, 2, batch, 1)) for r in range(2)]
    assert resumed == [r[1:] for r in ranks]


def test_other_local_ranks_wait_for_local_rank0s_exported_graphs(tmp_path, monkeypatch) -> None:
    paths = [tmp_path / "encoder.onnx", tmp_path / "decoder.onnx"]
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert not wait_for_local_rank0(paths, timeout_s=5)  # not under torchrun: export at once
    _torchrun_env(monkeypatch, 0, 2, 0)
    assert not wait_for_local_rank0(paths, timeout_s=5)  # local rank 0 exports
    _torchrun_env(monkeypatch, 1, 2, 1)
    assert not wait_for_local_rank0(paths, timeout_s=0.3)  # gave up: exports itself
    writer = threading.Timer(0.3, lambda: [p.write_text("graph") for p in paths])
    writer.start()
    try:
        assert wait_for_local_rank0(paths, timeout_s=30)
    finally:
        writer.join()

"""The training loop: learning, frozen teacher, exact resume, DDP equivalence, caching, CLI."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import fastsam3d
from fastsam3d.cli import main
from fastsam3d.train.config import parse_config
from fastsam3d.train.loop import Trainer

from ..helpers import finish_torchrun, start_torchrun
from .conftest import distill_config, train_config
from .conftest import write_toml as _toml


def test_interactive_loss_decreases_over_30_steps(tmp_path) -> None:
    rows = Trainer(parse_config(train_config(str(tmp_path))), "train", progress=False).run()
    losses = [r["loss"] for r in rows]
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses
    model = fastsam3d.load_model(None, tmp_path / "model.safetensors")
    assert model.cfg == fastsam3d.get_spec("test-tiny").config


def _fixed_region_losses(trainer: Trainer) -> tuple[float, float]:
    """Stage-1 (both layers) and stage-2 losses of the student on one fixed region."""
    sample = trainer.dataset[0]
    image = sample["image"][None]
    tokens, embedding = trainer._teacher_features(image, torch.tensor([0]))
    with torch.no_grad():
        return (
            float(trainer.step_module(image, tokens, embedding, 2, 1)),
            float(trainer.step_module(image, tokens, embedding, 0, 2)),
        )


def test_distillation_teacher_stays_frozen_and_losses_fall(tmp_path) -> None:
    cfg = distill_config(str(tmp_path))
    cfg["student"]["init"] = "random"  # a teacher-initialised student starts too close to judge
    trainer = Trainer(parse_config(cfg), "distill", progress=False)
    before = {k: v.clone() for k, v in trainer.teacher.state_dict().items()}
    gap_before = _fixed_region_losses(trainer)
    rows = trainer.run()
    gap_after = _fixed_region_losses(trainer)
    assert gap_after[0] < gap_before[0]  # layer-wise feature gap shrinks
    assert gap_after[1] < gap_before[1]  # embedding gap shrinks
    assert not trainer.teacher.training
    assert all(p.grad is None and not p.requires_grad for p in trainer.teacher.parameters())
    assert all(torch.equal(v, before[k]) for k, v in trainer.teacher.state_dict().items())
    assert [r["k"] for r in rows[:6]] == [1, 1, 1, 2, 2, 2]  # Eq. 2 with 6 steps, 2 layers
    assert [r["stage"] for r in rows] == [1] * 6 + [2] * 6
    student = fastsam3d.load_model(None, tmp_path / "model.safetensors")
    assert student.cfg.encoder.depth == 2


def test_distilling_the_lite_layout_matches_the_whole_embedding(tmp_path) -> None:
    """Stem and features come from the teacher, the logit stage matches everything ``encode``
    returns (ViT embedding and the packed high-resolution features), tokens are compared
    normalised."""
    cfg = distill_config(str(tmp_path), layerwise=4, logit=6)
    cfg["teacher"] = {"name": "test-tiny-hires", "encoder": {"depth": 4}}
    cfg["student"] = {
        "name": "test-tiny-hires",
        "encoder": {"depth": 2, "attn_free_blocks": 1, "block_formula": "fastsam3d"},
        "init": "teacher",
    }
    cfg["distill"]["normalize_tokens"] = True
    cfg["distill"]["mask_weight"] = 0.0
    cfg["distill"]["frozen"] = ["image_encoder.stem.", "image_encoder.features."]
    trainer = Trainer(parse_config(cfg), "distill", progress=False)
    teacher, student = trainer.teacher, trainer.model
    for key, value in student.image_encoder.stem.state_dict().items():
        assert torch.equal(value, teacher.image_encoder.stem.state_dict()[key])
    sample = trainer.dataset[0]
    image = sample["image"][None]
    tokens, embedding = trainer._teacher_features(image, torch.tensor([0]))
    assert embedding.shape[1] == teacher.embedding_channels > teacher.cfg.prompt.embed_dim
    with torch.no_grad():
        before = float(trainer.step_module(image, tokens, embedding, 0, 2))
    trainer.run()
    with torch.no_grad():
        after = float(trainer.step_module(image, tokens, embedding, 0, 2))
        normalised = trainer.step_module._norm(tokens[0])
    assert after < before
    torch.testing.assert_close(normalised.mean(-1), torch.zeros_like(normalised[..., 0]))
    for key, value in student.image_encoder.stem.state_dict().items():  # kept frozen
        assert torch.equal(value, teacher.image_encoder.stem.state_dict()[key])
    cfg["distill"]["frozen"] = ["image_encoder.nothing."]
    with pytest.raises(ValueError, match="matches no student parameter"):
        Trainer(parse_config(cfg), "distill", progress=False)


def test_resume_continues_bit_identically(tmp_path) -> None:
    full = Trainer(
        parse_config(train_config(str(tmp_path / "full"), steps=6)), "train", progress=False
    ).run()
    cfg = train_config(str(tmp_path / "split"), steps=6)
    cfg["run"]["checkpoint_every"] = 3
    first = Trainer(
        parse_config({**cfg, "run": {**cfg["run"], "steps": 3}}), "train", progress=False
    )
    first.run()
    resumed = Trainer(
        parse_config(cfg), "train", resume=tmp_path / "split" / "last.pt", progress=False
    )
    assert resumed.step == 3
    rest = resumed.run()
    assert [r["loss"] for r in rest] == [r["loss"] for r in full[3:]]
    a = fastsam3d.load_model(None, tmp_path / "full" / "model.safetensors").state_dict()
    b = fastsam3d.load_model(None, tmp_path / "split" / "model.safetensors").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with (tmp_path / "split" / "metrics.csv").open() as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [1, 2, 3, 4, 5, 6]


def test_a_fresh_start_replaces_the_metrics_of_an_earlier_run_in_its_folder(tmp_path) -> None:
    """A run cut off before its first checkpoint leaves rows; starting again from step 0 (as
    ``--resume auto`` does without a checkpoint) must not append to them."""
    cfg = train_config(str(tmp_path), steps=2)
    metrics = tmp_path / "metrics.csv"
    Trainer(parse_config(cfg), "train", progress=False).run()
    Trainer(parse_config(cfg), "train", progress=False).run()
    with metrics.open() as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [1, 2]


def test_resume_reads_checkpoints_written_before_a_model_config_field_existed(tmp_path) -> None:
    """A checkpoint whose ``model_config`` lacks a field added later (here ``input``) resumes
    as that field's default; one whose model really differs is refused by name."""
    cfg = train_config(str(tmp_path), steps=2)
    Trainer(parse_config({**cfg, "run": {**cfg["run"], "steps": 1}}), "train", progress=False).run()
    last = tmp_path / "last.pt"
    state = torch.load(last, weights_only=True)
    del state["model_config"]["input"]
    torch.save(state, last)
    resumed = Trainer(parse_config(cfg), "train", resume=last, progress=False)
    assert resumed.step == 1
    state["model_config"]["encoder"]["depth"] += 1
    torch.save(state, last)
    with pytest.raises(ValueError, match="the checkpoint's model differs from this config's"):
        Trainer(parse_config(cfg), "train", resume=last, progress=False)


def test_distillation_resume_restores_projections_and_stage(tmp_path) -> None:
    cfg = distill_config(str(tmp_path / "d"), layerwise=2, logit=2)
    cfg["student"]["encoder"]["embed_dim"] = 16  # narrower student: trainable projections
    cfg["student"]["encoder"]["num_heads"] = 2
    full = Trainer(parse_config(cfg), "distill", progress=False)
    assert any(isinstance(p, torch.nn.Linear) for p in full.step_module.projections)
    losses = [r["loss"] for r in full.run()]
    cfg2 = distill_config(str(tmp_path / "e"), layerwise=2, logit=2)
    cfg2["student"]["encoder"].update(embed_dim=16, num_heads=2)
    cfg2["run"]["checkpoint_every"] = 3
    Trainer(
        parse_config(
            {
                **cfg2,
                "run": {**cfg2["run"], "steps": 3},
                "distill": {**cfg2["distill"], "logit_steps": 1},
            }
        ),
        "distill",
        progress=False,
    ).run()
    resumed = Trainer(
        parse_config(cfg2), "distill", resume=tmp_path / "e" / "last.pt", progress=False
    )
    assert [r["loss"] for r in resumed.run()] == losses[3:]


def test_two_ddp_processes_match_one_with_the_same_global_batch(tmp_path) -> None:
    """2 processes x 1 sample == 1 process x 1 sample x ``grad_accum`` 2 for any recipe: rank r's
    micro-batch is exactly micro-batch r of the single process (same samples, same draws), and
    DDP averages what accumulation sums / 2. Validation is split over the ranks."""
    validation = {
        "root": "ct,mr",
        "layout": "samples",
        "clicks": [1, 2],
        "structures": ["spleen"],
        "max_cases": 2,
    }
    single = train_config(str(tmp_path / "one"), steps=3)
    single["optim"]["grad_accum"] = 2  # global batch 2 in one process
    single["interactive"]["free_rounds"] = [0, 2]  # a micro-batch shares this draw
    single["run"]["validate_every"] = 3
    single["validation"] = validation
    Trainer(parse_config(single), "train", progress=False).run()
    double = train_config(str(tmp_path / "two"), steps=3)  # 2 processes x 1 sample
    double["interactive"]["free_rounds"] = [0, 2]
    double["run"]["validate_every"] = 3
    double["validation"] = validation
    path = _toml(double, tmp_path / "ddp.toml")
    args = ["--standalone", "--nproc_per_node", "2", "-m", "fastsam3d.train", "--config", str(path)]
    finish_torchrun([start_torchrun(args)])
    read = lambda p: [float(r["loss"]) for r in csv.DictReader((p / "metrics.csv").open())]  # noqa: E731
    np.testing.assert_allclose(read(tmp_path / "two"), read(tmp_path / "one"), rtol=1e-4, atol=1e-6)
    a = fastsam3d.load_model(None, tmp_path / "one" / "model.safetensors").state_dict()
    b = fastsam3d.load_model(None, tmp_path / "two" / "model.safetensors").state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    scores = [
        list(csv.DictReader((tmp_path / run / "validation.csv").open())) for run in ("one", "two")
    ]
    assert len(scores[0]) == len(scores[1]) == 1
    for key in ("step", "dice@1", "dice@2"):  # weights equal to 1e-5: masks nearly identical
        assert float(scores[1][0][key]) == pytest.approx(float(scores[0][0][key]), abs=0.01)
    merged = (tmp_path / "two" / "validation" / "step_000003" / "results.csv").read_text()
    assert {line.split(",")[1] for line in merged.splitlines()[1:]} == {"ct", "mr"}


def test_teacher_feature_cache_is_reused(tmp_path, monkeypatch) -> None:
    cfg = distill_config(str(tmp_path / "c"), layerwise=2, logit=2)
    cfg["distill"].update(cache_dir=str(tmp_path / "cache"), cache_pool=2)
    trainer = Trainer(parse_config(cfg), "distill", progress=False)
    calls = []
    original = trainer.teacher.image_encoder.forward_all
    monkeypatch.setattr(
        trainer.teacher.image_encoder,
        "forward_all",
        lambda *a, **k: calls.append(1) or original(*a, **k),
    )
    trainer.run()
    assert len(calls) == 2  # 4 steps over a pool of 2 regions: computed once each
    assert len(list((tmp_path / "cache").glob("sample_*.pt"))) == 2


def test_sparse_attention_student_trains(tmp_path) -> None:
    cfg = distill_config(str(tmp_path / "s"), layerwise=4, logit=4)
    cfg["student"].update(sparse=[[16, 1], [64, 2]], init="random")
    trainer = Trainer(parse_config(cfg), "distill", progress=False)
    assert trainer.model.cfg.encoder.sparse is not None
    gap_before = _fixed_region_losses(trainer)
    rows = trainer.run()
    gap_after = _fixed_region_losses(trainer)
    assert all(np.isfinite(r["loss"]) for r in rows)
    assert gap_after[0] < gap_before[0]
    assert gap_after[1] < gap_before[1]
    assert (
        fastsam3d.load_model(None, tmp_path / "s" / "model.safetensors").cfg.encoder.sparse
        is not None
    )


def test_bf16_and_validation(tmp_path) -> None:
    cfg = train_config(str(tmp_path / "v"), steps=2)
    cfg["run"].update(amp="bf16", validate_every=2)
    cfg["validation"] = {
        "root": "ct",
        "layout": "samples",
        "clicks": [1, 2],
        "structures": ["spleen"],
    }
    Trainer(parse_config(cfg), "train", progress=False).run()
    with (tmp_path / "v" / "validation.csv").open() as f:
        (row,) = list(csv.DictReader(f))
    assert 0.0 <= float(row["dice@2"]) <= 1.0


def test_fp16_needs_cuda(tmp_path) -> None:
    cfg = train_config(str(tmp_path), steps=1)
    cfg["run"]["amp"] = "fp16"
    with pytest.raises(ValueError, match="needs CUDA"):
        Trainer(parse_config(cfg), "train", progress=False)


def test_frozen_parts_do_not_change(tmp_path) -> None:
    cfg = train_config(str(tmp_path), steps=2)
    cfg["interactive"]["trainable"] = "prompt_decoder"
    trainer = Trainer(parse_config(cfg), "train", progress=False)
    before = {k: v.clone() for k, v in trainer.model.image_encoder.state_dict().items()}
    trainer.run()
    assert all(
        torch.equal(v, before[k]) for k, v in trainer.model.image_encoder.state_dict().items()
    )


def test_the_fine_stages_features_train_with_the_decoder(tmp_path) -> None:
    """``trainable = "prompt_decoder"`` keeps the encoder frozen except the ``S/2`` features
    that only the decoder's fine stage reads."""
    cfg = train_config(str(tmp_path), steps=2)
    cfg["model"] = {
        "name": "test-tiny-hires",
        "encoder": {"fine_feature_channels": 4},
        "decoder": {"fine_stage": True},
    }
    cfg["interactive"]["trainable"] = "prompt_decoder"
    trainer = Trainer(parse_config(cfg), "train", progress=False)
    encoder = trainer.model.image_encoder
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    trainer.run()
    changed = {k for k, v in encoder.state_dict().items() if not torch.equal(v, before[k])}
    assert changed
    assert all(k.startswith("fine_features.") for k in changed)
    model = fastsam3d.load_model(None, tmp_path / "model.safetensors")
    assert model.cfg.low_res_size == 2 * fastsam3d.get_spec("test-tiny-hires").config.low_res_size


def test_cli_train_and_resume(tmp_path, capsys) -> None:
    path = _toml(train_config(str(tmp_path / "cli"), steps=2), tmp_path / "t.toml")
    assert main(["train", "--config", str(path)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["train", "--config", str(path), "--resume", "auto", "--steps", "3"]) == 0
    with (tmp_path / "cli" / "metrics.csv").open() as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [1, 2, 3]
    assert main(["distill", "--config", str(path)]) == 2
    assert "needs [teacher] and [student]" in capsys.readouterr().err


WORKER_CHECK = """
import json, sys
from fastsam3d.train.config import parse_config
from fastsam3d.train.loop import Trainer
losses = []
for cfg in json.loads(sys.argv[1]):
    rows = Trainer(parse_config(cfg), "train", progress=False).run()
    losses.append([r["loss"] for r in rows])
print(json.dumps(losses))
"""


def test_worker_processes_give_the_same_samples(tmp_path) -> None:
    """Run in a fresh interpreter: DataLoader workers fork the process, and forking this
    long-lived, many-threaded pytest process crashed it once (SIGSEGV) late in a full suite."""
    plain = train_config(str(tmp_path / "w0"), steps=3)
    with_workers = train_config(str(tmp_path / "w1"), steps=3)
    with_workers["data"]["workers"] = 1
    done = subprocess.run(
        [sys.executable, "-c", WORKER_CHECK, json.dumps([plain, with_workers])],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    losses_plain, losses_workers = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(losses_plain) == 3
    assert losses_plain == losses_workers

"""The training loop shared by ``fastsam3d train`` and ``fastsam3d distill``.

AdamW with warm-up and a constant / cosine / multi-step schedule, gradient accumulation, bf16
autocast (fp16 with a gradient scaler on CUDA), ``DistributedDataParallel`` under ``torchrun``
(one process per device, ``cuda:LOCAL_RANK``; NCCL on CUDA, gloo on CPU; gradients averaged over
the ranks, each of which draws its own share of every global batch), checkpoints with the
complete training state (model, optimizer, scheduler, scaler, step, every rank's RNG) from which
a run continues bit-identically (the data of each step depends only on the seed and the step),
``metrics.csv``, periodic validation with the evaluation harness (split over the ranks), a
progress bar with ETA, and a final ``model.safetensors`` in our native format. Rank 0 writes
every output, atomically; a resumed run takes rank 0's checkpoint, sent to the other ranks, so
nodes need not share the output folder.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..build import build_model, load_model
from ..checkpoint import save_native
from ..config import ModelConfig
from ..data.frame import FrameSpec
from ..distributed import from_rank0, gather_to_rank0, join, resolve_device
from ..errors import InputError
from ..eval.clicks import make_simulator
from ..eval.datasets import load_cases
from ..files import atomic_output
from ..modeling.sam3d import Sam3D
from .config import DistillConfig, InteractiveConfig, TrainConfig, config_to_dict
from .data import StepBatches, TrainingRegions
from .engine import EngineRegions, MixedRegions, training_regions
from .objectives import (
    DistillStep,
    InteractiveStep,
    first_click_prompt,
    init_from_teacher,
    layer_pairing,
    layers_in_use,
)

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "fastsam3d-train"
METRIC_FIELDS = (
    "step",
    "stage",
    "k",
    "loss",
    "lr",
    "samples_per_s",
    "elapsed_s",
    "grad_encoder",
    "grad_prompt_decoder",
)


def lr_factor(step: int, config: TrainConfig) -> float:
    """Learning-rate multiplier at (0-based) ``step``."""
    o, total = config.optim, config.run.steps
    if o.warmup_steps and step < o.warmup_steps:
        return (step + 1) / o.warmup_steps
    if o.schedule == "cosine":
        span = max(1, total - o.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - o.warmup_steps) / span)))
    if o.schedule == "multistep":
        return o.gamma ** sum(step >= m for m in o.milestones)
    return 1.0


class Trainer:
    """Builds models, data and optimizer from a :class:`TrainConfig` and runs the steps.

    Args:
        config: validated configuration.
        kind: ``"train"`` (interactive fine-tuning) or ``"distill"``.
        resume: a checkpoint written by this class (or ``None``).
        progress: show a progress bar (rank 0).
    """

    def __init__(
        self,
        config: TrainConfig,
        kind: Literal["train", "distill"],
        resume: str | Path | None = None,
        progress: bool = True,
    ) -> None:
        config.check(kind)
        self.config, self.kind, self.progress = config, kind, progress
        self.device = resolve_device(config.run.device)  # cuda:LOCAL_RANK under torchrun
        self.rank, self.world, self.dist = join(self.device, config.run.backend)
        if config.run.threads:
            torch.set_num_threads(config.run.threads)
        self.out = Path(config.run.out_dir)
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
        self.step = 0
        if kind == "train":
            self._build_train()
        else:
            self._build_distill()
        frame = FrameSpec.for_model(self.model.cfg)
        self.dataset = training_regions(config.data, frame, config.run.seed)
        self.trainable = [p for p in self.step_module.parameters() if p.requires_grad]
        if not self.trainable:
            raise InputError("nothing to train: every parameter is frozen")
        self.optimizer = torch.optim.AdamW(
            self._param_groups(),
            lr=config.optim.lr,
            betas=config.optim.betas,
            weight_decay=config.optim.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, config)
        )
        fp16 = config.run.amp == "fp16"
        if fp16 and self.device.type != "cuda":
            raise InputError("amp = 'fp16' needs CUDA; use 'bf16' on CPU")
        self.scaler = torch.amp.GradScaler("cuda", enabled=fp16)
        self.wrapped: nn.Module = self.step_module
        if self.dist:
            # averages the gradients over the ranks on backward (from rank 0's initial weights)
            self.wrapped = nn.parallel.DistributedDataParallel(
                self.step_module,
                find_unused_parameters=True,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
            )
        self._seed_global_rng(0)
        if self.dist:  # rank 0's choice counts: other nodes may not see its output folder
            resume = from_rank0(None if resume is None else str(resume))
        if resume is not None:
            self._resume(Path(resume))
        else:
            self._trim_metrics()

    # -- building ---------------------------------------------------------------------------

    def _load(self, spec: Any) -> Sam3D:
        cfg = spec.model_config()
        ckpt = list(spec.checkpoint) or None
        return load_model(  # no checkpoint in the config: training from scratch
            cfg,
            ckpt,
            device=self.device,
            seed=self.config.run.seed,
            fresh=spec.fresh,
            random_weights=ckpt is None,
        )

    def _build_train(self) -> None:
        c = self.config
        assert c.model is not None
        inter = c.interactive or InteractiveConfig()
        model = self._load(c.model).train()
        model.requires_grad_(False)
        groups = {"prompt_encoder": model.prompt_encoder, "mask_decoder": model.mask_decoder}
        if inter.trainable == "all":
            model.requires_grad_(True)
        elif inter.trainable == "decoder":
            model.mask_decoder.requires_grad_(True)
        else:
            for module in groups.values():
                module.requires_grad_(True)
        if inter.trainable != "all" and model.image_encoder.fine_features is not None:
            # the S/2 features serve only the decoder's fine stage: they train with it
            model.image_encoder.fine_features.requires_grad_(True)
        if inter.trainable == "encoder_last":
            n = inter.unfreeze_last_blocks
            if not 0 < n <= len(model.image_encoder.blocks):
                raise InputError(
                    f"unfreeze_last_blocks must be in 1..{len(model.image_encoder.blocks)}"
                )
            for block in model.image_encoder.blocks[-n:]:
                block.requires_grad_(True)
            model.image_encoder.neck.requires_grad_(True)
        self.model_name = c.model.name
        self.model = model
        self.step_module: nn.Module = InteractiveStep(
            model, inter, make_simulator(inter.simulator), c.run.seed
        )
        self.decoder_lr_scale = inter.decoder_lr_scale

    def _build_distill(self) -> None:
        c = self.config
        assert c.teacher is not None
        assert c.student is not None
        self.distill_config = c.distill or DistillConfig(
            layerwise_steps=c.run.steps // 2, logit_steps=c.run.steps - c.run.steps // 2
        )
        teacher = self._load(c.teacher).eval()
        teacher.requires_grad_(False)
        student_cfg = c.student.model_config()
        if c.student.checkpoint:
            student = self._load(c.student)
            report: dict[str, list[str]] = {"copied": [], "skipped": []}
        else:
            student = build_model(student_cfg, device=self.device, seed=c.run.seed)
            if c.student.init == "teacher":
                report = init_from_teacher(student, teacher)
            else:  # the prompt encoder and decoder are the teacher's in any case (FastSAM3D)
                report = {"copied": [], "skipped": []}
                for name in ("prompt_encoder", "mask_decoder"):
                    _copy_if_fits(getattr(teacher, name), getattr(student, name))
        log.info("student initialised: %d tensors from the teacher", len(report["copied"]))
        student.train()
        student.prompt_encoder.requires_grad_(False)
        student.mask_decoder.requires_grad_(False)
        frozen = tuple(self.distill_config.frozen)
        if frozen:
            names = [n for n, _ in student.named_parameters() if n.startswith(frozen)]
            if not names:
                raise InputError(f"[distill] frozen {list(frozen)} matches no student parameter")
            for name, param in student.named_parameters():
                if name.startswith(frozen):
                    param.requires_grad_(False)
        self.teacher, self.model, self.model_name = teacher, student, c.student.name
        self.pairing = layer_pairing(student.cfg.encoder.depth, teacher.cfg.encoder.depth)
        d = self.distill_config
        self.step_module = DistillStep(
            student,
            teacher.cfg.encoder.embed_dim,
            d.mask_weight,
            teacher if d.mask_weight > 0 else None,
            seed=c.run.seed,
            normalize=d.normalize_tokens,
        ).to(self.device)
        self.decoder_lr_scale = 1.0

    def _param_groups(self) -> list[dict[str, Any]]:
        decoder = {
            id(p)
            for name in ("prompt_encoder", "mask_decoder")
            for p in getattr(self.model, name).parameters()
        }
        undecayed = set() if self.config.optim.decay_vectors else _undecayed(self.step_module)
        groups = []
        for in_decoder, lr in ((False, 1.0), (True, self.decoder_lr_scale)):
            for no_decay in (False, True):
                params = [
                    p
                    for p in self.trainable
                    if (id(p) in decoder) == in_decoder and (id(p) in undecayed) == no_decay
                ]
                if params:
                    group: dict[str, Any] = {"params": params, "lr": self.config.optim.lr * lr}
                    if no_decay:
                        group["weight_decay"] = 0.0
                    groups.append(group)
        return groups

    # -- one step ---------------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        amp = self.config.run.amp
        if amp == "none":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if amp == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _teacher_features(
        self, image: torch.Tensor, indices: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        d = self.distill_config
        cache = Path(d.cache_dir) if d.cache_dir else None
        if cache is not None and image.shape[0] == 1:
            path = cache / f"sample_{int(indices[0]):08d}.pt"
            if path.exists():
                data = torch.load(path, map_location=self.device, weights_only=True)
                return list(data["tokens"]), data["embedding"]
        with torch.no_grad(), self._autocast():
            embedding, tokens = self.teacher.encode_with_tokens(image, self.pairing)
        if cache is not None and image.shape[0] == 1:  # ranks may write one sample at once
            with atomic_output(cache / f"sample_{int(indices[0]):08d}.pt") as tmp:
                data = {"tokens": [t.cpu() for t in tokens], "embedding": embedding.cpu()}
                torch.save(data, tmp)
        return tokens, embedding

    def _micro_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int, int]:
        image = batch["image"].to(self.device)
        target = batch["target"].to(self.device)
        indices = batch["index"]
        if self.kind == "train":
            with self._autocast():
                return self.wrapped(image, target, indices), 0, 0
        d = self.distill_config
        stage = 1 if self.step < d.layerwise_steps else 2
        k = layers_in_use(self.step + 1, d.layerwise_steps, len(self.pairing)) if stage == 1 else 0
        tokens, embedding = self._teacher_features(image, indices)
        teacher_logits, prompt = None, None
        if stage == 2 and d.mask_weight > 0:
            spacing = self.teacher.cfg.input.spacing
            prompt = first_click_prompt(target, self.config.run.seed, indices, spacing)
            with torch.no_grad():
                teacher_logits, _ = self.teacher.decode(embedding, *prompt)
        with self._autocast():
            loss = self.wrapped(image, tokens, embedding, max(k, 1), stage, teacher_logits, prompt)
        return loss, stage, k

    def _batches(self) -> Iterator[dict[str, torch.Tensor]]:
        c = self.config
        pool = self.distill_config.cache_pool if self.kind == "distill" else c.data.pool
        sampler = StepBatches(
            self.step, c.run.steps, self.rank, self.world, c.data.batch_size, c.optim.grad_accum
        )

        def fixed_pool(batch: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
            return {key: torch.stack([b[key] for b in batch]) for key in batch[0]}

        dataset: Any = self.dataset
        if pool:
            dataset = _Pooled(self.dataset, pool)
        loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            num_workers=c.data.workers,
            collate_fn=fixed_pool,
            persistent_workers=False,
        )
        return iter(loader)

    def run(self) -> list[dict[str, float]]:
        """Train until ``run.steps``; returns the metric rows of this process's run."""
        c = self.config
        rows: list[dict[str, float]] = []
        batches = self._batches()
        global_batch = self.world * c.optim.grad_accum * c.data.batch_size
        bar = None
        if self.progress and self.rank == 0:
            from tqdm import tqdm

            bar = tqdm(total=c.run.steps, initial=self.step, desc=self.kind, unit="step")
        t_start = time.perf_counter()
        while self.step < c.run.steps:
            t0 = time.perf_counter()
            total = 0.0
            stage = k = 0
            for micro in range(c.optim.grad_accum):
                batch = next(batches)
                sync = (micro == c.optim.grad_accum - 1) or not self.dist
                ctx = contextlib.nullcontext() if sync else self.wrapped.no_sync()  # type: ignore[operator]
                with ctx:
                    loss, stage, k = self._micro_loss(batch)
                    self.scaler.scale(loss / c.optim.grad_accum).backward()
                total += float(loss.detach()) / c.optim.grad_accum
            self.scaler.unscale_(self.optimizer)
            grads = self._grad_norms()
            if c.optim.clip_grad > 0:
                nn.utils.clip_grad_norm_(self.trainable, c.optim.clip_grad)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            lr = self.optimizer.param_groups[0]["lr"]
            self.scheduler.step()
            self.step += 1
            if self.dist:  # on the device: NCCL reduces CUDA tensors only
                t = torch.tensor([total], dtype=torch.float64, device=self.device)
                torch.distributed.all_reduce(t)
                total = float(t) / self.world
            row = {
                "step": self.step,
                "stage": stage,
                "k": k,
                "loss": total,
                "lr": lr,
                "samples_per_s": global_batch / (time.perf_counter() - t0),
                "elapsed_s": time.perf_counter() - t_start,
                **grads,
            }
            rows.append(row)
            if self.rank == 0:
                self._log(row)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{total:.4f}", **({"k": k} if k else {}))
            if self.step % c.run.checkpoint_every == 0 or self.step == c.run.steps:
                self.save_checkpoint()  # every rank: their RNG states go in
            if c.run.validate_every and self.step % c.run.validate_every == 0:
                self.validate()  # every rank: the cases are split
        if bar is not None:
            bar.close()
        if self.rank == 0:
            save_native(
                self.out / "model.safetensors",
                self.model.state_dict(),
                self.model.cfg,
                self.model_name,
            )
        if self.dist:
            torch.distributed.barrier()
        return rows

    def _grad_norms(self) -> dict[str, float]:
        """Gradient norms of the image encoder and of prompt encoder + decoder (where the
        learning signal goes; before clipping)."""
        out = {}
        for key, parts in (
            ("grad_encoder", ("image_encoder",)),
            ("grad_prompt_decoder", ("prompt_encoder", "mask_decoder")),
        ):
            grads = [
                p.grad.detach().float().norm()
                for name in parts
                for p in getattr(self.model, name).parameters()
                if p.grad is not None
            ]
            out[key] = float(torch.stack(grads).norm()) if grads else 0.0
        return out

    # -- logging, checkpoints, validation ---------------------------------------------------

    def _log(self, row: dict[str, float]) -> None:
        path = self.out / "metrics.csv"
        new = not path.exists()
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS, lineterminator="\n")
            if new:
                writer.writeheader()
            writer.writerow(
                {k: (f"{v:.8g}" if isinstance(v, float) else v) for k, v in row.items()}
            )

    def state(self) -> dict[str, Any]:
        """Everything needed to continue: plain tensors and primitives (``weights_only``-safe)."""
        extra = {}
        if self.kind == "distill":
            extra = {
                k: v
                for k, v in self.step_module.state_dict().items()
                if k.startswith("projections.")
            }
        return {
            "format": CHECKPOINT_FORMAT,
            "format_version": 1,
            "kind": self.kind,
            "step": self.step,
            "config": config_to_dict(self.config),
            "model_name": self.model_name,
            "model_config": self.model.cfg.to_dict(),
            "state_dict": self.model.state_dict(),
            "extra": extra,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            # "torch": rank 0's CPU generator (older readers); "ranks": each rank's generators
            "rng": {"torch": torch.get_rng_state(), "ranks": [self._rng_state()]},
        }

    def _rng_state(self) -> dict[str, torch.Tensor]:
        state = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def _seed_global_rng(self, step: int) -> None:
        """Seed torch's global generators from ``(seed, rank, step)``: ranks differ, runs
        repeat. (The data and the clicks do not use them: they come from the sample index.)"""
        seq = np.random.SeedSequence([self.config.run.seed, self.rank, step, 7])
        torch.manual_seed(int(seq.generate_state(1, np.uint64)[0] >> 1))

    def save_checkpoint(self) -> Path | None:
        """Write ``checkpoints/step_N.pt`` and ``last.pt`` atomically (rank 0). Under torchrun
        every rank must call it (their RNG states are gathered into the checkpoint)."""
        rngs = gather_to_rank0(self._rng_state())
        if self.rank != 0:
            return None
        folder = self.out / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"step_{self.step:06d}.pt"
        state = self.state()
        state["rng"]["ranks"] = rngs
        with atomic_output(path) as tmp:
            torch.save(state, tmp)
        with atomic_output(self.out / "last.pt") as tmp:
            shutil.copyfile(path, tmp)
        return path

    def _read(self, path: Path) -> dict[str, Any]:
        """Rank 0 reads the checkpoint and sends it to the others (or its error)."""
        state: Any = None
        if self.rank == 0:
            try:
                if not path.is_file():
                    raise InputError(f"{path}: no checkpoint to resume from")
                state = torch.load(path, map_location="cpu", weights_only=True)
                if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
                    raise InputError(f"{path}: not a fastsam3d training checkpoint")
            except ValueError as err:
                state = {"error": str(err)}
        if self.dist:
            state = from_rank0(state)
        if "error" in state:
            raise InputError(state["error"])
        return dict(state)

    def _resume(self, path: Path) -> None:
        state = self._read(path)
        if state["kind"] != self.kind:
            raise InputError(f"{path}: a {state['kind']} checkpoint cannot resume {self.kind}")
        # Parsed, so checkpoints written before a config field existed compare with its default.
        if ModelConfig.from_dict(state["model_config"]).to_dict() != self.model.cfg.to_dict():
            raise InputError(f"{path}: the checkpoint's model differs from this config's")
        self.model.load_state_dict(state["state_dict"])
        if state["extra"]:
            self.step_module.load_state_dict({**self.step_module.state_dict(), **state["extra"]})
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        ranks = state["rng"].get("ranks") or [{"torch": state["rng"]["torch"]}]
        if len(ranks) == self.world:
            torch.set_rng_state(ranks[self.rank]["torch"])
            if "cuda" in ranks[self.rank] and self.device.type == "cuda":
                torch.cuda.set_rng_state(ranks[self.rank]["cuda"], self.device)
        else:  # another number of processes: fresh generators for this rank and step
            self._seed_global_rng(self.step)
        self._trim_metrics()
        log.info("resumed from %s at step %d", path, self.step)

    def _trim_metrics(self) -> None:
        """Drop the rows of ``metrics.csv`` logged after ``self.step``: those of a run cut off
        after its last checkpoint, or, on a fresh start (step 0), all rows of an earlier run
        in the same folder, so the file describes one run without repeated steps."""
        metrics = self.out / "metrics.csv"
        if self.rank != 0 or not metrics.exists():
            return
        with metrics.open(newline="") as f:
            kept = [r for r in csv.DictReader(f) if int(r["step"]) <= self.step]
        with atomic_output(metrics) as tmp, tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(kept)

    def validate(self) -> dict[str, float]:
        """Evaluate the current model with the harness; appends to ``validation.csv``. Under
        torchrun every rank must call it: the cases are split, rank 0 merges and writes (and
        returns the scores; other ranks return ``{}``)."""
        from ..eval.protocols import Method
        from ..eval.report import read_rows
        from ..eval.runner import EvalConfig, evaluate, merge

        v = self.config.validation
        if v is None or not v.root:
            return {}
        cases = load_cases(v.root, v.layout)[: v.max_cases]
        cfg = EvalConfig(
            protocol="realistic",
            simulator=v.simulator,
            clicks=v.clicks,
            seed=self.config.run.seed,
            structures=v.structures or None,
        )
        out = self.out / "validation" / f"step_{self.step:06d}"
        self.model.eval()
        try:
            method = Method(self.model_name, self.model)
            with contextlib.ExitStack() as stack:
                folder = out  # other ranks work in a scratch folder; evaluate sends rank 0 all
                if self.rank != 0:
                    scratch = tempfile.TemporaryDirectory(prefix="fastsam3d-validation-")
                    folder = Path(stack.enter_context(scratch))
                evaluate(cases, [method], cfg, folder, rank=self.rank, world=self.world)
        finally:
            self.model.train()
            if self.kind == "distill":
                self.model.prompt_encoder.eval()
                self.model.mask_decoder.eval()
        if self.rank != 0:
            return {}
        rows = read_rows(merge(out)[0])
        result = {"step": float(self.step)}
        for k in v.clicks:
            values = [float(r["dice"]) for r in rows if int(r["click"]) == k]
            result[f"dice@{k}"] = sum(values) / len(values) if values else float("nan")
        path = self.out / "validation.csv"
        new = not path.exists()
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(result), lineterminator="\n")
            if new:
                writer.writeheader()
            writer.writerow(result)
        return result


def _copy_if_fits(source: nn.Module, target: nn.Module) -> bool:
    """Load ``source``'s weights into ``target`` when every shape matches."""
    a, b = source.state_dict(), target.state_dict()
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        return False
    target.load_state_dict(a)
    return True


class _Pooled(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """Sample ``k`` -> sample ``k % pool`` (a fixed set of regions, e.g. for cached teacher
    features)."""

    def __init__(self, base: TrainingRegions | EngineRegions | MixedRegions, pool: int) -> None:
        self.base, self.pool = base, pool

    def __len__(self) -> int:
        return self.pool

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.base[index % self.pool]


def _undecayed(module: nn.Module) -> set[int]:
    """Ids of the parameters the usual ViT practice does not decay: vectors (norm gains,
    biases, LayerScale), position embeddings and relative-position tables."""
    return {
        id(p)
        for name, p in module.named_parameters()
        if p.ndim <= 1 or name.endswith("pos_embed") or ".rel_pos_" in name
    }

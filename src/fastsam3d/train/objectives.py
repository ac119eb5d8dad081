"""What is optimised: the interactive click loop and FastSAM3D's two distillation stages.

Both are ``nn.Module`` s whose ``forward`` returns the loss of a micro-batch, so
``DistributedDataParallel`` can wrap them and synchronise gradients on ``backward``.

Layer-wise distillation (FastSAM3D paper, Eq. 1-2): with a student of ``L`` blocks and a teacher
of ``T``, student block ``i`` (1-based) is paired with teacher block ``T i / L`` (teacher layer
``2i`` for 12 -> 6), and at iteration ``t`` of ``n`` the loss is the mean over the first
``k = ceil(t L / n)`` pairs of the mean squared difference of their output tokens. The logit-level
stage then matches the final image embedding (optionally also the mask logits both produce for
the same click, through the teacher's frozen decoder).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..eval.batched_clicks import next_clicks
from ..eval.clicks import CenterClicker, ClickSimulator, SimulatedClick
from ..modeling.sam3d import Sam3D, upsample_logits
from .config import InteractiveConfig
from .data import sample_rng


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Soft Dice (squared denominators) + binary cross-entropy, averaged over the batch
    (MONAI ``DiceCELoss(sigmoid=True, squared_pred=True)``, SAM-Med3D's training loss).

    Args:
        logits, target: ``(B, 1, D, H, W)``; target in {0, 1}.
    """
    prob = torch.sigmoid(logits.float())
    t = target.float()
    dims = tuple(range(2, prob.dim()))
    inter = (prob * t).sum(dims)
    denom = prob.square().sum(dims) + t.square().sum(dims)
    dice = 1.0 - (2.0 * inter + eps) / (denom + eps)
    return dice.mean() + F.binary_cross_entropy_with_logits(logits.float(), t)


def prototype_loss(
    embedding: torch.Tensor, target: torch.Tensor, scale: float = 10.0
) -> torch.Tensor:
    """A direct training signal for the image encoder: every structure must be segmentable from
    the embedding alone by cosine similarity to its own mean embedding (its prototype).

    The prototype of target ``m`` is the mean of the unit-normalised embedding vectors weighted
    by the fraction of each token's cell the target covers; the logits of a token are
    ``scale * (cos(token, prototype) - 0.5)``; the loss is :func:`dice_ce_loss` against those
    fractions. A constant embedding cannot lower it: tokens must differ between structures.

    Args:
        embedding: ``(B, C, g, g, g)`` image embedding.
        target: ``(B, M, S, S, S)`` binary masks, ``S`` a multiple of ``g``.
    """
    cover = F.adaptive_avg_pool3d(target.float(), embedding.shape[-1]).flatten(2)  # (B, M, N)
    tokens = F.normalize(embedding.float().flatten(2), dim=1)  # (B, C, N)
    weights = cover / cover.sum(-1, keepdim=True).clamp_min(1e-6)
    prototypes = F.normalize(torch.einsum("bmn,bcn->bmc", weights, tokens), dim=-1)
    cosine = torch.einsum("bmc,bcn->bmn", prototypes, tokens)  # (B, M, N)
    logits = scale * (cosine - 0.5)
    present = cover.sum(-1) > 0  # (B, M): structures absent from the region carry no signal
    if not bool(present.any()):
        return embedding.new_zeros(())
    return dice_ce_loss(logits[present][:, None], cover[present][:, None])


def layer_pairing(student_depth: int, teacher_depth: int) -> list[int]:
    """Teacher depth paired with each student depth ``1..L``: ``round(T i / L)``."""
    if student_depth < 1 or teacher_depth < student_depth:
        raise InputError(
            f"cannot pair a {student_depth}-block student with a {teacher_depth}-block teacher"
        )
    return [round(teacher_depth * i / student_depth) for i in range(1, student_depth + 1)]


def layers_in_use(iteration: int, total: int, student_depth: int) -> int:
    """Eq. 2: ``k = ceil(iteration * L / total)`` for 1-based ``iteration`` in ``1..total``."""
    if not 1 <= iteration <= total:
        raise InputError(f"iteration {iteration} outside 1..{total}")
    return max(1, min(student_depth, math.ceil(iteration * student_depth / total)))


@torch.no_grad()
def init_from_teacher(student: Sam3D, teacher: Sam3D) -> dict[str, list[str]]:
    """Copy every teacher tensor whose shape fits: patch embedding, position embedding, neck,
    prompt encoder, decoder, and block ``i`` from the paired teacher block.

    Returns ``{"copied": [...], "skipped": [...]}`` (student keys).
    """
    pairing = layer_pairing(student.cfg.encoder.depth, teacher.cfg.encoder.depth)
    t_state = teacher.state_dict()
    copied, skipped = [], []
    for key, value in student.state_dict().items():
        source = key
        if key.startswith("image_encoder.blocks."):
            _, _, index, rest = key.split(".", 3)
            source = f"image_encoder.blocks.{pairing[int(index)] - 1}.{rest}"
        if source in t_state and t_state[source].shape == value.shape:
            value.copy_(t_state[source])
            copied.append(key)
        else:
            skipped.append(key)
    return {"copied": copied, "skipped": skipped}


class InteractiveStep(nn.Module):
    """SAM-Med3D's interactive training on one micro-batch, with the click loop users meet.

    Per sample: ``free_rounds`` (a random count in the configured range) clicks are played
    without gradients, so the model also trains from the states its own later mistakes lead to;
    then ``click_iterations`` rounds, each adding a simulated click (computed from the current
    prediction on the loss grid), decoding the clicks (all, or the newest, per
    ``prompt_points``) with the previous logits, and accumulating Dice + CE; some rounds add no
    click and only feed the logits back. The encoder runs once (with gradients only if it is
    trained). Targets may be given on the model input's grid or a coarser loss grid
    (``S / T`` times coarser); logits are upsampled to the targets' grid.
    """

    def __init__(
        self, model: Sam3D, config: InteractiveConfig, simulator: ClickSimulator, seed: int
    ) -> None:
        super().__init__()
        for name in ("feature_dropout", "vit_path_weight"):
            value = getattr(config, name)
            if value > 0 and not model.cfg.encoder.feature_channels:
                raise InputError(
                    f"[interactive] {name} = {value} needs a model with high-resolution "
                    "decoder features (EncoderConfig.feature_channels); this one has none: "
                    "set it to 0"
                )
        self.model = model
        self.config, self.simulator, self.seed = config, simulator, seed

    def _mask_only(self, rng: np.random.Generator) -> set[int]:
        n, extra = self.config.click_iterations, self.config.mask_only_iterations
        if extra <= 0 or n < 3:
            return set()
        chosen: list[int] = []
        if extra > 1:
            picks = rng.choice(np.arange(1, n - 1), size=min(extra - 1, n - 2), replace=False)
            chosen = [int(c) for c in picks]
        return {n - 1, *chosen}

    def _drop_features(
        self, embedding: torch.Tensor, indices: torch.Tensor, per_region: int
    ) -> torch.Tensor:
        """``(B * M, C, G, G, G)`` encoder output with the packed high-resolution features
        (channels after the ViT's embedding) zeroed for a ``feature_dropout`` share of the
        targets; the draw depends only on the seed, the sample index and the target."""
        drop = [
            sample_rng(self.seed, int(i), stream=50 + m).random() < self.config.feature_dropout
            for i in indices
            for m in range(per_region)
        ]
        if not any(drop):
            return embedding
        keep = torch.tensor([0.0 if d else 1.0 for d in drop], dtype=embedding.dtype)
        keep = keep.to(embedding.device).view(-1, 1, 1, 1, 1)
        d = self.model.cfg.prompt.embed_dim
        return torch.cat([embedding[:, :d], embedding[:, d:] * keep], dim=1)

    def loss_targets(self, target: torch.Tensor) -> torch.Tensor:
        """``(B, M, T, T, T)`` targets on the loss grid: ``config.loss_size`` (area-pooled and
        thresholded at one half) when the given grid is finer."""
        size = self.config.loss_size
        if size and target.shape[-1] > size:
            if target.shape[-1] % size:
                raise InputError(f"loss_size {size} does not divide the target grid {target.shape}")
            pooled = F.avg_pool3d(target.float().flatten(0, 1)[:, None], target.shape[-1] // size)
            return (pooled[:, 0] >= 0.5).float().view(*target.shape[:2], size, size, size)
        return target

    def forward(
        self, image: torch.Tensor, target: torch.Tensor, indices: torch.Tensor
    ) -> torch.Tensor:
        """Mean loss over the click iterations.

        Args:
            image: ``(B, 1, S, S, S)``; target: ``(B, M, T, T, T)`` binary (``T`` divides
                ``S``), ``M`` structures per region (each decoded with its own clicks from the
                region's one embedding);
            indices: ``(B,)`` global sample indices (seed the click simulation).
        """
        model, cfg = self.model, self.config
        size, low = model.cfg.image_size, model.cfg.low_res_size
        target = self.loss_targets(target)
        grid = target.shape[-1]
        factor = size / grid  # model-input voxels per loss cell
        spacing = (model.cfg.input.spacing * factor,) * 3  # mm per loss cell
        mode = cfg.prompt_points if cfg.prompt_points != "auto" else model.cfg.prompt.prompting
        newest_only = mode == "newest"
        per_region = target.shape[1]
        encoder_trains = any(p.requires_grad for p in model.image_encoder.parameters())
        vit_trains = any(
            p.requires_grad
            for n, p in model.image_encoder.named_parameters()
            if not n.startswith("fine_features.")
        )
        with torch.set_grad_enabled(encoder_trains and torch.is_grad_enabled()):
            embedding = model.encode(image)
        weight = cfg.embedding_loss_weight
        vit = embedding[:, : model.cfg.prompt.embed_dim]  # without packed features or detail
        aux = prototype_loss(vit, target) if weight and vit_trains else None
        if per_region > 1 and (embedding.shape[0] > 1 or cfg.feature_dropout > 0):
            # one region's embedding is shared by its targets as is (decode broadcasts it)
            embedding = embedding.repeat_interleave(per_region, dim=0)
        if cfg.feature_dropout > 0:
            embedding = self._drop_features(embedding, indices, per_region)
        d = model.cfg.prompt.embed_dim
        vit_only = (
            torch.cat([embedding[:, :d], torch.zeros_like(embedding[:, d:])], dim=1)
            if cfg.vit_path_weight > 0
            else None
        )
        target = target.reshape(-1, 1, *target.shape[2:])
        b = target.shape[0]
        truth = target[:, 0] > 0.5
        rngs = [
            sample_rng(self.seed, int(i), stream=1 if m == 0 else 100 + m)
            for i in indices
            for m in range(per_region)
        ]
        lo, hi = cfg.free_rounds
        free = int(rngs[0].integers(lo, hi + 1)) if hi > 0 else 0
        mask_only = {free + i for i in self._mask_only(rngs[0])}
        points: list[list[tuple[float, float, float]]] = [[] for _ in range(b)]
        labels: list[list[int]] = [[] for _ in range(b)]
        logits_prev = torch.zeros(b, 1, low, low, low, device=image.device, dtype=model.dtype)
        total = image.new_zeros(())
        for it in range(free + cfg.click_iterations):
            if it == 0 or it not in mask_only:
                view = self._upsample(logits_prev, grid)[:, 0] > 0
                clicks = self._next_clicks(view, truth, rngs, spacing, [len(p) for p in points])
                for s, click in enumerate(clicks):
                    if click is None:  # nothing left to correct: repeat the last click
                        if points[s]:
                            click_point, positive = points[s][-1], labels[s][-1]
                        else:  # an empty target: a negative click at the centre
                            click_point, positive = ((size - 1) / 2,) * 3, 0
                    else:
                        i, j, k = ((c + 0.5) * factor - 0.5 for c in click.index)
                        click_point, positive = (i, j, k), int(click.positive)
                    points[s].append(click_point)
                    labels[s].append(positive)
            pts = torch.tensor(points, dtype=torch.float32, device=image.device)
            lab = torch.tensor(labels, device=image.device)
            if newest_only:
                pts, lab = pts[:, -1:], lab[:, -1:]
            with torch.set_grad_enabled(it >= free and torch.is_grad_enabled()):
                logits, _ = model.decode(embedding, pts, lab, mask_logits=logits_prev)
            if it >= free:
                total = total + dice_ce_loss(self._upsample(logits, grid), target)
                if vit_only is not None:  # the same round from the ViT's embedding alone
                    vit_logits, _ = model.decode(vit_only, pts, lab, mask_logits=logits_prev)
                    vit_loss = dice_ce_loss(self._upsample(vit_logits, grid), target)
                    total = total + cfg.vit_path_weight * vit_loss
            logits_prev = logits.detach()
        total = total / cfg.click_iterations
        return total if aux is None else total + weight * aux

    def _next_clicks(
        self,
        view: torch.Tensor,
        truth: torch.Tensor,
        rngs: list[np.random.Generator],
        spacing: tuple[float, float, float],
        steps: list[int],
    ) -> list[SimulatedClick | None]:
        """Each target's next click from ``(B, T, T, T)`` bool prediction and truth: batched on
        the tensors' device (:mod:`fastsam3d.eval.batched_clicks`) or one target at a time on
        the host, per ``click_backend``; both give the same clicks."""
        backend = self.config.click_backend
        if backend == "auto":
            backend = "device" if view.device.type != "cpu" else "host"
        if backend == "device":
            return next_clicks(self.simulator, view, truth, rngs, spacing, steps)
        v, t = view.cpu().numpy(), truth.cpu().numpy()
        return [
            self.simulator.next_click(v[s], t[s], rngs[s], spacing, steps[s])
            for s in range(len(steps))
        ]

    @staticmethod
    def _upsample(logits: torch.Tensor, grid: int) -> torch.Tensor:
        """Logits on the loss grid (float32), upsampled as at inference."""
        if logits.shape[-1] == grid:
            return logits.float()
        return upsample_logits(logits.float(), grid)


class DistillStep(nn.Module):
    """Student encoder (+ projections when widths differ) against cached or online teacher
    features. ``forward(image, teacher_tokens, teacher_embedding, k, stage)`` -> loss."""

    def __init__(
        self,
        student: Sam3D,
        teacher_width: int,
        mask_weight: float = 0.0,
        decoder_from: Sam3D | None = None,
        seed: int = 0,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        self.student = student
        self.normalize = normalize
        depth = student.cfg.encoder.depth
        width = student.cfg.encoder.embed_dim
        generator = torch.Generator().manual_seed(seed)  # never torch's global RNG
        self.projections = nn.ModuleList(
            nn.Identity() if width == teacher_width else _linear(width, teacher_width, generator)
            for _ in range(depth)
        )
        self.mask_weight = mask_weight
        self.decoder_from = decoder_from  # frozen teacher used for the optional mask loss

    def forward(
        self,
        image: torch.Tensor,
        teacher_tokens: Sequence[torch.Tensor],
        teacher_embedding: torch.Tensor,
        k: int,
        stage: int,
        teacher_logits: torch.Tensor | None = None,
        prompt: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        encoder = self.student.image_encoder
        if stage == 1:
            tokens = encoder.forward_tokens(image.to(self.student.dtype), range(1, k + 1))
            losses = [
                F.mse_loss(
                    self._norm(self.projections[i](tokens[i]).float()),
                    self._norm(teacher_tokens[i].float()),
                )
                for i in range(k)
            ]
            return torch.stack(losses).mean()
        embedding = self.student.encode(image)
        loss = F.mse_loss(embedding.float(), teacher_embedding.float())
        if self.mask_weight > 0 and self.decoder_from is not None and prompt is not None:
            assert teacher_logits is not None
            logits, _ = self.decoder_from.decode(embedding, prompt[0], prompt[1])
            loss = loss + self.mask_weight * F.mse_loss(logits.float(), teacher_logits.float())
        return loss

    def _norm(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens scaled to zero mean and unit variance per token (``normalize``), so that a few
        tokens of huge norm in an un-normalised residual stream do not dominate the MSE."""
        if not self.normalize:
            return tokens
        return F.layer_norm(tokens, tokens.shape[-1:])


def _linear(n_in: int, n_out: int, generator: torch.Generator) -> nn.Linear:
    """A Linear layer initialised from ``generator`` (truncated normal 0.02, zero bias)."""
    layer = nn.Linear(n_in, n_out, device="meta").to_empty(device="cpu")
    nn.init.trunc_normal_(layer.weight, std=0.02, generator=generator)
    nn.init.zeros_(layer.bias)
    return layer


def first_click_prompt(
    target: torch.Tensor, seed: int, indices: torch.Tensor, spacing: float = 1.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """A positive click at the centre of each target (the mask-logit distillation prompt);
    ``spacing``: mm per voxel of ``target`` (the model frame's)."""
    clicker = CenterClicker()
    points = []
    for s, index in enumerate(indices):
        truth = (target[s, 0] > 0.5).cpu().numpy()
        click = clicker.next_click(
            np.zeros_like(truth), truth, sample_rng(seed, int(index), 2), (spacing,) * 3, 0
        )
        points.append([list(click.index) if click is not None else [0, 0, 0]])
    pts = torch.tensor(points, dtype=torch.float32, device=target.device)
    return pts, torch.ones(len(points), 1, dtype=torch.long, device=target.device)

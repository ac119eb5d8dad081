"""Training and distillation configuration, read from TOML; unknown keys are errors.

A file has the tables ``[run]``, ``[data]``, ``[optim]`` and either ``[model]`` +
``[interactive]`` (``fastsam3d train``) or ``[teacher]`` + ``[student]`` + ``[distill]``
(``fastsam3d distill``), plus an optional ``[validation]``. Every field has a default except
where noted; see ``configs/*.toml`` for complete examples.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..config import ModelConfig, SparseAttentionConfig, SparsePattern, dataclass_from_dict
from ..errors import InputError
from ..registry import get_spec


@dataclass(frozen=True)
class RunConfig:
    """``[run]``: where, how long, on what."""

    out_dir: str = "runs/default"
    seed: int = 0
    device: str = "auto"
    """``auto``, ``cpu``, ``cuda`` (under torchrun: ``cuda:LOCAL_RANK``) or ``cuda:N``."""
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    """Process group under torchrun: ``auto`` is NCCL on CUDA and gloo on the CPU."""
    threads: int = 0
    """CPU threads per process (0: torch's default)."""
    steps: int = 100
    """Optimizer steps in all."""
    amp: Literal["none", "bf16", "fp16"] = "none"
    log_every: int = 1
    checkpoint_every: int = 50
    validate_every: int = 0
    """Steps between validations with the evaluation harness (0: never)."""


@dataclass(frozen=True)
class AugmentConfig:
    """``[data.augment]``: applied to each training region."""

    flip: bool = True
    intensity_scale: float = 0.1
    """Multiply the normalised image by ``1 + U(-s, s)``."""
    intensity_shift: float = 0.1
    """Add ``U(-s, s)`` to the normalised image."""
    rotate_deg: float = 0.0
    """Rotate the region by up to this many degrees about a random axis (0: off)."""


@dataclass(frozen=True)
class EngineConfig:
    """``[data.engine]``: the data engine (:mod:`fastsam3d.train.engine`); probabilities per
    region or per target."""

    enabled: bool = False
    """Use the engine (regions anywhere, pseudo-objects, synthetic images; targets on the
    ``S/2`` loss grid) instead of regions around labelled structures."""
    pseudo: float = 0.3
    """Fraction of targets that are supervoxel pseudo-objects."""
    part: float = 0.1
    """Fraction of targets that are parts of labelled structures."""
    supervoxels: tuple[int, ...] = (150, 600, 2400)
    """SLIC segment counts per scan (one scale per region)."""
    compactness: float = 0.05
    merge_neighbours: tuple[int, ...] = (0, 0, 1, 2, 4)
    """A pseudo-object merges this many random neighbours (uniform choice from the list)."""
    size_power: float = 0.0
    """Regions are placed around structures drawn with probability ``voxels ** size_power``
    (0: every structure alike; 0.5 favours large organs, which are few)."""
    others_size_power: float = 0.0
    """The region's other targets (after the first) are drawn among the objects present in it
    with probability ``(cells in the region) ** others_size_power`` (0: every object alike,
    which makes most of them small: ribs, vessels, supervoxels)."""
    uniform_centre: float = 0.15
    """Regions placed uniformly in the scan instead of around a target voxel."""
    rotate_deg: float = 20.0
    scale: float = 0.2
    """Anisotropic scaling: factors in ``[1 - scale, 1 + scale]`` per axis."""
    elastic_mm: float = 6.0
    """Largest amplitude of the smooth elastic displacement."""
    fov_cut: float = 0.25
    """Regions cut to a slab along ROI axis 2 (partial scans)."""
    fov_mm: tuple[float, float] = (30.0, 100.0)
    thick_slices: float = 0.2
    synthetic: float = 0.2
    """Regions whose image is synthesised from the label maps (SynthSeg-style)."""
    blur: float = 0.1
    noise: float = 0.2
    scan_weights: dict[str, float] = field(default_factory=dict)
    """Relative sampling weight per case id (default 1)."""
    cache_dir: str = "runs/.engine-cache"
    """Where supervoxels are cached."""
    share: float = 1.0
    """Share of the samples the engine makes; the rest are regions around labelled structures
    drawn by the ``[data]`` settings (``region_centre``, ``exact_fraction``, ``size_power``,
    ``augment``), e.g. to fit a session's regions while replaying the engine's variety."""
    region_cases: tuple[str, ...] = ()
    """Case ids those regions come from (empty: every training case); the engine uses all."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.share <= 1.0:
            raise InputError(f"[data.engine] share = {self.share}: expected 0..1")


@dataclass(frozen=True)
class DataConfig:
    """``[data]``: which scans, which structures, how regions are drawn."""

    root: str = ""
    """Dataset folder / manifest / sample names (required)."""
    layout: str = "manifest"
    split: str | None = None
    channel: int | None = None
    modality: str = "t1ce"
    structures: tuple[str, ...] = ()
    """Only these structure names (empty: all)."""
    exclude_cases: tuple[str, ...] = ()
    """Case ids never used for training (held out)."""
    min_volume_mm3: float = 1000.0
    jitter_mm: float = 20.0
    """Region centre = the ``region_centre`` point + uniform jitter of up to this many mm per
    axis."""
    region_centre: Literal["box", "core", "deepest", "first_click"] = "box"
    """Where a region is centred before the jitter: the structure's bounding-box centre, a
    uniform voxel of its inner half (farther from its boundary than half the largest
    distance: upstream's first-click rule), as a user's first click centres a session's
    region, or its deepest voxel, with the region shifted into the scan as a session shifts it:
    with no jitter or rotation, exactly the region a session opens at that click, one fixed
    region per structure (the centre-of-error simulator's first click, except where the
    structure touches the scan's edge, which the simulator counts as outside, or where equally
    deep voxels tie). Experiment ``e34``: the model memorises these regions and no longer
    generalises. ``first_click``: like ``deepest``, but centred on a voxel the centre-of-error
    simulator picks as its first click (its edge and tie rules: a uniform draw among the
    equally deep voxels), so the fixed regions are the ones the evaluation opens."""
    exact_fraction: float = 0.0
    """Share of samples that are a session's region exactly (``deepest`` / ``first_click``
    regions with no jitter, rotation, flip or intensity change); the rest get all of them."""
    size_power: float = 0.0
    """Each sample's structure is drawn with probability ``mm3 ** size_power`` (0: every
    structure alike; 0.5 gives a large organ, one of few, more samples than one rib of 24)."""
    batch_size: int = 1
    targets_per_region: int = 1
    """Structures trained per region: the drawn one plus up to N-1 others that appear in it
    (repeated when fewer do). The same image with different targets makes a model trained from
    scratch use its clicks instead of guessing the salient structure."""
    min_voxels_in_region: int = 64
    """Other structures count as appearing in a region from this many model-frame voxels."""
    cache: bool = True
    """Keep decoded volumes and label maps in memory."""
    workers: int = 0
    pool: int = 0
    """Cycle through this many fixed regions (samples ``0..pool-1``; e.g. 1 to check that a
    model can fit one region). 0: every step draws new regions."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)

    def __post_init__(self) -> None:
        if not 0.0 <= self.exact_fraction <= 1.0:
            raise InputError(f"[data] exact_fraction = {self.exact_fraction}: expected 0..1")
        if not 0.0 <= self.size_power <= 2.0:
            raise InputError(f"[data] size_power = {self.size_power}: expected 0..2")
        if self.exact_fraction > 0 and self.region_centre not in ("deepest", "first_click"):
            raise InputError(
                f"[data] exact_fraction = {self.exact_fraction} needs region_centre = "
                f"'deepest' or 'first_click' (a session's region), not {self.region_centre!r}"
            )
        if self.region_centre != "box" and self.engine.enabled and self.engine.share >= 1.0:
            raise InputError(
                f"[data] region_centre = {self.region_centre!r} applies to the labelled "
                "regions only; the data engine places its own: set [data.engine] enabled = "
                "false, share < 1 (a mix) or leave region_centre at 'box'"
            )


@dataclass(frozen=True)
class OptimConfig:
    """``[optim]``: AdamW and the learning-rate schedule."""

    lr: float = 8e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: Literal["constant", "cosine", "multistep"] = "cosine"
    warmup_steps: int = 0
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    grad_accum: int = 1
    clip_grad: float = 0.0
    """Clip the gradient norm to this value (0: off)."""
    decay_vectors: bool = True
    """Apply weight decay to every parameter. False: the usual ViT practice, no decay for
    vectors (norm gains, biases, LayerScale), the position embedding and the relative-position
    tables (decay pulls them to zero, and zero position tables mean position-blind attention)."""


@dataclass(frozen=True)
class ModelSpecConfig:
    """``[model]`` / ``[teacher]`` / ``[student]``: a registry model, optional architecture
    overrides and initial weights."""

    name: str = "fastsam3d"
    checkpoint: tuple[str, ...] = ()
    """Checkpoint file(s); empty: random initialisation (or ``init`` for students)."""
    encoder: dict[str, Any] = field(default_factory=dict)
    """Overrides of :class:`~fastsam3d.config.EncoderConfig` fields (e.g. ``depth = 4``)."""
    prompt: dict[str, Any] = field(default_factory=dict)
    """Overrides of :class:`~fastsam3d.config.PromptEncoderConfig` fields (``click_maps``)."""
    decoder: dict[str, Any] = field(default_factory=dict)
    """Overrides of :class:`~fastsam3d.config.DecoderConfig` fields."""
    sparse: tuple[tuple[int, int], ...] = ()
    """Encoder sparse attention as ``[[segment_length, dilation], ...]`` (empty: dense)."""
    init: Literal["random", "teacher"] = "random"
    """Students: ``teacher`` copies every teacher tensor whose shape fits (paired blocks)."""
    fresh: tuple[str, ...] = ()
    """State-dict prefixes ``checkpoint`` may lack (new parts, e.g. ``mask_decoder.refiner.``),
    initialised from the run's seed; see :func:`fastsam3d.load_model`."""

    def model_config(self) -> ModelConfig:
        """The architecture: the registry entry with the overrides applied."""
        base = get_spec(self.name).config
        encoder = dataclasses.replace(base.encoder, **_tuples(self.encoder))
        if self.sparse:
            patterns = tuple(SparsePattern(int(w), int(r)) for w, r in self.sparse)
            encoder = dataclasses.replace(encoder, sparse=SparseAttentionConfig(patterns))
        prompt = dataclasses.replace(base.prompt, **_tuples(self.prompt))
        decoder = dataclasses.replace(base.decoder, **_tuples(self.decoder))
        return dataclasses.replace(base, encoder=encoder, prompt=prompt, decoder=decoder)


@dataclass(frozen=True)
class InteractiveConfig:
    """``[interactive]``: the click loop of ``fastsam3d train`` (SAM-Med3D's recipe)."""

    click_iterations: int = 11
    simulator: str = "random"
    prompt_points: Literal["auto", "all", "newest"] = "auto"
    """Points decoded each iteration: every click so far (SAM-Med3D's training) or only the
    newest, with the previous logits carrying the rest; ``auto``: the model's own prompting
    (``ModelConfig.prompt.prompting``), which ``Session`` and the evaluation use too."""
    mask_only_iterations: int = 1
    """Iterations (at random positions after the first, plus the last) that add no click and
    only feed the previous logits back."""
    trainable: Literal["all", "decoder", "prompt_decoder", "encoder_last"] = "prompt_decoder"
    """Which parts learn. The encoder's ``S/2`` features of a fine stage
    (``EncoderConfig.fine_feature_channels``) serve only the decoder and train whenever it
    does."""
    unfreeze_last_blocks: int = 0
    """With ``trainable = "encoder_last"``: also train the last N encoder blocks and the neck."""
    decoder_lr_scale: float = 1.0
    """Learning rate of prompt encoder and decoder relative to ``optim.lr`` (upstream: 0.1)."""
    loss_size: int = 0
    """Grid of the loss and the click simulation (e.g. 64 for 128^3 inputs: 8x fewer voxels
    than the input, 10x faster steps); targets on a finer grid are area-pooled to it. 0: the
    targets' own grid (the input's, or the data engine's ``S/2``)."""
    click_backend: Literal["auto", "host", "device"] = "auto"
    """Where the training clicks are simulated: ``host`` (numpy and ``edt``, one target at a
    time), ``device`` (torch, the whole batch at once on the model's device:
    :mod:`fastsam3d.eval.batched_clicks`) or ``auto`` (``device`` on a GPU, ``host`` on the
    CPU, where ``edt`` is faster). Both give the same clicks."""
    free_rounds: tuple[int, int] = (0, 0)
    """Range (inclusive) of the number of clicks played without gradients before the trained
    rounds, so later clicks train from the model's own mistakes (0, 0: none)."""
    embedding_loss_weight: float = 0.0
    """Weight of :func:`~fastsam3d.train.objectives.prototype_loss` on the image embedding (each
    structure must be separable from the embedding alone): a direct signal for an encoder
    trained from scratch, which otherwise learns slowly behind the decoder (0: off)."""
    feature_dropout: float = 0.0
    """Probability, per target, that the high-resolution image features handed to the decoder
    (models with ``EncoderConfig.feature_channels``) are zeroed for the target's whole click
    loop, so the decoder must also segment from the ViT's embedding. Without it the lite
    decoder learned to ignore the embedding (model card). 0: off."""
    vit_path_weight: float = 0.0
    """Weight of a second loss per trained round: the same prompts decoded with the
    high-resolution features zeroed (the ViT's embedding alone), so the decoder keeps a path
    that reads the ViT while the full path also uses the features; inference is unchanged
    (models with ``EncoderConfig.feature_channels``; 0: off)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.feature_dropout <= 1.0:
            raise InputError(
                f"[interactive] feature_dropout must be in [0, 1], got {self.feature_dropout!r}"
            )
        if self.vit_path_weight < 0:
            raise InputError(
                f"[interactive] vit_path_weight must be >= 0, got {self.vit_path_weight!r}"
            )


@dataclass(frozen=True)
class DistillConfig:
    """``[distill]``: the two stages of FastSAM3D's distillation."""

    layerwise_steps: int = 50
    """Stage 1 (Eq. 1-2): progressive layer-wise feature matching for this many steps."""
    logit_steps: int = 50
    """Stage 2: match the teacher's image embedding for this many steps."""
    mask_weight: float = 0.0
    """Stage 2: weight of an extra loss between teacher and student mask logits for the same
    simulated click (0: off)."""
    frozen: tuple[str, ...] = ()
    """Student parameters kept as initialised (state-dict prefixes, e.g.
    ``"image_encoder.stem."`` for a conv stem copied from a teacher of the same stem)."""
    normalize_tokens: bool = False
    """Stage 1: compare per-token normalised features (zero mean, unit variance over channels),
    so that a few tokens of huge norm in a pre-norm teacher do not dominate Eq. 1-2."""
    cache_dir: str = ""
    """Cache teacher features on disk (empty: computed online every step)."""
    cache_pool: int = 0
    """With ``cache_dir``: cycle through this many fixed regions (0: regions are not reused)."""


@dataclass(frozen=True)
class ValidationConfig:
    """``[validation]``: periodic evaluation with the harness (realistic protocol)."""

    root: str = ""
    layout: str = "samples"
    clicks: tuple[int, ...] = (1, 3, 5)
    simulator: str = "center"
    structures: tuple[str, ...] = ()
    max_cases: int = 1


@dataclass(frozen=True)
class TrainConfig:
    """A whole ``fastsam3d train`` / ``fastsam3d distill`` configuration."""

    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    model: ModelSpecConfig | None = None
    interactive: InteractiveConfig | None = None
    teacher: ModelSpecConfig | None = None
    student: ModelSpecConfig | None = None
    distill: DistillConfig | None = None
    validation: ValidationConfig | None = None

    @property
    def kind(self) -> Literal["train", "distill"]:
        return "distill" if self.teacher is not None else "train"

    def check(self, kind: Literal["train", "distill"]) -> None:
        """Raise ``ValueError`` when the tables do not fit the command."""
        if not self.data.root:
            raise InputError("[data] root is required (dataset folder, manifest or sample names)")
        if kind == "train":
            if self.model is None or self.teacher is not None or self.student is not None:
                raise InputError(
                    "fastsam3d train needs a [model] table (and no [teacher]/[student])"
                )
        else:
            if self.teacher is None or self.student is None or self.model is not None:
                raise InputError(
                    "fastsam3d distill needs [teacher] and [student] tables (no [model])"
                )
            if (
                self.distill is not None
                and self.distill.layerwise_steps + self.distill.logit_steps != self.run.steps
            ):
                raise InputError(
                    f"[distill] layerwise_steps + logit_steps "
                    f"({self.distill.layerwise_steps} + {self.distill.logit_steps}) must equal "
                    f"[run] steps ({self.run.steps})"
                )
        if self.run.steps < 1 or self.data.batch_size < 1 or self.optim.grad_accum < 1:
            raise InputError("steps, batch_size and grad_accum must be >= 1")


_TABLES: dict[str, type] = {
    "run": RunConfig,
    "data": DataConfig,
    "optim": OptimConfig,
    "model": ModelSpecConfig,
    "interactive": InteractiveConfig,
    "teacher": ModelSpecConfig,
    "student": ModelSpecConfig,
    "distill": DistillConfig,
    "validation": ValidationConfig,
}


def _tuples(data: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(_tuples_in(v)) if isinstance(v, list) else v for k, v in data.items()}


def _tuples_in(values: list[Any]) -> list[Any]:
    return [tuple(v) if isinstance(v, list) else v for v in values]


def _build(cls: type, data: Any, where: str) -> Any:
    """One section of the TOML file as its dataclass (sub-tables converted; ``Literal``
    fields checked)."""
    nested: dict[str, Callable[[Any, str], Any]] = {}
    if cls is DataConfig:
        nested["augment"] = lambda v, w: _build(AugmentConfig, v, w)
        nested["engine"] = lambda v, w: _build(EngineConfig, v, w)
    if cls is EngineConfig:
        nested["scan_weights"] = _scan_weights
    for key in ("encoder", "prompt", "decoder"):  # architecture overrides stay tables
        nested[key] = _table
    return dataclass_from_dict(cls, data, where, nested, check_choices=True)


def _scan_weights(value: Any, where: str) -> dict[str, float]:
    if not isinstance(value, dict):
        raise InputError(f"{where}: expected a table of case id = weight")
    return {str(k): float(v) for k, v in value.items()}


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InputError(f"{where}: expected a table")
    return dict(value)


def parse_config(data: dict[str, Any], where: str = "config") -> TrainConfig:
    """A :class:`TrainConfig` from a parsed TOML document."""
    unknown = sorted(set(data) - set(_TABLES))
    if unknown:
        raise InputError(f"{where}: unknown tables {unknown}; allowed: {sorted(_TABLES)}")
    tables = {
        name: _build(_TABLES[name], value, f"{where} [{name}]") for name, value in data.items()
    }
    config = TrainConfig(**tables)
    for spec in (config.model, config.teacher, config.student):
        if spec is not None:
            spec.model_config()  # validates names and overrides now, not after data loading
    return config


def load_config(path: str | Path) -> TrainConfig:
    """Read and validate a TOML file."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except OSError as err:
        raise InputError(f"{p}: cannot read the config ({err})") from None
    except tomllib.TOMLDecodeError as err:
        raise InputError(f"{p}: invalid TOML ({err})") from None
    return parse_config(data, str(p))


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """Plain data (for checkpoints and logs)."""
    return {k: v for k, v in dataclasses.asdict(config).items() if v is not None}

"""Running an evaluation over a dataset: tasks, sharding, resumable results, merged outputs.

A *task* is one structure of one case, segmented by one method. Each finished task is written
atomically to ``OUT/parts/`` (its click rows, and its timings separately), so an interrupted run
resumes where it stopped. Under ``torchrun --nproc_per_node N`` (``RANK`` / ``WORLD_SIZE`` in the
environment) cases are dealt out round-robin to the processes (gloo), each writes the parts of its
own tasks, rank 0 gathers every rank's parts through the process group (so the ranks need no
shared folder) and merges them into ``results.csv`` (deterministic: no timings in it),
``timings.csv``, ``summary.md`` and ``dice_vs_clicks.png``. The clicks of a task depend only on
the seed, the case and the structure (not on the process or the method), so every method gets
the same first click and the merged results do not depend on how the work was split.

2D models (:class:`~fastsam3d.eval.slicewise.SliceMethod`) run slice by slice under the 2D
protocol ``protocol`` maps to (:mod:`fastsam3d.eval.slicewise`); their rows say ``dims`` ``2d``.
``total_clicks`` is the clicks a person made (3D rows: ``click``).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import distributed
from ..data.align import labels_on_grid
from ..data.frame import FrameSpec
from ..data.io import read_volume
from ..data.volume import Volume
from ..errors import InputError
from ..files import atomic_output
from .clicks import ClickSimulator, make_simulator
from .datasets import Case, Structure, load_cases
from .protocols import ClickRecord, Method, Protocol, run_paper, run_realistic
from .slicewise import SliceMethod, run_slices

log = logging.getLogger(__name__)

RESULT_FIELDS = (
    "dataset",
    "case",
    "structure",
    "label",
    "method",
    "protocol",
    "simulator",
    "seed",
    "dims",
    "click",
    "total_clicks",
    "positive",
    "i",
    "j",
    "k",
    "dice",
    "nsd",
    "new_region",
    "gt_voxels",
    "gt_mm3",
)
TIMING_FIELDS = ("case", "structure", "method", "click", "time_ms")


@dataclass(frozen=True)
class EvalConfig:
    """What to run.

    Attributes:
        protocol: ``"paper"`` or ``"realistic"``.
        simulator: ``"upstream"``, ``"center"`` or ``"random"``.
        clicks: click counts to report (the run makes ``max(clicks)`` clicks).
        seed: seed of the click simulators.
        logit_quirk: upstream's ``logit > 0.5`` reading of the prediction (paper protocol).
        min_volume_mm3: structures smaller than this are skipped (upstream: 10 mm^3).
        tolerance_mm: normalised surface Dice tolerance.
        structures: evaluate only these structure names (None: all).
        carry_mask: realistic protocol: a new region starts from the mask it covers, as a
            :class:`~fastsam3d.interactive.session.Session` does by default; ``False``: from
            an all-zero mask prompt (how results before that default were measured).
    """

    protocol: Protocol = "realistic"
    simulator: str = "center"
    clicks: tuple[int, ...] = (1, 3, 5, 10)
    seed: int = 0
    logit_quirk: bool = False
    min_volume_mm3: float = 10.0
    tolerance_mm: float = 2.0
    structures: tuple[str, ...] | None = None
    carry_mask: bool = True

    def __post_init__(self) -> None:
        if self.protocol not in ("paper", "realistic"):
            raise InputError(f"protocol must be 'paper' or 'realistic', got {self.protocol!r}")
        if not self.clicks or min(self.clicks) < 1:
            raise InputError(f"clicks must be positive counts, got {self.clicks}")
        make_simulator(self.simulator, self.logit_quirk)  # validates the names

    @property
    def n_clicks(self) -> int:
        return max(self.clicks)


def task_rng(seed: int, case_id: str, structure: str) -> np.random.Generator:
    """The click generator of one task: independent of process, order and method."""
    return np.random.default_rng(
        np.random.SeedSequence([seed, zlib.crc32(case_id.encode()), zlib.crc32(structure.encode())])
    )


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def _part_name(case: Case, structure: str, method: str) -> str:
    return f"{_slug(case.case_id)}__{_slug(structure)}__{_slug(method)}"


def _write_csv_atomic(
    path: Path, fields: Sequence[str], rows: Iterable[Mapping[str, object]]
) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fields), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_output(path) as tmp:
        tmp.write_text(buffer.getvalue())


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else repr(float(value))


def load_targets(case: Case, volume: Volume) -> list[tuple[Structure, np.ndarray]]:
    """Boolean masks of a case's structures on the image grid (label files read once and moved
    onto the image grid when stored differently, see :func:`~fastsam3d.data.align.labels_on_grid`).
    """
    cache: dict[Path, np.ndarray] = {}

    def labels_at(path: Path) -> np.ndarray:
        if path not in cache:
            cache[path] = labels_on_grid(read_volume(path), volume)
        return cache[path]

    structures = list(case.structures)
    if not structures and case.label_map is not None:
        values = np.unique(labels_at(case.label_map))
        structures = [
            Structure(f"label_{int(v)}", case.label_map, int(v)) for v in values if v != 0
        ]
    targets = []
    for s in structures:
        arr = labels_at(s.path)
        targets.append((s, arr != 0 if s.value is None else arr == s.value))
    return targets


def sample_structures(
    sample: str, structures: Sequence[str] = (), min_voxels: int = 0
) -> tuple[Volume, dict[str, np.ndarray]]:
    """A bundled sample's first case: its image and the boolean masks of the structures named
    (default: every structure of at least ``min_voxels`` voxels), in the order asked for. An
    unknown name raises :class:`InputError` listing the structures there are."""
    case = load_cases(sample, "samples")[0]
    volume = read_volume(case.image, channel=case.channel)
    targets = {s.name: m for s, m in load_targets(case, volume)}
    unknown = sorted(set(structures) - set(targets))
    if unknown:
        raise InputError(
            f"{sample}: no structure {', '.join(unknown)}; it has {', '.join(sorted(targets))}"
        )
    names = list(structures) or [n for n, m in targets.items() if m.sum() >= min_voxels]
    return volume, {n: targets[n] for n in names}


def _run_task(
    method: Method | SliceMethod,
    config: EvalConfig,
    volume: Volume,
    gt: np.ndarray,
    simulator: ClickSimulator,
    rng: np.random.Generator,
) -> list[ClickRecord]:
    """One method on one structure under the configured protocol (2D or 3D)."""
    n = config.n_clicks
    if isinstance(method, SliceMethod):
        return run_slices(
            method, config.protocol, volume, gt, simulator, n, rng, config.tolerance_mm
        )
    frame = FrameSpec.for_model(method.model.cfg)
    if config.protocol == "paper":
        return run_paper(method, volume, gt, simulator, n, rng, frame)
    return run_realistic(
        method, volume, gt, simulator, n, rng, frame, config.tolerance_mm, config.carry_mask
    )


def evaluate(
    cases: Sequence[Case],
    methods: Sequence[Method | SliceMethod],
    config: EvalConfig,
    out_dir: Path,
    *,
    rank: int = 0,
    world: int = 1,
    progress: Callable[[Iterable[Case]], Iterable[Case]] | None = None,
) -> None:
    """Run this process's share of the tasks, writing one part per finished task.

    With ``world > 1`` inside a process group of that size (torchrun), every rank then sends the
    parts of its cases to rank 0, which writes those its ``parts/`` lacks: afterwards rank 0
    holds all parts whether or not the ranks share ``out_dir``.
    """
    parts = out_dir / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    simulator = make_simulator(config.simulator, config.logit_quirk)
    mine: Iterable[Case] = [c for n, c in enumerate(cases) if n % world == rank]
    if progress is not None:
        mine = progress(mine)
    names: list[str] = []  # the parts of this rank's cases
    for case in mine:
        wanted = [
            s.name
            for s in case.structures
            if config.structures is None or s.name in config.structures
        ]
        if case.structures and all(
            _done(parts, _part_name(case, n, m.name)) for n in wanted for m in methods
        ):
            names += [_part_name(case, n, m.name) for n in wanted for m in methods]
            continue  # resumed run: this case is finished, do not even read it
        volume = read_volume(case.image, channel=case.channel)
        targets = load_targets(case, volume)
        voxel_mm3 = float(np.prod(volume.spacing))
        for method in methods:
            for structure, gt in targets:
                if config.structures is not None and structure.name not in config.structures:
                    continue
                name = _part_name(case, structure.name, method.name)
                names.append(name)
                if _done(parts, name):
                    continue
                gt_voxels = int(gt.sum())
                if gt_voxels * voxel_mm3 < config.min_volume_mm3:
                    size = f"{gt_voxels} voxels = {gt_voxels * voxel_mm3:.1f} mm3"
                    (parts / f"{name}.skipped").write_text(f"{size} < {config.min_volume_mm3}\n")
                    continue
                rng = task_rng(config.seed, case.case_id, structure.name)
                records = _run_task(method, config, volume, gt, simulator, rng)
                _write_task(
                    parts, name, case, structure, method, config, records, gt_voxels, voxel_mm3
                )
    if world > 1 and distributed.active() and torch.distributed.get_world_size() == world:
        _gather_parts(parts, names)


def _gather_parts(parts: Path, names: Sequence[str]) -> None:
    """Collective: rank 0 receives every rank's part files and writes those it lacks (timings
    and skip notes before the result file that marks a task done)."""
    mine = {}
    for name in names:
        for suffix in (".timing.csv", ".skipped", ".csv"):
            path = parts / f"{name}{suffix}"
            if path.is_file():
                mine[path.name] = path.read_text()
    gathered = distributed.gather_to_rank0(mine)
    for files in gathered or []:
        for file_name, text in files.items():
            path = parts / file_name
            if not path.is_file() or path.read_text() != text:
                with atomic_output(path) as tmp:
                    tmp.write_text(text)
    # No rank leaves (and may tear down its process group) while rank 0 still receives: gloo
    # aborts a sender whose group is destroyed with a send in flight.
    distributed.barrier()


def _done(parts: Path, name: str) -> bool:
    return (parts / f"{name}.csv").exists() or (parts / f"{name}.skipped").exists()


def _write_task(
    parts: Path,
    name: str,
    case: Case,
    structure: Structure,
    method: Method | SliceMethod,
    config: EvalConfig,
    records: list[ClickRecord],
    gt_voxels: int,
    voxel_mm3: float,
) -> None:
    base = {
        "dataset": case.dataset,
        "case": case.case_id,
        "structure": structure.name,
        "label": "" if structure.value is None else structure.value,
        "method": method.name,
        "protocol": config.protocol,
        "simulator": config.simulator + ("+quirk" if config.logit_quirk else ""),
        "seed": config.seed,
        "dims": "2d" if isinstance(method, SliceMethod) else "3d",
        "gt_voxels": gt_voxels,
        "gt_mm3": _fmt(gt_voxels * voxel_mm3),
    }
    rows = []
    for r in records:
        i, j, k = r.index if r.index is not None else ("", "", "")
        rows.append(
            {
                **base,
                "click": r.click,
                "total_clicks": r.click if r.total_clicks is None else r.total_clicks,
                "positive": "" if r.positive is None else int(r.positive),
                "i": i,
                "j": j,
                "k": k,
                "dice": _fmt(r.dice),
                "nsd": _fmt(r.nsd),
                "new_region": int(r.new_region),
            }
        )
    timings = [
        {
            "case": case.case_id,
            "structure": structure.name,
            "method": method.name,
            "click": r.click,
            "time_ms": f"{r.time_ms:.3f}",
        }
        for r in records
    ]
    _write_csv_atomic(parts / f"{name}.timing.csv", TIMING_FIELDS, timings)
    _write_csv_atomic(parts / f"{name}.csv", RESULT_FIELDS, rows)  # written last: marks done


def merge(out_dir: Path) -> tuple[Path, Path]:
    """Concatenate the parts (sorted) into ``results.csv`` and ``timings.csv``."""
    parts = out_dir / "parts"
    results: list[dict[str, str]] = []
    timings: list[dict[str, str]] = []
    for path in sorted(parts.glob("*.csv")):
        with path.open(newline="") as f:
            (timings if path.name.endswith(".timing.csv") else results).extend(csv.DictReader(f))
    order = {"case": str, "structure": str, "method": str, "click": int}

    def key(row: dict[str, str]) -> tuple[object, ...]:
        return tuple(fn(row[k]) for k, fn in order.items())

    results.sort(key=key)
    timings.sort(key=key)
    res_path, tim_path = out_dir / "results.csv", out_dir / "timings.csv"
    _write_csv_atomic(res_path, RESULT_FIELDS, results)
    _write_csv_atomic(tim_path, TIMING_FIELDS, timings)
    return res_path, tim_path


def distributed_context() -> tuple[int, int, bool]:
    """``(rank, world, active)`` from torchrun's environment, joining its process group with
    gloo if none exists yet (evaluation exchanges only small results; models may still run on
    ``cuda:LOCAL_RANK``, see :func:`fastsam3d.distributed.process_device`). ``active``: more
    than one process, so callers synchronise (barrier) before rank 0 merges."""
    info = distributed.launch()
    if info.world == 1:
        return info.rank, 1, False
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo")
    distributed.quiet_other_ranks(info.rank)
    return info.rank, info.world, True

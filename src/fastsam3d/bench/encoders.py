"""Encoder benchmark: median time per ``128^3`` volume of several models, measured in one run.

All candidates are resident at once and timed round-robin (see
:func:`fastsam3d.bench.timing.round_robin`); weights are random (timing does not depend on them).
"""

from __future__ import annotations

import datetime
import os
import platform
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ..build import build_meta, load_model
from ..config import AttentionImpl
from ..modeling.sam3d import Sam3D
from ..registry import get_spec
from ..runtime.onednn import optimize_for_cpu
from .timing import TimingStats, round_robin

Runtime = Literal["torch", "onednn"]


@dataclass(frozen=True)
class Candidate:
    """A model name, the attention implementation and the runtime to time it with.

    ``runtime="onednn"`` times :func:`fastsam3d.runtime.onednn.optimize_for_cpu` of the model.
    """

    model: str
    attn_impl: AttentionImpl = "sdpa"
    runtime: Runtime = "torch"

    @property
    def label(self) -> str:
        suffix = "" if self.runtime == "torch" else f", {self.runtime}"
        return f"{self.model} ({self.attn_impl}{suffix})"

    def load(self) -> Sam3D:
        model = load_model(self.model, attn_impl=self.attn_impl)
        return optimize_for_cpu(model) if self.runtime == "onednn" else model


def machine_info(threads: int) -> dict[str, Any]:
    """CPU model and relevant flags, library versions, thread count, date."""
    cpu, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            first_cpu = f.read().split("\n\n")[0]
        info = {
            key.strip(): value.strip()
            for key, _, value in (line.partition(":") for line in first_cpu.splitlines())
        }
        cpu = info.get("model name", cpu)
        flags = set(info.get("flags", "").split())
    except OSError:
        pass
    interesting = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
    return {
        "cpu": cpu,
        "cpu_flags": [f for f in interesting if f in flags],
        "logical_cpus": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": threads,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def benchmark_encoders(
    candidates: Sequence[Candidate],
    rounds: int = 7,
    warmup: int = 1,
    threads: int = 2,
    progress: Callable[[Iterable[int]], Iterable[int]] | None = None,
) -> dict[str, Any]:
    """Time ``model.encode`` of each candidate on one ``(1, 1, S, S, S)`` fp32 volume.

    Runs with ``torch.set_num_threads(threads)`` and restores the previous count afterwards.

    Returns:
        JSON-ready dict: ``machine``, ``results`` (label -> stats, params), ``rounds``.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _benchmark(candidates, rounds, warmup, threads, progress)
    finally:
        torch.set_num_threads(previous)


def _benchmark(
    candidates: Sequence[Candidate],
    rounds: int,
    warmup: int,
    threads: int,
    progress: Callable[[Iterable[int]], Iterable[int]] | None,
) -> dict[str, Any]:
    models = {c.label: c.load() for c in candidates}
    gen = torch.Generator().manual_seed(0)
    inputs = {
        label: torch.randn(1, 1, *(m.cfg.image_size,) * 3, generator=gen)
        for label, m in models.items()
    }

    def encoder_call(label: str) -> Callable[[], object]:
        model, image = models[label], inputs[label]

        def run() -> object:
            with torch.inference_mode():
                return model.encode(image)

        return run

    encoder_params = {
        c.model: sum(
            p.numel() for p in build_meta(get_spec(c.model).config).image_encoder.parameters()
        )
        for c in candidates
    }
    stats: dict[str, TimingStats] = round_robin(
        {label: encoder_call(label) for label in models}, rounds, warmup, progress=progress
    )
    results = {
        label: {
            "model": c.model,
            "attn_impl": c.attn_impl,
            "runtime": c.runtime,
            "encoder_params": encoder_params[c.model],
            **stats[label].to_dict(),
        }
        for c in candidates
        for label in [c.label]
    }
    return {
        "machine": machine_info(threads),
        "rounds": rounds,
        "warmup": warmup,
        "results": results,
    }


def markdown_table(report: dict[str, Any]) -> str:
    """A Markdown table of :func:`benchmark_encoders` output, with ratios to the fastest."""
    rows = report["results"]
    fastest = min(r["median_ms"] for r in rows.values())
    lines = [
        "| model (attention) | encoder params | median ms | p90 ms | min ms | x fastest "
        "| max foreign load (cores) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, r in rows.items():
        foreign = [f for f in r["foreign_cores"] if f is not None]
        load = f"{max(foreign):.2f}" if foreign else "n/a"
        lines.append(
            f"| {label} | {r['encoder_params'] / 1e6:.1f} M | {r['median_ms']:.0f} | "
            f"{r['p90_ms']:.0f} | {r['min_ms']:.0f} | {r['median_ms'] / fastest:.2f} | {load} |"
        )
    m = report["machine"]
    lines.append("")
    lines.append(
        f"{m['cpu']} ({', '.join(m['cpu_flags'])}), {m['threads']} threads, torch {m['torch']}, "
        f"{report['rounds']} round-robin rounds, {m['date']}"
    )
    return "\n".join(lines)

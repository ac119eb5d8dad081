"""Model benchmark (the paper's Tables 3 and 4): encoder and decoder time per model, runtime and
attention variant, measured side by side in one run, with FLOPs, parameters, accuracy against
fp32 torch and (optionally) peak memory.

All candidates are resident at once and timed round-robin (see
:func:`fastsam3d.bench.timing.round_robin`); weights are random (timing does not depend on
them). Accuracy of a runtime is measured on a region of the bundled sample CT around the liver:
cosine of the embedding and Dice of the first-click mask against the fp32 torch model with the
same weights.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..build import build_meta, load_model
from ..config import AttentionImpl, SparseAttentionConfig, SparsePattern
from ..contract import PromptableModel
from ..modeling.sam3d import upsample_logits
from ..registry import get_spec
from .timing import TimingStats, round_robin

SPARSE = SparseAttentionConfig((SparsePattern(128, 2),))
"""The sparse attention of the benchmark's Table-4 rows: segments of two 8x8 slices, every
second token, per-head offsets."""


@dataclass(frozen=True)
class Candidate:
    """A model, its attention implementation, sparse or dense, and a runtime."""

    model: str
    attn_impl: AttentionImpl = "sdpa"
    runtime: str = "torch"
    sparse: bool = False
    device: str = "cpu"
    dtype: str = "float32"

    @property
    def label(self) -> str:
        parts = (
            [self.attn_impl]
            + (["sparse"] if self.sparse else [])
            + ([] if self.runtime == "torch" else [self.runtime])
        )
        parts += [p for p in (self.device, self.dtype) if p not in ("cpu", "float32")]
        return f"{self.model} ({', '.join(parts)})"

    def torch_model(self) -> Any:
        """The model with its bundled weights, or random weights where it ships none (speed
        does not depend on the values)."""
        return load_model(
            self.model,
            random_weights=get_spec(self.model).weights is None,
            attn_impl=self.attn_impl,
            sparse=SPARSE if self.sparse else "keep",
            device=self.device,
            dtype=getattr(torch, self.dtype),
        )

    def load(self, threads: int | None = None) -> PromptableModel:
        from ..runtime.select import prepare

        return prepare(self.torch_model(), self.runtime, threads=threads)


def machine_info(threads: int) -> dict[str, Any]:
    """CPU model and relevant flags, library versions, thread count, GPU, date."""
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
    versions = {"torch": torch.__version__, "python": platform.python_version()}
    for package in ("onnxruntime", "openvino", "numpy"):
        with contextlib.suppress(ImportError, AttributeError):
            versions[package] = __import__(package).__version__
    return {
        "cpu": cpu,
        "cpu_flags": [f for f in interesting if f in flags],
        "logical_cpus": os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        **versions,
        "threads": threads,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def count_flops(candidate: Candidate) -> dict[str, float]:
    """FLOPs of one encoder pass on the meta device (no compute): every op, attention matmuls
    included (``FlopCounterMode`` under the math SDPA backend), MACs = FLOPs / 2, and the
    Linear + Conv MACs alone (thop/ptflops-style module counting, how the paper's "21.9 G" was
    obtained). Runtimes do not change these counts."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    cfg = get_spec(candidate.model).config.with_attention(
        candidate.attn_impl, encoder_sparse=SPARSE if candidate.sparse else "keep"
    )
    model = build_meta(cfg)
    image = torch.zeros(1, 1, *(cfg.image_size,) * 3, device="meta")
    module_macs = 0

    def hook(
        module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
    ) -> None:
        nonlocal module_macs
        if isinstance(module, torch.nn.Linear):
            module_macs += output.numel() * module.in_features
        elif isinstance(module, torch.nn.Conv3d):
            kernel = int(np.prod(module.kernel_size)) * module.in_channels // module.groups
            module_macs += output.numel() * kernel

    handles = [
        m.register_forward_hook(hook)
        for m in model.image_encoder.modules()
        if isinstance(m, torch.nn.Linear | torch.nn.Conv3d)
    ]
    with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
        model.image_encoder(image)
    for h in handles:
        h.remove()
    flops = counter.get_total_flops()
    return {"gflops": flops / 1e9, "gmacs": flops / 2e9, "linear_conv_gmacs": module_macs / 1e9}


def _accuracy_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A normalised 128^3 region of the sample CT around the liver, and a click at its centre."""
    from ..data.frame import FrameSpec, normalize_roi, resample_to_roi, roi_around
    from ..data.io import read_volume
    from ..samples import label_value, sample

    s = sample("ct")
    volume, labels = read_volume(s.image), read_volume(s.labels).array
    liver = np.argwhere(labels == label_value(s.label_set, "liver"))
    centre = liver.mean(axis=0)
    roi = roi_around(volume, centre, FrameSpec())
    image = normalize_roi(resample_to_roi(volume, roi), "zscore_positive")[None, None]
    to_roi = roi.roi_from_volume(volume)
    point = centre @ to_roi[:3, :3].T + to_roi[:3, 3]
    return image, torch.from_numpy(np.asarray(point, np.float32))[None, None], torch.tensor([[1]])


def _upsampled_mask(logits: torch.Tensor) -> torch.Tensor:
    return upsample_logits(logits, 128) > 0


def benchmark_encoders(
    candidates: Sequence[Candidate],
    rounds: int = 7,
    warmup: int = 1,
    threads: int = 2,
    progress: Callable[[Iterable[int]], Iterable[int]] | None = None,
    decoder: bool = True,
    accuracy: bool = True,
    extra_calls: dict[str, Callable[[], object]] | None = None,
    max_retries: int = 3,
) -> dict[str, Any]:
    """Time encoder (and decoder) of each candidate round-robin; see the module docstring.

    ``extra_calls`` (other models' work, e.g. the 2D baselines) join the same round-robin; their
    statistics come back under ``report["extra"]``. ``max_retries``: see
    :func:`fastsam3d.bench.timing.round_robin`. Runs with ``torch.set_num_threads(threads)``
    and restores the previous count afterwards.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _benchmark(
            candidates,
            rounds,
            warmup,
            threads,
            progress,
            decoder,
            accuracy,
            extra_calls or {},
            max_retries,
        )
    finally:
        torch.set_num_threads(previous)


def _benchmark(
    candidates: Sequence[Candidate],
    rounds: int,
    warmup: int,
    threads: int,
    progress: Callable[[Iterable[int]], Iterable[int]] | None,
    decoder: bool,
    accuracy: bool,
    extra_calls: dict[str, Callable[[], object]],
    max_retries: int,
) -> dict[str, Any]:
    models = {c.label: c.load(threads) for c in candidates}
    devices = {c.label: torch.device(c.device) for c in candidates}
    gen = torch.Generator().manual_seed(0)
    images = {
        label: torch.randn(1, 1, *(m.cfg.image_size,) * 3, generator=gen).to(devices[label])
        for label, m in models.items()
    }
    calls: dict[str, Callable[[], object]] = {}
    for label, model in models.items():
        image = images[label]
        calls[f"{label}|encoder"] = _encoder_call(model, image)
        if decoder:
            with torch.inference_mode():
                embedding = model.encode(image)
            size, low = model.cfg.image_size, model.cfg.low_res_size
            point = torch.tensor([[[size / 2, size / 2 - 3, size / 2 + 2]]]).to(devices[label])
            prev = torch.randn(1, 1, low, low, low, generator=gen).to(devices[label])
            calls[f"{label}|decoder"] = _decoder_call(model, embedding, point, prev, None)
            calls[f"{label}|decoder+upsample"] = _decoder_call(model, embedding, point, prev, size)
    stats: dict[str, TimingStats] = round_robin(
        {**calls, **extra_calls}, rounds, warmup, max_retries=max_retries, progress=progress
    )
    reference = _accuracy_reference(candidates) if accuracy else {}
    results = {}
    for c in candidates:
        label = c.label
        row: dict[str, Any] = {
            "model": c.model,
            "attn_impl": c.attn_impl,
            "runtime": c.runtime,
            "sparse": c.sparse,
            "encoder_params": sum(
                p.numel() for p in build_meta(get_spec(c.model).config).image_encoder.parameters()
            ),
            "total_params": sum(
                p.numel() for p in build_meta(get_spec(c.model).config).parameters()
            ),
            **count_flops(c),
            "encoder": stats[f"{label}|encoder"].to_dict(),
        }
        if decoder:
            row["decoder"] = stats[f"{label}|decoder"].to_dict()
            row["decoder+upsample"] = stats[f"{label}|decoder+upsample"].to_dict()
        if accuracy and (c.model, c.attn_impl, c.sparse) in reference:
            row["accuracy"] = _accuracy(models[label], reference[(c.model, c.attn_impl, c.sparse)])
        results[label] = row
    teacher = next(
        (
            r
            for r in results.values()
            if r["model"] == "sam-med3d"
            and r["runtime"] == "torch"
            and not r["sparse"]
            and r["attn_impl"] == "sdpa"
        ),
        None,
    )
    for row in results.values():
        if teacher is not None:
            row["speedup_vs_teacher"] = (
                teacher["encoder"]["median_ms"] / row["encoder"]["median_ms"]
            )
    return {
        "machine": machine_info(threads),
        "rounds": rounds,
        "warmup": warmup,
        "max_retries": max_retries,
        "results": results,
        "extra": {name: stats[name].to_dict() for name in extra_calls},
    }


def sync_device(device: torch.device) -> None:
    """Wait for the work queued on a CUDA ``device`` (a no-op elsewhere), so timers see it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _encoder_call(model: Any, image: torch.Tensor) -> Callable[[], object]:
    def run() -> object:
        with torch.inference_mode():
            out = model.encode(image)
        sync_device(image.device)  # CUDA runs asynchronously: time the finished work
        return out

    return run


def _decoder_call(
    model: Any,
    embedding: torch.Tensor,
    point: torch.Tensor,
    prev: torch.Tensor,
    upsample: int | None,
) -> Callable[[], object]:
    labels = torch.tensor([[1]], device=point.device)

    def run() -> object:
        with torch.inference_mode():
            out, _ = model.decode(embedding, point, labels, mask_logits=prev)
            if upsample is not None:
                out = upsample_logits(out, upsample) > 0
        sync_device(point.device)
        return out

    return run


def _accuracy_reference(
    candidates: Sequence[Candidate],
) -> dict[tuple[str, str, bool], dict[str, torch.Tensor]]:
    """fp32 torch outputs on the sample-CT region for every (model, attention) benchmarked."""
    image, point, label = _accuracy_inputs()
    out: dict[tuple[str, str, bool], dict[str, torch.Tensor]] = {}
    for c in candidates:
        key = (c.model, c.attn_impl, c.sparse)
        if key in out or get_spec(c.model).config.image_size != 128 or c.device != "cpu":
            continue
        model = Candidate(c.model, c.attn_impl, "torch", c.sparse).torch_model()
        with torch.inference_mode():
            embedding = model.encode(image)
            logits, _ = model.decode(embedding, point, label, torch.zeros(1, 1, 32, 32, 32))
        out[key] = {
            "image": image,
            "point": point,
            "label": label,
            "embedding": embedding,
            "logits": logits,
        }
    return out


def _accuracy(model: Any, ref: dict[str, torch.Tensor]) -> dict[str, float]:
    with torch.inference_mode():
        embedding = model.encode(ref["image"])
        logits, _ = model.decode(
            embedding, ref["point"], ref["label"], torch.zeros(1, 1, 32, 32, 32)
        )
    cos = F.cosine_similarity(embedding.flatten().float(), ref["embedding"].flatten(), dim=0)
    a, b = _upsampled_mask(logits), _upsampled_mask(ref["logits"])
    total = float(a.sum() + b.sum())
    return {
        "embedding_max_abs": float((embedding - ref["embedding"]).abs().max()),
        "embedding_1_minus_cos": float(1 - cos),
        "mask_dice": 2 * float((a & b).sum()) / total if total else 1.0,
    }


def peak_memory_mb(candidate: Candidate, threads: int = 2) -> float:
    """Peak resident memory (MB) of a fresh process that loads the candidate and runs one encode
    and one decode (``VmHWM`` of the new address space: ``ru_maxrss`` would report the parent's
    peak, which survives fork + exec; includes importing torch)."""
    body = (
        "import torch, json\n"
        "from fastsam3d.bench.encoders import Candidate\n"
        f"torch.set_num_threads({threads})\n"
        f"c = Candidate(**json.loads({json.dumps(json.dumps(candidate.__dict__))!s}))\n"
        "m = c.load()\n"
        "s = m.cfg.image_size\n"
        "with torch.inference_mode():\n"
        "    d, low = torch.device(c.device), m.cfg.low_res_size\n"
        "    e = m.encode(torch.randn(1, 1, s, s, s, device=d))\n"
        "    m.decode(e, torch.full((1, 1, 3), s / 2, device=d),"
        " torch.ones(1, 1, dtype=torch.long, device=d),"
        " torch.zeros(1, 1, low, low, low, device=d))\n"
        "cuda = c.device.startswith('cuda')\n"
    )
    return memory_probe(body, candidate.label)


def memory_probe(body: str, label: str) -> float:
    """Run ``body`` in a fresh Python process and return its peak memory in MB: ``VmHWM`` of
    the process, or the CUDA peak where ``body`` sets ``cuda = True``."""
    code = (
        body + "import resource, sys\n"
        "if cuda:\n"
        "    print(torch.cuda.max_memory_allocated() / 2**20)\n"
        "    sys.exit()\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')]\n"
        "print(int(hwm[0].split()[1]) / 1024 if hwm else"
        " resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory probe failed for {label}: {done.stderr[-500:]}")
    return float(done.stdout.strip().splitlines()[-1])


def markdown_table(report: dict[str, Any]) -> str:
    """Markdown tables of :func:`benchmark_encoders` output (Table 3 and Table 4 style)."""
    rows = report["results"]
    has_decoder = any("decoder" in r for r in rows.values())
    lines = [
        "| model (attention, runtime) | params (encoder) | GFLOP / GMAC (Linear+Conv GMAC) "
        "| encoder median ms (p90) | x vs teacher | "
        + ("decoder ms | decoder + 128^3 upsample ms | " if has_decoder else "")
        + "embedding 1-cos | mask Dice vs fp32 | peak MB |",
        "|---|---:|---:|---:|---:|" + ("---:|---:|" if has_decoder else "") + "---:|---:|---:|",
    ]
    for label, r in rows.items():
        enc = r["encoder"]
        acc = r.get("accuracy", {})
        speed = f"{r['speedup_vs_teacher']:.2f}" if "speedup_vs_teacher" in r else "-"
        dec = ""
        if has_decoder:
            dec = f"{r['decoder']['median_ms']:.1f} | {r['decoder+upsample']['median_ms']:.1f} | "
        cos = f"{acc['embedding_1_minus_cos']:.1e}" if acc else "-"
        dice = f"{acc['mask_dice']:.4f}" if acc else "-"
        mem = f"{r['peak_memory_mb']:.0f}" if "peak_memory_mb" in r else "-"
        lines.append(
            f"| {label} | {r['encoder_params'] / 1e6:.1f} M | {r['gflops']:.1f} / {r['gmacs']:.1f} "
            f"({r['linear_conv_gmacs']:.1f}) | {enc['median_ms']:.0f} ({enc['p90_ms']:.0f}) "
            f"| {speed} | {dec}{cos} | {dice} | {mem} |"
        )
    m = report["machine"]
    foreign = [f for r in rows.values() for f in r["encoder"]["foreign_cores"] if f is not None]
    lines.append("")
    lines.append(
        f"{m['cpu']} ({', '.join(m['cpu_flags'])}), {m['threads']} threads, torch {m['torch']}, "
        f"onnxruntime {m.get('onnxruntime', '-')}, openvino {m.get('openvino', '-')}, "
        f"{report['rounds']} round-robin rounds, max foreign load "
        f"{max(foreign) if foreign else float('nan'):.2f} cores, {m['date']}"
    )
    return "\n".join(lines)


def plot_latency(report: dict[str, Any], path: str) -> str:
    """Horizontal bars: encoder and decoder median ms per candidate (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["results"]
    labels = list(rows)
    enc = [rows[k]["encoder"]["median_ms"] for k in labels]
    dec = [rows[k].get("decoder", {}).get("median_ms", 0.0) for k in labels]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(labels) + 1.2), dpi=120)
    y = np.arange(len(labels))
    ax.barh(y - 0.2, enc, height=0.4, label="image encoder (once per region)")
    ax.barh(y + 0.2, dec, height=0.4, label="prompt encoder + decoder (per click)")
    ax.set_yticks(y, labels, fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel(f"ms per 128^3 region, median ({report['machine']['threads']} CPU threads)")
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def default_candidates(
    reference: bool, runtimes: Sequence[str], device: str = "cpu", dtype: str = "float32"
) -> list[Candidate]:
    """Table 3 (models x runtimes) and Table 4 (student attention variants)."""
    if device != "cpu":
        runtimes = ["torch"]  # the exported runtimes run on the CPU
    out = [
        Candidate(m, "sdpa", r, False, device, dtype)
        for m in ("sam-med3d", "fastsam3d")
        for r in runtimes
    ]
    out += [
        Candidate("fastsam3d", impl, "torch", sparse, device, dtype)
        for impl in ("eager", "sdpa")
        for sparse in (False, True)
        if not (impl == "sdpa" and not sparse)
    ]
    if reference:
        out.append(Candidate("sam-med3d", "eager", "torch", False, device, dtype))
    return out

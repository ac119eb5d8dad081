"""The paper's Table 3 with 2D rows: 2D SAMs applied slice by slice to a 128^3 volume next to
the 3D models, timed in one round-robin, with FastSAM3D's acceleration over each.

2D rows (:mod:`fastsam3d.sam2d`, torch runtime only, random weights): the encoder is timed on
``slices`` slices per round (one encode per slice, batch 1, at the model's input size) and the
per-slice median is scaled x128 for a volume; the decoder (one point and the previous mask) is
timed per slice and scaled x128 (a mask on every slice). FLOPs are counted on the meta device
per slice and scaled x128. 3D rows come from :func:`fastsam3d.bench.encoders.benchmark_encoders`
(one encode and one decode per 128^3 volume).

Acceleration (:data:`ACCELERATION_DEFINITION`): each row's time for a whole 128^3 volume divided
by FastSAM3D's, i.e. how many times faster FastSAM3D is than that model on the same volume.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .encoders import Candidate, benchmark_encoders, memory_probe, sync_device

VOLUME_SLICES = 128
"""Slices of the 128^3 volume a 2D model segments slice by slice."""

ACCELERATION_DEFINITION = (
    "x faster = (the row's median time for one 128^3 volume) / (the reference row's, "
    "FastSAM3D torch SDPA dense where benchmarked); encoder: 2D rows per-slice encoder median "
    "x 128, 3D rows one encode; overall: encoder + decoder, 2D rows + 128 per-slice decodes, "
    "3D rows + one decode"
)
"""How the acceleration columns are computed (FastSAM3D paper, Table 3: FastSAM3D's speedup
over each model on the same 128^3 volume)."""

WEIGHTS_NOTE = "random weights (speed does not depend on the values)"


@dataclass(frozen=True)
class Candidate2D:
    """A 2D baseline (torch runtime), timed on ``slices`` slices per round."""

    model: str
    slices: int = 2
    device: str = "cpu"

    @property
    def label(self) -> str:
        return f"{self.model} (2D, torch)"

    def load(self) -> Any:
        from ..sam2d import load_model_2d

        return load_model_2d(self.model, random_weights=True, device=self.device)


def count_flops_2d(model: str) -> dict[str, float]:
    """FLOPs of one slice's encoder pass on the meta device (as :func:`count_flops` for 3D)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from ..sam2d import build_meta_2d

    net = build_meta_2d(model)
    side = net.input_size
    with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
        net.image_encoder(torch.zeros(1, 3, side, side, device="meta"))
    return {"gflops_per_slice": counter.get_total_flops() / 1e9}


def _calls_2d(c: Candidate2D, model: Any) -> dict[str, Callable[[], object]]:
    """Encoder (``c.slices`` slices, one at a time) and decoder (one slice) calls, inputs on
    the model's device; each call waits for its CUDA work to finish."""
    gen = torch.Generator().manual_seed(0)
    side, low, device = model.input_size, model.mask_size, torch.device(model.device)
    slices = [torch.randn(1, 3, side, side, generator=gen).to(device) for _ in range(c.slices)]
    embedding = torch.randn(1, 256, side // 16, side // 16, generator=gen).to(device)
    point = torch.tensor([[[side / 2, side / 2 - 3]]], device=device)
    label = torch.tensor([[1]], device=device)
    prev = torch.randn(1, 1, low, low, generator=gen).to(device)

    def encode() -> object:
        with torch.inference_mode():
            out = [model.encode(s) for s in slices]
        sync_device(device)
        return out

    def decode() -> object:
        with torch.inference_mode():
            out = model.decode(embedding, point, label, mask_logits=prev)
        sync_device(device)
        return out

    return {f"{c.label}|encoder": encode, f"{c.label}|decoder": decode}


def _scaled(stats: dict[str, Any], per_call: int, factor: int) -> dict[str, Any]:
    """``stats`` (ms per call of ``per_call`` slices) -> per slice x ``factor``."""
    scale = factor / per_call
    out = {k: stats[k] * scale for k in ("median_ms", "min_ms", "p90_ms")}
    out["samples_ms"] = [v * scale for v in stats["samples_ms"]]
    out["foreign_cores"] = stats["foreign_cores"]
    return out


def _row_2d(c: Candidate2D, extra: dict[str, Any]) -> dict[str, Any]:
    from ..sam2d import build_meta_2d

    net = build_meta_2d(c.model)
    enc, dec = extra[f"{c.label}|encoder"], extra[f"{c.label}|decoder"]
    flops = count_flops_2d(c.model)["gflops_per_slice"]
    scaled = f"scaled from {c.slices} slice{'s' if c.slices > 1 else ''} x{VOLUME_SLICES}"
    return {
        "kind": "2d",
        "model": c.model,
        "runtime": "torch",
        "input_size": net.input_size,
        "weights": WEIGHTS_NOTE,
        "encoder_params": sum(p.numel() for p in net.image_encoder.parameters()),
        "total_params": sum(p.numel() for p in net.parameters()),
        "gflops_per_slice": flops,
        "gflops": flops * VOLUME_SLICES,
        "gmacs": flops * VOLUME_SLICES / 2,
        "measured_slices": c.slices,
        "volume_slices": VOLUME_SLICES,
        "encoder_per_slice": _scaled(enc, c.slices, 1),
        "encoder_volume": {**_scaled(enc, c.slices, VOLUME_SLICES), "scaled": scaled},
        "encoder_measured": enc,
        "decoder_per_slice": dec,
        "decoder_volume": {
            **_scaled(dec, 1, VOLUME_SLICES),
            "scaled": f"scaled from 1 slice x{VOLUME_SLICES}",
        },
    }


def _row_3d(row: dict[str, Any]) -> dict[str, Any]:
    out = {"kind": "3d", **row, "encoder_volume": row["encoder"]}
    if "decoder" in row:
        out["decoder_volume"] = row["decoder"]
    return out


def _reference(results: dict[str, dict[str, Any]]) -> str | None:
    """FastSAM3D (torch, SDPA, dense) if benchmarked, else the last 3D torch row."""
    threed = [k for k, r in results.items() if r["kind"] == "3d" and r["runtime"] == "torch"]
    fast = [
        k
        for k in threed
        if results[k]["model"] == "fastsam3d"
        and results[k]["attn_impl"] == "sdpa"
        and not results[k]["sparse"]
    ]
    chosen = fast or threed
    return chosen[-1] if chosen else None


def add_acceleration(report: dict[str, Any]) -> None:
    """``acceleration`` of every row against the reference row, from the table's own medians
    (:data:`ACCELERATION_DEFINITION`)."""
    results = report["results"]
    ref_label = _reference(results)
    report["acceleration_reference"] = ref_label
    report["acceleration_definition"] = ACCELERATION_DEFINITION
    if ref_label is None:
        return
    ref = results[ref_label]

    def overall(r: dict[str, Any]) -> float | None:
        if "decoder_volume" not in r:
            return None
        return float(r["encoder_volume"]["median_ms"] + r["decoder_volume"]["median_ms"])

    for row in results.values():
        acc: dict[str, Any] = {
            "encoder_x": row["encoder_volume"]["median_ms"] / ref["encoder_volume"]["median_ms"]
        }
        mine, theirs = overall(row), overall(ref)
        if mine is not None and theirs is not None:
            acc["overall_x"] = mine / theirs
            row["overall_volume_ms"] = mine
        row["acceleration"] = acc


def benchmark_table3(
    candidates: Sequence[Candidate],
    candidates_2d: Sequence[Candidate2D],
    rounds: int = 3,
    warmup: int = 1,
    threads: int = 2,
    progress: Callable[[Iterable[int]], Iterable[int]] | None = None,
    accuracy: bool = True,
    max_retries: int = 3,
) -> dict[str, Any]:
    """2D and 3D rows timed in one round-robin (all models resident); see the module
    docstring."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        models_2d = [(c, c.load()) for c in candidates_2d]
    finally:
        torch.set_num_threads(previous)
    calls: dict[str, Callable[[], object]] = {}
    for c, model in models_2d:
        calls.update(_calls_2d(c, model))
    report = benchmark_encoders(
        candidates,
        rounds,
        warmup,
        threads,
        progress,
        True,
        accuracy,
        extra_calls=calls,
        max_retries=max_retries,
    )
    extra = report.pop("extra")
    results = {label: _row_3d(row) for label, row in report["results"].items()}
    results.update({c.label: _row_2d(c, extra) for c in candidates_2d})
    report.update(results=results, weights=WEIGHTS_NOTE, volume_slices=VOLUME_SLICES)
    add_acceleration(report)
    return report


def peak_memory_mb_2d(c: Candidate2D, threads: int = 2) -> float:
    """Peak resident memory (MB) of a fresh process that loads the 2D model and runs one slice's
    encode and decode (as :func:`fastsam3d.bench.encoders.peak_memory_mb`)."""
    body = (
        "import torch\n"
        "from fastsam3d.sam2d import load_model_2d\n"
        f"torch.set_num_threads({threads})\n"
        f"m = load_model_2d({c.model!r}, random_weights=True, device={c.device!r})\n"
        "s, low, d = m.input_size, m.mask_size, m.device\n"
        "with torch.inference_mode():\n"
        "    e = m.encode(torch.randn(1, 3, s, s, device=d))\n"
        "    m.decode(e, torch.full((1, 1, 2), s / 2, device=d),"
        " torch.ones(1, 1, dtype=torch.long, device=d),"
        " mask_logits=torch.zeros(1, 1, low, low, device=d))\n"
        "cuda = d.type == 'cuda'\n"
    )
    return memory_probe(body, c.label)


def _fmt(value: float) -> str:
    if value != value:  # NaN: not measured
        return "-"
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 1 else f"{value:.2f}"


def markdown_table3(report: dict[str, Any]) -> str:
    """One table, 2D and 3D rows, times for a 128^3 volume and FastSAM3D's acceleration."""
    lines = [
        "| model | params (encoder) | encoder GFLOP per volume (per slice) "
        "| encoder ms per 128^3 volume | decoder ms per slice or volume | overall ms "
        "| FastSAM3D x faster: encoder | overall | peak MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, r in report["results"].items():
        enc, acc = r["encoder_volume"], r.get("acceleration", {})
        per_slice = f" ({_fmt(r['gflops_per_slice'])})" if r["kind"] == "2d" else ""
        enc_text = _fmt(enc["median_ms"]) + (f" ({enc['scaled']})" if "scaled" in enc else "")
        dec = r.get("decoder_volume")
        if dec is None:
            dec_text = "-"
        elif r["kind"] == "2d":
            dec_text = f"{_fmt(r['decoder_per_slice']['median_ms'])} / slice, x128 = "
            dec_text += _fmt(dec["median_ms"])
        else:
            dec_text = _fmt(dec["median_ms"])
        overall = _fmt(r["overall_volume_ms"]) if "overall_volume_ms" in r else "-"
        mem = _fmt(r["peak_memory_mb"]) if "peak_memory_mb" in r else "-"
        lines.append(
            f"| {label} | {r['encoder_params'] / 1e6:.1f} M | {_fmt(r['gflops'])}{per_slice} "
            f"| {enc_text} | {dec_text} | {overall} | {_fmt(acc.get('encoder_x', float('nan')))} "
            f"| {_fmt(acc.get('overall_x', float('nan')))} | {mem} |"
        )
    m = report["machine"]
    lines += [
        "",
        f"{report['acceleration_definition']} (reference row here: "
        f"{report['acceleration_reference']}). {report['weights'].capitalize()}; 2D rows run the "
        f"torch runtime only. {m['cpu']}, {m['logical_cpus']} logical CPUs, {m['threads']} "
        f"threads, torch {m['torch']}, {report['rounds']} round-robin rounds "
        f"(medians), {m['date']}.",
    ]
    return "\n".join(lines)

"""Choosing how a loaded model runs: ``prepare(model, runtime)``.

==================  =====================================================================
``torch``           the model as loaded (any device; the numerical reference)
``onednn``          torch with pre-packed oneDNN linears (CPU, fp32)
``onnxruntime``     exported graphs on ONNX Runtime (CPU, fp32)
``onnxruntime-int8``  the same with dynamic int8 weights (reduced precision)
``openvino``        exported graphs on OpenVINO (CPU, fp32)
``openvino-bf16``   OpenVINO with the bf16 inference hint (reduced precision)
``auto``            CUDA models: ``torch``. CPU: ``openvino-bf16`` where OpenVINO is installed
                    and the CPU computes bf16 natively (AVX512-BF16 or AMX); it was the fastest
                    runtime on the project's machine and passed the accuracy gate (mask Dice
                    >= 0.99 against fp32, ``fastsam3d bench models``). Otherwise ``onednn``
                    (exact fp32), else ``torch``.
==================  =====================================================================

Choose ``onednn``, ``openvino`` or ``torch`` when you need fp32 results.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from ..contract import PromptableModel
from ..errors import InputError
from ..modeling.sam3d import Sam3D
from . import onednn
from .exported import RUNTIMES, ExportedModel

log = logging.getLogger(__name__)

CHOICES = ("auto", "torch", "onednn", *RUNTIMES)


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX-BF16 in ``/proc/cpuinfo`` (False where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


def available(runtime: str) -> bool:
    """Whether ``runtime`` can run here (its package is installed)."""
    if runtime in ("torch", "auto"):
        return True
    if runtime == "onednn":
        return onednn.available()
    package = "openvino" if runtime.startswith("openvino") else "onnxruntime"
    return (
        importlib.util.find_spec(package) is not None
        and importlib.util.find_spec("onnx") is not None
    )


def resolve(runtime: str, model: Sam3D) -> str:
    """The concrete runtime ``auto`` stands for with this model."""
    if runtime not in CHOICES:
        raise InputError(f"unknown runtime {runtime!r}; choose one of {', '.join(CHOICES)}")
    if runtime != "auto":
        if not available(runtime):
            raise InputError(
                f"runtime {runtime!r} is not installed here (pip install fastsam3d[cpu])"
            )
        return runtime
    if model.device.type != "cpu":
        return "torch"
    if available("openvino-bf16") and cpu_has_native_bf16():
        return "openvino-bf16"
    return "onednn" if available("onednn") else "torch"


def prepare(
    model: Sam3D, runtime: str = "auto", threads: int | None = None, cache_dir: Path | None = None
) -> PromptableModel:
    """A model-like object (``cfg``, ``encode``, ``decode``) running on ``runtime``.

    ``cache_dir``: where exported graphs are kept (ONNX Runtime / OpenVINO; default
    :func:`~fastsam3d.runtime.exported.default_cache_dir`).
    """
    chosen = resolve(runtime, model)
    log.info("runtime: %s", chosen)
    if chosen == "torch":
        return model
    if chosen == "onednn":
        return onednn.optimize_for_cpu(model)
    return ExportedModel(model, chosen, threads=threads, cache_dir=cache_dir)

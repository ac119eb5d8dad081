"""Exported-graph runtimes for CPU inference: ONNX Runtime and OpenVINO.

:class:`ExportedModel` has the model interface the :class:`~fastsam3d.interactive.session.Session`,
the CLI and the evaluation harness use (``cfg``, ``device``, ``dtype``, ``encode``,
``decode``), backed by two ONNX graphs exported once from the torch model (the numerical
reference) and cached on disk under a hash of the weights:

- the image encoder ``(B, 1, S, S, S) -> (B, D, G, G, G)``;
- prompt encoder + mask decoder for the single-mask output with a mask prompt:
  ``(embedding, points (B, N, 3), labels (B, N), mask_logits) -> (logits, iou)`` with a dynamic
  number of points. Calls outside that graph (multimask output, ``mask_logits=None``) run on the
  torch model.

Precisions: ``fp32`` (exact up to summation order), ``bf16`` (OpenVINO's bf16 inference hint:
matrix products in bfloat16 where the CPU has AVX512-BF16/AMX), ``int8`` (ONNX Runtime dynamic
int8 quantisation of the weights of matrix products). Reduced precisions change results: check
them with ``fastsam3d bench models --runtimes ...`` (mask Dice vs fp32) before relying on them.
Thread counts are chosen by the caller (``threads``), never by importing this module.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from ..files import atomic_output
from ..modeling.sam3d import Sam3D

log = logging.getLogger(__name__)

Backend = Literal["onnxruntime", "openvino"]
Precision = Literal["fp32", "bf16", "int8"]

RUNTIMES: dict[str, tuple[Backend, Precision]] = {
    "onnxruntime": ("onnxruntime", "fp32"),
    "onnxruntime-int8": ("onnxruntime", "int8"),
    "openvino": ("openvino", "fp32"),
    "openvino-bf16": ("openvino", "bf16"),
}
"""Runtime names accepted by :func:`fastsam3d.runtime.select.prepare` besides ``torch`` and
``onednn``."""


def default_cache_dir() -> Path:
    """``$FASTSAM3D_CACHE`` or ``~/.cache/fastsam3d``."""
    return Path(os.environ.get("FASTSAM3D_CACHE", Path.home() / ".cache" / "fastsam3d"))


def weights_digest(model: Sam3D) -> str:
    """SHA-256 (first 16 hex digits) of the modeling code, torch's version, the config and every
    tensor of the model: exported graphs are rebuilt when any of them changes."""
    digest = hashlib.sha256(torch.__version__.encode())
    for source in sorted((Path(__file__).resolve().parents[1] / "modeling").glob("*.py")):
        digest.update(source.read_bytes())
    digest.update(Path(__file__).read_bytes())
    digest.update(repr(model.cfg.to_dict()).encode())
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class _Encoder(nn.Module):
    """``Sam3D.encode`` as a module (the ViT plus packed features or detail, if any)."""

    def __init__(self, model: Sam3D) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.encode(image)


class _Decoder(nn.Module):
    """The graph exported for clicks: prompt encoder + mask decoder, single-mask output."""

    def __init__(self, model: Sam3D) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        embedding: torch.Tensor,
        points: torch.Tensor,
        labels: torch.Tensor,
        mask_logits: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.decode_unchecked(embedding, points, labels, mask_logits)


def export_onnx(model: Sam3D, folder: Path) -> tuple[Path, Path]:
    """Export encoder and decoder graphs (legacy TorchScript exporter, opset 17) atomically,
    through temporary files unique to the process (torchrun ranks sharing the cache may export
    at once; every reader sees a whole graph)."""
    folder.mkdir(parents=True, exist_ok=True)
    encoder_path, decoder_path = folder / "encoder.onnx", folder / "decoder.onnx"
    cfg = model.cfg
    s, g, low, d = cfg.image_size, cfg.embedding_grid, cfg.low_res_size, model.embedding_channels
    model = model.eval().float()
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes about Python-side shape checks
        if not encoder_path.exists():
            with atomic_output(encoder_path, suffix=".onnx") as tmp:
                torch.onnx.export(
                    _Encoder(model),
                    (torch.zeros(1, 1, s, s, s),),
                    str(tmp),
                    opset_version=17,
                    dynamo=False,
                    input_names=["image"],
                    output_names=["embedding"],
                    dynamic_axes={"image": {0: "batch"}, "embedding": {0: "batch"}},
                )
        if not decoder_path.exists():
            example = (
                torch.zeros(1, d, g, g, g),
                torch.full((1, 2, 3), float(s // 2)),
                torch.tensor([[1, 0]]),
                torch.zeros(1, 1, low, low, low),
            )
            with atomic_output(decoder_path, suffix=".onnx") as tmp:
                torch.onnx.export(
                    _Decoder(model),
                    example,
                    str(tmp),
                    opset_version=17,
                    dynamo=False,
                    input_names=["embedding", "points", "labels", "mask_logits"],
                    output_names=["logits", "iou"],
                    dynamic_axes={
                        "embedding": {0: "batch"},
                        "points": {0: "batch", 1: "points"},
                        "labels": {0: "batch", 1: "points"},
                        "mask_logits": {0: "batch"},
                        "logits": {0: "batch"},
                        "iou": {0: "batch"},
                    },
                )
    return encoder_path, decoder_path


def wait_for_local_rank0(paths: list[Path], timeout_s: float | None = None) -> bool:
    """Under torchrun, let local rank 0 write the exported graphs that are not cached yet: the
    other ranks of a node wait until ``paths`` exist (``True``), or ``timeout_s`` (default
    ``$FASTSAM3D_EXPORT_WAIT_S`` or 1800 s) passes and they export themselves (``False``; the
    atomic writes keep that safe). Elsewhere returns ``False`` at once."""
    from ..distributed import launch, under_torchrun

    if not under_torchrun() or launch().local_rank == 0 or all(p.exists() for p in paths):
        return False
    if timeout_s is None:
        timeout_s = float(os.environ.get("FASTSAM3D_EXPORT_WAIT_S", "1800"))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(p.exists() for p in paths):
            return True
        time.sleep(0.2)
    log.warning("local rank 0 did not export %s in %.0f s: exporting here", paths[0], timeout_s)
    return False


def _quantize_int8(path: Path) -> Path:
    out = path.with_name(path.stem + ".int8.onnx")
    if not out.exists():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # the quantiser logs advice at WARNING on the root logger
        try:
            with atomic_output(out, suffix=".onnx") as tmp:
                quantize_dynamic(str(path), str(tmp), weight_type=QuantType.QInt8)
        finally:
            root.setLevel(level)
    return out


class _OrtGraph:
    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def __call__(self, *arrays: np.ndarray) -> list[np.ndarray]:
        outputs: list[np.ndarray] = self.session.run(
            None, dict(zip(self.inputs, arrays, strict=True))
        )
        return outputs


class _OvGraph:
    def __init__(self, path: Path, threads: int, precision: Precision) -> None:
        import openvino as ov

        core = ov.Core()
        config = {
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        }
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        self.request = self.compiled.create_infer_request()

    def __call__(self, *arrays: np.ndarray) -> list[np.ndarray]:
        result = self.request.infer(list(arrays))
        return [np.asarray(result[out]) for out in self.compiled.outputs]


class ExportedModel:
    """A loaded model running on exported graphs (see the module docstring).

    Args:
        model: the torch model (kept as the reference and for calls outside the graphs).
        runtime: a key of :data:`RUNTIMES`.
        threads: CPU threads for the runtime (default: ``torch.get_num_threads()``).
        cache_dir: where exported graphs are kept (default :func:`default_cache_dir`).
    """

    def __init__(
        self, model: Sam3D, runtime: str, threads: int | None = None, cache_dir: Path | None = None
    ) -> None:
        if runtime not in RUNTIMES:
            raise InputError(f"unknown runtime {runtime!r}; choose one of {sorted(RUNTIMES)}")
        if model.device.type != "cpu":
            raise InputError(
                "exported runtimes run on the CPU; the model is on " + str(model.device)
            )
        self.backend, self.precision = RUNTIMES[runtime]
        self.name = runtime
        self.torch_model = model.eval()
        self.cfg = model.cfg
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        n_threads = threads or torch.get_num_threads()
        folder = (cache_dir or default_cache_dir()) / "onnx" / weights_digest(model)
        t0 = time.perf_counter()
        suffix = ".int8.onnx" if self.precision == "int8" else ".onnx"
        wait_for_local_rank0([folder / f"{part}{suffix}" for part in ("encoder", "decoder")])
        encoder_path, decoder_path = export_onnx(model, folder)
        if self.precision == "int8":
            encoder_path, decoder_path = _quantize_int8(encoder_path), _quantize_int8(decoder_path)
        graph: Any = (
            (lambda p: _OrtGraph(p, n_threads))
            if self.backend == "onnxruntime"
            else (lambda p: _OvGraph(p, n_threads, self.precision))
        )
        self._encoder, self._decoder = graph(encoder_path), graph(decoder_path)
        log.info("%s ready in %.1f s (graphs in %s)", runtime, time.perf_counter() - t0, folder)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, 1, S, S, S)`` -> ``(B, D, G, G, G)`` float32."""
        array = image.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self._encoder(array)[0])

    def decode(
        self,
        embedding: torch.Tensor,
        points: torch.Tensor,
        labels: torch.Tensor,
        mask_logits: torch.Tensor | None = None,
        multimask: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Same contract as :meth:`fastsam3d.Sam3D.decode`."""
        if multimask or mask_logits is None:
            return self.torch_model.decode(embedding, points, labels, mask_logits, multimask)
        self.torch_model.check_prompts(points, labels, mask_logits)
        b = points.shape[0]
        emb = embedding.detach().float()
        if emb.shape[0] == 1 and b > 1:
            emb = emb.expand(b, -1, -1, -1, -1)
        logits, iou = self._decoder(
            emb.contiguous().numpy(),
            points.detach().float().contiguous().numpy(),
            labels.detach().to(torch.int64).contiguous().numpy(),
            mask_logits.detach().float().contiguous().numpy(),
        )
        return torch.from_numpy(logits), torch.from_numpy(iou)

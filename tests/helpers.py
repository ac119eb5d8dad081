"""Test helpers: synthetic volumes with known geometry, DICOM writing, an oracle model, torchrun."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fastsam3d.contract import RegionFrame


def rotation(ax: float, az: float) -> np.ndarray:
    """Rotation by ``ax`` degrees about x then ``az`` about z."""
    a, b = np.radians(ax), np.radians(az)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    return rz @ rx


def make_affine(direction: np.ndarray, spacing, origin) -> np.ndarray:
    """Voxel -> RAS affine from a direction matrix (columns), spacing and origin."""
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(direction) * np.asarray(spacing, dtype=float)
    affine[:3, 3] = origin
    return affine


GEOMETRIES = {
    # name: (shape, direction (columns in RAS), spacing mm)
    "ras-anisotropic-odd": ((47, 41, 29), np.eye(3), (1.1, 1.3, 2.5)),
    "lps": ((45, 43, 31), np.diag([-1.0, -1.0, 1.0]), (1.0, 1.0, 2.0)),
    "permuted-flipped": (
        (33, 50, 44),
        np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], float),
        (2.0, 1.2, 1.4),
    ),
    "oblique": ((48, 46, 34), rotation(20, 35), (1.0, 1.1, 1.7)),
    "iso-1.5": ((60, 55, 50), np.eye(3), (1.5, 1.5, 1.5)),
    "iso-3": ((40, 35, 30), np.diag([-1.0, 1.0, 1.0]), (3.0, 3.0, 3.0)),
}


def blob_volume(shape, affine, center_world, radius_mm: float) -> np.ndarray:
    """1 inside a sphere (by world distance of voxel centres), 0 outside; float32."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    inside = np.linalg.norm(world - center_world, axis=1) <= radius_mm
    return inside.reshape(shape).astype(np.float32)


def write_dicom_series(
    array: np.ndarray,
    affine_ras: np.ndarray,
    folder: Path,
    series_uid: str = "1.2.826.0.1.3680043.2.1125.1",
) -> None:
    """Write an ``(I, J, K)`` int16 array as a DICOM series, one file per k-slice (LPS tags)."""
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_ras
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    volume = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)).astype(np.int16))
    volume.SetSpacing(tuple(spacing))
    volume.SetOrigin(tuple(lps[:3, 3]))
    volume.SetDirection(tuple(direction.ravel()))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    orientation = "\\".join(f"{v:.10f}" for v in (*direction[:, 0], *direction[:, 1]))
    for k in range(array.shape[2]):
        image = volume[:, :, k]
        position = volume.TransformIndexToPhysicalPoint((0, 0, k))
        for tag, value in {
            "0008|0060": "CT",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.9",
            "0020|000e": series_uid,
            "0008|0018": f"{series_uid}.{k + 1}",
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.10f}" for v in position),
            "0020|0037": orientation,
            "0018|0050": f"{spacing[2]:.10f}",
            "0028|0030": f"{spacing[1]:.10f}\\{spacing[0]:.10f}",
        }.items():
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:04d}.dcm"))
        writer.Execute(image)


class OracleModel:
    """Stand-in for ``Sam3D`` that segments bright voxels: the embedding is the ROI image itself
    and the logits are its ``factor``-cubed block means minus 0.5 (``factor=1``: the image at full
    resolution, i.e. exactly the truth when the image is the truth). Records what it was given."""

    def __init__(self, size: int = 128, factor: int = 4) -> None:
        self.factor = factor
        self.cfg = RegionFrame(size, size // factor)
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.encode_calls = 0
        self.calls: list[dict[str, torch.Tensor | None]] = []

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        self.encode_calls += 1
        return image.clone()

    def decode(self, embedding, points, labels, mask_logits=None, multimask=False):
        self.calls.append({"points": points.clone(), "labels": labels.clone(), "mask": mask_logits})
        logits = F.avg_pool3d(embedding, self.factor) - 0.5
        return logits, torch.ones(points.shape[0], 1)


def start_torchrun(args: Sequence[str]) -> subprocess.Popen[str]:
    """``python -m torch.distributed.run ARGS`` with one thread per worker, output captured."""
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        encoding="utf-8",
        errors="replace",
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def finish_torchrun(procs: Sequence[subprocess.Popen[str]], timeout: float = 120) -> list[str]:
    """Wait for torchrun launches and assert that they succeeded; returns their outputs.

    On a timeout (a hung collective) each launcher gets SIGTERM, on which torchrun stops its
    workers (they run in sessions of their own, out of reach of a plain kill), then SIGKILL.
    """
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=timeout)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    for proc, text in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, text[-3000:]
    return outputs

"""Byte encodings the server sends: NIfTI images for the viewer, compact label maps.

Every array is ``(I, J, K)`` on the image's own grid; NIfTI files carry the volume's
voxel -> RAS+ affine as sform and qform, so the image and its label map overlay exactly in any
viewer. The compact label map is the uint8 voxel values in NIfTI order (``i`` fastest, i.e.
Fortran order), gzip-compressed; a viewer that loaded the label NIfTI can copy it straight into
its voxel buffer.
"""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np

from ..data.volume import Volume
from ..errors import InputError

LEVEL = 1  # fastest gzip level: label maps are mostly zeros and compress well anyway


def nifti_gz(array: np.ndarray, volume: Volume) -> bytes:
    """A gzip-compressed NIfTI-1 file of ``array`` ``(I, J, K)`` on ``volume``'s grid."""
    if array.shape != volume.shape:
        raise InputError(f"array shape {array.shape} differs from the image {volume.shape}")
    image = nib.Nifti1Image(np.asarray(array), np.asarray(volume.affine, dtype=np.float64))
    image.header.set_xyzt_units("mm")
    image.set_sform(volume.affine, code=1)
    image.set_qform(volume.affine, code=1)
    return gzip.compress(image.to_bytes(), compresslevel=LEVEL)


def display_image(volume: Volume) -> np.ndarray:
    """The image's voxels in the smallest type a browser viewer reads without loss
    (int16 when the values are integers within its range, else float32)."""
    data = np.asarray(volume.array)
    if data.dtype.kind in "iub" and data.size:
        lo, hi = int(data.min()), int(data.max())
        if lo >= np.iinfo(np.int16).min and hi <= np.iinfo(np.int16).max:
            return data.astype(np.int16)
    return data.astype(np.float32)


def compact_labels(labels: np.ndarray) -> bytes:
    """``(I, J, K)`` uint8 labels -> gzip of the raw bytes in Fortran order."""
    if labels.dtype != np.uint8:
        raise InputError(f"labels must be uint8, got {labels.dtype}")
    return gzip.compress(np.asfortranarray(labels).tobytes(order="F"), compresslevel=LEVEL)


def decode_compact(data: bytes, shape: tuple[int, int, int]) -> np.ndarray:
    """Inverse of :func:`compact_labels` for raw (already gunzipped) bytes."""
    flat = np.frombuffer(data, dtype=np.uint8)
    if flat.size != int(np.prod(shape)):
        raise InputError(f"{flat.size} label bytes do not fill a {shape} grid")
    return flat.reshape(shape, order="F")

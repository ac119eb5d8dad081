"""Reading volumes (NIfTI, NRRD, MHA/MHD, DICOM series) and writing masks on their exact grid.

- NIfTI: geometry and header from nibabel (qform/sform and their codes are kept exactly, so a
  mask written back has the input's header); voxel data from SimpleITK when it can read the file
  (it decompresses ``.nii.gz`` several times faster), else from nibabel.
- NRRD, MHA/MHD and DICOM series (a folder): SimpleITK (GDCM for DICOM).

Writing is atomic: data goes to a temporary file next to the target, which then replaces the
target in one step, so a failure never leaves a half-written or clobbered file. Errors are
:class:`VolumeError` (a ``ValueError``) naming the file, the value and the expected form.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..files import atomic_output
from .formats import READ_FORMATS, WRITE_FORMATS, suffix_of
from .volume import RAS_FROM_LPS, Volume, VolumeError, VolumeSource, check_voxels


def volume_format(path: Path) -> str:
    """``"nifti" | "nrrd" | "mha" | "mhd" | "dicom"`` from a path; ``VolumeError`` otherwise."""
    if path.is_dir():
        return "dicom"
    suffix = suffix_of(path)
    if suffix in READ_FORMATS:
        return READ_FORMATS[suffix]
    raise VolumeError(
        f"{path}: unknown volume format {suffix!r}; expected .nii, .nii.gz, .nrrd, .nhdr, .mha, "
        ".mhd or a DICOM folder"
    )


def read_volume(path: str | os.PathLike[str], channel: int | None = None) -> Volume:
    """Read a 3D image.

    Args:
        path: a NIfTI/NRRD/MHA/MHD file, a DICOM folder holding one series, or one DICOM file
            (its series is read from the same folder).
        channel: for 4D images (time series, multi-component), the 0-based index along the 4th
            axis to use. Required for such images; an error otherwise.

    Raises:
        VolumeError: missing, unreadable, corrupt, 2D, 4D without ``channel``, non-finite voxels,
            non-positive spacing, an empty DICOM folder or one with several series.
    """
    p = Path(path)
    if not p.exists():
        raise VolumeError(f"{p}: no such file or folder")
    fmt = volume_format(p)
    try:
        if fmt == "nifti":
            volume = _read_nifti(p, channel)
        elif fmt == "dicom":
            volume = _read_dicom(p, channel)
        else:
            volume = _read_itk_file(p, fmt, channel)
    except VolumeError:
        raise
    except (OSError, RuntimeError, ValueError, EOFError) as err:
        raise VolumeError(f"{p}: cannot read {fmt} volume ({_first_line(err)})") from None
    check_voxels(volume)
    return volume


def _first_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:300] if text else type(err).__name__


def _select_channel(
    data: np.ndarray, channel: int | None, path: Path, axis_name: str
) -> np.ndarray:
    """Reduce ``(I, J, K, C)`` to ``(I, J, K)``; refuse 2D and unrequested 4D."""
    squeezed = data.shape
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 3 and channel not in (None, 0):
        raise VolumeError(f"{path}: channel {channel} requested but the image is 3D {squeezed}")
    if data.ndim == 4:
        if channel is None:
            raise VolumeError(
                f"{path}: 4D image {squeezed} ({data.shape[3]} {axis_name}); choose one with "
                f"channel=0..{data.shape[3] - 1} (CLI: --channel)"
            )
        if not 0 <= channel < data.shape[3]:
            raise VolumeError(
                f"{path}: channel {channel} out of range 0..{data.shape[3] - 1} for {squeezed}"
            )
        data = data[..., channel]
    if data.ndim != 3 or min(data.shape) < 2:
        raise VolumeError(
            f"{path}: not a 3D volume (shape {squeezed}); fastsam3d segments 3D images with at "
            "least 2 voxels along every axis"
        )
    return data


# -- NIfTI --------------------------------------------------------------------------------------


def _read_nifti(path: Path, channel: int | None) -> Volume:
    import nibabel as nib

    try:
        img = nib.load(str(path))
    except Exception as err:  # nibabel raises several types for damaged headers
        raise VolumeError(f"{path}: not a readable NIfTI file ({_first_line(err)})") from None
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise VolumeError(f"{path}: not a NIfTI-1/2 image ({type(img).__name__})")
    zooms = _raw_spacing(path, type(img.header))
    if len(img.shape) >= 3 and any(z <= 0 for z in zooms):
        raise VolumeError(
            f"{path}: voxel spacing must be positive, the header's pixdim[1:4] is "
            f"{tuple(float(z) for z in zooms)}"
        )
    data = _nifti_voxels(path, img)
    data = _select_channel(data, channel, path, "volumes")
    affine = np.asarray(img.affine, dtype=np.float64)
    return Volume(data, affine, VolumeSource(path, "nifti", nifti_header=img.header.copy()))


def _raw_spacing(path: Path, header_class: Any) -> tuple[float, ...]:
    """``pixdim[1:4]`` as stored (nibabel's loader silently replaces 0 by 1 and negatives by
    their absolute value)."""
    from nibabel.openers import ImageOpener

    with ImageOpener(str(path)) as f:
        raw = header_class.from_fileobj(f, check=False)
    return tuple(float(v) for v in raw["pixdim"][1:4])


def _complete_on_disk(path: Path, img: Any) -> bool:
    """Whether the file holds all the voxel bytes its header announces.

    SimpleITK zero-fills a truncated file without an error, so it is only trusted when this
    holds: for ``.nii.gz`` the gzip trailer's uncompressed size (mod 2^32) must equal header
    offset + voxel bytes; for ``.nii`` the file must be at least that long.
    """
    header = img.header
    expected = int(header.get_data_offset()) + int(
        np.prod(header.get_data_shape()) * header.get_data_dtype().itemsize
    )
    size = path.stat().st_size
    if suffix_of(path) == ".nii":
        return size >= expected
    if size < 18:
        return False
    with path.open("rb") as f:
        f.seek(-4, os.SEEK_END)
        isize = int.from_bytes(f.read(4), "little")
    return isize == expected % (1 << 32)


def _nifti_voxels(path: Path, img: Any) -> np.ndarray:
    """Voxels in file index order; SimpleITK first (fast gzip), nibabel as the fallback (it
    reports truncated or corrupt data, which SimpleITK may zero-fill)."""
    shape = tuple(int(n) for n in img.shape)
    if len(shape) == 3 and _complete_on_disk(path, img):
        try:
            import SimpleITK as sitk

            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.SetImageIO("NiftiImageIO")
            image = reader.Execute()
            # the view is only valid while `image` lives: copy before leaving this scope
            data = np.ascontiguousarray(sitk.GetArrayViewFromImage(image).transpose(2, 1, 0))
            del image
            if data.shape == shape:
                return data
        except (ImportError, RuntimeError):
            pass  # e.g. non-orthonormal sform that ITK refuses
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as err:
        raise VolumeError(f"{path}: cannot read voxel data ({_first_line(err)})") from None
    if data.dtype == np.float64:
        data = data.astype(np.float32)
    return data


# -- ITK formats and DICOM ----------------------------------------------------------------------


def _volume_from_itk(
    image: Any, path: Path, fmt: str, channel: int | None, meta: dict[str, str]
) -> Volume:
    import SimpleITK as sitk

    dim = image.GetDimension()
    if dim == 2:
        raise VolumeError(f"{path}: 2D image {image.GetSize()}; fastsam3d segments 3D volumes")
    if dim not in (3, 4):
        raise VolumeError(f"{path}: {dim}D image {image.GetSize()}; expected 3D")
    spacing = image.GetSpacing()
    if any(s <= 0 for s in spacing[:3]):
        raise VolumeError(f"{path}: voxel spacing must be positive, got {spacing}")
    arr = sitk.GetArrayFromImage(image)  # (K, J, I[, C]) or (T, K, J, I) for 4D
    if dim == 4:
        arr = np.moveaxis(arr, 0, -1)  # (K, J, I, T)
        origin, direction = image.GetOrigin()[:3], _direction_3x3(image.GetDirection(), 4)
        spacing = spacing[:3]
    else:
        origin, direction = image.GetOrigin(), tuple(image.GetDirection())
    if arr.ndim == 4:
        data = np.ascontiguousarray(arr.transpose(2, 1, 0, 3))
        data = _select_channel(data, channel, path, "components")
    else:
        data = _select_channel(np.ascontiguousarray(arr.transpose(2, 1, 0)), channel, path, "")
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(direction, dtype=np.float64).reshape(3, 3) * np.asarray(spacing)
    lps[:3, 3] = origin
    source = VolumeSource(
        path, fmt, itk_geometry=(tuple(origin), tuple(spacing), tuple(direction)), metadata=meta
    )
    return Volume(data, RAS_FROM_LPS @ lps, source)


def _direction_3x3(direction: tuple[float, ...], dim: int) -> tuple[float, ...]:
    m = np.asarray(direction).reshape(dim, dim)[:3, :3]
    return tuple(float(v) for v in m.ravel())


def _read_itk_file(path: Path, fmt: str, channel: int | None) -> Volume:
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise VolumeError(f"{path}: not a readable {fmt} file ({_first_line(err)})") from None
    return _volume_from_itk(image, path, fmt, channel, {})


_DICOM_TAGS = {
    "0008|0060": "modality",
    "0008|103e": "series_description",
    "0020|000e": "series_instance_uid",
}


def dicom_series(folder: Path) -> dict[str, list[str]]:
    """Series instance UID -> sorted file names of every DICOM series in ``folder``."""
    import SimpleITK as sitk

    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    return {
        uid: list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)) for uid in ids
    }


def _read_dicom(path: Path, channel: int | None, series_uid: str | None = None) -> Volume:
    import SimpleITK as sitk

    folder = path if path.is_dir() else path.parent
    series = dicom_series(folder)
    if not path.is_dir():  # one file given: use the series it belongs to
        series = {uid: files for uid, files in series.items() if str(path) in files}
    if not series:
        raise VolumeError(
            f"{path}: no DICOM series found (empty folder or no readable DICOM files)"
        )
    if len(series) > 1:
        listing = ", ".join(
            f"{uid or '<no UID>'} ({len(files)} files)" for uid, files in series.items()
        )
        raise VolumeError(
            f"{folder}: {len(series)} DICOM series in one folder ({listing}); put each series in "
            "its own folder or pass one of its files"
        )
    (files,) = series.values()
    if len(files) < 2:
        raise VolumeError(f"{folder}: the DICOM series has {len(files)} slice; need a 3D series")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except RuntimeError as err:
        raise VolumeError(f"{folder}: cannot read the DICOM series ({_first_line(err)})") from None
    meta = {
        name: reader.GetMetaData(0, tag).strip()
        for tag, name in _DICOM_TAGS.items()
        if reader.HasMetaDataKey(0, tag)
    }
    return _volume_from_itk(image, folder, "dicom", channel, meta)


# -- writing ------------------------------------------------------------------------------------


def output_format(path: Path) -> str:
    """The format an output path asks for (``"nifti"``, ``"nrrd"``, ``"mha"``, ``"dicom-seg"``)."""
    suffix = suffix_of(path)
    if suffix in WRITE_FORMATS:
        return WRITE_FORMATS[suffix]
    raise VolumeError(
        f"{path}: cannot write {suffix or 'a file without suffix'}; use .nii.gz, .nii, .nrrd, "
        ".mha (single-file formats, so the write is atomic) or .dcm (a DICOM Segmentation, for "
        "images read from a DICOM series)"
    )


def check_output_path(path: str | os.PathLike[str], inputs: tuple[Path, ...] = ()) -> Path:
    """Validate an output path before any work: format, not an input, folder writable."""
    p = Path(path)
    output_format(p)
    for src in inputs:
        if p.resolve() == Path(src).resolve() or (
            Path(src).is_dir() and Path(src).resolve() in p.resolve().parents
        ):
            raise VolumeError(f"{p}: output would overwrite the input {src}; choose another path")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise VolumeError(f"{p}: output folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise VolumeError(f"{p}: not writable")
    return p


def write_label_map(labels: np.ndarray, like: Volume, path: str | os.PathLike[str]) -> Path:
    """Write a mask / label map ``(I, J, K)`` on exactly the grid of ``like``, atomically.

    The format follows the suffix of ``path``. A NIfTI output of a NIfTI input keeps the input's
    header (qform, sform, codes, units); other combinations take the geometry from ``like``'s
    affine (ITK inputs written to ITK formats reuse ITK's own origin/spacing/direction values).
    Booleans are written as uint8 (0/1); label maps as the smallest unsigned type that fits.
    """
    p = Path(path)
    if labels.shape != like.shape:
        raise VolumeError(f"{p}: mask shape {labels.shape} differs from the image {like.shape}")
    fmt = output_format(p)
    data = _label_dtype(labels)
    if fmt == "dicom-seg":
        from .dicom_seg import SegmentInfo, write_dicom_seg

        values = [int(v) for v in np.unique(data) if v != 0] or [1]
        segments = [SegmentInfo(v, f"object {v}") for v in values]
        return write_dicom_seg(data, like, p, segments)
    if fmt == "nifti":
        _atomic_write(p, lambda tmp: _write_nifti(data, like, tmp))
    else:
        _atomic_write(p, lambda tmp: _write_itk(data, like, tmp))
    return p


def _label_dtype(labels: np.ndarray) -> np.ndarray:
    if labels.dtype == bool:
        return labels.astype(np.uint8)
    if labels.dtype.kind not in "iu" or (labels.size and labels.min() < 0):
        raise VolumeError(f"labels must be booleans or non-negative integers, got {labels.dtype}")
    top = int(labels.max()) if labels.size else 0
    for dtype in (np.uint8, np.uint16, np.uint32):
        if top <= np.iinfo(dtype).max:
            return labels.astype(dtype)
    raise VolumeError(f"label value {top} too large")


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    suffix = suffix_of(path)
    try:
        with atomic_output(path, suffix=f".tmp{suffix}") as tmp:
            write(tmp)
    except VolumeError:
        raise
    except Exception as err:
        raise VolumeError(
            f"{path}: writing failed ({_first_line(err)}); nothing was changed"
        ) from None


def _write_nifti(data: np.ndarray, like: Volume, path: Path) -> None:
    import nibabel as nib

    header = like.source.nifti_header if like.source is not None else None
    if header is not None:
        hdr = header.copy()
        hdr.set_data_dtype(data.dtype)
        hdr.set_slope_inter(1.0, 0.0)
        hdr["cal_min"], hdr["cal_max"] = 0, 0
        img = (
            nib.Nifti1Image(data, None, header=hdr)
            if isinstance(hdr, nib.Nifti1Header)
            else nib.Nifti2Image(data, None, header=hdr)
        )
        img.set_sform(*header.get_sform(coded=True))
        img.set_qform(*header.get_qform(coded=True))
    else:
        img = nib.Nifti1Image(data, like.affine)
        img.set_sform(like.affine, code=1)
        img.set_qform(like.affine, code=1)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))


def _write_itk(data: np.ndarray, like: Volume, path: Path) -> None:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    geometry = like.source.itk_geometry if like.source is not None else None
    if geometry is None:
        lps = RAS_FROM_LPS @ like.affine
        spacing = np.linalg.norm(lps[:3, :3], axis=0)
        geometry = (
            tuple(lps[:3, 3]),
            tuple(spacing),
            tuple((lps[:3, :3] / spacing).ravel()),
        )
    origin, spacing_t, direction = geometry
    image.SetOrigin(tuple(float(v) for v in origin))
    image.SetSpacing(tuple(float(v) for v in spacing_t))
    image.SetDirection(tuple(float(v) for v in direction))
    sitk.WriteImage(image, str(path), useCompression=True)

"""The packed-array body of the nnInteractive remote protocol (``nninteractive-client`` 2.x).

Layout (all integers little-endian)::

    b"NNIA" | version u8 (1) | codec u8 (1 zstd, 2 lz4) | ndim u8 | len(dtype name) u8
    | dtype name (ascii, e.g. "float32") | shape: ndim x i64
    | number of chunks u32 | per chunk: raw length u64, compressed length u64, blosc2 frame

Each chunk is one ``blosc2.compress2`` frame of at most 1 GiB of raw bytes. Written here from
the format; :func:`unpack` checks every length against the declared shape and a size limit
before it allocates, so a malformed or hostile body gives a :class:`WireError`, not a crash.
"""

from __future__ import annotations

import struct

import numpy as np

from ..errors import InputError

MAGIC = b"NNIA"
VERSION = 1
CHUNK_BYTES = 1 << 30
_CODECS = {1: "ZSTD", 2: "LZ4"}
_DTYPES = {"bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64"}
_DTYPES |= {"float16", "float32", "float64"}


class WireError(InputError):
    """A packed array that cannot be read (the message says what is wrong)."""


def pack(array: np.ndarray, codec: int = 1, level: int = 3) -> bytes:
    """``array`` -> packed bytes (little-endian, C order)."""
    import blosc2

    arr = np.ascontiguousarray(array)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    name = arr.dtype.name.encode("ascii")
    parts = [
        struct.pack(f"<4sBBBB{len(name)}s", MAGIC, VERSION, codec, arr.ndim, len(name), name),
        struct.pack(f"<{arr.ndim}q", *arr.shape),
    ]
    raw = arr.reshape(-1).view(np.uint8).data
    starts = range(0, max(len(raw), 1), CHUNK_BYTES) if len(raw) else range(0)
    parts.append(struct.pack("<I", len(starts)))
    codec_enum = getattr(blosc2.Codec, _CODECS[codec])
    for start in starts:
        chunk = raw[start : start + CHUNK_BYTES]
        frame = blosc2.compress2(
            chunk,
            typesize=arr.dtype.itemsize,
            codec=codec_enum,
            clevel=level,
            filters=[blosc2.Filter.NOFILTER],
        )
        parts.append(struct.pack("<QQ", len(chunk), len(frame)))
        parts.append(frame)
    return b"".join(parts)


def unpack(body: bytes, max_bytes: int) -> np.ndarray:
    """Packed bytes -> array; refuses arrays larger than ``max_bytes`` before decompressing.

    Raises:
        WireError: bad magic/version/codec/dtype, lengths that disagree, or too large.
    """
    import blosc2

    if len(body) < 8:
        raise WireError(f"packed array of {len(body)} bytes: too short for the NNIA header")
    magic, version, codec, ndim, name_len = struct.unpack_from("<4sBBBB", body, 0)
    if magic != MAGIC:
        raise WireError(f"packed array starts with {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise WireError(f"packed array version {version}; this server reads version {VERSION}")
    if codec not in _CODECS:
        raise WireError(f"packed array codec {codec}; expected 1 (zstd) or 2 (lz4)")
    offset = 8
    name = body[offset : offset + name_len].decode("ascii", errors="replace")
    if name not in _DTYPES:
        raise WireError(f"packed array dtype {name!r}; expected one of {sorted(_DTYPES)}")
    dtype = np.dtype(name)
    offset += name_len
    if len(body) < offset + 8 * ndim + 4:
        raise WireError("packed array header is cut short")
    shape = struct.unpack_from(f"<{ndim}q", body, offset)
    offset += 8 * ndim
    if any(n < 0 for n in shape):
        raise WireError(f"packed array shape {shape} has a negative size")
    total = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if total > max_bytes:
        raise WireError(
            f"packed array {shape} {name} is {total / 2**20:.0f} MiB; this server accepts at "
            f"most {max_bytes / 2**20:.0f} MiB"
        )
    (chunks,) = struct.unpack_from("<I", body, offset)
    offset += 4
    out = np.empty(total, dtype=np.uint8)
    written = 0
    for _ in range(chunks):
        if len(body) < offset + 16:
            raise WireError("packed array chunk table is cut short")
        raw_len, packed_len = struct.unpack_from("<QQ", body, offset)
        offset += 16
        frame = body[offset : offset + packed_len]
        if len(frame) != packed_len or written + raw_len > total:
            raise WireError("packed array chunk lengths disagree with the body or the shape")
        try:
            data = blosc2.decompress2(frame)
        except Exception as err:  # blosc2 raises several types for corrupt frames
            raise WireError(f"packed array chunk cannot be decompressed: {err}") from None
        if len(data) != raw_len:
            raise WireError(f"packed array chunk holds {len(data)} bytes, header says {raw_len}")
        out[written : written + raw_len] = np.frombuffer(data, dtype=np.uint8)
        written += raw_len
        offset += packed_len
    if written != total:
        raise WireError(f"packed array holds {written} bytes, its shape needs {total}")
    return out.view(dtype).reshape(shape)

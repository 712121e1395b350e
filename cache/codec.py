"""How one stored feature is laid out in bytes, and how it is checked when read back.

Both stores (:class:`~cache.store.DirectoryStore` files, :class:`~cache.redis_store.RedisStore`
values) hold the same self-describing record, never a pickle::

    b"EBF2"                       4 bytes  format magic
    crc32                         4 bytes  little-endian, over the store key + every byte after this field
    header length n               4 bytes  little-endian, n <= 1024
    header                        n bytes  JSON {"dtype": "float32", "shape": [512]}
    payload                       exactly prod(shape) * itemsize bytes, little-endian, C order

CRC-32 detects every error burst of up to 32 bits, so any single flipped, dropped or
added byte is always caught; it is cheap (zlib, GB/s) and is not a defence against
someone who can write the store (they could recompute it). The key is part of the
checksum, so a record copied or renamed under another key is caught as well.
:func:`decode_record` raises :class:`DamagedRecordError` for anything that does not
verify; the stores turn that into a logged miss, and the caller recomputes the value.

>>> import numpy as np
>>> blob = encode_record("k" * 64, np.arange(3, dtype=np.float32))
>>> decode_record("k" * 64, blob)
array([0., 1., 2.], dtype=float32)
>>> try:
...     decode_record("k" * 64, blob[:-1])  # one byte short
... except DamagedRecordError as err:
...     print(err)
checksum mismatch
"""

from __future__ import annotations

import json
import math
import struct
import zlib

import numpy as np

MAGIC = b"EBF2"
#: Magic of the record written before records carried a checksum: read as a miss and recomputed.
LEGACY_MAGICS = {b"EBF1": "an older record without a checksum"}
#: dtypes a store accepts and returns; anything else is refused on write and treated as damage on read.
STORABLE_DTYPES = frozenset({"float16", "float32", "float64", "int64", "int32", "uint8", "bool"})

_PREFIX = struct.Struct("<4sII")  # magic, crc32, header length
_MAX_HEADER = 1024
_MAX_NDIM = 32


class DamagedRecordError(ValueError):
    """A stored record that does not verify (flipped/truncated bytes, bad header, old format)."""


def encode_record(key: str, arr: np.ndarray) -> bytes:
    """The record of ``arr`` stored under ``key`` (the dtype must be one of :data:`STORABLE_DTYPES`)."""
    arr = np.asarray(arr)
    if arr.dtype.name not in STORABLE_DTYPES:
        raise TypeError(f"cannot store dtype {arr.dtype}; store one of {sorted(STORABLE_DTYPES)}")
    header = json.dumps({"dtype": arr.dtype.name, "shape": list(arr.shape)}).encode()
    payload = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
    body = struct.pack("<I", len(header)) + header + payload
    return MAGIC + struct.pack("<I", _checksum(key, body)) + body


def decode_record(key: str, blob: bytes, *, verify_checksum: bool = True) -> np.ndarray:
    """The array in ``blob`` (a fresh, writable copy), or :class:`DamagedRecordError`.

    ``verify_checksum=False`` skips only the CRC (to measure what it costs); the header,
    dtype allow-list and payload length are always checked.
    """
    if len(blob) < _PREFIX.size:
        raise DamagedRecordError(f"truncated ({len(blob)} bytes)")
    magic, crc, n = _PREFIX.unpack_from(blob)
    if magic != MAGIC:
        raise DamagedRecordError(LEGACY_MAGICS.get(magic, f"not a feature record (starts {magic!r})"))
    if verify_checksum and _checksum(key, memoryview(blob)[8:]) != crc:
        raise DamagedRecordError("checksum mismatch")
    if n > _MAX_HEADER or _PREFIX.size + n > len(blob):
        raise DamagedRecordError(f"header length {n} out of range")
    dtype, shape = _parse_header(blob[_PREFIX.size : _PREFIX.size + n])
    payload = memoryview(blob)[_PREFIX.size + n :]
    expected = math.prod(shape) * dtype.itemsize
    if len(payload) != expected:
        raise DamagedRecordError(f"payload is {len(payload)} bytes, {dtype.name}{list(shape)} needs {expected}")
    return np.frombuffer(payload, dtype=dtype.newbyteorder("<")).reshape(shape).astype(dtype, copy=True)


def _checksum(key: str, body: bytes | memoryview) -> int:
    return zlib.crc32(body, zlib.crc32(key.encode()))


def _parse_header(raw: bytes) -> tuple[np.dtype, tuple[int, ...]]:
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DamagedRecordError(f"unreadable header ({err})") from None
    if not isinstance(header, dict) or set(header) != {"dtype", "shape"}:
        raise DamagedRecordError(f"header must hold exactly dtype and shape, got {str(header)[:80]}")
    name, shape = header["dtype"], header["shape"]
    if not isinstance(name, str) or name not in STORABLE_DTYPES:
        raise DamagedRecordError(f"refusing stored dtype {str(name)[:40]!r}")
    if (
        not isinstance(shape, list)
        or len(shape) > _MAX_NDIM
        or not all(type(d) is int and d >= 0 for d in shape)  # not bool, not float
    ):
        raise DamagedRecordError(f"bad shape {str(shape)[:80]}")
    return np.dtype(name), tuple(shape)

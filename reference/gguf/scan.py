"""The bounded sanity scan of a GGUF header: every count and length checked against the bytes the file has left.

The scan reads the header with ``struct`` and never allocates more than the file size allows. It rejects what
would make ``gguf.GGUFReader`` loop without end (an array length of 2^63 over an empty tail makes it iterate
2^63 times), crash (a key named ``GGUF.version``, invalid UTF-8, nested arrays) or read outside the file. It
follows the checks of ggml's own loader (``gguf_init_from_file`` in ``ggml.c@676f0e71b``; the stricter ones of
upstream ``gguf.cpp``: at most 4 dims, every ``ne >= 0``, ``ne0*ne1*ne2*ne3 < INT64_MAX``, ``ne0`` a multiple of
the block size, names shorter than ``GGML_MAX_NAME`` = 64, alignment a power of two) plus llama.cpp's "tensor
data is not within the file bounds". Every count is bounded by the bytes left: a key-value pair takes at least
13 bytes, a tensor info 24.

GGUF layout (version 2 and 3, little-endian)::

    "GGUF" u32 version | u64 n_tensors | u64 n_kv
    n_kv x   (str key, u32 value_type, value)      str = u64 length + UTF-8 bytes
                                                     array = u32 elem_type, u64 n, n x elem
    n_tensors x (str name, u32 n_dims, n_dims x u64 ne, u32 ggml_type, u64 offset)
    padding to general.alignment (default 32) | data section; tensor i at data_start + offset_i
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from gguf.constants import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType, GGUFValueType, Keys

from mlaref.reference.gguf.errors import (
    BadHeader,
    BadMagic,
    KeyTypeMismatch,
    MisalignedTensor,
    OverlappingTensors,
    ShapeMismatch,
    ShapeOverflow,
    TensorOutOfBounds,
    Truncated,
    UnknownTensorType,
    UnsupportedVersion,
)

__all__ = ["GGML_MAX_DIMS", "GGML_MAX_NAME", "INT64_MAX", "Scan", "scan"]

# Limits of the C loaders (ggml.h / gguf.cpp@676f0e71b).
GGML_MAX_DIMS = 4
GGML_MAX_NAME = 64
INT64_MAX = 2**63 - 1

_MIN_KV_BYTES = 8 + 4 + 1  # empty key, value type, a one-byte value
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8  # empty name, n_dims = 0, type, offset
_SUPPORTED_VERSIONS = (2, 3)  # v1 (32-bit counts) is refused by ggml too
_SCALAR_SIZES = {
    GGUFValueType.UINT8: 1, GGUFValueType.INT8: 1, GGUFValueType.UINT16: 2, GGUFValueType.INT16: 2,
    GGUFValueType.UINT32: 4, GGUFValueType.INT32: 4, GGUFValueType.FLOAT32: 4, GGUFValueType.BOOL: 1,
    GGUFValueType.UINT64: 8, GGUFValueType.INT64: 8, GGUFValueType.FLOAT64: 8,
}
_READER_RESERVED = ("GGUF.version", "GGUF.tensor_count", "GGUF.kv_count")  # GGUFReader's own field names


@dataclass
class Scan:
    """What the scan found: the header counts, the alignment, where the data starts, key types and tensor infos."""

    version: int
    n_tensors: int
    n_kv: int
    alignment: int
    data_offset: int
    kv_types: dict  # key -> (GGUFValueType, array element type or None, array length or None)
    tensors: list  # (name, ne tuple of 4, ggml_type, relative offset, nbytes)


class _Cursor:
    """Reads little-endian fields from a buffer, raising :class:`Truncated` at the end."""

    def __init__(self, buf, size: int, path: str):
        self.buf, self.size, self.path, self.pos = buf, size, path, 0

    def need(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            raise Truncated(
                f"{self.path}: {what} at offset {self.pos} needs {n} bytes but only {self.size - self.pos} remain"
            )

    def unpack(self, fmt: str, what: str):
        n = struct.calcsize(fmt)
        self.need(n, what)
        v = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return v[0] if len(v) == 1 else v

    def string(self, what: str) -> str:
        n = self.unpack("<Q", f"the length of {what}")
        self.need(n, f"{what} ({n} bytes)")
        raw = bytes(self.buf[self.pos : self.pos + n])
        start = self.pos
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadHeader(f"{self.path}: {what} at offset {start} is not valid UTF-8 ({exc.reason})") from None

    def skip_string(self, what: str) -> None:
        n = self.unpack("<Q", f"the length of {what}")
        self.need(n, f"{what} ({n} bytes)")
        self.pos += n


def _value_type(raw: int, path: str, where: str) -> GGUFValueType:
    try:
        return GGUFValueType(raw)
    except ValueError:
        raise BadHeader(f"{path}: {where} has unknown GGUF value type {raw} (known: 0..12)") from None


def scan(buf, size: int, path: str) -> Scan:
    """Check the header of a GGUF image of ``size`` bytes without allocating more than it bounds."""
    if size < 4:
        raise Truncated(f"{path}: {size} bytes; a GGUF file starts with the 4-byte magic 'GGUF'")
    magic = bytes(buf[:4])
    if magic != b"GGUF":
        raise BadMagic(f"{path}: magic is {magic!r}, expected b'GGUF'")
    c = _Cursor(buf, size, path)
    c.pos = 4
    version = c.unpack("<I", "the version")
    if version not in _SUPPORTED_VERSIONS:
        if version & 0xFFFF == 0 and version:
            raise UnsupportedVersion(
                f"{path}: version field {version:#010x} looks byte-swapped: a big-endian GGUF; "
                "only little-endian files are supported"
            )
        raise UnsupportedVersion(f"{path}: GGUF version {version}; supported: 2 and 3")
    n_tensors = c.unpack("<Q", "the tensor count")
    n_kv = c.unpack("<Q", "the key-value count")
    left = size - c.pos
    if n_kv > left // _MIN_KV_BYTES:
        raise Truncated(
            f"{path}: header says {n_kv} key-value pairs but the {left} bytes after the header hold at most "
            f"{left // _MIN_KV_BYTES}"
        )
    if n_tensors > left // _MIN_TENSOR_INFO_BYTES:
        raise Truncated(
            f"{path}: header says {n_tensors} tensors but the {left} bytes after the header hold at most "
            f"{left // _MIN_TENSOR_INFO_BYTES} tensor infos"
        )

    kv_types: dict = {}
    alignment = GGUF_DEFAULT_ALIGNMENT
    for i in range(n_kv):
        key = c.string(f"key {i}")
        if key in kv_types:
            raise BadHeader(f"{path}: duplicate key {key!r} (key-value pair {i})")
        if key in _READER_RESERVED:
            raise BadHeader(f"{path}: key {key!r} is reserved (it names a header field)")
        vtype = _value_type(c.unpack("<I", f"the type of key {key!r}"), path, f"key {key!r}")
        etype = alen = None
        if vtype == GGUFValueType.STRING:
            c.skip_string(f"the string value of {key!r}")
        elif vtype == GGUFValueType.ARRAY:
            etype = _value_type(c.unpack("<I", f"the element type of {key!r}"), path, f"array {key!r}")
            alen = c.unpack("<Q", f"the length of array {key!r}")
            if etype == GGUFValueType.ARRAY:
                raise BadHeader(f"{path}: array {key!r} holds arrays; nested arrays are not supported by ggml")
            if etype == GGUFValueType.STRING:
                c.need(min(alen, size) * 8, f"{alen} string lengths of array {key!r}")
                for j in range(alen):
                    c.skip_string(f"string {j} of array {key!r}")
            else:
                c.need(alen * _SCALAR_SIZES[etype], f"{alen} elements of array {key!r}")
                c.pos += alen * _SCALAR_SIZES[etype]
        else:
            if key == Keys.General.ALIGNMENT and vtype == GGUFValueType.UINT32:
                alignment = c.unpack("<I", f"the value of {key!r}")
            else:
                c.need(_SCALAR_SIZES[vtype], f"the value of {key!r}")
                c.pos += _SCALAR_SIZES[vtype]
        kv_types[key] = (vtype, etype, alen)
    if Keys.General.ALIGNMENT in kv_types:
        vt = kv_types[Keys.General.ALIGNMENT][0]
        if vt != GGUFValueType.UINT32:
            raise KeyTypeMismatch(f"{path}: key 'general.alignment' has type {vt.name}, expected UINT32")
        if alignment == 0 or alignment & (alignment - 1):
            raise BadHeader(f"{path}: general.alignment = {alignment} is not a power of two")

    tensors = []
    names = set()
    for i in range(n_tensors):
        name = c.string(f"the name of tensor {i}")
        if len(name.encode()) >= GGML_MAX_NAME:
            raise BadHeader(
                f"{path}: tensor {i} name {name[:80]!r} is {len(name.encode())} bytes; ggml allows < {GGML_MAX_NAME}"
            )
        if name in names:
            raise BadHeader(f"{path}: duplicate tensor name {name!r} (tensor {i})")
        names.add(name)
        n_dims = c.unpack("<I", f"n_dims of tensor {name!r}")
        if n_dims > GGML_MAX_DIMS:
            raise BadHeader(f"{path}: tensor {name!r} has {n_dims} dims; ggml allows at most {GGML_MAX_DIMS}")
        ne = [c.unpack("<Q", f"ne[{j}] of tensor {name!r}") for j in range(n_dims)] + [1] * (GGML_MAX_DIMS - n_dims)
        n_el = 1
        for j, v in enumerate(ne):
            if v > INT64_MAX:
                raise ShapeOverflow(f"{path}: tensor {name!r} ne[{j}] = {v} is negative as int64")
            n_el *= v
        if n_el >= INT64_MAX:
            raise ShapeOverflow(f"{path}: tensor {name!r} shape {tuple(ne)} has {n_el} elements, >= INT64_MAX")
        raw_type = c.unpack("<I", f"the type of tensor {name!r}")
        try:
            gtype = GGMLQuantizationType(raw_type)
            bs, ts = GGML_QUANT_SIZES[gtype]
        except (ValueError, KeyError):
            raise UnknownTensorType(f"{path}: tensor {name!r} has unknown ggml type id {raw_type}") from None
        if ne[0] % bs:
            raise ShapeMismatch(
                f"{path}: tensor {name!r} of type {gtype.name} has ne[0] = {ne[0]}, not a multiple of its block "
                f"size {bs}"
            )
        rel = c.unpack("<Q", f"the data offset of tensor {name!r}")
        tensors.append((name, tuple(ne), gtype, rel, n_el // bs * ts))

    data_offset = -(-c.pos // alignment) * alignment
    if tensors and data_offset > size:
        raise Truncated(f"{path}: the data section would start at {data_offset}, past the end of the file ({size})")
    spans = []
    for name, ne, gtype, rel, nbytes in tensors:
        if rel % alignment:
            raise MisalignedTensor(
                f"{path}: tensor {name!r} offset {rel} is not a multiple of the alignment {alignment}"
            )
        if rel > size or data_offset + rel + nbytes > size:
            raise TensorOutOfBounds(
                f"{path}: tensor {name!r} ({gtype.name} {ne}, {nbytes} bytes at data offset {rel}) ends at "
                f"{data_offset + rel + nbytes}, past the end of the file ({size} bytes)"
            )
        if nbytes:
            spans.append((rel, rel + nbytes, name))
    spans.sort()
    for (a0, a1, an), (b0, _, bn) in zip(spans, spans[1:]):
        if b0 < a1:
            raise OverlappingTensors(f"{path}: tensor {bn!r} at data offset {b0} overlaps {an!r} [{a0}, {a1})")
    return Scan(version, n_tensors, n_kv, alignment, data_offset, kv_types, tensors)

"""GGUF in and out: open real DeepSeek-V2 GGUF files through ``gguf`` and write small synthetic ones.

Reading (:func:`open_gguf`) has two stages:

1. A bounded *sanity scan* of the header with ``struct`` (:func:`_scan`), which never allocates more than the
   file size allows and rejects what would make ``gguf.GGUFReader`` loop without end (an array length of 2^63
   over an empty tail makes it iterate 2^63 times), crash (a key named ``GGUF.version``, invalid UTF-8,
   nested arrays) or read outside the file. It follows the checks of ggml's own loader (``gguf_init_from_file``
   in ``ggml.c@676f0e71b``; the stricter ones of upstream ``gguf.cpp``: at most 4 dims, every ``ne >= 0``,
   ``ne0*ne1*ne2*ne3 < INT64_MAX``, ``ne0`` a multiple of the block size, names shorter than ``GGML_MAX_NAME``
   = 64, alignment a power of two) plus llama.cpp's "tensor data is not within the file bounds".
   Every count is bounded by the bytes left: a key-value pair takes at least 13 bytes, a tensor info 24.
2. ``gguf.GGUFReader`` (memory-mapped) does the actual parsing; any exception it still raises is wrapped.

Every tensor whose type mlaref implements becomes a :class:`mlaref.reference.tensor.Tensor` whose base buffer
*is* the reader's memory map (no copy); the others are listed in :attr:`Model.unsupported`.

GGUF layout (version 2 and 3, little-endian)::

    "GGUF" u32 version | u64 n_tensors | u64 n_kv
    n_kv x   (str key, u32 value_type, value)      str = u64 length + UTF-8 bytes
                                                     array = u32 elem_type, u64 n, n x elem
    n_tensors x (str name, u32 n_dims, n_dims x u64 ne, u32 ggml_type, u64 offset)
    padding to general.alignment (default 32) | data section; tensor i at data_start + offset_i

Hyper-parameters are read as ``llm_load_hparams`` reads them (``src/llama.cpp@676f0e71b``, generic part then
``case LLM_ARCH_DEEPSEEK2``): the same keys, the same strict value types (``GKV::get_kv``: a ``u32`` field
needs a ``UINT32`` value), the same defaults for absent optional keys (upstream facts §1.1). One deliberate
difference: llama.cpp decides "Lite" (plain ``wq``, no ``attention.q_lora_rank``) only by ``n_layer == 27``,
which a reduced-layer Lite cannot satisfy; here the q path follows the presence of ``attention.q_lora_rank``
(what the converter writes) and ``hparams["loader_note"]`` says when llama.cpp would refuse the file.

Writing (:func:`write_synthetic`) emits the real architecture name, keys and tensor names
(``gguf.constants.MODEL_TENSORS[MODEL_ARCH.DEEPSEEK2]``), values drawn from a seeded generator per tensor,
encoded with :func:`mlaref.reference.quantize` (block types) or :mod:`mlaref.reference.fp` (f16/bf16).
``attn_k_b`` / ``attn_v_b`` are split from the same float ``attn_kv_b`` as ``convert_hf_to_gguf.py@676f0e71b``
does (``DeepseekV2Model.modify_tensors``).

``mlaref inspect FILE.gguf [--ctx N] [--cache-type f16|q8_0]`` prints hyper-parameters, the tensor table, the
MLA KV-cache plan (upstream facts §2) and which kernels each weight type would use.
"""

from __future__ import annotations

import mmap
import os
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
from gguf import GGUFReader, GGUFWriter
from gguf.constants import (
    GGML_QUANT_SIZES,
    GGUF_DEFAULT_ALIGNMENT,
    MODEL_ARCH,
    MODEL_ARCH_NAMES,
    MODEL_TENSOR,
    MODEL_TENSORS,
    TENSOR_NAMES,
    GGMLQuantizationType,
    GGUFValueType,
    Keys,
)

from mlaref.reference import fp, get_type, quantize, registry
from mlaref.reference.tensor import ELEMENT_TYPES, Tensor, row_size, type_geometry

__all__ = [
    "GGUFError", "BadMagic", "UnsupportedVersion", "Truncated", "BadHeader", "KeyTypeMismatch", "MissingKey",
    "BadValue", "TensorOutOfBounds", "OverlappingTensors", "MisalignedTensor", "ShapeOverflow",
    "UnknownTensorType", "ShapeMismatch", "MissingTensor",
    "TensorInfo", "Model", "open_gguf", "read_hparams", "expected_tensors", "mlaref_type_name",
    "PRESETS", "synthetic_hparams", "synthetic_types", "write_synthetic", "kv_cache_plan", "configure", "run",
]

ARCH = MODEL_ARCH_NAMES[MODEL_ARCH.DEEPSEEK2]  # "deepseek2"

# Limits of the C loaders (ggml.h / gguf.cpp / llama.cpp@676f0e71b).
GGML_MAX_DIMS = 4
GGML_MAX_NAME = 64
LLAMA_MAX_LAYERS = 512
LLAMA_MAX_EXPERTS = 256
INT64_MAX = 2**63 - 1

_MIN_KV_BYTES = 8 + 4 + 1  # empty key, value type, a one-byte value
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8  # empty name, n_dims = 0, type, offset
_HEADER_BYTES = 4 + 4 + 8 + 8
_SUPPORTED_VERSIONS = (2, 3)  # v1 (32-bit counts) is refused by ggml too
_SCALAR_SIZES = {
    GGUFValueType.UINT8: 1, GGUFValueType.INT8: 1, GGUFValueType.UINT16: 2, GGUFValueType.INT16: 2,
    GGUFValueType.UINT32: 4, GGUFValueType.INT32: 4, GGUFValueType.FLOAT32: 4, GGUFValueType.BOOL: 1,
    GGUFValueType.UINT64: 8, GGUFValueType.INT64: 8, GGUFValueType.FLOAT64: 8,
}
_READER_RESERVED = ("GGUF.version", "GGUF.tensor_count", "GGUF.kv_count")  # GGUFReader's own field names


# ---------------------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------------------
class GGUFError(ValueError):
    """A GGUF file mlaref refuses; the message names the file, the place and the rule broken."""


class BadMagic(GGUFError):
    """The first four bytes are not ``GGUF``."""


class UnsupportedVersion(GGUFError):
    """A version other than 2 or 3, or a big-endian file."""


class Truncated(GGUFError):
    """The file ends inside the header, or a count/length needs more bytes than the file has left."""


class BadHeader(GGUFError):
    """Malformed metadata: unknown value type, nested array, invalid UTF-8, duplicate or over-long name,
    more than 4 dims, bad alignment value."""


class KeyTypeMismatch(GGUFError):
    """A known key holds a value of the wrong GGUF type (llama.cpp: "key ... has wrong type")."""


class MissingKey(GGUFError):
    """A key llama.cpp requires is absent."""


class BadValue(GGUFError):
    """A hyper-parameter outside the range llama.cpp accepts (e.g. ``n_expert_used > n_expert``)."""


class TensorOutOfBounds(GGUFError):
    """A tensor's bytes extend past the end of the file."""


class OverlappingTensors(GGUFError):
    """Two tensors' byte ranges overlap."""


class MisalignedTensor(GGUFError):
    """A tensor offset is not a multiple of ``general.alignment``."""


class ShapeOverflow(GGUFError):
    """A dimension is negative as int64, or the element count reaches INT64_MAX."""


class UnknownTensorType(GGUFError):
    """A ggml type id that neither ggml (as gguf-py knows it) nor mlaref defines."""


class ShapeMismatch(GGUFError):
    """A tensor's shape disagrees with its type's block size or with the hyper-parameters."""


class MissingTensor(GGUFError):
    """A tensor llama.cpp requires for this architecture is absent."""


# ---------------------------------------------------------------------------------------------------------
# stage 1: the bounded sanity scan
# ---------------------------------------------------------------------------------------------------------
@dataclass
class _Scan:
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


def _scan(buf, size: int, path: str) -> _Scan:
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
    return _Scan(version, n_tensors, n_kv, alignment, data_offset, kv_types, tensors)


# ---------------------------------------------------------------------------------------------------------
# types
# ---------------------------------------------------------------------------------------------------------
_ELEMENT_IDS = {"f32": GGMLQuantizationType.F32, "f16": GGMLQuantizationType.F16,
                "bf16": GGMLQuantizationType.BF16, "i32": GGMLQuantizationType.I32}


def mlaref_type_name(gtype: GGMLQuantizationType) -> str | None:
    """The mlaref type name of a ggml type, or None when mlaref does not implement it.

    Element types come from :data:`mlaref.reference.tensor.ELEMENT_TYPES`; block types from the format
    registry, matched on both the ggml type id and the name (``Q4_K`` is ``q4_K``). A type whose geometry in
    gguf-py's ``GGML_QUANT_SIZES`` differs from mlaref's is not mapped: gguf 0.19.0 lists Q8_1 as 40 bytes per
    block while ggml's ``block_q8_1`` (two f16 + 32 int8) is 36, so GGUFReader would slice such tensors wrongly.
    """
    for name, gid in _ELEMENT_IDS.items():
        if gid == gtype and name in ELEMENT_TYPES:
            return name
    for name, fmt in registry().items():
        if getattr(fmt, "ggml_type", None) == int(gtype) and name.lower() == gtype.name.lower():
            if (fmt.block_size, fmt.type_size) != GGML_QUANT_SIZES[gtype]:
                return None  # gguf-py's size table disagrees (Q8_1: 40 B there, 36 B in ggml): cannot map it
            return name
    return None


def _gguf_type(name: str) -> GGMLQuantizationType:
    """The gguf-py enum member of an mlaref type name (``q4_K`` -> ``Q4_K``), checked against its geometry."""
    for t in GGMLQuantizationType:
        if t.name.lower() == name.lower():
            if type_geometry(name) != GGML_QUANT_SIZES[t]:
                raise ValueError(
                    f"type {name!r}: gguf-py's GGML_QUANT_SIZES gives {GGML_QUANT_SIZES[t]} (block, bytes), mlaref "
                    f"{type_geometry(name)}; GGUF files of it would be misread"
                )
            return t
    raise ValueError(f"type {name!r} has no GGUF type id in gguf-py")


# ---------------------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------------------
@dataclass
class TensorInfo:
    """One tensor of the file as listed in its header."""

    name: str
    ggml_type: str  # gguf-py's name, e.g. "Q8_0"
    type: str | None  # the mlaref type name, None when mlaref does not implement it
    ne: tuple  # (ne0, ne1, ne2, ne3)
    n_dims: int
    nbytes: int
    offset: int  # absolute byte offset in the file

    @property
    def supported(self) -> bool:
        return self.type is not None


@dataclass
class Model:
    """An opened GGUF file: metadata, hyper-parameters and zero-copy tensors."""

    path: str
    version: int
    alignment: int
    data_offset: int
    arch: str | None
    metadata: Mapping = field(repr=False)  # key -> Python value (arrays: list), decoded on first access
    kv_types: dict = field(repr=False)  # key -> (GGUFValueType, element type or None, array length or None)
    infos: list = field(repr=False)  # TensorInfo, file order
    tensors: dict = field(repr=False)  # name -> Tensor, for every supported tensor
    hparams: dict | None = field(repr=False)  # llama.cpp field names; None for other architectures
    hp: Any = None  # mlaref.reference.hparams.HParams when it accepts the values, else None
    hp_error: str | None = None
    reader: GGUFReader | None = field(default=None, repr=False)

    @property
    def unsupported(self) -> list:
        """TensorInfo of every tensor whose type mlaref does not implement."""
        return [ti for ti in self.infos if not ti.supported]

    def info(self, name: str) -> TensorInfo:
        for ti in self.infos:
            if ti.name == name:
                return ti
        raise KeyError(name)

    def raw(self, name: str) -> np.ndarray:
        """The bytes of any tensor (supported or not) as a read-only uint8 view of the file."""
        ti = self.info(name)
        return self.reader.data[ti.offset : ti.offset + ti.nbytes]

    def close(self) -> None:
        """Drop the memory map (tensors made from it stay valid while referenced)."""
        self.reader = None


def _field_value(f) -> Any:
    """Python value of a GGUFReader field (strings decoded leniently: values are not validated by ggml)."""
    t = f.types[0] if f.types else None
    if t == GGUFValueType.STRING:
        return bytes(f.parts[-1]).decode("utf-8", errors="replace")
    if t == GGUFValueType.ARRAY:
        if len(f.types) > 1 and f.types[1] == GGUFValueType.STRING:
            return [bytes(f.parts[i]).decode("utf-8", errors="replace") for i in f.data]
        return [f.parts[i].tolist()[0] for i in f.data]
    v = f.parts[-1].tolist()[0]
    return bool(v) if t == GGUFValueType.BOOL else v


class _LazyMeta(Mapping):
    """Metadata values by key; each is decoded on first access (a tokenizer holds 10^5 strings)."""

    def __init__(self, reader: GGUFReader, keys):
        self._reader = reader
        self._keys = list(keys)
        self._known = set(self._keys)
        self._cache: dict = {}

    def __getitem__(self, key):
        if key not in self._known:
            raise KeyError(key)
        if key not in self._cache:
            self._cache[key] = _field_value(self._reader.fields[key])
        return self._cache[key]

    def __iter__(self):
        return iter(self._keys)

    def __len__(self):
        return len(self._keys)


def open_gguf(path, *, check_tensors: bool = True) -> Model:
    """Open a GGUF file memory-mapped; raise a :class:`GGUFError` subclass on anything malformed.

    For ``general.architecture == "deepseek2"`` the hyper-parameters are read (:func:`read_hparams`) and, with
    ``check_tensors``, every tensor llama.cpp's ``llm_load_tensors`` creates is checked for presence and shape.
    """
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise GGUFError(f"{path}: cannot open ({exc.strerror})") from None
    if size == 0:
        raise Truncated(f"{path}: empty file; a GGUF file starts with the 4-byte magic 'GGUF'")
    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            scan = _scan(mm, size, path)
    except OSError as exc:
        raise GGUFError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        reader = GGUFReader(path, "r")
    except Exception as exc:  # the scan should have caught it; never let a reader failure escape unnamed
        raise BadHeader(f"{path}: gguf.GGUFReader failed: {type(exc).__name__}: {exc}") from exc
    return _build_model(path, scan, reader, check_tensors)


def _build_model(path: str, scan: _Scan, reader: GGUFReader, check_tensors: bool) -> Model:
    """The Model over a scanned file and its reader: tensors as zero-copy views, then hparams and checks."""
    if len(reader.tensors) != len(scan.tensors) or reader.data_offset != scan.data_offset:
        raise BadHeader(f"{path}: gguf.GGUFReader and the header scan disagree on the tensor layout")
    meta = _LazyMeta(reader, scan.kv_types)
    arch = None
    if Keys.General.ARCHITECTURE in scan.kv_types:
        _expect_type(path, scan.kv_types, Keys.General.ARCHITECTURE, GGUFValueType.STRING)
        arch = meta[Keys.General.ARCHITECTURE]
    infos, tensors = [], {}
    for (name, ne, gtype, rel, nbytes) in scan.tensors:
        n_dims = len(reader.tensors[len(infos)].shape)
        mtype = mlaref_type_name(gtype)
        ti = TensorInfo(name, gtype.name, mtype, ne, n_dims, nbytes, scan.data_offset + rel)
        infos.append(ti)
        if mtype is not None:
            bs, ts = GGML_QUANT_SIZES[gtype]
            nb1 = ts * (ne[0] // bs)
            nb = (ts, nb1, nb1 * ne[1], nb1 * ne[1] * ne[2])
            try:
                tensors[name] = Tensor(mtype, ne, nb, reader.data, ti.offset, name=name)
            except ValueError as exc:  # the scan checked bounds and blocks; keep any other refusal a GGUFError
                raise BadHeader(f"{path}: tensor {name!r}: mlaref Tensor refused it: {exc}") from exc
    model = Model(path, scan.version, scan.alignment, scan.data_offset, arch, meta, scan.kv_types, infos,
                  tensors, None, reader=reader)
    if arch == ARCH:
        model.hparams = read_hparams(meta, scan.kv_types, path)
        model.hp, model.hp_error = _to_hparams(model.hparams)
        if check_tensors:
            _check_tensors(model)
    return model


# ---------------------------------------------------------------------------------------------------------
# hyper-parameters (llm_load_hparams, llama.cpp@676f0e71b)
# ---------------------------------------------------------------------------------------------------------
def _k(template: str) -> str:
    return template.format(arch=ARCH)


_U32, _F32, _BOOL, _STR = GGUFValueType.UINT32, GGUFValueType.FLOAT32, GGUFValueType.BOOL, GGUFValueType.STRING
_ROPE_SCALE_LINEAR_OLD = "{arch}.rope.scale_linear"  # LLM_KV_ROPE_SCALE_LINEAR, the pre-"scaling.factor" key
_ROPE_SCALING_TYPES = ("none", "linear", "yarn")  # LLAMA_ROPE_SCALING_TYPES
_GATING = {1: "softmax", 2: "sigmoid"}  # llm_expert_gating_func_type


def _expect_type(path, kv_types, key, vtype) -> None:
    got = kv_types[key][0]
    if got != vtype:
        raise KeyTypeMismatch(f"{path}: key {key!r} has type {got.name}, expected {vtype.name}")


def read_hparams(meta, kv_types: dict, path: str = "<gguf>") -> dict:
    """DeepSeek-V2 hyper-parameters with llama.cpp's field names, keys, value types and defaults.

    ``meta`` maps keys to values, ``kv_types`` keys to ``(GGUFValueType, element type, length)``. Raises
    :class:`MissingKey`, :class:`KeyTypeMismatch` or :class:`BadValue`.
    """

    def get(template, vtype, default=None, required=False):
        key = _k(template)
        if key not in kv_types:
            if required:
                raise MissingKey(f"{path}: key {key!r} is required (llama.cpp: key not found in model)")
            return default
        _expect_type(path, kv_types, key, vtype)
        return meta[key]

    def get_or_arr(template, n, default=None, required=False):
        """get_key_or_arr: a UINT32 scalar for all layers, or an INT32 array of n (one per layer; get_arr
        accepts only FLOAT32 and INT32 arrays)."""
        key = _k(template)
        if key not in kv_types:
            if required:
                raise MissingKey(f"{path}: key {key!r} is required (llama.cpp: key not found in model)")
            return default
        vtype, etype, alen = kv_types[key]
        if vtype == GGUFValueType.ARRAY:
            if etype != GGUFValueType.INT32:
                raise KeyTypeMismatch(f"{path}: array {key!r} holds {etype.name}, expected INT32")
            if alen != n:
                raise BadValue(f"{path}: key {key!r} has wrong array length; expected {n} (n_layer), got {alen}")
            values = [int(v) for v in meta[key]]
            if min(values) < 0:
                raise BadValue(f"{path}: array {key!r} holds a negative count: {values}")
            return values
        _expect_type(path, kv_types, key, _U32)
        return [meta[key]] * n

    hp: dict = {"arch": ARCH}
    hp["name"] = meta[Keys.General.NAME] if kv_types.get(Keys.General.NAME, (None,))[0] == _STR else ""
    n_vocab = get(Keys.LLM.VOCAB_SIZE, _U32)
    if n_vocab is None:
        tok = Keys.Tokenizer.LIST
        if tok not in kv_types or kv_types[tok][0] != GGUFValueType.ARRAY:
            raise MissingKey(f"{path}: neither {_k(Keys.LLM.VOCAB_SIZE)!r} nor the array {tok!r} gives n_vocab")
        n_vocab = kv_types[tok][2]
    hp["n_vocab"] = n_vocab
    hp["n_ctx_train"] = get(Keys.LLM.CONTEXT_LENGTH, _U32, required=True)
    hp["n_embd"] = get(Keys.LLM.EMBEDDING_LENGTH, _U32, required=True)
    n_layer = hp["n_layer"] = get(Keys.LLM.BLOCK_COUNT, _U32, required=True)
    hp["n_expert"] = get(Keys.LLM.EXPERT_COUNT, _U32, 0)
    hp["n_expert_used"] = get(Keys.LLM.EXPERT_USED_COUNT, _U32, 0)
    if hp["n_expert"] > LLAMA_MAX_EXPERTS:
        raise BadValue(f"{path}: n_expert = {hp['n_expert']} exceeds LLAMA_MAX_EXPERTS = {LLAMA_MAX_EXPERTS}")
    if hp["n_expert_used"] > hp["n_expert"]:
        raise BadValue(f"{path}: n_expert_used = {hp['n_expert_used']} exceeds n_expert = {hp['n_expert']}")
    if (hp["n_expert"] > 0) != (hp["n_expert_used"] > 0):
        raise BadValue(f"{path}: n_expert_used must be > 0 exactly when n_expert > 0 (got {hp['n_expert_used']}, "
                       f"{hp['n_expert']})")
    if not 1 <= n_layer <= LLAMA_MAX_LAYERS:
        raise BadValue(f"{path}: n_layer = {n_layer} must be in [1, LLAMA_MAX_LAYERS = {LLAMA_MAX_LAYERS}]")
    hp["n_ff_arr"] = get_or_arr(Keys.LLM.FEED_FORWARD_LENGTH, n_layer, required=True)
    hp["n_head_arr"] = get_or_arr(Keys.Attention.HEAD_COUNT, n_layer, required=True)
    hp["n_head_kv_arr"] = get_or_arr(Keys.Attention.HEAD_COUNT_KV, n_layer, list(hp["n_head_arr"]))
    hp["n_ff"], hp["n_head"], hp["n_head_kv"] = hp["n_ff_arr"][0], hp["n_head_arr"][0], hp["n_head_kv_arr"][0]
    hp["rope_finetuned"] = get(Keys.Rope.SCALING_FINETUNED, _BOOL, False)
    hp["n_ctx_orig_yarn"] = get(Keys.Rope.SCALING_ORIG_CTX_LEN, _U32, hp["n_ctx_train"])
    hp["rope_freq_base_train"] = get(Keys.Rope.FREQ_BASE, _F32, 10000.0)
    scaling = get(Keys.Rope.SCALING_TYPE, _STR, "linear")
    if scaling not in _ROPE_SCALING_TYPES:
        raise BadValue(f"{path}: rope.scaling.type {scaling!r} is not one of {_ROPE_SCALING_TYPES}")
    hp["rope_scaling_type_train"] = scaling
    factor = get(Keys.Rope.SCALING_FACTOR, _F32)
    if factor is None:
        factor = get(_ROPE_SCALE_LINEAR_OLD, _F32, 0.0)
    hp["rope_freq_scale_train"] = 1.0 if factor == 0.0 else float(np.float32(1) / np.float32(factor))
    hp["rope_attn_factor"] = get(Keys.Rope.SCALING_ATTN_FACTOR, _F32, 1.0)
    if any(h == 0 for h in hp["n_head_arr"]):
        raise BadValue(f"{path}: attention.head_count must be > 0 in every layer for MLA, got {hp['n_head_arr']}")
    hp["n_embd_head_k"] = get(Keys.Attention.KEY_LENGTH, _U32, hp["n_embd"] // hp["n_head"])
    hp["n_embd_head_v"] = get(Keys.Attention.VALUE_LENGTH, _U32, hp["n_embd"] // hp["n_head"])
    hp["n_rot"] = get(Keys.Rope.DIMENSION_COUNT, _U32, hp["n_embd_head_k"])
    if hp["n_rot"] > hp["n_embd_head_k"]:
        raise BadValue(f"{path}: rope.dimension_count = {hp['n_rot']} exceeds key_length = {hp['n_embd_head_k']}")
    # case LLM_ARCH_DEEPSEEK2
    hp["is_lite"] = n_layer == 27
    hp["f_norm_rms_eps"] = get(Keys.Attention.LAYERNORM_RMS_EPS, _F32, required=True)
    hp["n_layer_dense_lead"] = get(Keys.LLM.LEADING_DENSE_BLOCK_COUNT, _U32, required=True)
    hp["n_lora_q"] = get(Keys.Attention.Q_LORA_RANK, _U32, 0)
    hp["loader_note"] = ""
    if not hp["is_lite"] and _k(Keys.Attention.Q_LORA_RANK) not in kv_types:
        hp["loader_note"] = (f"llama.cpp@676f0e71b would refuse this file: with n_layer = {n_layer} != 27 it "
                             f"requires {_k(Keys.Attention.Q_LORA_RANK)!r} and attn_q_a/attn_q_b")
    hp["n_lora_kv"] = get(Keys.Attention.KV_LORA_RANK, _U32, required=True)
    hp["n_ff_exp"] = get(Keys.LLM.EXPERT_FEED_FORWARD_LENGTH, _U32, required=True)
    hp["n_expert_shared"] = get(Keys.LLM.EXPERT_SHARED_COUNT, _U32, required=True)
    hp["expert_weights_scale"] = get(Keys.LLM.EXPERT_WEIGHTS_SCALE, _F32, required=True)
    hp["expert_weights_norm"] = get(Keys.LLM.EXPERT_WEIGHTS_NORM, _BOOL, False)
    gating = get(Keys.LLM.EXPERT_GATING_FUNC, _U32, 0)
    gating = 1 if gating == 0 else gating  # old DeepSeek-V2 GGUFs have no key: 0 means softmax
    hp["expert_gating_func"] = _GATING.get(gating, f"unknown ({gating})")
    hp["rope_yarn_log_mul"] = get(Keys.Rope.SCALING_YARN_LOG_MUL, _F32, required=True)
    if hp["n_layer_dense_lead"] > n_layer:
        raise BadValue(f"{path}: leading_dense_block_count = {hp['n_layer_dense_lead']} exceeds n_layer = {n_layer}")
    if hp["n_layer_dense_lead"] < n_layer and hp["n_expert"] == 0:
        raise BadValue(f"{path}: MoE layers need expert_count > 0 (llama.cpp asserts n_expert > 0)")
    # derived (build_deepseek2 / llama_hparams)
    hp["n_embd_head_qk_nope"] = hp["n_embd_head_k"] - hp["n_rot"]
    hp["n_embd_k_gqa"] = hp["n_embd_head_k"] * hp["n_head_kv"]
    hp["n_embd_v_gqa"] = hp["n_embd_head_v"] * hp["n_head_kv"]
    hp["kv_row"] = hp["n_lora_kv"] + hp["n_rot"]
    return hp


def _to_hparams(hp: dict):
    """mlaref.reference.hparams.HParams built from the dict, or (None, reason) when it refuses the values."""
    try:
        from mlaref.reference.hparams import HParams
    except ImportError as exc:
        return None, f"mlaref.reference.hparams unavailable ({exc})"
    try:
        return HParams(
            name=hp["name"] or "gguf", n_layer=hp["n_layer"], n_embd=hp["n_embd"], n_head=hp["n_head"],
            n_head_kv=hp["n_head_kv"], n_embd_head_k=hp["n_embd_head_k"], n_embd_head_v=hp["n_embd_head_v"],
            n_rot=hp["n_rot"], n_lora_q=hp["n_lora_q"], n_lora_kv=hp["n_lora_kv"], n_ff=hp["n_ff"],
            n_ff_exp=hp["n_ff_exp"], n_expert=hp["n_expert"], n_expert_used=hp["n_expert_used"],
            n_expert_shared=hp["n_expert_shared"], n_layer_dense_lead=hp["n_layer_dense_lead"],
            n_vocab=hp["n_vocab"], n_ctx_train=hp["n_ctx_train"], f_norm_rms_eps=hp["f_norm_rms_eps"],
            rope_freq_base=hp["rope_freq_base_train"], rope_freq_scale=hp["rope_freq_scale_train"],
            n_ctx_orig_yarn=hp["n_ctx_orig_yarn"], rope_yarn_log_mul=hp["rope_yarn_log_mul"],
            rope_attn_factor=hp["rope_attn_factor"], expert_weights_scale=hp["expert_weights_scale"],
            expert_weights_norm=hp["expert_weights_norm"], expert_gating_func=hp["expert_gating_func"],
        ), None
    except (ValueError, TypeError) as exc:
        return None, str(exc)


# ---------------------------------------------------------------------------------------------------------
# tensors llama.cpp creates for deepseek2 (llm_load_tensors, llama.cpp@676f0e71b)
# ---------------------------------------------------------------------------------------------------------
def _tn(t: MODEL_TENSOR, bid: int | None = None, suffix: str = "weight") -> str:
    assert t in MODEL_TENSORS[MODEL_ARCH.DEEPSEEK2], t
    base = TENSOR_NAMES[t].format(bid=bid) if bid is not None else TENSOR_NAMES[t]
    return f"{base}.{suffix}"


def expected_tensors(hp: dict) -> dict:
    """name -> (ne padded to 4 dims, required, class) for every tensor of a deepseek2 model.

    ``class`` groups tensors for per-class weight types: ``norm``, ``embd``, ``output``, ``attn_q``,
    ``attn_kv_a``, ``attn_kv_b``, ``attn_k_b``, ``attn_v_b``, ``attn_out``, ``ffn`` (dense), ``gate_inp``,
    ``exps``, ``shexp``, ``bias``.
    """
    T = MODEL_TENSOR
    E, V = hp["n_embd"], hp["n_vocab"]
    rot, nope, hv = hp["n_rot"], hp["n_embd_head_qk_nope"], hp["n_embd_head_v"]
    kv, ql = hp["n_lora_kv"], hp["n_lora_q"]
    ffe, nexp, nsh = hp["n_ff_exp"], hp["n_expert"], hp["n_expert_shared"]

    def pad(*ne):
        return tuple(ne) + (1,) * (4 - len(ne))

    out = {
        _tn(T.TOKEN_EMBD): (pad(E, V), True, "embd"),
        _tn(T.OUTPUT_NORM): (pad(E), True, "norm"),
        _tn(T.OUTPUT): (pad(E, V), True, "output"),
    }
    # llm_load_tensors takes n_head = hparams.n_head() and n_ff = hparams.n_ff(), i.e. layer 0's, for every layer
    H, HK, ff = hp["n_head_arr"][0], hp["n_embd_head_k"], hp["n_ff_arr"][0]
    for i in range(hp["n_layer"]):
        out[_tn(T.ATTN_NORM, i)] = (pad(E), True, "norm")
        if ql:
            out[_tn(T.ATTN_Q_A_NORM, i)] = (pad(ql), True, "norm")
        out[_tn(T.ATTN_KV_A_NORM, i)] = (pad(kv), True, "norm")
        if ql:
            out[_tn(T.ATTN_Q_A, i)] = (pad(E, ql), True, "attn_q")
            out[_tn(T.ATTN_Q_B, i)] = (pad(ql, H * HK), True, "attn_q")
        else:
            out[_tn(T.ATTN_Q, i)] = (pad(E, H * HK), True, "attn_q")
        out[_tn(T.ATTN_KV_A_MQA, i)] = (pad(E, kv + rot), True, "attn_kv_a")
        out[_tn(T.ATTN_KV_B, i)] = (pad(kv, H * (nope + hv)), True, "attn_kv_b")
        out[_tn(T.ATTN_K_B, i)] = (pad(nope, H * kv), False, "attn_k_b")
        out[_tn(T.ATTN_V_B, i)] = (pad(kv, H * hv), False, "attn_v_b")
        out[_tn(T.ATTN_OUT, i)] = (pad(H * hv, E), True, "attn_out")
        out[_tn(T.FFN_NORM, i)] = (pad(E), True, "norm")
        if i < hp["n_layer_dense_lead"]:
            out[_tn(T.FFN_GATE, i)] = (pad(E, ff), True, "ffn")
            out[_tn(T.FFN_DOWN, i)] = (pad(ff, E), True, "ffn")
            out[_tn(T.FFN_UP, i)] = (pad(E, ff), True, "ffn")
        else:
            out[_tn(T.FFN_GATE_INP, i)] = (pad(E, nexp), True, "gate_inp")
            out[_tn(T.FFN_EXP_PROBS_B, i, "bias")] = (pad(nexp), False, "bias")
            out[_tn(T.FFN_GATE_EXP, i)] = (pad(E, ffe, nexp), True, "exps")
            out[_tn(T.FFN_DOWN_EXP, i)] = (pad(ffe, E, nexp), True, "exps")
            out[_tn(T.FFN_UP_EXP, i)] = (pad(E, ffe, nexp), True, "exps")
            out[_tn(T.FFN_GATE_SHEXP, i)] = (pad(E, ffe * nsh), True, "shexp")
            out[_tn(T.FFN_DOWN_SHEXP, i)] = (pad(ffe * nsh, E), True, "shexp")
            out[_tn(T.FFN_UP_SHEXP, i)] = (pad(E, ffe * nsh), True, "shexp")
    return out


def _check_tensors(model: Model) -> None:
    hp = model.hparams
    # each layer has at least 8 tensors: refuse absurd layer counts before building the expected list
    if hp["n_layer"] * 8 > len(model.infos):
        raise MissingTensor(
            f"{model.path}: n_layer = {hp['n_layer']} needs at least {hp['n_layer'] * 8} tensors, the file has "
            f"{len(model.infos)}"
        )
    have = {ti.name: ti for ti in model.infos}
    for name, (ne, required, _cls) in expected_tensors(hp).items():
        ti = have.get(name)
        if ti is None:
            if required:
                raise MissingTensor(f"{model.path}: tensor {name!r} is required for {ARCH} and absent")
            continue
        if ti.ne != ne:
            raise ShapeMismatch(
                f"{model.path}: tensor {name!r} has ne {ti.ne}, the hyper-parameters give {ne} "
                f"(llama.cpp: wrong shape)"
            )


# ---------------------------------------------------------------------------------------------------------
# synthetic models
# ---------------------------------------------------------------------------------------------------------
PRESETS = {
    # small everything; every row a multiple of 32 (q8_0, iq4_nl, q4_0 ... blocks)
    "tiny": dict(n_layer=2, n_embd=64, n_head=2, n_lora_kv=32, n_rot=32, n_embd_head_k=64, n_embd_head_v=32,
                 n_lora_q=0, n_ff=64, n_ff_exp=32, n_expert=4, n_expert_used=2, n_expert_shared=1,
                 n_layer_dense_lead=1, n_vocab=64, n_ctx_train=4096),
    # DeepSeek-V2-Lite's attention (upstream facts §1.1); 2 layers, 4 experts, narrow FFNs, small vocab
    "lite-attn": dict(n_layer=2, n_embd=2048, n_head=16, n_lora_kv=512, n_rot=64, n_embd_head_k=192,
                      n_embd_head_v=128, n_lora_q=0, n_ff=512, n_ff_exp=256, n_expert=4, n_expert_used=2,
                      n_expert_shared=2, n_layer_dense_lead=1, n_vocab=256, n_ctx_train=163840),
}
_COMMON = dict(f_norm_rms_eps=1e-6, rope_freq_base=10000.0, rope_scaling_type="yarn", rope_scaling_factor=40.0,
               n_ctx_orig_yarn=4096, rope_yarn_log_mul=0.0707, expert_weights_scale=1.0,
               expert_weights_norm=False, expert_gating_func=1)

# per-class weight types; 1-D norms and the router stay f32 as llama-quantize leaves them
_TYPES = {
    "tiny": dict(norm="f32", embd="q8_0", output="q8_0", attn_q="q8_0", attn_kv_a="q8_0", attn_kv_b="q8_0",
                 attn_k_b="q8_0", attn_v_b="q8_0", attn_out="q8_0", ffn="q8_0", gate_inp="f32", exps="q8_0",
                 shexp="q8_0", bias="f32"),
    # DeepSeek-Lite IQ4_NL as llama_tensor_get_type (llama.cpp@676f0e71b) chooses for 64 experts: names with
    # "attn_k" / "attn_q" -> q8_0 (n_expert >= 8), output -> q6_K, default iq4_nl. Not reproduced: attn_output
    # and the first n_layer/8 ffn_down go to q5_K there (mlaref has no q5_K; iq4_nl here). No real file was read.
    "lite-attn": dict(norm="f32", embd="iq4_nl", output="q6_K", attn_q="q8_0", attn_kv_a="q8_0",
                      attn_kv_b="q8_0", attn_k_b="q8_0", attn_v_b="iq4_nl", attn_out="iq4_nl", ffn="iq4_nl",
                      gate_inp="f32", exps="iq4_nl", shexp="iq4_nl", bias="f32"),
}

# llama-quantize's fallback when ne0 is not a multiple of QK_K = 256 (llama_tensor_get_type, 676f0e71b)
_FALLBACK = {"q2_K": "iq4_nl", "q3_K": "iq4_nl", "iq4_xs": "iq4_nl", "q4_K": "q5_0", "q6_K": "q8_0"}


def synthetic_hparams(preset: str = "tiny", **overrides) -> dict:
    """The writer's parameters: a preset (``tiny``, ``lite-attn``) plus overrides (names as in PRESETS)."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    p = {**_COMMON, **PRESETS[preset]}
    unknown = set(overrides) - set(p)
    if unknown:
        raise ValueError(f"unknown synthetic parameters {sorted(unknown)}; known: {sorted(p)}")
    p.update(overrides)
    for k in ("n_layer", "n_embd", "n_head", "n_lora_kv", "n_rot", "n_embd_head_k", "n_embd_head_v", "n_vocab",
              "n_ff", "n_ff_exp", "n_expert", "n_expert_used", "n_expert_shared", "n_ctx_train", "n_ctx_orig_yarn",
              "n_lora_q", "n_layer_dense_lead"):
        low = 0 if k in ("n_lora_q", "n_layer_dense_lead") else 1
        if not isinstance(p[k], int) or isinstance(p[k], bool) or p[k] < low:
            raise ValueError(f"synthetic parameter {k} must be an int >= {low}, got {p[k]!r}")
    if p["n_layer"] > LLAMA_MAX_LAYERS:
        raise ValueError(f"n_layer must be <= {LLAMA_MAX_LAYERS}, got {p['n_layer']}")
    if p["n_rot"] >= p["n_embd_head_k"]:
        raise ValueError(f"n_rot ({p['n_rot']}) must be smaller than n_embd_head_k ({p['n_embd_head_k']})")
    if not 0 <= p["n_layer_dense_lead"] <= p["n_layer"]:
        raise ValueError("n_layer_dense_lead must be in [0, n_layer]")
    if not 0 < p["n_expert_used"] <= p["n_expert"] <= LLAMA_MAX_EXPERTS:
        raise ValueError("need 0 < n_expert_used <= n_expert <= 256")
    return p


def synthetic_types(preset: str = "tiny", **overrides) -> dict:
    """Weight type per tensor class for a preset, with overrides (``exps="q4_K"``)."""
    if preset not in _TYPES:
        raise ValueError(f"preset must be one of {', '.join(_TYPES)}, got {preset!r}")
    t = dict(_TYPES[preset])
    unknown = set(overrides) - set(t)
    if unknown:
        raise ValueError(f"unknown tensor classes {sorted(unknown)}; known: {sorted(t)}")
    t.update(overrides)
    return t


def _to_loader_dict(p: dict) -> dict:
    """The writer's parameters as the dict :func:`read_hparams` returns (for :func:`expected_tensors`)."""
    L = p["n_layer"]
    return dict(n_embd=p["n_embd"], n_vocab=p["n_vocab"], n_rot=p["n_rot"], n_layer=L,
                n_embd_head_k=p["n_embd_head_k"], n_embd_head_qk_nope=p["n_embd_head_k"] - p["n_rot"],
                n_embd_head_v=p["n_embd_head_v"], n_lora_kv=p["n_lora_kv"], n_lora_q=p["n_lora_q"],
                n_ff_exp=p["n_ff_exp"], n_expert=p["n_expert"], n_expert_shared=p["n_expert_shared"],
                n_head_arr=[p["n_head"]] * L, n_ff_arr=[p["n_ff"]] * L, n_layer_dense_lead=p["n_layer_dense_lead"])


def _values(name: str, ne: tuple, cls: str, seed: int) -> np.ndarray:
    """Deterministic float32 values for one tensor, NumPy shape (ne3, ne2, ne1, ne0) squeezed of leading 1s.

    Each tensor has its own stream (seed, crc32(name)), so values do not depend on which tensors are written.
    """
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    shape = tuple(reversed(ne))
    while len(shape) > 1 and shape[0] == 1:
        shape = shape[1:]
    x = rng.standard_normal(shape, dtype=np.float32)
    if cls == "norm":
        return (np.float32(1) + np.float32(0.1) * x).astype(np.float32)
    return (x * np.float32(1 / np.sqrt(ne[0]))).astype(np.float32)


def _encode(x: np.ndarray, type: str) -> np.ndarray:
    """float32 values -> uint8 bytes of ``type`` (NumPy shape (..., row_bytes))."""
    if type == "f32":
        return x.view(np.uint8)
    if type == "f16":
        return fp.f32_to_f16(x).astype("<u2").view(np.uint8)
    if type == "bf16":
        return fp.f32_to_bf16(x).astype("<u2").view(np.uint8)
    return quantize(x, type)


def write_synthetic(path, preset: str = "tiny", *, types: dict | None = None, seed: int = 0, fallback: bool = True,
                    **hparams) -> dict:
    """Write a synthetic deepseek2 GGUF; return ``{"hparams", "types", "tensors"}`` describing what was written.

    ``hparams`` override the preset (``n_layer``, ``n_embd``, ``n_head``, ``n_lora_kv``, ``n_rot``,
    ``n_embd_head_k``, ``n_embd_head_v``, ``n_lora_q`` (0 = Lite's plain ``attn_q``), ``n_ff``, ``n_ff_exp``,
    ``n_expert``, ``n_expert_used``, ``n_expert_shared``, ``n_layer_dense_lead``, ``n_vocab``, ...);
    ``types`` overrides weight types per tensor class (see :func:`expected_tensors`), any type mlaref can
    quantize. A class type whose block does not divide a tensor's ne0 falls back as llama-quantize does
    (``q4_K`` -> ``q5_0``, ``q6_K`` -> ``q8_0``, ...) when ``fallback``, else raises ValueError.
    ``tensors`` maps each name to ``(type, ne, bytes)``: the exact bytes written.
    """
    p = synthetic_hparams(preset, **hparams)
    tmap = synthetic_types(preset, **(types or {}))
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    for t in sorted(set(tmap.values())):
        type_geometry(t)  # unknown to mlaref: refuse before any work
        _gguf_type(t)  # unknown to gguf-py or sized differently there
    w = GGUFWriter(os.fspath(path), ARCH)
    w.add_name(f"mlaref-synthetic-{preset}")
    w.add_uint32(_k(Keys.LLM.BLOCK_COUNT), p["n_layer"])
    w.add_uint32(_k(Keys.LLM.CONTEXT_LENGTH), p["n_ctx_train"])
    w.add_uint32(_k(Keys.LLM.EMBEDDING_LENGTH), p["n_embd"])
    w.add_uint32(_k(Keys.LLM.FEED_FORWARD_LENGTH), p["n_ff"])
    w.add_uint32(_k(Keys.Attention.HEAD_COUNT), p["n_head"])
    w.add_uint32(_k(Keys.Attention.HEAD_COUNT_KV), p["n_head"])
    w.add_float32(_k(Keys.Rope.FREQ_BASE), p["rope_freq_base"])
    w.add_float32(_k(Keys.Attention.LAYERNORM_RMS_EPS), p["f_norm_rms_eps"])
    w.add_uint32(_k(Keys.LLM.EXPERT_USED_COUNT), p["n_expert_used"])
    w.add_uint32(_k(Keys.LLM.LEADING_DENSE_BLOCK_COUNT), p["n_layer_dense_lead"])
    w.add_uint32(_k(Keys.LLM.VOCAB_SIZE), p["n_vocab"])
    if p["n_lora_q"]:
        w.add_uint32(_k(Keys.Attention.Q_LORA_RANK), p["n_lora_q"])
    w.add_uint32(_k(Keys.Attention.KV_LORA_RANK), p["n_lora_kv"])
    w.add_uint32(_k(Keys.Attention.KEY_LENGTH), p["n_embd_head_k"])
    w.add_uint32(_k(Keys.Attention.VALUE_LENGTH), p["n_embd_head_v"])
    w.add_uint32(_k(Keys.LLM.EXPERT_FEED_FORWARD_LENGTH), p["n_ff_exp"])
    w.add_uint32(_k(Keys.LLM.EXPERT_COUNT), p["n_expert"])
    w.add_uint32(_k(Keys.LLM.EXPERT_SHARED_COUNT), p["n_expert_shared"])
    w.add_float32(_k(Keys.LLM.EXPERT_WEIGHTS_SCALE), p["expert_weights_scale"])
    w.add_bool(_k(Keys.LLM.EXPERT_WEIGHTS_NORM), p["expert_weights_norm"])
    w.add_uint32(_k(Keys.LLM.EXPERT_GATING_FUNC), p["expert_gating_func"])
    w.add_uint32(_k(Keys.Rope.DIMENSION_COUNT), p["n_rot"])
    w.add_string(_k(Keys.Rope.SCALING_TYPE), p["rope_scaling_type"])
    w.add_float32(_k(Keys.Rope.SCALING_FACTOR), p["rope_scaling_factor"])
    w.add_uint32(_k(Keys.Rope.SCALING_ORIG_CTX_LEN), p["n_ctx_orig_yarn"])
    w.add_float32(_k(Keys.Rope.SCALING_YARN_LOG_MUL), p["rope_yarn_log_mul"])

    hp = _to_loader_dict(p)
    H, nope, hv, kv = p["n_head"], hp["n_embd_head_qk_nope"], p["n_embd_head_v"], p["n_lora_kv"]
    written = {}
    kv_b_values = None
    for name, (ne, _required, cls) in expected_tensors(hp).items():
        if cls == "bias":
            continue  # ffn_exp_probs_b is DeepSeek-V3's; V2 files do not have it
        t = tmap[cls]
        bs, _ = type_geometry(t)
        if ne[0] % bs:
            fb = _FALLBACK.get(t) if fallback else None
            if fb is None:
                raise ValueError(f"write_synthetic: {name} has ne[0] = {ne[0]}, not a multiple of {t}'s block {bs}")
            t = fb
        if cls == "attn_kv_b":
            x = kv_b_values = _values(name, ne, cls, seed)
        elif cls == "attn_k_b":  # per head: the k_nope rows of kv_b, transposed -> [nope, H*kv]
            x = kv_b_values.reshape(H, nope + hv, kv)[:, :nope, :].transpose(0, 2, 1).reshape(H * kv, nope)
        elif cls == "attn_v_b":  # per head: the v rows of kv_b -> [kv, H*hv]
            x = kv_b_values.reshape(H, nope + hv, kv)[:, nope:, :].reshape(H * hv, kv)
        else:
            x = _values(name, ne, cls, seed)
        data = np.ascontiguousarray(_encode(np.ascontiguousarray(x), t))
        w.add_tensor(name, data, raw_dtype=_gguf_type(t))
        written[name] = (t, ne, data.reshape(-1))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"hparams": p, "types": tmap, "tensors": written}


# ---------------------------------------------------------------------------------------------------------
# plans and the `mlaref inspect` command
# ---------------------------------------------------------------------------------------------------------
def kv_cache_plan(hp: dict, n_ctx: int, cache_type: str = "f16") -> dict:
    """The MLA KV cache of ``-mla 2 -fa`` (upstream facts §2): one ``[kv_lora_rank + n_rot, kv_size]`` tensor per layer.

    kv_size = n_ctx rounded up to 256 (flash attention, :func:`mlaref.reference.hparams.pad_ctx`); the bytes come
    from :func:`mlaref.reference.alloc.kv_cache_bytes` (``n_layer * kv_size * row_size(cache_type, 576)``).
    """
    from mlaref.reference.alloc import kv_cache_bytes  # other helpers' modules: imported when planning
    from mlaref.reference.hparams import pad_ctx

    if not isinstance(n_ctx, int) or isinstance(n_ctx, bool) or n_ctx <= 0:
        raise ValueError(f"n_ctx must be a positive int, got {n_ctx!r}")
    kv_size = pad_ctx(n_ctx, flash_attn=True)
    one_layer = SimpleNamespace(n_layer=1, kv_row_elems=hp["kv_row"])
    per_layer = kv_cache_bytes(one_layer, kv_size, cache_type)
    return {"n_ctx": n_ctx, "kv_size": kv_size, "type": cache_type, "ne": (hp["kv_row"], kv_size),
            "row_bytes": row_size(cache_type, hp["kv_row"]), "bytes_per_layer": per_layer,
            "n_layer": hp["n_layer"], "bytes": per_layer * hp["n_layer"]}


def _compute_plan(model: Model, kv_size: int, cache_type: str) -> str:
    """The compute buffer of the worst-case reserve from :mod:`mlaref.reference.alloc`, as text."""
    if model.hp is None:
        return f"not planned: {model.hp_error}"
    from mlaref.reference import alloc

    parts = []
    for variant, label in (("direct", "PR #253"), ("f32", "before")):
        try:
            res = alloc.compute_buffer(model.hp, kv_size, variant=variant, cache_type=cache_type)
        except ImportError as exc:
            return f"not available yet ({exc})"
        except Exception as exc:  # noqa: BLE001  (a planner failure must not hide the rest of the report)
            return f"not planned: {type(exc).__name__}: {exc}"
        parts.append(f"{label} {res.buffer_size} B = {alloc.mib(res.buffer_size)} MiB")
    return "; ".join(parts)


def _kernels_for(type_name: str | None) -> str:
    """The generated mul_mat kernel dispatch would pick for this weight type times f32 activations (no build)."""
    if type_name is None:
        return "not implemented in mlaref"
    if type_name == "i32":
        return "no mul_mat (integer tensor)"
    vdt = get_type(type_name).vec_dot_type
    try:
        from mlaref.codegen import catalog, dispatch  # noqa: PLC0415  (codegen is optional for reading files)
    except ImportError as exc:
        return f"codegen unavailable ({exc})"
    have = catalog.by_key().get(("mul_mat", type_name, "f32", "l16a1"), {})
    for isa in dispatch.candidates(None):
        if isa in have:
            return f"{have[isa].name} (src1 rows converted to {vdt} per thread)"
    return f"no generated mul_mat kernel for {type_name} on this CPU: the reference mul_mat runs it"


def configure(parser) -> None:
    parser.add_argument("file", help="a GGUF file")
    parser.add_argument("--ctx", type=int, default=2048, help="context length for the KV-cache plan (default 2048)")
    parser.add_argument("--cache-type", default="f16", choices=("f16", "q8_0"), help="KV cache type (-ctk)")


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def run(args) -> int:
    import sys

    try:
        model = open_gguf(args.file)
    except GGUFError as exc:
        print(f"mlaref inspect: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if args.ctx <= 0:
        print(f"mlaref inspect: --ctx must be positive, got {args.ctx}", file=sys.stderr)
        return 2
    print(f"file: {model.path}")
    print(f"GGUF v{model.version}, {len(model.infos)} tensors, {len(model.kv_types)} keys, "
          f"alignment {model.alignment}, data at byte {model.data_offset}")
    print(f"architecture: {model.arch}")
    hp = model.hparams
    if hp is not None:
        print("hyper-parameters (llama.cpp names):")
        for k, v in hp.items():
            if k in ("n_ff_arr", "n_head_arr", "n_head_kv_arr") and len(set(v)) == 1:
                continue
            if isinstance(v, float):
                v = str(np.float32(v))  # the file holds float32: print its shortest repr
            print(f"  {k:24s} {v}")
        if model.hp is None:
            print(f"  (mlaref.reference.hparams.HParams refused these values: {model.hp_error})")
    print("tensors:")
    print(f"  {'name':36s} {'type':8s} {'ne':28s} {'bytes':>12s}")
    total = 0
    for ti in model.infos:
        shape = "[" + ", ".join(str(v) for v in ti.ne[: max(ti.n_dims, 1)]) + "]"
        print(f"  {ti.name:36s} {ti.ggml_type.lower() if ti.type is None else ti.type:8s} {shape:28s} {ti.nbytes:12d}")
        total += ti.nbytes
    print(f"  total {total} bytes = {_mib(total)}")
    if model.unsupported:
        print("unsupported tensor types (listed, not loaded): " +
              ", ".join(f"{ti.name} ({ti.ggml_type})" for ti in model.unsupported))
    if hp is not None:
        try:
            plan = kv_cache_plan(hp, args.ctx, args.cache_type)
        except ValueError as exc:
            print(f"KV cache: not planned: {exc}")
            return 0
        print(f"KV cache (-mla 2 -fa, type {plan['type']}): n_ctx {plan['n_ctx']} -> kv_size {plan['kv_size']}; "
              f"per layer [{plan['ne'][0]}, {plan['ne'][1]}] x {plan['row_bytes']} B/row = "
              f"{plan['bytes_per_layer']} B; {plan['n_layer']} layers = {plan['bytes']} B = {_mib(plan['bytes'])}")
        print(f"compute buffer (ubatch 512): {_compute_plan(model, plan['kv_size'], args.cache_type)}")
    print("mul_mat kernel per weight type (f32 activations, plan l16a1, best ISA on this CPU):")
    by_type: dict = {}
    for ti in model.infos:
        by_type.setdefault(ti.type or ti.ggml_type, []).append(ti)
    for t, tis in sorted(by_type.items()):
        print(f"  {t:8s} x{len(tis):4d}: {_kernels_for(tis[0].type)}")
    return 0

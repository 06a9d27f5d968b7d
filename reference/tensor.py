"""The ggml tensor model: a type, ``ne[4]``, byte strides ``nb[4]`` and an offset into a shared byte buffer.

A :class:`Tensor` is what ``struct ggml_tensor`` is to the CPU back-end, minus the graph fields:

=========  ===========================================================================================
field      meaning (ggml.h)
=========  ===========================================================================================
``type``   a registered type name (``"f32"``, ``"f16"``, ``"bf16"``, ``"q8_0"``, ...) or ``"i32"``
``ne``     elements per dimension, ``ne[0]`` fastest; always four entries (missing ones are 1)
``nb``     byte strides; ``nb[0]`` = the type size (bytes of one element, or of one block for block types),
           ``nb[1]`` = ``row_size(ne[0])`` for a contiguous tensor, ``nb[i] = nb[i-1]*ne[i-1]`` above that
``data``   the *base* buffer, 1-D uint8, shared by every view made from it (``view_src->data`` in ggml)
``offset`` byte offset of element (0, 0, 0, 0) in ``data`` (``view_offs``)
=========  ===========================================================================================

Element (i0, i1, i2, i3) of an element type lives at ``offset + i0*nb0 + i1*nb1 + i2*nb2 + i3*nb3``; for a
block type, block ``i0 // block_size`` of row (i1, i2, i3) lives at ``offset + (i0 // block_size)*nb0 + ...``.

Views (``view``, ``permute``, ``transpose``, ``reshape``) change only ``ne``, ``nb`` and ``offset``, as
``ggml_view_4d``, ``ggml_permute``, ``ggml_transpose`` and ``ggml_reshape_4d`` do (ggml.c@676f0e71b), so a
write through a view is visible in its base. ``is_contiguous`` and ``nbytes`` reproduce
``ggml_is_contiguous_n`` and ``ggml_nbytes``: dimensions with ``ne == 1`` do not constrain their stride.

The geometry of block types (``block_size``, ``type_size``, ``row_size``) comes from the format registry
(:func:`mlaref.reference.get_type`); the four element types ggml handles element by element (``f32``,
``f16``, ``bf16``, ``i32``) are described by the table ``ELEMENT_TYPES`` here, because ``i32`` is not a
block format and the ops need each element type's NumPy storage dtype.

**Types with row metadata** (ik_llama.cpp's ``type_traits.row_meta_size``; of mlaref's types only ``q8_KV``, 8
bytes of scale and sum in front of every row: upstream facts §5a). ik's ggml sizes them with
``ggml_row_size = row_meta_size + type_size·ne0/blck_size`` (ggml/src/ggml.c:4758-4761 of the ik-llama-cpp-python
0.1.5 snapshot), so ``nb[1] = ggml_row_size(type, ne[0])`` in ``ggml_new_tensor_impl`` (ggml.c:5446-5450) and
``ggml_is_contiguous_n`` starts ``next_nb`` from ``ggml_row_size`` (ggml.c:4959-4979). The same here: a row of
``ne[0]`` values takes ``row_meta_size + ne[0]/block_size·type_size`` bytes, the metadata first. Such a row is
only meaningful whole: a tensor (or view) of a row-metadata type must have packed rows (``nb[0] = type_size``),
``view`` keeps ``ne[0]`` and starts on a row (``offset`` a multiple of ``nb[1]``), ``permute`` and ``reshape`` keep
``ne[0]``, and ``transpose`` is refused; each refusal names the type. (ik's ggml checks none of this: its row
routines take the first 8 bytes at a view's start for the row's scale and sum, wherever the view starts.)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from mlaref.reference import dequantize, fp, get_type, quantize  # the registry and its (de)quantizers

__all__ = ["ELEMENT_TYPES", "Tensor", "contiguous_n", "type_geometry", "row_size", "row_meta_size", "is_element_type",
           "aligned_buffer"]

# name -> (NumPy storage dtype of one element, ggml_type_size)
ELEMENT_TYPES: dict[str, tuple[np.dtype, int]] = {
    "f32": (np.dtype("<f4"), 4),
    "f16": (np.dtype("<u2"), 2),  # IEEE half bits
    "bf16": (np.dtype("<u2"), 2),  # bfloat16 bits
    "i32": (np.dtype("<i4"), 4),
}


def is_element_type(type: str) -> bool:
    """Is ``type`` one of ``f32``, ``f16``, ``bf16``, ``i32`` (block size 1, stored as plain elements)?"""
    return type in ELEMENT_TYPES


def type_geometry(type: str) -> tuple[int, int]:
    """``(block_size, type_size)`` of ``type``, as ``ggml_blck_size`` / ``ggml_type_size``."""
    if not isinstance(type, str):
        raise TypeError(f"type must be a type name (str), got {type!r}")
    if type in ELEMENT_TYPES:
        return 1, ELEMENT_TYPES[type][1]

    fmt = get_type(type)
    return int(fmt.block_size), int(fmt.type_size)


def row_meta_size(type: str) -> int:
    """Bytes of metadata in front of every row of ``type`` (ik's ``type_traits.row_meta_size``; 0 but for q8_KV)."""
    if not isinstance(type, str):
        raise TypeError(f"type must be a type name (str), got {type!r}")
    return 0 if type in ELEMENT_TYPES else int(get_type(type).row_meta_size)


def row_size(type: str, n: int) -> int:
    """Bytes of a row of ``n`` values of ``type`` (ik's ``ggml_row_size``: the row metadata, if any, then the
    blocks); ``n`` must be a block multiple."""
    bs, ts = type_geometry(type)
    if n % bs:
        raise ValueError(f"row_size: a row of {type} must hold a multiple of {bs} values (got {n})")
    return row_meta_size(type) + n // bs * ts


def _whole_rows_only(type: str, what: str, detail: str) -> ValueError:
    meta = row_meta_size(type)
    return ValueError(f"{what}: {type} rows carry {meta} bytes of metadata (scale and sum of the whole row) in "
                      f"front, so only whole rows can be viewed or copied; {detail}")


def _norm_ne(ne, what: str) -> tuple[int, int, int, int]:
    ne = tuple(int(v) for v in ne)
    if not 1 <= len(ne) <= 4:
        raise ValueError(f"{what}: ne must have 1 to 4 entries, got {len(ne)}")
    if any(v < 0 for v in ne):
        raise ValueError(f"{what}: ne must be non-negative, got {ne}")
    return ne + (1,) * (4 - len(ne))


def _contiguous_nb(type: str, ne: Sequence[int]) -> tuple[int, int, int, int]:
    bs, ts = type_geometry(type)
    if ne[0] % bs:
        raise ValueError(f"ne[0] of a {type} tensor must be a multiple of the block size {bs} (got {ne[0]})")
    nb = [ts, row_size(type, ne[0]), 0, 0]
    nb[2] = nb[1] * ne[1]
    nb[3] = nb[2] * ne[2]
    return tuple(nb)


def contiguous_n(ne, nb, block_size: int, type_size: int, n: int = 0, row_meta_size: int = 0) -> bool:
    """``ggml_is_contiguous_n`` on a shape and strides (ggml.c): dims above ``n`` packed, dims of size 1 ignored.

    ``next_nb`` starts from the row size with its metadata, as ik's ``ggml_row_size`` gives it (the snapshot's
    ggml.c:4959-4979). Shared by :class:`Tensor` and the graph IR's shape-only tensors.
    """
    if ne[0] != block_size and nb[0] != type_size:
        return False
    next_nb = row_meta_size + type_size * (ne[0] // block_size)
    for i in range(1, 4):
        if ne[i] != 1:
            if i > n:
                if nb[i] != next_nb:
                    return False
                next_nb *= ne[i]
            else:
                next_nb = ne[i] * nb[i]
    return True


def aligned_buffer(nbytes: int, align: int = 64) -> np.ndarray:
    """``nbytes`` uninitialised bytes (uint8) whose first byte sits on an ``align``-byte boundary, as ggml's CPU
    buffers place tensor data (``TENSOR_ALIGNMENT``; here a cache line)."""
    raw = np.empty(nbytes + align, dtype=np.uint8)
    start = -raw.ctypes.data % align
    return raw[start:start + nbytes]


class Tensor:
    """A ggml tensor: ``type``, ``ne``, ``nb``, ``offset`` into the shared uint8 buffer ``data``."""

    __slots__ = ("type", "ne", "nb", "data", "offset", "name")

    def __init__(self, type: str, ne, nb, data: np.ndarray, offset: int = 0, name: str = ""):
        ne = _norm_ne(ne, "Tensor")
        nb = tuple(int(v) for v in nb)
        if len(nb) != 4:
            raise ValueError(f"Tensor: nb must have 4 entries, got {len(nb)}")
        bs, ts = type_geometry(type)
        if ne[0] % bs:
            raise ValueError(f"Tensor: ne[0] of a {type} tensor must be a multiple of the block size {bs} (got {ne[0]})")
        if any(v < 0 for v in nb):
            raise ValueError(f"Tensor: strides nb must be non-negative, got {nb}")
        if row_meta_size(type) and nb[0] != ts:
            raise _whole_rows_only(type, "Tensor", f"the blocks of a row must be packed (nb[0] {nb[0]} != {ts})")
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 1:
            raise TypeError("Tensor: data must be a 1-D uint8 NumPy array (the base buffer)")
        if offset < 0:
            raise ValueError(f"Tensor: offset must be >= 0, got {offset}")
        self.type = type
        self.ne = ne
        self.nb = nb
        self.data = data
        self.offset = int(offset)
        self.name = name
        end = self.offset + self.nbytes()
        if end > data.size:
            raise ValueError(
                f"Tensor: the view needs bytes [{self.offset}, {end}) but the buffer holds {data.size} bytes"
            )

    # -- constructors ---------------------------------------------------------------------------------
    @classmethod
    def empty(cls, type: str, ne, name: str = "") -> "Tensor":
        """A contiguous tensor with a new, uninitialised buffer (``ggml_new_tensor``), its data 64-byte aligned
        as ggml's CPU buffers place tensors (``TENSOR_ALIGNMENT``, here a cache line)."""
        ne = _norm_ne(ne, "Tensor.empty")
        nb = _contiguous_nb(type, ne)
        return cls(type, ne, nb, aligned_buffer(nb[3] * ne[3]), 0, name)

    @classmethod
    def zeros(cls, type: str, ne, name: str = "") -> "Tensor":
        """A contiguous tensor whose buffer is all zero bytes."""
        t = cls.empty(type, ne, name)
        t.data[:] = 0
        return t

    @classmethod
    def from_numpy(cls, arr, type: str | None = None, name: str = "") -> "Tensor":
        """A contiguous tensor holding ``arr`` (NumPy shape ``(ne3, ne2, ne1, ne0)``, fewer dims allowed).

        ``arr`` float32 (or float16, whose values widen exactly) is stored as ``type`` (default ``f32``):
        ``f16`` and ``bf16`` round to nearest even (``fp.f32_to_f16``, ``fp.f32_to_bf16``), block types
        quantize with the reference routine (variant ``ref``). int32 arrays make ``i32`` tensors.
        """
        a = np.asarray(arr)
        if a.ndim > 4:
            raise ValueError(f"Tensor.from_numpy: arr has {a.ndim} dims; ggml tensors have at most 4")
        if a.ndim == 0:
            a = a.reshape(1)
        ne = tuple(reversed(a.shape))
        if a.dtype == np.int32:
            if type not in (None, "i32"):
                raise TypeError(f"Tensor.from_numpy: an int32 array makes an i32 tensor, not {type!r}")
            t = cls.empty("i32", ne, name)
            t.storage()[...] = a.reshape(t.storage().shape)
            return t
        if a.dtype == np.float16:
            a = a.astype(np.float32)  # exact widening
            type = type or "f16"
        if a.dtype != np.float32:
            raise TypeError(f"Tensor.from_numpy: arr must be float32, float16 or int32, got {a.dtype}")
        type = type or "f32"
        if type == "i32":
            raise TypeError("Tensor.from_numpy: an i32 tensor needs an int32 array")
        t = cls.empty(type, ne, name)
        x = np.ascontiguousarray(a).reshape(t.ne[3], t.ne[2], t.ne[1], t.ne[0])
        if type == "f32":
            t.storage()[...] = x
        elif type == "f16":
            t.storage()[...] = fp.f32_to_f16(x)
        elif type == "bf16":
            t.storage()[...] = fp.f32_to_bf16(x)
        else:
            t.storage()[...] = quantize(x, type, variant="ref")
        return t

    @classmethod
    def from_bytes(cls, rows_uint8, type: str, ne, name: str = "") -> "Tensor":
        """A contiguous tensor whose buffer is a copy of already-encoded bytes (e.g. quantized rows)."""
        b = np.asarray(rows_uint8)
        if b.dtype != np.uint8:
            raise TypeError(f"Tensor.from_bytes: rows_uint8 must be uint8, got {b.dtype}")
        t = cls.empty(type, ne, name)
        if b.size != t.data.size:
            raise ValueError(
                f"Tensor.from_bytes: a contiguous {type} tensor of ne {t.ne} holds {t.data.size} bytes, got {b.size}"
            )
        t.data[:] = b.reshape(-1)
        return t

    # -- geometry -------------------------------------------------------------------------------------
    @property
    def block_size(self) -> int:
        return type_geometry(self.type)[0]

    @property
    def type_size(self) -> int:
        return type_geometry(self.type)[1]

    def row_size(self) -> int:
        """Bytes of one row of this tensor's ne[0] values (``ggml_row_size(type, ne[0])``)."""
        return row_size(self.type, self.ne[0])

    def nbytes(self) -> int:
        """``ggml_nbytes``: the span of bytes from element (0,0,0,0) to the end of the last element."""
        if any(v <= 0 for v in self.ne):
            return 0
        bs, ts = type_geometry(self.type)
        if bs == 1:
            n = ts
            for i in range(4):
                n += (self.ne[i] - 1) * self.nb[i]
        else:
            n = row_meta_size(self.type) + self.ne[0] * self.nb[0] // bs
            for i in range(1, 4):
                n += (self.ne[i] - 1) * self.nb[i]
        return n

    def nrows(self) -> int:
        """``ggml_nrows``: ne[1]*ne[2]*ne[3]."""
        return self.ne[1] * self.ne[2] * self.ne[3]

    def nelements(self) -> int:
        return self.ne[0] * self.ne[1] * self.ne[2] * self.ne[3]

    def is_contiguous(self, n: int = 0) -> bool:
        """``ggml_is_contiguous_n``: dims above ``n`` are packed (``n = 0`` is ``ggml_is_contiguous``).

        Dims with ``ne == 1`` are ignored; with ``n = 1`` rows may have any stride (``ggml_is_contiguous_1``).
        """
        return contiguous_n(self.ne, self.nb, *type_geometry(self.type), n, row_meta_size(self.type))

    def rows_contiguous(self) -> bool:
        """Are the elements (blocks) of each row packed, i.e. ``nb[0] == type_size``?"""
        return self.nb[0] == self.type_size

    # -- views ----------------------------------------------------------------------------------------
    def view(self, ne, nb, offset_bytes: int = 0, name: str = "") -> "Tensor":
        """A view sharing this tensor's buffer (``ggml_view_1d`` .. ``ggml_view_4d``).

        ``nb`` lists either the strides above ``nb[0]`` as ggml's view functions take them (``len(ne) - 1``
        entries: ``nb[0]`` is the type size) or all of them (``len(ne)`` entries). Missing higher strides
        continue as ``nb[i] = nb[i-1]*ne[i-1]`` (``nb[1] = row_size(ne[0])``). ``offset_bytes`` is relative to this
        tensor's element 0. A type with row metadata (q8_KV) allows views of whole rows only: the same ``ne[0]``,
        an offset on a row start (a multiple of ``nb[1]``).
        """
        k = len(tuple(ne))
        nb = tuple(int(v) for v in nb)
        ne4 = _norm_ne(ne, "view")
        if len(nb) == k - 1:
            nb = (self.type_size,) + nb
        elif len(nb) != k:
            raise ValueError(f"view: nb must have {k - 1} (nb1..) or {k} (nb0..) entries for {k} dims, got {len(nb)}")
        full = list(nb)
        while len(full) < 4:
            i = len(full)
            if i == 1:
                full.append(row_meta_size(self.type) + full[0] * (ne4[0] // self.block_size))
            else:
                full.append(full[i - 1] * ne4[i - 1])
        if offset_bytes < 0:
            raise ValueError(f"view: offset_bytes must be >= 0, got {offset_bytes}")
        if row_meta_size(self.type):
            if ne4[0] != self.ne[0]:
                raise _whole_rows_only(self.type, "view", f"a view of {ne4[0]} of a row's {self.ne[0]} values "
                                                          "would start or end inside a row")
            if offset_bytes % self.nb[1]:
                raise _whole_rows_only(self.type, "view", f"offset {offset_bytes} is not a multiple of the row "
                                                          f"stride {self.nb[1]}")
        return Tensor(self.type, ne4, full, self.data, self.offset + int(offset_bytes), name)

    def permute(self, a0: int, a1: int, a2: int, a3: int) -> "Tensor":
        """``ggml_permute``: source dimension i becomes dimension ``axis_i`` of the view."""
        axes = (a0, a1, a2, a3)
        if sorted(axes) != [0, 1, 2, 3]:
            raise ValueError(f"permute: the axes must be a permutation of 0..3, got {axes}")
        ne = [0] * 4
        nb = [0] * 4
        for i, a in enumerate(axes):
            ne[a] = self.ne[i]
            nb[a] = self.nb[i]
        if row_meta_size(self.type) and axes[0] != 0:
            raise _whole_rows_only(self.type, "permute", "dimension 0 (the rows) must stay in place")
        if self.block_size != 1 and ne[0] % self.block_size:
            raise ValueError(f"permute: the new ne[0] ({ne[0]}) of a {self.type} view must be a block multiple")
        return Tensor(self.type, ne, nb, self.data, self.offset, self.name)

    def transpose(self) -> "Tensor":
        """``ggml_transpose``: swap dimensions 0 and 1 (``permute(1, 0, 2, 3)``)."""
        return self.permute(1, 0, 2, 3)

    def reshape(self, *ne) -> "Tensor":
        """``ggml_reshape_Nd``: same bytes, new shape; the tensor must be contiguous."""
        if len(ne) == 1 and isinstance(ne[0], (tuple, list)):
            ne = tuple(ne[0])
        ne4 = _norm_ne(ne, "reshape")
        if not self.is_contiguous():
            raise ValueError("reshape: the tensor must be contiguous (ggml_reshape asserts ggml_is_contiguous)")
        if int(np.prod(ne4)) != self.nelements():
            raise ValueError(f"reshape: {self.ne} has {self.nelements()} elements, {ne4} has {int(np.prod(ne4))}")
        if row_meta_size(self.type) and ne4[0] != self.ne[0]:
            raise _whole_rows_only(self.type, "reshape", f"ne[0] {self.ne[0]} cannot become {ne4[0]}")
        return Tensor(self.type, ne4, _contiguous_nb(self.type, ne4), self.data, self.offset, self.name)

    # -- rows -----------------------------------------------------------------------------------------
    def row(self, i1: int = 0, i2: int = 0, i3: int = 0) -> np.ndarray:
        """The bytes of row (i1, i2, i3) as a 1-D uint8 view into ``data`` (needs ``nb[0] == type_size``)."""
        if not self.rows_contiguous():
            raise ValueError(f"row: the elements of a row must be contiguous (nb[0] {self.nb[0]} != {self.type_size})")
        for k, (i, n) in enumerate(zip((i1, i2, i3), self.ne[1:]), start=1):
            if not 0 <= i < n:
                raise IndexError(f"row: i{k} = {i} is outside [0, {n})")
        start = self.offset + i1 * self.nb[1] + i2 * self.nb[2] + i3 * self.nb[3]
        return self.data[start : start + self.row_size()]

    def rows(self) -> Iterator[tuple[int, int, int]]:
        """Row indices (i1, i2, i3) in ggml order: i1 fastest, then i2, then i3."""
        for i3 in range(self.ne[3]):
            for i2 in range(self.ne[2]):
                for i1 in range(self.ne[1]):
                    yield i1, i2, i3

    # -- NumPy access ---------------------------------------------------------------------------------
    def storage(self) -> np.ndarray:
        """A writable NumPy *view* of the stored values following the strides.

        Element types: shape ``(ne3, ne2, ne1, ne0)`` of the storage dtype (float32, uint16 bits for f16 and
        bf16, int32). Block types: shape ``(ne3, ne2, ne1, row_bytes)`` uint8 (needs ``nb[0] == type_size``).
        Writing into it writes into ``data``.
        """
        shape4 = (self.ne[3], self.ne[2], self.ne[1])
        strides4 = (self.nb[3], self.nb[2], self.nb[1])
        if self.type in ELEMENT_TYPES:
            dt = ELEMENT_TYPES[self.type][0]
            shape, strides = shape4 + (self.ne[0],), strides4 + (self.nb[0],)
        else:
            if not self.rows_contiguous():
                raise ValueError(f"storage: {self.type} rows must be contiguous (nb[0] {self.nb[0]} != {self.type_size})")
            dt = np.dtype(np.uint8)
            shape, strides = shape4 + (self.row_size(),), strides4 + (1,)
        if self.nbytes() == 0:
            return np.zeros(shape, dtype=dt)
        return np.ndarray(shape, dtype=dt, buffer=self.data, offset=self.offset, strides=strides)

    def raw(self) -> np.ndarray:
        """A contiguous copy of the bytes, shape ``(ne3, ne2, ne1, row_bytes)`` uint8, following the strides."""
        if row_meta_size(self.type):  # whole rows (nb[0] == type_size is checked at construction)
            return np.array(self.storage(), dtype=np.uint8)
        bs, ts = type_geometry(self.type)
        nblk = self.ne[0] // bs
        shape = (self.ne[3], self.ne[2], self.ne[1], nblk, ts)
        if self.nbytes() == 0:
            return np.zeros(shape[:3] + (nblk * ts,), dtype=np.uint8)
        strides = (self.nb[3], self.nb[2], self.nb[1], self.nb[0], 1)
        v = np.ndarray(shape, dtype=np.uint8, buffer=self.data, offset=self.offset, strides=strides)
        return np.ascontiguousarray(v).reshape(shape[:3] + (nblk * ts,))

    def to_numpy(self) -> np.ndarray:
        """The values as a new array of shape ``(ne3, ne2, ne1, ne0)``: float32 (exactly widened f16/bf16,
        dequantized block types) or int32 for ``i32``. Works on any view."""
        if self.type == "f32":
            return np.array(self.storage(), dtype=np.float32)
        if self.type == "i32":
            return np.array(self.storage(), dtype=np.int32)
        if self.type == "f16":
            return fp.f16_to_f32(np.ascontiguousarray(self.storage()))
        if self.type == "bf16":
            return fp.bf16_to_f32(np.ascontiguousarray(self.storage()))

        raw = self.raw()
        if raw.size == 0:
            return np.zeros((self.ne[3], self.ne[2], self.ne[1], self.ne[0]), dtype=np.float32)
        return dequantize(raw, self.type)

    def copy(self, name: str | None = None) -> "Tensor":
        """A contiguous copy with its own buffer (the bytes, not re-encoded)."""
        return Tensor.from_bytes(self.raw(), self.type, self.ne, self.name if name is None else name)

    def __repr__(self) -> str:
        nm = f" {self.name!r}" if self.name else ""
        return f"<Tensor{nm} {self.type} ne={self.ne} nb={self.nb} offset={self.offset}>"

"""A small graph IR with ggml's semantics: tensors, views, op constructors, and the forward-graph DFS.

What is reproduced from ``ggml.c@676f0e71b`` (ik_llama.cpp), because the allocator model depends on it:

* **Shape and strides.** ``ne[4]`` element counts (ne0 fastest), ``nb[4]`` byte strides; a new tensor has
  ``nb0 = type_size``, ``nb1 = row_size(ne0)``, ``nb[i] = nb[i-1]·ne[i-1]`` (``ggml_new_tensor_impl``).
* **Byte size** (``ggml_nbytes``): for block size 1, ``type_size + Σ (ne[i]-1)·nb[i]``; for block formats
  ``nb1 + Σ_{i≥1} (ne[i]-1)·nb[i]``; 0 if any ``ne[i] <= 0``. For a view this is the byte span it touches.
* **Views.** ``view_src`` is collapsed to the base tensor at creation and ``view_offs`` accumulated, while
  ``src[0]`` keeps the tensor the view was made of. VIEW / RESHAPE / PERMUTE / TRANSPOSE and the result of
  ``cpy`` (a view of its destination) have no memory of their own.
* **Graph order** (``ggml_visit_parents``): post-order DFS over ``src[0..]`` from each
  ``build_forward_expand`` root, skipping tensors already visited; ``view_src`` is *not* followed. Tensors
  with op NONE become ``leafs``, all others (views included) ``nodes``. Unnamed tensors are named
  ``leaf_%d`` / ``node_%d`` when visited.
* **ggml_cast quirk**: ``cast`` is a CPY whose ``src[1]`` is the result itself; the DFS ignores the self edge
  (already visited) but the allocator counts it as a child.
* **Auto names** of ggml's constructors: ``"%s (view)"``, ``"%s (permuted)"``, ``"%s (transposed)"``,
  ``"%s (reshaped)"``, ``"%s (cont)"``, ``"%s (copy)"``, ``"%s (copy of %s)"``.

Types are names (``"f32"``, ``"f16"``, ``"q8_0"``, ``"i32"``, ...). Block geometry comes from the mlaref
registry (``mlaref.reference.get_type``) where a type is registered, else from :data:`GGML_TYPE_TRAITS`
(ggml's ``type_traits`` table: block size, bytes per block).

**Row metadata** (q8_KV; :mod:`.geometry`): ``nb1 = row_size(ne0) = 8 + ne0``, ``nbytes`` and ``is_contiguous``
follow. Views must keep ``ne0`` and start on a row (offset a multiple of the source's ``nb1``), ``permute`` /
``reshape`` keep dim 0, ``repeat`` does not tile it, ``transpose`` and ``concat`` are refused (ValueError).

``set_rows`` is ggml 0.25.3's (mainline llama.cpp's cache store): a view of ``a`` whose rows ``c[i]`` get ``b``'s.

Two ops are mlaref's own, for the chunked FlashMLA-2 variant (not in ggml):

``flash_attn_ext_partial(q, k, v, mask, scale)``
    flash attention over one chunk of KV cells without the final division. Result f32
    ``[Dv + 2, n_head, n_tokens]`` (the layout of ``flash_attn_ext``'s result plus two columns): for query
    row (head h, token t) with scaled, masked scores ``s_j = scale·(q·k_j) + mask[t, j]``:
    ``M = max_j s_j`` (−inf if every cell is masked), ``S = Σ_j exp(s_j − M)``, ``acc = Σ_j exp(s_j − M)·v_j``;
    elements ``0..Dv-1`` hold ``acc``, element ``Dv`` holds ``M``, element ``Dv+1`` holds ``S``. The mask may
    be a strided view (a column block of the full mask); ``ne0`` of the mask equals the chunk's cell count.
``fa_merge(a, b, final)``
    merges two partials in a fixed order (a is the earlier chunks): ``M = max(Ma, Mb)``,
    ``wa = exp(Ma − M)`` (0 if ``Ma = −inf``), ``wb`` likewise, ``acc = fma(acc_b, wb, acc_a·wa)``,
    ``S = fma(S_b, wb, S_a·wa)`` (one rounding each, as the blocked ``flash_attn_ext`` merges its KV chunks).
    With ``final`` the result is ``acc · (1/S)`` (0 where ``S = 0``) in ``flash_attn_ext``'s
    result layout ``[Dv, n_head, n_tokens]``; otherwise a partial again. ``b`` may be None (one chunk): then
    ``final`` must be set and the result is ``acc_a · (1/S_a)``.
"""

from __future__ import annotations

from typing import Sequence

from mlaref.reference.tensor import contiguous_n
from mlaref.reference.graphs.geometry import GGML_MAX_DIMS, GGML_TYPE_TRAITS, nbytes, row_meta_size, row_size
from mlaref.reference.graphs.geometry import type_traits, whole_rows_only
from mlaref.reference.graphs.cgraph import Graph

__all__ = [
    "GGML_MAX_DIMS", "GGML_MAX_SRC", "FLAG_INPUT", "FLAG_OUTPUT", "GGML_TYPE_TRAITS", "IN_PLACE_OPS",
    "Tensor", "Graph", "type_traits", "row_meta_size", "row_size", "nbytes",
    "new_tensor", "weight", "input_tensor", "view_tensor", "dup_tensor",
    "view_1d", "view_2d", "view_3d", "view_4d", "reshape_1d", "reshape_2d", "reshape_3d", "reshape_4d",
    "permute", "transpose", "cont", "cpy", "cast", "concat", "repeat", "get_rows",
    "add", "mul", "scale", "rms_norm", "fused_rms_norm", "soft_max", "soft_max_ext", "rope_ext", "argsort", "top_k",
    "mul_mat", "mul_mat_id", "moe_up_gate", "fused_mul_unary", "multi_add", "flash_attn_ext",
    "flash_attn_ext_partial", "fa_merge", "set_rows",
]

GGML_MAX_SRC = 10
GGML_KQ_MASK_PAD = 32
FLAG_INPUT = 1  # GGML_TENSOR_FLAG_INPUT
FLAG_OUTPUT = 2  # GGML_TENSOR_FLAG_OUTPUT

# ggml_op_can_inplace (ggml-alloc.c@676f0e71b): the only ops whose result may take a parent's memory.
IN_PLACE_OPS = frozenset({
    "SCALE", "DIAG_MASK_ZERO", "DIAG_MASK_INF", "ADD", "ADD1", "SUB", "MUL", "DIV", "SQR", "SQRT", "LOG",
    "UNARY", "ROPE", "RMS_NORM", "SOFT_MAX",
})

def _contiguous_strides(type_name: str, ne: Sequence[int]) -> tuple[int, int, int, int]:
    _, tsize = type_traits(type_name)
    nb = [tsize, row_size(type_name, ne[0]), 0, 0]
    for i in range(2, GGML_MAX_DIMS):
        nb[i] = nb[i - 1] * ne[i - 1]
    return tuple(nb)


def _ne4(ne: Sequence[int]) -> tuple[int, int, int, int]:
    ne = tuple(int(n) for n in ne)
    if not 1 <= len(ne) <= GGML_MAX_DIMS:
        raise ValueError(f"a tensor has 1 to 4 dims, got ne={ne}")
    if any(n < 0 for n in ne):
        raise ValueError(f"ne must be >= 0, got {ne}")
    return ne + (1,) * (GGML_MAX_DIMS - len(ne))


class Tensor:
    """One ggml tensor: type, ne, nb, op, srcs, view base and offset, op params, flags, name.

    ``external`` models ``data != NULL`` at graph-allocation time: weights and the KV cache (and views of
    them) live in other buffers and are never placed by the allocator.
    """

    __slots__ = ("type", "ne", "nb", "op", "src", "view_src", "view_offs", "op_params", "flags", "name",
                 "external", "_nbytes")

    def __init__(self, type_name, ne, nb, *, op="NONE", src=(), view_src=None, view_offs=0, op_params=None,
                 name="", external=False):
        self.type = type_name
        self.ne = ne
        self.nb = nb
        self.op = op
        self.src = list(src)
        self.view_src = view_src
        self.view_offs = view_offs
        self.op_params = dict(op_params or {})
        self.flags = 0
        self.name = name
        self.external = external
        self._nbytes = None

    # -- geometry ------------------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        if self._nbytes is None:
            self._nbytes = nbytes(self.type, self.ne, self.nb)
        return self._nbytes

    @property
    def nelements(self) -> int:
        return self.ne[0] * self.ne[1] * self.ne[2] * self.ne[3]

    @property
    def nrows(self) -> int:
        return self.ne[1] * self.ne[2] * self.ne[3]

    @property
    def is_view(self) -> bool:
        return self.view_src is not None

    @property
    def is_input(self) -> bool:
        return bool(self.flags & FLAG_INPUT)

    @property
    def is_output(self) -> bool:
        return bool(self.flags & FLAG_OUTPUT)

    def is_contiguous(self, n: int = 0) -> bool:
        """``ggml_is_contiguous_n``: dims above ``n`` packed (dims of size 1 ignored)."""
        return contiguous_n(self.ne, self.nb, *type_traits(self.type), n, row_meta_size(self.type))

    def is_transposed(self) -> bool:
        return self.nb[0] > self.nb[1]

    def same_layout(self, other: "Tensor") -> bool:
        """``ggml_are_same_layout`` (ggml-alloc.c): same type, ne and nb."""
        return self.type == other.type and self.ne == other.ne and self.nb == other.nb

    def set_name(self, name: str) -> "Tensor":
        self.name = name
        return self

    def __repr__(self) -> str:
        view = f", view of {self.view_src.name!r}+{self.view_offs}" if self.view_src is not None else ""
        return f"<{self.op} {self.name!r} {self.type} ne={list(self.ne)} nb={list(self.nb)}{view}>"


def new_tensor(type_name: str, ne, *, view_src: Tensor | None = None, view_offs: int = 0, name: str = "",
               op: str = "NONE", src=(), op_params=None) -> Tensor:
    """``ggml_new_tensor_impl``: contiguous strides; a view collapses its base and checks its span."""
    ne = _ne4(ne)
    if view_src is not None and view_src.view_src is not None:
        view_offs += view_src.view_offs
        view_src = view_src.view_src
    nb = _contiguous_strides(type_name, ne)
    if view_src is not None:
        data_size = row_size(type_name, ne[0]) * ne[1] * ne[2] * ne[3]
        if data_size and data_size + view_offs > view_src.nbytes:
            raise ValueError(
                f"view of {view_src.name!r}: {data_size} B at offset {view_offs} exceed its {view_src.nbytes} B"
            )
    return Tensor(type_name, ne, nb, op=op, src=src, view_src=view_src, view_offs=view_offs, op_params=op_params,
                  name=name, external=view_src.external if view_src is not None else False)


def weight(name: str, type_name: str, ne) -> Tensor:
    """A model tensor: op NONE with data in the model buffer (never placed by the allocator)."""
    t = new_tensor(type_name, ne, name=name)
    t.external = True
    return t


def input_tensor(name: str, type_name: str, ne) -> Tensor:
    """A graph input (``ggml_set_input``): a leaf without data, placed by the allocator first."""
    t = new_tensor(type_name, ne, name=name)
    t.flags |= FLAG_INPUT
    return t


def view_tensor(a: Tensor, name: str | None = None) -> Tensor:
    """``ggml_view_tensor``: same ne and nb, op NONE, view of ``a``."""
    t = new_tensor(a.type, a.ne, view_src=a, name=f"{a.name} (view)" if name is None else name)
    t.nb = a.nb
    return t


def dup_tensor(a: Tensor) -> Tensor:
    """``ggml_dup_tensor``: a new contiguous tensor of ``a``'s type and shape."""
    return new_tensor(a.type, a.ne)


# -- views -------------------------------------------------------------------------------------------
def _whole_rows(a: Tensor, what: str, detail: str) -> None:
    whole_rows_only(a.type, f"{what} of {a.name!r}", detail)


def _view(a: Tensor, ne, offset: int) -> Tensor:
    if offset < 0:
        raise ValueError(f"view offset must be >= 0, got {offset}")
    if row_meta_size(a.type) and (int(ne[0]) != a.ne[0] or offset % a.nb[1]):
        _whole_rows(a, "view", f"a view of {ne[0]} of a row's {a.ne[0]} values at offset {offset} (row stride "
                               f"{a.nb[1]}) starts or ends inside a row")
    t = new_tensor(a.type, ne, view_src=a, view_offs=offset, name=f"{a.name} (view)", op="VIEW", src=[a],
                   op_params={"offset": offset})
    return t


def _with_strides(t: Tensor, nb) -> Tensor:
    # ggml checks only the contiguous size at creation (ggml_new_tensor_impl), not the strided span:
    # ggml_nbytes of a block-format view starts from nb1, so it can overstate what a view touches.
    t.nb = tuple(int(x) for x in nb)
    t._nbytes = None
    return t


def view_1d(a: Tensor, ne0: int, offset: int) -> Tensor:
    return _view(a, (ne0,), offset)


def view_2d(a: Tensor, ne0: int, ne1: int, nb1: int, offset: int) -> Tensor:
    t = _view(a, (ne0, ne1), offset)
    return _with_strides(t, (t.nb[0], nb1, nb1 * ne1, nb1 * ne1))


def view_3d(a: Tensor, ne0: int, ne1: int, ne2: int, nb1: int, nb2: int, offset: int) -> Tensor:
    t = _view(a, (ne0, ne1, ne2), offset)
    return _with_strides(t, (t.nb[0], nb1, nb2, nb2 * ne2))


def view_4d(a: Tensor, ne0, ne1, ne2, ne3, nb1, nb2, nb3, offset) -> Tensor:
    t = _view(a, (ne0, ne1, ne2, ne3), offset)
    return _with_strides(t, (t.nb[0], nb1, nb2, nb3))


def _reshape(a: Tensor, ne) -> Tensor:
    ne = _ne4(ne)
    if not a.is_contiguous():
        raise ValueError(f"reshape: {a.name!r} must be contiguous")
    if ne[0] != a.ne[0]:
        _whole_rows(a, "reshape", f"ne0 {a.ne[0]} cannot become {ne[0]}")
    if ne[0] * ne[1] * ne[2] * ne[3] != a.nelements:
        raise ValueError(f"reshape: {a.name!r} has {a.nelements} elements, the new shape {list(ne)} does not")
    return new_tensor(a.type, ne, view_src=a, name=f"{a.name} (reshaped)", op="RESHAPE", src=[a])


def reshape_1d(a, ne0):
    return _reshape(a, (ne0,))


def reshape_2d(a, ne0, ne1):
    return _reshape(a, (ne0, ne1))


def reshape_3d(a, ne0, ne1, ne2):
    return _reshape(a, (ne0, ne1, ne2))


def reshape_4d(a, ne0, ne1, ne2, ne3):
    return _reshape(a, (ne0, ne1, ne2, ne3))


def permute(a: Tensor, axis0: int, axis1: int, axis2: int, axis3: int) -> Tensor:
    """``ggml_permute``: source dim i goes to result dim ``axis_i``."""
    axes = (axis0, axis1, axis2, axis3)
    if sorted(axes) != [0, 1, 2, 3]:
        raise ValueError(f"permute: axes must be a permutation of 0..3, got {axes}")
    if axes[0] != 0:
        _whole_rows(a, "permute", "dimension 0 (the rows) must stay in place")
    ne = [0] * 4
    nb = [0] * 4
    for i, ax in enumerate(axes):
        ne[ax] = a.ne[i]
        nb[ax] = a.nb[i]
    t = new_tensor(a.type, a.ne, view_src=a, name=f"{a.name} (permuted)", op="PERMUTE", src=[a],
                   op_params={"axes": axes})
    t.ne = tuple(ne)
    t.nb = tuple(nb)
    return t


def transpose(a: Tensor) -> Tensor:
    _whole_rows(a, "transpose", "a transposed row has no metadata of its own")
    t = new_tensor(a.type, a.ne, view_src=a, name=f"{a.name} (transposed)", op="TRANSPOSE", src=[a])
    t.ne = (a.ne[1], a.ne[0], a.ne[2], a.ne[3])
    t.nb = (a.nb[1], a.nb[0], a.nb[2], a.nb[3])
    return t


# -- copies --------------------------------------------------------------------------------------------
def cont(a: Tensor) -> Tensor:
    return new_tensor(a.type, a.ne, name=f"{a.name} (cont)", op="CONT", src=[a])


def cpy(a: Tensor, b: Tensor) -> Tensor:
    """``ggml_cpy``: the result is a view of the destination ``b`` (no memory of its own)."""
    if a.nelements != b.nelements:
        raise ValueError(f"cpy: {a.name!r} has {a.nelements} elements, the destination {b.nelements}")
    t = view_tensor(b, name=f"{b.name} (copy of {a.name})" if b.name else f"{a.name} (copy)")
    t.op = "CPY"
    t.src = [a, b]
    return t


def set_rows(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """``ggml_set_rows(a, b, c)`` (ggml 0.25.3): rows ``c[i]`` of ``a`` get ``b``'s rows; a view of ``a`` with op
    SET_ROWS and ``src = [b, c, a]`` (ggml's order). 2-d ``a`` / ``b``, 1-d index (llama.cpp's one-stream store)."""
    if a.ne[0] != b.ne[0] or a.ne[2:] != (1, 1) or b.ne[2:] != (1, 1) or b.type not in ("f32", "f16"):
        raise ValueError(f"set_rows: a {list(a.ne)} and b {b.type} {list(b.ne)} must be 2-d, same ne0, b f32/f16")
    if c.type not in ("i64", "i32") or c.ne != (b.ne[1], 1, 1, 1):
        raise ValueError(f"set_rows: the index must be an i64 or i32 vector of b's {b.ne[1]} rows, got {c.type}")
    t = view_tensor(a, name=f"{a.name} (view)")
    t.op = "SET_ROWS"
    t.src = [b, c, a]
    return t


def cast(a: Tensor, type_name: str) -> Tensor:
    """``ggml_cast``: a new contiguous tensor; op CPY with ``src[1]`` = the result itself (ggml's quirk)."""
    t = new_tensor(type_name, a.ne, name=f"{a.name} (copy)", op="CPY", src=[a])
    t.src.append(t)
    return t


def concat(a: Tensor, b: Tensor, dim: int) -> Tensor:
    if not 0 <= dim < GGML_MAX_DIMS:
        raise ValueError(f"concat: dim must be 0..3, got {dim}")
    for t in (a, b):
        _whole_rows(t, "concat", "ik's concat refuses per-row metadata (#2232)")
    ne = list(a.ne)
    for d in range(GGML_MAX_DIMS):
        if d == dim:
            ne[d] = a.ne[d] + b.ne[d]
        elif a.ne[d] != b.ne[d]:
            raise ValueError(f"concat: ne[{d}] differs ({a.ne[d]} vs {b.ne[d]}) outside dim {dim}")
    return new_tensor(a.type, ne, op="CONCAT", src=[a, b], op_params={"dim": dim})


def _can_repeat(t0_ne, t1_ne) -> bool:
    if any(n == 0 for n in t0_ne):
        return any(n == 0 for n in t1_ne)
    return all(t1_ne[i] % t0_ne[i] == 0 for i in range(4))


def repeat(a: Tensor, ne) -> Tensor:
    """``ggml_repeat(a, b)`` with only ``b``'s shape given (llama.cpp passes a stack 'repeater' tensor)."""
    ne = _ne4(ne.ne if isinstance(ne, Tensor) else ne)
    if ne[0] != a.ne[0]:
        _whole_rows(a, "repeat", f"a row tiled along dim 0 ({a.ne[0]} -> {ne[0]} values) is not a row")
    if not _can_repeat(a.ne, ne):
        raise ValueError(f"repeat: {list(ne)} is not a whole repetition of {list(a.ne)}")
    return new_tensor(a.type, ne, op="REPEAT", src=[a])


def get_rows(a: Tensor, b: Tensor) -> Tensor:
    if b.type != "i32":
        raise ValueError(f"get_rows: the row ids must be i32, got {b.type}")
    if a.ne[2] != b.ne[1] or b.ne[3] != 1:
        raise ValueError(f"get_rows: need a.ne[2] == b.ne[1] and b.ne[3] == 1, got a {list(a.ne)}, b {list(b.ne)}")
    out_type = "i32" if a.type == "i32" else "f32"
    return new_tensor(out_type, (a.ne[0], b.ne[0], b.ne[1], b.ne[2]), op="GET_ROWS", src=[a, b])


# -- element-wise --------------------------------------------------------------------------------------
def _binary(op: str, a: Tensor, b: Tensor) -> Tensor:
    if not _can_repeat(b.ne, a.ne):
        raise ValueError(f"{op.lower()}: {list(b.ne)} does not broadcast to {list(a.ne)}")
    return new_tensor(a.type, a.ne, op=op, src=[a, b])


def add(a: Tensor, b: Tensor) -> Tensor:
    return _binary("ADD", a, b)


def mul(a: Tensor, b: Tensor) -> Tensor:
    return _binary("MUL", a, b)


def scale(a: Tensor, s: float) -> Tensor:
    if not (a.nb[0] == type_traits(a.type)[1] and a.nb[2] == a.nb[1] * a.ne[1] and a.nb[3] == a.nb[2] * a.ne[2]):
        raise ValueError(f"scale: {a.name!r} must be padded-1d (rows may be strided, nothing else)")
    return new_tensor(a.type, a.ne, op="SCALE", src=[a], op_params={"scale": float(s)})


def rms_norm(a: Tensor, eps: float) -> Tensor:
    return new_tensor(a.type, a.ne, op="RMS_NORM", src=[a], op_params={"eps": float(eps)})


def fused_rms_norm(a: Tensor, w: Tensor | None, eps: float) -> Tensor:
    """``ggml_fused_rms_norm``: ``rms_norm(a)·w`` in one op when ``w`` is one row of length ne0."""
    if w is None:
        return rms_norm(a, eps)
    if w.nrows > 1 or a.ne[0] != w.ne[0]:
        return mul(rms_norm(a, eps), w)
    return new_tensor(a.type, a.ne, op="FUSED_RMS_NORM", src=[a, w], op_params={"eps": float(eps)})


def soft_max(a: Tensor) -> Tensor:
    return soft_max_ext(a, None, 1.0, 0.0)


def soft_max_ext(a: Tensor, mask: Tensor | None, scale: float, max_bias: float) -> Tensor:
    if not a.is_contiguous():
        raise ValueError(f"soft_max: {a.name!r} must be contiguous")
    if mask is not None:
        if mask.type not in ("f16", "f32") or not mask.is_contiguous():
            raise ValueError("soft_max: the mask must be a contiguous f16 or f32 matrix")
        if mask.ne[0] != a.ne[0] or mask.ne[1] < a.ne[1]:
            raise ValueError(f"soft_max: mask {list(mask.ne)} does not cover {list(a.ne)}")
    if max_bias > 0 and mask is None:
        raise ValueError("soft_max: max_bias > 0 needs a mask")
    src = [a] if mask is None else [a, mask]
    return new_tensor(a.type, a.ne, op="SOFT_MAX", src=src,
                      op_params={"scale": float(scale), "max_bias": float(max_bias)})


def rope_ext(a: Tensor, pos: Tensor, n_dims: int, mode: int, n_ctx_orig: int, freq_base: float,
             freq_scale: float, ext_factor: float, attn_factor: float, beta_fast: float,
             beta_slow: float) -> Tensor:
    if pos.type != "i32" or pos.ne[1:] != (1, 1, 1):
        raise ValueError("rope: positions must be an i32 vector")
    if a.ne[2] != pos.ne[0]:
        raise ValueError(f"rope: a.ne[2] ({a.ne[2]}) must equal the number of positions ({pos.ne[0]})")
    if mode & 1:
        raise ValueError("rope: mode & 1 is no longer supported")
    params = dict(n_dims=n_dims, mode=mode, n_ctx_orig=n_ctx_orig, freq_base=float(freq_base),
                  freq_scale=float(freq_scale), ext_factor=float(ext_factor), attn_factor=float(attn_factor),
                  beta_fast=float(beta_fast), beta_slow=float(beta_slow))
    return new_tensor(a.type, a.ne, op="ROPE", src=[a, pos], op_params=params)


def argsort(a: Tensor, descending: bool = True) -> Tensor:
    return new_tensor("i32", a.ne, op="ARGSORT", src=[a], op_params={"order": "desc" if descending else "asc"})


def top_k(a: Tensor, k: int) -> Tensor:
    """``ggml_top_k``: a descending argsort and a view of its first ``k`` columns."""
    if a.ne[0] < k:
        raise ValueError(f"top_k: k={k} exceeds ne0={a.ne[0]}")
    s = argsort(a, True)
    return view_4d(s, k, s.ne[1], s.ne[2], s.ne[3], s.nb[1], s.nb[2], s.nb[3], 0)


# -- matrix products -------------------------------------------------------------------------------------
def mul_mat(a: Tensor, b: Tensor) -> Tensor:
    """``ggml_mul_mat``: result f32 ``[a.ne1, b.ne1, b.ne2, b.ne3]``; ``a`` broadcast over dims 2, 3."""
    if a.ne[0] != b.ne[0] or b.ne[2] % a.ne[2] or b.ne[3] % a.ne[3]:
        raise ValueError(f"mul_mat: cannot multiply {list(a.ne)} by {list(b.ne)} (ne0 must match, dims 2/3 broadcast)")
    if a.is_transposed():
        raise ValueError("mul_mat: the first operand must not be transposed")
    return new_tensor("f32", (a.ne[1], b.ne[1], b.ne[2], b.ne[3]), op="MUL_MAT", src=[a, b])


def mul_mat_id(as_: Tensor, b: Tensor, ids: Tensor) -> Tensor:
    if ids.type != "i32":
        raise ValueError("mul_mat_id: ids must be i32")
    if as_.ne[3] != 1 or b.ne[3] != 1 or ids.ne[2] != 1 or ids.ne[3] != 1:
        raise ValueError("mul_mat_id: expects 3-d experts and b, 2-d ids")
    if ids.ne[1] != b.ne[2] or as_.ne[0] != b.ne[0] or ids.ne[0] % b.ne[1]:
        raise ValueError(f"mul_mat_id: shapes do not fit: as {list(as_.ne)}, b {list(b.ne)}, ids {list(ids.ne)}")
    return new_tensor("f32", (as_.ne[1], ids.ne[0], b.ne[2], 1), op="MUL_MAT_ID", src=[as_, b, ids])


def moe_up_gate(up: Tensor, gate: Tensor, b: Tensor, ids: Tensor, unary: str = "SILU") -> Tensor:
    """``ggml_moe_up_gate`` (``-fmoe``): one op for up, gate and the activation when both match."""
    if up.type != gate.type or up.ne != gate.ne:
        return fused_mul_unary(mul_mat_id(gate, b, ids), mul_mat_id(up, b, ids), unary)
    mul_mat_id(up, b, ids)  # same shape checks
    return new_tensor("f32", (up.ne[1], ids.ne[0], b.ne[2], 1), op="MOE_FUSED_UP_GATE", src=[up, gate, b, ids],
                      op_params={"unary": unary})


def fused_mul_unary(a: Tensor, b: Tensor, unary: str = "SILU") -> Tensor:
    """``ggml_fused_mul_unary``: ``unary(a)·b``."""
    if a.ne != b.ne:
        raise ValueError(f"fused_mul_unary: shapes differ {list(a.ne)} vs {list(b.ne)}")
    if not a.is_contiguous():
        raise ValueError("fused_mul_unary: a must be contiguous")
    if unary not in ("GELU", "RELU", "SILU"):
        raise ValueError(f"fused_mul_unary: unary must be GELU, RELU or SILU, got {unary!r}")
    return new_tensor(a.type, a.ne, op="FUSED_MUL_UNARY", src=[a, b], op_params={"unary": unary})


def multi_add(a: Tensor, n_experts: int) -> Tensor:
    if n_experts < 1:
        raise ValueError(f"multi_add: n_experts must be >= 1, got {n_experts}")
    return new_tensor(a.type, a.ne, op="MULTI_ADD", src=[a], op_params={"n_experts": n_experts})


# -- attention --------------------------------------------------------------------------------------------
def _check_fa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, *, mask_contiguous: bool) -> None:
    if k.ne[0] != q.ne[0] or q.ne[2] % k.ne[2] or q.ne[3] % k.ne[3]:
        raise ValueError(f"flash_attn_ext: K {list(k.ne)} does not fit Q {list(q.ne)}")
    if v.ne[1] != k.ne[1] or v.ne[2] != k.ne[2]:
        raise ValueError(f"flash_attn_ext: V {list(v.ne)} does not fit K {list(k.ne)}")
    if mask is not None:
        if mask_contiguous and not mask.is_contiguous():
            raise ValueError("flash_attn_ext: the mask must be contiguous")
        if mask.ne[2] != 1 or mask.ne[3] != 1:
            raise ValueError("flash_attn_ext: the mask must be 2-d")
        pad = (q.ne[1] + GGML_KQ_MASK_PAD - 1) // GGML_KQ_MASK_PAD * GGML_KQ_MASK_PAD
        if mask.ne[1] < pad:
            raise ValueError(
                f"flash_attn_ext: mask rows ({mask.ne[1]}) must be >= GGML_PAD(n_queries={q.ne[1]}, 32) = {pad}"
            )
        if mask.ne[0] != k.ne[1]:
            raise ValueError(f"flash_attn_ext: mask ne0 ({mask.ne[0]}) must equal the KV length ({k.ne[1]})")


def flash_attn_ext(q, k, v, mask, scale: float, max_bias: float = 0.0, softcap: float = 0.0) -> Tensor:
    """``ggml_flash_attn_ext``: result f32 ``[Dv, n_head, n_queries, ne3]``."""
    _check_fa(q, k, v, mask, mask_contiguous=True)
    src = [q, k, v] + ([mask] if mask is not None else [])
    return new_tensor("f32", (v.ne[0], q.ne[2], q.ne[1], q.ne[3]), op="FLASH_ATTN_EXT", src=src,
                      op_params={"scale": float(scale), "max_bias": float(max_bias), "softcap": float(softcap),
                                 "prec": "default"})


def flash_attn_ext_partial(q, k, v, mask, scale: float) -> Tensor:
    """mlaref's partial flash attention over one KV chunk: ``[Dv + 2, n_head, n_queries]`` (acc, M, S)."""
    _check_fa(q, k, v, mask, mask_contiguous=False)
    src = [q, k, v] + ([mask] if mask is not None else [])
    return new_tensor("f32", (v.ne[0] + 2, q.ne[2], q.ne[1], q.ne[3]), op="FLASH_ATTN_EXT_PARTIAL", src=src,
                      op_params={"scale": float(scale)})


def fa_merge(a: Tensor, b: Tensor | None, final: bool) -> Tensor:
    """mlaref's fixed-order merge of two partials (see the module docstring)."""
    if a.op not in ("FLASH_ATTN_EXT_PARTIAL", "FA_MERGE") or a.op_params.get("final"):
        raise ValueError("fa_merge: a must be a partial (flash_attn_ext_partial or a non-final fa_merge)")
    if b is not None and b.ne != a.ne:
        raise ValueError(f"fa_merge: partials differ in shape {list(a.ne)} vs {list(b.ne)}")
    if b is None and not final:
        raise ValueError("fa_merge: a single partial can only be finalised (final=True)")
    ne = (a.ne[0] - 2, a.ne[1], a.ne[2], a.ne[3]) if final else a.ne
    src = [a] if b is None else [a, b]
    return new_tensor("f32", ne, op="FA_MERGE", src=src, op_params={"final": bool(final)})

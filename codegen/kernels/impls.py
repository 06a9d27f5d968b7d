"""The generated kernels as graph-executor op implementations: one adapter per op, with a record of what ran where.

:func:`mlaref.reference.graphs.executor.run_graph` takes ``impl={op: fn}`` with ``fn(node, *srcs, **options)``.
:class:`KernelImpls` builds that dict from :mod:`mlaref.codegen.kernels` (helper H5: copy / quantize / dequantize /
convert rows) and :mod:`mlaref.codegen.kernels.mm` (helper H11: ``mul_mat``, ``flash_attn_ext``), whose functions
take the reference's arguments and return the reference's bytes under the same plan:

============== ====================================== ===========================================================
op             kernel                                 runs on the kernel when
============== ====================================== ===========================================================
MUL_MAT        ``kernels.mm.mul_mat``                 the kernel accepts types and plan (l16a1, l8a1, l8s1; src0
                                                      f32/f16/q8_0/q4_0/q5_0/iq4_nl), else it refuses up front
FLASH_ATTN_EXT ``kernels.mm.flash_attn_ext``          ``algorithm="blocked"``, K/V f16 or q8_0, a plan of the
                                                      kernels (l16a1, l8a1, l8s1 dots)
FLASH_ATTN_EXT ``kernels.mm.flash_attn_ext_partial``  K/V f16 or q8_0, a plan of the kernels (the chunked variant's
_PARTIAL                                              per-chunk attention)
FA_MERGE       ``kernels.mm.fa_merge``                f32 contiguous partials (the chunked variant's merge)
CPY            ``kernels.cpy``                        same shape, src rows packed, dst contiguous, and a same-type
                                                      copy, f32 <-> f16 / bf16 (``cast_rows``), float -> block
                                                      type or block type -> f32
CONT           ``kernels.cpy`` into a new tensor      src rows packed (a permute that keeps dim 0)
CONCAT         ``kernels.concat``                     dim 0, same type, rows packed (#253's concat_any; for f32 the
                                                      bytes of ggml's element-wise concat)
REPEAT         ``kernels.repeat``                     src rows packed
GET_ROWS       ``kernels.dequantize`` of the rows     a block-type (or f16/bf16) matrix: ``to_float`` per row
============== ====================================== ===========================================================

Every adapter decides first whether the kernel can run the node. When it cannot, the adapter runs the reference
op (the executor's :data:`~mlaref.reference.graphs.executor.REFERENCE_OPS` entry) and records why: for CPY, CONT,
CONCAT and REPEAT the conditions of the table (the branches on which ``kernels.cpy`` / ``concat`` / ``repeat``
call a kernel rather than the reference); for MUL_MAT, FLASH_ATTN_EXT(_PARTIAL), FA_MERGE and GET_ROWS the
kernel wrapper's own
refusal (its ``ValueError`` / ``TypeError`` / ``DispatchError`` raised while checking the arguments, before any
computation), whose message is the reason. The record (:attr:`KernelImpls.runs`) says per node whether a kernel or
the reference computed it; tests compare the executed graph's bytes with the reference's and assert the record.

Ops outside this table (``MUL_MAT_ID``, the norms, rope, soft_max, element-wise ops) have no kernel: the executor
runs its reference for them, unrecorded.

An op whose kernel function does not exist (the module or the function is missing, e.g. while a kernel family is
being written) is left out of :attr:`KernelImpls.impl` and listed in :attr:`KernelImpls.missing` with the reason;
the executor then runs the reference for it.
"""

from __future__ import annotations

import importlib
from collections import Counter
from dataclasses import dataclass

import numpy as np

from mlaref.reference.graphs.executor import REFERENCE_OPS
from mlaref.reference.tensor import Tensor
from mlaref.codegen import kernels
from mlaref.codegen.kernels import pool
from mlaref.codegen.dispatch import DispatchError

__all__ = ["KERNEL_OPS", "KernelImpls", "Run", "available"]

KERNEL_OPS = ("MUL_MAT", "FLASH_ATTN_EXT", "FLASH_ATTN_EXT_PARTIAL", "FA_MERGE", "CPY", "CONT", "CONCAT", "REPEAT",
              "GET_ROWS")
# op -> (module, function) the adapter calls
_KERNEL_FUNCS = {
    "MUL_MAT": ("mlaref.codegen.kernels.mm", "mul_mat"),
    "FLASH_ATTN_EXT": ("mlaref.codegen.kernels.mm", "flash_attn_ext"),
    "FLASH_ATTN_EXT_PARTIAL": ("mlaref.codegen.kernels.mm", "flash_attn_ext_partial"),
    "FA_MERGE": ("mlaref.codegen.kernels.mm", "fa_merge"),
    "CPY": ("mlaref.codegen.kernels", "cpy"),
    "CONT": ("mlaref.codegen.kernels", "cpy"),
    "CONCAT": ("mlaref.codegen.kernels", "concat"),
    "REPEAT": ("mlaref.codegen.kernels", "repeat"),
    "GET_ROWS": ("mlaref.codegen.kernels", "dequantize"),
}
_FLOAT = ("f32", "f16", "bf16")


def _kernel_func(op: str):
    """(function, None) or (None, reason it is missing)."""
    mod_name, fn_name = _KERNEL_FUNCS[op]
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as exc:
        return None, f"no {mod_name} ({exc})"
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        return None, f"{mod_name} has no {fn_name}()"
    return fn, None


def available() -> dict[str, str | None]:
    """op -> None when its kernel function exists, else the reason (names the missing kernel)."""
    return {op: _kernel_func(op)[1] for op in KERNEL_OPS}


def _refusals() -> tuple:
    """Exceptions a kernel wrapper raises when it refuses arguments (before computing anything)."""
    out = [ValueError, TypeError]
    try:
        out.append(DispatchError)
    except ImportError:
        pass
    return tuple(out)


def _packed(t: Tensor) -> bool:
    return t.nb[0] == t.type_size


@dataclass(frozen=True)
class Run:
    """One executed node: its op, name, whether a kernel computed it, and why not when it did not."""

    op: str
    node: str
    kernel: bool
    reason: str = ""


class KernelImpls:
    """The ``impl`` dict for :func:`~mlaref.reference.graphs.executor.run_graph` and the record of its runs.

    ``isa`` caps kernel dispatch (``None``: the best ISA of this CPU), ``n_threads`` is passed to every kernel
    (bytes do not depend on it), ``ops`` restricts the adapters to some of :data:`KERNEL_OPS`.
    """

    def __init__(self, *, isa: str | None = None, n_threads: int = 1, ops=None):
        ops = KERNEL_OPS if ops is None else tuple(ops)
        unknown = [op for op in ops if op not in KERNEL_OPS]
        if unknown:
            raise ValueError(f"ops: no kernel adapter for {', '.join(unknown)}; adapters exist for "
                             f"{', '.join(KERNEL_OPS)}")
        if isinstance(n_threads, bool) or not isinstance(n_threads, int) or n_threads < 1:
            raise ValueError(f"n_threads must be an int >= 1, got {n_threads!r}")
        self.isa = isa
        self.n_threads = n_threads
        self.refusals = _refusals()
        self.runs: list[Run] = []
        self.missing: dict[str, str] = {}
        self.impl: dict = {}
        self._fn: dict = {}
        for op in ops:
            fn, reason = _kernel_func(op)
            if fn is None:
                self.missing[op] = reason
                continue
            self._fn[op] = fn
            self.impl[op] = getattr(self, "_" + op.lower())

    # -- the record -------------------------------------------------------------------------------------
    def ran_on_kernels(self) -> list[str]:
        """Sorted names of the ops that ran on a kernel at least once."""
        return sorted({r.op for r in self.runs if r.kernel})

    def counts(self) -> Counter:
        """(op, "kernel" | "reference") -> number of nodes."""
        return Counter((r.op, "kernel" if r.kernel else "reference") for r in self.runs)

    def fallbacks(self) -> list[Run]:
        return [r for r in self.runs if not r.kernel]

    def reset(self) -> None:
        self.runs.clear()

    def _kernel(self, op, node, result):
        self.runs.append(Run(op, node.name, True))
        return result

    def _reference(self, op, node, reason, *srcs, **kw):
        self.runs.append(Run(op, node.name, False, reason))
        return REFERENCE_OPS[op](node, *srcs, **kw)

    # -- adapters ---------------------------------------------------------------------------------------
    def _mul_mat(self, node, a, b, **kw):
        try:
            res = self._fn["MUL_MAT"](a, b, isa=self.isa, n_threads=self.n_threads, **kw)
        except self.refusals as exc:
            return self._reference("MUL_MAT", node, f"{type(exc).__name__}: {exc}", a, b, **kw)
        return self._kernel("MUL_MAT", node, res)

    def _flash_attn_ext(self, node, q, k, v, mask=None, **kw):
        p = node.op_params
        try:
            res = self._fn["FLASH_ATTN_EXT"](q, k, v, mask, p["scale"], p["max_bias"], p["softcap"], isa=self.isa,
                                             n_threads=self.n_threads, **kw)
        except self.refusals as exc:
            # A fully masked query row is refused after computing, by the reference as well: let it raise there.
            return self._reference("FLASH_ATTN_EXT", node, f"{type(exc).__name__}: {exc}", q, k, v, mask, **kw)
        return self._kernel("FLASH_ATTN_EXT", node, res)

    def _flash_attn_ext_partial(self, node, q, k, v, mask=None, **kw):
        try:
            res = self._fn["FLASH_ATTN_EXT_PARTIAL"](q, k, v, mask, node.op_params["scale"], isa=self.isa,
                                                     n_threads=self.n_threads, **kw)
        except self.refusals as exc:
            return self._reference("FLASH_ATTN_EXT_PARTIAL", node, f"{type(exc).__name__}: {exc}", q, k, v, mask,
                                   **kw)
        return self._kernel("FLASH_ATTN_EXT_PARTIAL", node, res)

    def _fa_merge(self, node, a, b=None, **kw):
        if kw:
            return self._reference("FA_MERGE", node, f"options {sorted(kw)} are the reference's", a, b, **kw)
        try:
            res = self._fn["FA_MERGE"](a, b, node.op_params["final"], isa=self.isa, n_threads=self.n_threads)
        except self.refusals as exc:
            return self._reference("FA_MERGE", node, f"{type(exc).__name__}: {exc}", a, b)
        return self._kernel("FA_MERGE", node, res)

    def _cpy_reason(self, src: Tensor, dst: Tensor, kw) -> str:
        """Why ``kernels.cpy`` would hand this copy to the reference ("" when a kernel runs it)."""
        if kw:
            return f"options {sorted(kw)} are the reference's"
        if src.ne != dst.ne:
            return f"a reshaping copy ({list(src.ne)} -> {list(dst.ne)})"
        if not _packed(src):
            return "src rows are not packed (nb[0] != type size)"
        if not dst.is_contiguous():
            return "dst is not contiguous"

        geo = getattr(kernels, "GEOMETRY", {})
        if src.type == dst.type:
            return ""
        pair = {src.type, dst.type}
        if "f32" in pair and pair <= {"f32", "f16", "bf16"}:  # the element casts of cast_rows (f32 side aligned)
            f32 = src if src.type == "f32" else dst
            if (pool.address(f32.data) + f32.offset) % 4 == 0 and all(nb % 4 == 0 for nb in f32.nb[1:]):
                return ""
            return "the f32 side is not 4-byte aligned"
        if src.type in _FLOAT and dst.type in geo and dst.type not in _FLOAT:
            return ""
        if dst.type == "f32" and src.type in geo and src.type not in _FLOAT:
            return ""
        return f"no conversion kernel for {src.type} -> {dst.type} (element casts run the reference)"

    def _cpy(self, node, src, dst, **kw):
        reason = self._cpy_reason(src, dst, kw)
        if reason:
            return self._reference("CPY", node, reason, src, dst, **kw)
        res = self._fn["CPY"](src, dst, isa=self.isa, n_threads=self.n_threads)
        return self._kernel("CPY", node, res)

    def _cont(self, node, a, **kw):
        if kw or not _packed(a):
            return self._reference("CONT", node, "src rows are not packed (nb[0] != type size)", a, **kw)
        dst = Tensor.empty(a.type, a.ne)
        res = self._fn["CONT"](a, dst, isa=self.isa, n_threads=self.n_threads)
        return self._kernel("CONT", node, res)

    def _concat(self, node, a, b, **kw):
        dim = node.op_params["dim"]
        if kw or dim != 0 or a.type != b.type or not (_packed(a) and _packed(b)):
            why = (f"concat along dim {dim}" if dim != 0 else f"{a.type} + {b.type}" if a.type != b.type
                   else "rows not packed")
            return self._reference("CONCAT", node, f"no kernel: {why}", a, b, **kw)
        return self._kernel("CONCAT", node, self._fn["CONCAT"](a, b, dim, isa=self.isa))

    def _repeat(self, node, a, **kw):
        if kw or not _packed(a):
            return self._reference("REPEAT", node, "src rows are not packed (nb[0] != type size)", a, **kw)
        return self._kernel("REPEAT", node, self._fn["REPEAT"](a, node.ne, isa=self.isa))

    def _get_rows(self, node, a, rows, **kw):
        """``dst[:, i10, i11, i12] = to_float(a[:, rows[i10, i11, i12], i11, i12])`` with the dequantize kernel."""
        if kw or a.type in ("f32", "i32"):
            return self._reference("GET_ROWS", node, f"{a.type} rows are copied, not converted: no kernel", a, rows,
                                   **kw)
        if not _packed(a) or rows.ne[1] != a.ne[2] or rows.ne[2] != a.ne[3] or rows.ne[3] != 1:
            return self._reference("GET_ROWS", node, "shape or layout outside the kernel path", a, rows, **kw)
        idx = rows.to_numpy()[0]  # (ne12, ne11, ne10)
        if (idx < 0).any() or (idx >= a.ne[1]).any():
            return self._reference("GET_ROWS", node, "row index out of range (the reference raises)", a, rows)
        dst = Tensor.empty("f32", (a.ne[0], rows.ne[0], rows.ne[1], rows.ne[2]))
        out = dst.storage().reshape(rows.ne[2], rows.ne[1], rows.ne[0], a.ne[0])
        try:
            for i3 in range(a.ne[3]):
                for i2 in range(a.ne[2]):
                    base = a.offset + i2 * a.nb[2] + i3 * a.nb[3]
                    starts = base + idx[i3, i2].astype(np.int64) * a.nb[1]
                    raw = a.data[starts[:, None] + np.arange(a.row_size())[None, :]]
                    self._fn["GET_ROWS"](raw, a.type, isa=self.isa, n_threads=self.n_threads, out=out[i3, i2])
        except self.refusals as exc:
            return self._reference("GET_ROWS", node, f"{type(exc).__name__}: {exc}", a, rows)
        return self._kernel("GET_ROWS", node, dst)

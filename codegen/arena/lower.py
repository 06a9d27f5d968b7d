"""Each node of a graph as pool jobs of one generated kernel: the arena executor's lowering.

:func:`lower` takes an IR node, its sources and its destination already bound to memory (mlaref Tensors over the
arena's buffers) and returns the jobs of :mod:`mlaref.codegen.kernels.pool` that compute it: a list of *steps*
(pool calls, run in order), each a list of job rows (one per thread's share). Nothing runs here; the arguments are
checked as the kernels' Python functions check them (the ``*_jobs`` functions behind those functions), so a node
the kernels cannot run is refused when the arena is prepared, naming the node.

==================  ========================================================================================
op                  kernel (job builder)
==================  ========================================================================================
MUL_MAT             ``mul_mat`` (:func:`mlaref.codegen.kernels.mm.mul_mat_jobs`; ``options["MUL_MAT"]``)
FLASH_ATTN_EXT      ``flash_attn_ext`` (:func:`~mlaref.codegen.kernels.mm.flash_attn_jobs`; ``options[...]``)
FLASH_ATTN_EXT_     ``flash_attn_ext_partial`` (:func:`~mlaref.codegen.kernels.mm.flash_attn_partial_jobs`;
PARTIAL             ``options[...]``: the chunked variant's per-chunk attention, rows acc, M, S)
FA_MERGE            ``fa_merge`` (:func:`~mlaref.codegen.kernels.mm.fa_merge_jobs`): the chunks' fixed-order merge
CPY, same type      ``copy_rows`` (:func:`~mlaref.codegen.kernels.rows.copy_jobs`)
CPY, a cast         ``cast_rows``: f32 <-> f16 / bf16 / q8_0 (:func:`~mlaref.codegen.kernels.rows.cast_jobs`)
CONT                ``copy_rows``
CONCAT dim 0        ``concat_rows``, every type (:func:`~mlaref.codegen.kernels.rows.concat_jobs`)
REPEAT              ``copy_rows``, one step per repeated tile (:func:`~mlaref.codegen.kernels.rows.repeat_jobs`)
VIEW, RESHAPE,      nothing: a view is an address (its base's plus ``view_offs``)
PERMUTE, TRANSPOSE
==================  ========================================================================================

Every kernel splits only rows, columns or (head, query block) units over ``n_threads`` jobs, never a reduction,
so the bytes do not depend on ``n_threads``.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlaref.codegen.kernels import mm as _mm
from mlaref.codegen.kernels import rows as _rows
from mlaref.reference.graphs.executor import VIEW_OPS
from mlaref.reference.tensor import Tensor

__all__ = ["Lowered", "NoKernel", "lower", "KERNEL_OPS"]

KERNEL_OPS = ("MUL_MAT", "FLASH_ATTN_EXT", "FLASH_ATTN_EXT_PARTIAL", "FA_MERGE", "CPY", "CONT", "CONCAT", "REPEAT")


class NoKernel(ValueError):
    """A node no generated kernel can run (an op without a kernel, or arguments its kernel refuses)."""


@dataclass(frozen=True)
class Lowered:
    """A node's pool calls (``steps``: lists of job rows) and how to read its jobs' result words (``check``:
    ``"mul_mat"``, ``"flash_attn"`` or None)."""

    steps: tuple
    check: str | None = None
    kernel: str = ""


def _flash_attn(node, srcs, dst, kw):
    q, k, v = srcs[:3]
    mask = srcs[3] if len(srcs) > 3 else None
    p = node.op_params
    return [_mm.flash_attn_jobs(q, k, v, mask, p["scale"], p["max_bias"], p["softcap"], out=dst, **kw)]


def _flash_attn_partial(node, srcs, dst, kw):
    q, k, v = srcs[:3]
    mask = srcs[3] if len(srcs) > 3 else None
    return [_mm.flash_attn_partial_jobs(q, k, v, mask, node.op_params["scale"], out=dst, **kw)]


def _cpy(node, srcs, dst, kw):
    src = srcs[0]
    if src.type == dst.type:
        return [_rows.copy_jobs(src, dst, **kw)], "copy_rows"
    return [_rows.cast_jobs(src, dst, **kw)], "cast_rows"


def lower(node, srcs: list[Tensor], dst: Tensor, *, n_threads: int = 1, isa: str | None = None,
          options: dict | None = None) -> Lowered:
    """The pool jobs computing ``node`` into ``dst`` from ``srcs`` (see the module docstring); :class:`NoKernel`
    naming the node when no kernel runs it. ``options``: keyword arguments per op (plans) for mul_mat,
    flash_attn_ext and flash_attn_ext_partial."""
    op = node.op
    if op in VIEW_OPS:
        return Lowered(())
    opts = dict((options or {}).get(op, {}))
    kw = {"isa": isa, "n_threads": n_threads}
    try:
        if op == "MUL_MAT":
            return Lowered((_mm.mul_mat_jobs(srcs[0], srcs[1], dst, **kw, **opts),), "mul_mat", "mul_mat")
        if op == "FLASH_ATTN_EXT":
            return Lowered(tuple(_flash_attn(node, srcs, dst, {**kw, **opts})), "flash_attn", "flash_attn_ext")
        if op == "FLASH_ATTN_EXT_PARTIAL":
            return Lowered(tuple(_flash_attn_partial(node, srcs, dst, {**kw, **opts})), "flash_attn",
                           "flash_attn_ext_partial")
        if opts:
            raise NoKernel(f"options {sorted(opts)} are the reference's")
        if op == "CPY":
            steps, kernel = _cpy(node, srcs, dst, kw)
            return Lowered(tuple(steps), None, kernel)
        if op == "FA_MERGE":
            b = srcs[1] if len(srcs) > 1 else None
            return Lowered((_mm.fa_merge_jobs(srcs[0], b, node.op_params["final"], out=dst, **kw),), None, "fa_merge")
        if op == "CONT":
            return Lowered((_rows.copy_jobs(srcs[0], dst, **kw),), None, "copy_rows")
        if op == "CONCAT":
            if node.op_params["dim"] != 0:
                raise NoKernel(f"concat along dim {node.op_params['dim']} (the kernel joins rows: dim 0)")
            return Lowered((_rows.concat_jobs(srcs[0], srcs[1], dst, **kw),), None, "concat_rows")
        if op == "REPEAT":
            return Lowered(tuple(_rows.repeat_jobs(srcs[0], dst, **kw)), None, "copy_rows")
    except NoKernel as exc:
        raise NoKernel(f"node {node.name!r} ({op}): {exc}") from None
    except (ValueError, TypeError, _rows.DispatchError) as exc:
        raise NoKernel(f"node {node.name!r} ({op}): the kernel refuses it: {exc}") from None
    raise NoKernel(f"node {node.name!r}: no kernel for op {op} (kernels run {', '.join(KERNEL_OPS)})")

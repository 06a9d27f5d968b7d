"""mul_mat and flash_attn_ext by generated multithreaded C kernels, with the reference's signatures.

``mul_mat(a, b, *, plan, variant, vec_dot_type, isa, kernel, n_threads)`` computes what
:func:`mlaref.reference.ops.mul_mat.mul_mat` (``MulMat_253``) computes, byte for byte, for plans whose order is
``mlaref_l16a1`` (16 f32 lanes, one accumulator, halves fold, masked tail; reference/plan.py; the default
:data:`MM_PLAN`, every ISA), ``mlaref_l8a1`` (8 lanes, one accumulator: scalar and avx2 kernels) or ``mlaref_l8s1``
(the 32-block pairs block-serial with fma, one exact int sum per block; the others as l8a1, on the l8a1 kernels:
scalar and avx2 kernels; the native plan of AVX2, :func:`fastest_plan`):

* src0 (the weight) in f32, f16, bf16, q8_0, q4_0, q5_0, iq4_nl, q4_1, q5_1, q4_K, q6_K; src1 in f32, f16, bf16,
  q8_0, any strides with contiguous row elements, broadcast over ne02/ne03 as ``ggml_mul_mat`` (src0 matrix
  ``(i12 // r2, i13 // r3)``);
* src1 columns are converted inside the kernel, per thread and per block of 128 (256 for block weights) columns,
  to src0's vec_dot type (f32, f16, bf16 -> itself; q4_1 / q5_1 -> q8_1; q4_K / q6_K -> q8_K; other block weights
  -> q8_0) by ``to_float`` then the ``x86`` ``from_float`` (for bf16 and q8_K that is their reference rounding),
  #253's ``iqk_quantize_any`` order (upstream facts §4a); there is no full f32 copy of src1;
* the kernel walks 4 x 4 register tiles (4 src0 rows x 4 src1 columns, one 16-lane accumulator each); on avx2,
  whose 16 ymm cannot hold 16 such accumulators (32 ymm), 3 x 2 tiles for f32 / f16 / bf16 weights and 2 x 2 for
  32-block weights (simd/mm_ftiles_avx2.h.j2, simd/mm_btiles_avx2.h.j2); under l8a1, whose accumulator is one
  ymm, 4 x 3 and 3 x 2; under l8s1 (32-block weights) 8 src0 rows interleaved in 4-byte groups, one ymm lane per
  row, times 4 columns (simd/mm_stiles_avx2.h.j2); on neon / neondot (l16a1 in four q registers; run under qemu
  here), 2 x 2. Tiles only group outputs, so every ISA and tile of a plan gives each output the same reduction
  order and bytes.

Value domain: a q8_0 src1 holding -128 (no ggml quantizer writes it) is multiplied exactly by the scalar,
avx512vnni, neon and neondot kernels; the avx2 / avx512 sign trick gets products with negative weights wrong
there (tested; the l8s1 tiles use the same trick).

``flash_attn_ext(q, k, v, mask, scale, max_bias, softcap, *, algorithm="blocked", plan, variant, isa, kernel,
n_threads, q_block)`` computes :func:`mlaref.reference.ops.flash_attn_ext.flash_attn_ext` with
``algorithm="blocked"``: K.Q in the ``l16a1`` order, or ``l8a1`` (scalar and avx2 kernels; :func:`fa_plan`'s ``dots``,
the AVX2 native :func:`fastest_fa_plan`), or ``l8s1`` (q8_0 K block-serial, scalar and avx2 kernels; f16 K runs
l8a1 there) (Q converted to K's vec_dot type: f16 or q8_0 ``x86``), then
iqk's blocked online softmax with the plan's ``k_step``, ``kv_chunks`` (merged in index order) and ``exp``
(``libm``, ``v_expf_avx2`` or ``v_expf_avx512``; each is computed lane by lane in C with one rounding per step, so
every ISA can run every exp). K and V are f16 or q8_0 (the same type), the mask f16 (binary, as iqk reads it).

``flash_attn_ext_partial(q, k, v, mask, scale, *, plan, ...)`` and ``fa_merge(a, b, final, ...)`` compute the
chunked variant's two ops of :mod:`mlaref.reference.ops.fa_partial`: the partial is the flash_attn_ext kernel
rendered to store each row's state (acc, M, S) over its cells as one chunk (the plan's dots, ``k_step`` and exp;
its ``kv_chunks`` plays no part), with the mask ``[n_kv, >= n_q]`` possibly a strided column block of the layer's
mask; the merge is element-wise over rows with libm ``expf``, in the steps of flash_attn_ext's own chunk merge.

Threads (``n_threads``): jobs of the C thread pool (:mod:`mlaref.codegen.kernels.pool`) over disjoint work: mul_mat
splits src1 columns (or src0 rows when there are fewer columns than threads), flash_attn_ext splits (head, block
of ``q_block`` queries) units (the partial too), fa_merge rows. A reduction is never split by thread count, so
the bytes do not depend on ``n_threads`` (style.md 4.8). ``isa=`` caps dispatch, ``kernel=`` names one kernel of
generated/manifest.json.
"""

from __future__ import annotations

from types import MappingProxyType

import numpy as np

from mlaref.codegen import args as _args
from mlaref.codegen import catalog as _catalog
from mlaref.codegen import dispatch as _dispatch
from mlaref.codegen.kernels import rows as _kernels
from mlaref.codegen.kernels import pool as _pool
from mlaref.reference.plan import MLAREF_L8A1, MLAREF_L8S1, MLAREF_L16A1, ReductionPlan, get_plan
from mlaref.reference.tensor import Tensor
from mlaref.reference.types import get_type

__all__ = ["mul_mat", "fastest_plan", "fastest_fa_plan", "flash_attn_ext", "mul_mat_jobs", "flash_attn_jobs",
           "flash_attn_ext_partial", "flash_attn_partial_jobs", "fa_merge", "fa_merge_jobs", "fa_check", "FA_PLAN",
           "MM_PLAN", "fa_plan", "fa_q_block", "VEC_DOT_TYPE"]

MM_PLAN = MLAREF_L16A1
# the default flash-attention plan: l16a1 dots, iqk's k_step 64 for n_kv % 64 == 0, one KV chunk, libm expf
FA_PLAN = MLAREF_L16A1.replace(name="mlaref_fa_l16a1", k_step=64, q_step=64, kv_chunks=1, exp="libm")
_DOTS = {"l16a1": MLAREF_L16A1, "l8a1": MLAREF_L8A1, "l8s1": MLAREF_L8S1}
_EXP_KIND = {"libm": 0, "v_expf_avx2": 1, "v_expf_avx512": 2}
# the weight types the catalog has kernels for -> their vec_dot type (the format registry's; read-only)
VEC_DOT_TYPE = MappingProxyType({t: get_type(t).vec_dot_type for t in _catalog.MM_X_TYPES})
_SRC1_TYPES = _catalog.MM_Y_TYPES
_KV_TYPES = _catalog.FA_KV_TYPES
_COL_BLOCK = 4  # thread ranges of src1 columns / src0 rows start at multiples of the tile size


def fa_plan(k_step: int = 64, kv_chunks: int = 1, exp: str = "libm", dots: str = "l16a1") -> ReductionPlan:
    """A flash-attention plan the kernels run: K.Q dots in the ``dots`` order (``l16a1``: mlaref_l16a1, every ISA;
    ``l8a1``: mlaref_l8a1, the scalar and avx2 kernels; ``l8s1``: mlaref_l8s1, block-serial q8_0 K, f16 K as l8a1,
    the scalar and avx2 kernels) with these blocked-softmax parameters. The softmax and the V accumulation do not
    depend on ``dots``. ``fa_plan()`` has :data:`FA_PLAN`'s fields."""
    if dots not in _DOTS:
        raise ValueError(f"fa_plan: dots must be one of {', '.join(_DOTS)}, got {dots!r}")
    return _DOTS[dots].replace(name=f"mlaref_fa_{dots}_k{k_step}c{kv_chunks}_{exp}", k_step=k_step, q_step=64,
                                  kv_chunks=kv_chunks, exp=exp)


def fa_q_block(Dk: int, Dv: int, n_kv: int) -> int:
    """The default queries per flash_attn_ext work unit: 64, or 128 for a KV head whose K and V rows widened to f32
    (``n_kv * (Dk + Dv)`` values) pass 512 KiB, a Zen 3 core's L2. Every unit reads such a head again, from L3
    (the avx2 kernel's head cache, up to 2 MiB) or widening it again (longer heads), so 128 queries halve those
    reads; a head that fits L2 keeps 64, whose working set is smaller and which gives more units to the threads.
    Measured on Zen 3 (16 heads x 512 causal queries, interleaved, 1 thread; 2 threads equal or better): Dk 192 /
    Dv 128 at n_kv 1024 4-13 % faster, at n_kv 4096 3-13 % (256: no better); Dk 576 / Dv 512 at n_kv 1024 1.29x
    (256: 0.87x of 128). Speed only: the bytes do not depend on it."""
    return 128 if 4 * n_kv * (Dk + Dv) > (512 << 10) else 64


def fastest_plan(isa: str | None = None) -> ReductionPlan:
    """The mul_mat plan that runs fastest on ``isa`` (the dispatched ISA of this CPU when None): its "native plan".

    mlaref_l8s1 on avx2: for element and k-quant weights it is mlaref_l8a1, whose output accumulator is one 8-lane
    ymm, so a 4 x 3 register tile holds 12 of them with 3 y columns and one x row in the other 4 of the 16 ymm (7
    loads per 12 fmas; the l16a1 order needs two ymm per output there: 3 x 2 tiles, 10 loads per 12 fmas). For
    32-block weights it is block-serial: 8 src0 rows interleaved, one exact int32 block sum per ymm lane and one
    cvt + fma per block for 8 outputs, where l8a1 pays a cvt, a mul and an fma per output and block (measured on
    Zen 3 in one process: 1.3-1.5x the l8a1 speed). mlaref_l16a1 elsewhere: one zmm per output on avx512 (whose
    kernels implement l16a1 only), and the scalar kernels, whose speed is not their point. The default plan
    :data:`MM_PLAN` stays mlaref_l16a1, whose bytes every ISA gives; a native plan's bytes are its own (the
    reference computes each, and every ISA with a kernel of that plan gives the same bytes).
    """
    return _DOTS[_native_dots("mul_mat", isa)]


def _native_dots(family: str, isa: str | None) -> str:
    """The dot order that runs fastest on ``isa`` (the ISA ``family`` dispatches to on this CPU when None): "l8s1"
    on avx2, "l16a1" elsewhere (see :func:`fastest_plan`)."""
    if isa is None:
        isa = _dispatch.choose(family, "f16", "f16", "l16a1")[0].isa
    return "l8s1" if isa == "avx2" else "l16a1"


def fastest_fa_plan(isa: str | None = None, k_step: int = 64, kv_chunks: int = 1,
                    exp: str = "libm") -> ReductionPlan:
    """The flash-attention plan whose K.Q runs fastest on ``isa`` (the dispatched ISA of this CPU when None):
    :func:`fa_plan` with the dots of :func:`fastest_plan` (l8s1 on avx2: f16 K runs l8a1's one ymm per score, a
    4 x 3 K.Q tile with no parked lo halves; q8_0 K the block-serial tile of 8 interleaved K rows, measured on Zen 3
    at 1.3-1.4x the l8a1 kernel's speed; l16a1 elsewhere). The default :data:`FA_PLAN` keeps the l16a1 dots."""
    return fa_plan(k_step, kv_chunks, exp, dots=_native_dots("flash_attn_ext", isa))


def _mm_plan(plan, pair: str, op: str) -> tuple[ReductionPlan, str]:
    """(plan, kernel plan token) for a mul_mat plan: l16a1's order (l16a1, l8a2), l8a1's, or for the 32-block pairs
    the block-serial fused order (mlaref_l8s1: "l8s1"); ValueError otherwise."""
    plan = get_plan(plan)
    p = plan.for_pair(pair)
    block = not pair.startswith(("f32", "f16", "bf16"))
    if (pair.split(".")[0] in _catalog.MM_L8S1_X_TYPES and p.fold == "serial" and p.fma and p.acc_type == "f32"
            and not (p.block_pairs or p.superblock)):
        return plan, "l8s1"
    if (p.lanes, p.accs, p.fold, p.fma, p.acc_type, p.tail, p.dot2) == (8, 1, "halves", True, "f32", "masked", False) \
            and (p.int_to_float == "lane4" or not block):
        return plan, "l8a1"
    return _check_l16a1(plan, pair, op, also=", mlaref_l8a1 (8 f32 lanes, one accumulator) or mlaref_l8s1 "
                                             "(32-block pairs block-serial, fused)"), "l16a1"


def _check_l16a1(plan, pair: str, op: str, also: str = "") -> ReductionPlan:
    plan = get_plan(plan)
    p = plan.for_pair(pair)
    block = not pair.startswith(("f32", "f16", "bf16"))
    ok = (p.lanes * p.accs == 16 and p.fold == "halves" and p.fma and p.acc_type == "f32" and p.tail == "masked"
          and not p.dot2 and (p.int_to_float == "lane4" or not block))
    # l8a2 folds accumulators first, then lanes: the same order as l16a1 (plan.py's lane map)
    if not ok or p.accs not in (1, 2):
        raise ValueError(f"{op}: plan {plan.name} runs pair {pair} as {p.fingerprint}/{p.fold}/{p.tail}; the "
                         f"kernels implement mlaref_l16a1 (16 f32 lanes, fma, halves fold, masked tail){also}")
    return plan


def _ranges(n: int, parts: int, align: int) -> list[tuple[int, int]]:
    """``parts`` contiguous ranges covering [0, n), boundaries at multiples of ``align`` where possible."""
    parts = max(1, min(parts, n))
    bounds = [0]
    for i in range(1, parts):
        b = (n * i // parts) // align * align
        bounds.append(max(b, bounds[-1]))
    bounds.append(n)
    return [(lo, hi) for lo, hi in zip(bounds, bounds[1:]) if hi > lo]


def _jobs(kind: str, fn, ffi, args, ranges) -> list[list[int]]:
    """The kernel's jobs for the C thread pool (:mod:`mlaref.codegen.kernels.pool`) over ``ranges``, job k with the
    arguments ``args(lo, hi)`` (addresses as ints); the pool runs the first on the calling thread."""
    fa = _kernels.address(ffi, fn)
    return [_pool.job(kind, fa, *args(lo, hi)) for lo, hi in ranges]


def _addr(t: Tensor) -> int:
    return _pool.address(t.data) + t.offset


def _check_tensor(op: str, what: str, t, types) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: {what} must be an mlaref Tensor, got {type(t).__name__}")
    if t.type not in types:
        raise ValueError(f"{op}: {what} type must be one of {', '.join(types)}, got {t.type}")
    if t.nb[0] != t.type_size:
        raise ValueError(f"{op}: the elements of each row of {what} must be contiguous "
                         f"(nb[0] {t.nb[0]} != type size {t.type_size})")


def _output(op: str, out, ne, inputs) -> Tensor:
    """A new f32 result, or the caller's ``out`` after checking type, shape, contiguity and overlap."""
    if out is None:
        return Tensor.zeros("f32", ne)
    if not isinstance(out, Tensor):
        raise TypeError(f"{op}: out must be an mlaref Tensor, got {type(out).__name__}")
    if out.type != "f32" or tuple(out.ne) != tuple(ne):
        raise ValueError(f"{op}: out must be f32 with ne {tuple(ne)}, got {out.type} {tuple(out.ne)}")
    if not out.is_contiguous():
        raise ValueError(f"{op}: out must be contiguous (nb {out.nb})")
    if not out.data.flags.writeable:
        raise ValueError(f"{op}: out is read-only")
    lo, hi = out.offset, out.offset + out.nbytes()
    for name, t in inputs:
        if t is not None and np.shares_memory(t.data, out.data):
            tlo, thi = t.offset, t.offset + t.nbytes()
            if t.data is not out.data or (tlo < hi and lo < thi):
                raise ValueError(f"{op}: out overlaps the input {name}")
    return out


# -- mul_mat ----------------------------------------------------------------------------------------------------

def mul_mat(a: Tensor, b: Tensor, *, plan=MM_PLAN, variant: str = "x86", vec_dot_type: str | None = None,
            isa: str | None = None, kernel: str | None = None, n_threads: int = 1, out: Tensor | None = None) -> Tensor:
    """``ggml_mul_mat(a, b)`` (#253 semantics) by a C kernel: f32 ``[a.ne1, b.ne1, b.ne2, b.ne3]``.

    ``out``: a contiguous f32 Tensor of that shape to write into (it must not share memory with a or b).
    """
    dst, jobs = _mul_mat(a, b, plan, variant, vec_dot_type, isa, kernel, n_threads, out)
    if jobs and any(rc != 0 for rc in _pool.run(jobs).tolist()):
        raise MemoryError("mul_mat: the kernel could not allocate its scratch buffers")
    return dst


def mul_mat_jobs(a: Tensor, b: Tensor, out: Tensor, *, plan=MM_PLAN, variant: str = "x86",
                 vec_dot_type: str | None = None, isa: str | None = None, kernel: str | None = None,
                 n_threads: int = 1) -> list[list[int]]:
    """The pool jobs (one step, possibly none) of :func:`mul_mat` into ``out``, checked as :func:`mul_mat` checks
    its arguments; a job's result word is nonzero when the kernel could not allocate its scratch."""
    return _mul_mat(a, b, plan, variant, vec_dot_type, isa, kernel, n_threads, out)[1]


def _mul_mat(a, b, plan, variant, vec_dot_type, isa, kernel, n_threads, out):
    op = "mul_mat"
    _check_tensor(op, "a (src0)", a, tuple(VEC_DOT_TYPE))
    _check_tensor(op, "b (src1)", b, _SRC1_TYPES)
    n_threads = _args.check_threads(n_threads)
    if a.ne[0] != b.ne[0]:
        raise ValueError(f"{op}: a.ne[0] ({a.ne[0]}) must equal b.ne[0] ({b.ne[0]}) (ggml_can_mul_mat)")
    if b.ne[2] % a.ne[2] or b.ne[3] % a.ne[3]:
        raise ValueError(f"{op}: b.ne[2:4] {b.ne[2:]} must be multiples of a.ne[2:4] {a.ne[2:]} (src0 broadcast)")
    vdt = VEC_DOT_TYPE[a.type]
    if vec_dot_type not in (None, vdt):
        raise ValueError(f"{op}: the kernels convert src1 to {vdt} for a {a.type} weight, not {vec_dot_type!r}")
    if not isinstance(variant, str):
        raise TypeError(f"{op}: variant must be a str, got {type(variant).__name__}")
    if variant != "x86" and not (b.type == vdt or vdt == "f32" or (vdt in ("bf16", "q8_K") and variant == "ref")):
        raise ValueError(f"{op}: the kernels convert src1 with the x86 from_float (variant 'x86'), not {variant!r}")
    plan, token = _mm_plan(plan, f"{a.type}.{vdt}", op)
    K, M = a.ne[0], a.ne[1]
    N, ne12, ne13 = b.ne[1], b.ne[2], b.ne[3]
    dst = _output(op, out, (M, N, ne12, ne13), (("a", a), ("b", b)))
    cols = N * ne12 * ne13
    if M == 0 or cols == 0:
        return dst, []
    spec, fn, ffi = _kernels.resolve("mul_mat", a.type, b.type, token, isa=isa, kernel=kernel)
    by_cols = cols >= n_threads

    def args(lo, hi):
        r0, r1, c0, c1 = (0, M, lo, hi) if by_cols else (lo, hi, 0, cols)
        return (_addr(a), _addr(b), _addr(dst), K, M, a.ne[2], a.ne[3], a.nb[1], a.nb[2], a.nb[3], N, ne12, ne13,
                b.nb[1], b.nb[2], b.nb[3], r0, r1, c0, c1)

    return dst, _jobs("mul_mat", fn, ffi, args, _ranges(cols if by_cols else M, n_threads, _COL_BLOCK))


# -- flash_attn_ext ---------------------------------------------------------------------------------------------

def flash_attn_ext(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale, max_bias=0.0, softcap=0.0, *,
                   algorithm: str = "blocked", plan=FA_PLAN, variant: str = "x86", kq_type: str | None = None,
                   isa: str | None = None, kernel: str | None = None, n_threads: int = 1,
                   q_block: int | None = None, out: Tensor | None = None) -> Tensor:
    """``ggml_flash_attn_ext`` in iqk's blocked order by a C kernel: f32 ``[Dv, n_head, n_q, ne3]``.

    ``out``: a contiguous f32 Tensor ``[Dv, n_head, n_q, ne3]`` to write into. ``q_block``: queries per work
    unit (speed only; None: :func:`fa_q_block`). Raises ValueError, as the reference does, when a query row has every KV entry masked (iqk
    asserts S > 0).
    """
    dst, jobs = _flash_attn_ext(q, k, v, mask, scale, max_bias, softcap, algorithm, plan, variant, kq_type, isa,
                                kernel, n_threads, q_block, out)
    if jobs:
        fa_check(_pool.run(jobs).tolist())
    return dst


def fa_check(rcs) -> None:
    """Raise for the result words of flash_attn_ext jobs: MemoryError (scratch) or ValueError (masked rows)."""
    if any(rc < 0 for rc in rcs):
        raise MemoryError("flash_attn_ext: the kernel could not allocate its scratch buffers")
    if sum(rcs):
        raise ValueError(f"flash_attn_ext: {sum(rcs)} query row(s) have every KV entry masked (S = 0); the blocked "
                         "(iqk) algorithm asserts S > 0")


def flash_attn_jobs(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale, max_bias=0.0, softcap=0.0, *,
                    out: Tensor, algorithm: str = "blocked", plan=FA_PLAN, variant: str = "x86",
                    kq_type: str | None = None, isa: str | None = None, kernel: str | None = None,
                    n_threads: int = 1, q_block: int | None = None) -> list[list[int]]:
    """The pool jobs (one step, possibly none) of :func:`flash_attn_ext` into ``out``, checked as it checks its
    arguments; pass the jobs' result words to :func:`fa_check`."""
    return _flash_attn_ext(q, k, v, mask, scale, max_bias, softcap, algorithm, plan, variant, kq_type, isa, kernel,
                           n_threads, q_block, out)[1]


def _flash_attn_ext(q, k, v, mask, scale, max_bias, softcap, algorithm, plan, variant, kq_type, isa, kernel,
                    n_threads, q_block, out):
    op = "flash_attn_ext"
    _fa_operands(op, q, k, v, mask, variant)
    if algorithm != "blocked":
        raise ValueError(f"{op}: the kernels implement algorithm 'blocked' (iqk's order), not {algorithm!r}")
    if kq_type not in (None, k.type):
        raise ValueError(f"{op}: the kernels convert Q to K's vec_dot type {k.type}, not {kq_type!r}")
    if mask is not None and (mask.ne[0] < k.ne[1] or mask.ne[1] < q.ne[1]):
        raise ValueError(f"{op}: mask must cover [n_kv, n_q] = [{k.ne[1]}, {q.ne[1]}], got ne {mask.ne[:2]}")
    for name, val in (("scale", scale), ("max_bias", max_bias), ("softcap", softcap)):
        _check_real(op, name, val)
    if max_bias != 0:
        raise ValueError(f"{op}: max_bias must be 0 (ALiBi is not modelled), got {max_bias}")
    scale = np.float32(scale)
    if softcap != 0:
        scale = np.float32(scale / np.float32(softcap))
    return _fa_jobs(op, q, k, v, mask, scale, np.float32(softcap), plan, plan_chunks=True, isa=isa, kernel=kernel,
                    n_threads=n_threads, q_block=q_block, out=out)


def _check_real(op: str, name: str, val) -> None:
    if not isinstance(val, (int, float, np.floating, np.integer)) or isinstance(val, bool):
        raise TypeError(f"{op}: {name} must be a real number, got {type(val).__name__}")


def _fa_operands(op: str, q, k, v, mask, variant) -> None:
    """The checks flash_attn_ext and flash_attn_ext_partial share: types, row layout, shapes, head broadcast."""
    _check_tensor(op, "q", q, ("f32",))
    _check_tensor(op, "k", k, _KV_TYPES)
    _check_tensor(op, "v", v, _KV_TYPES)
    if v.type != k.type:
        raise ValueError(f"{op}: k and v must have the same type for the kernels, got {k.type} and {v.type}")
    if mask is not None:
        _check_tensor(op, "mask", mask, ("f16",))
    if variant != "x86":
        raise ValueError(f"{op}: the kernels convert Q with the x86 from_float (variant 'x86'), not {variant!r}")
    if q.ne[0] != k.ne[0]:
        raise ValueError(f"{op}: q.ne[0] ({q.ne[0]}) must equal k.ne[0] ({k.ne[0]}) (Dk)")
    if k.ne[1:] != v.ne[1:]:
        raise ValueError(f"{op}: k {k.ne} and v {v.ne} must have the same KV rows and heads (ne[1:4])")
    if q.ne[2] % k.ne[2] or q.ne[3] % k.ne[3]:
        raise ValueError(f"{op}: q.ne[2:4] {q.ne[2:]} must be multiples of k.ne[2:4] {k.ne[2:]} (head broadcast)")


def _fa_jobs(op, q, k, v, mask, scale, softcap, plan, *, plan_chunks, isa, kernel, n_threads, q_block, out):
    """(dst, jobs) of the kernel of family ``op`` over checked operands: its plan, q_block and thread split.
    ``plan_chunks``: the kernel merges the plan's kv_chunks (flash_attn_ext); else it runs the cells as one chunk
    (the partial, whose row is one chunk's state)."""
    Dk, nq, nh, ne3 = q.ne
    n_kv, Dv = k.ne[1], v.ne[0]
    if q_block is None:
        q_block = fa_q_block(Dk, Dv, n_kv)
    if isinstance(q_block, bool) or not isinstance(q_block, (int, np.integer)) or not 1 <= q_block <= 4096:
        raise ValueError(f"{op}: q_block must be an int in 1..4096, got {q_block!r}")
    n_threads = _args.check_threads(n_threads)
    plan, token = _mm_plan(plan, f"{k.type}.{k.type}", op)
    if plan.exp not in _EXP_KIND:
        raise ValueError(f"{op}: plan {plan.name}: exp must be one of {', '.join(_EXP_KIND)}, got {plan.exp!r}")
    if plan.k_step > 4096:
        raise ValueError(f"{op}: plan {plan.name}: k_step must be <= 4096, got {plan.k_step}")
    ne = (Dv, nh, nq, ne3) if plan_chunks else (Dv + 2, nh, nq, ne3)
    dst = _output(op, out, ne, (("q", q), ("k", k), ("v", v), ("mask", mask)))
    n_qb = -(-nq // q_block)
    units = ne3 * nh * n_qb
    if units == 0:
        return dst, []
    spec, fn, ffi = _kernels.resolve(op, k.type, v.type, token, isa=isa, kernel=kernel)
    mnb = mask.nb if mask is not None else (0, 0, 0, 0)
    mne = mask.ne if mask is not None else (1, 1, 1, 1)
    kv_chunks = plan.kv_chunks if plan_chunks else 1

    def args(u0, u1):
        return (_addr(q), _addr(k), _addr(v), _addr(mask) if mask is not None else 0, _addr(dst), Dk, Dv, nq, nh, ne3,
                q.nb[1], q.nb[2], q.nb[3], n_kv, k.ne[2], k.ne[3], k.nb[1], k.nb[2], k.nb[3], v.nb[1], v.nb[2],
                v.nb[3], mnb[1], mnb[2], mnb[3], mne[2], mne[3], _pool.f32_word(scale), _pool.f32_word(softcap),
                plan.k_step, kv_chunks, _EXP_KIND[plan.exp], q_block, u0, u1)

    return dst, _jobs("flash_attn", fn, ffi, args, _ranges(units, n_threads, 1))


# -- flash_attn_ext_partial and fa_merge: the chunked variant's ops (reference/ops/fa_partial.py) ----------------

def flash_attn_ext_partial(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale, *, plan=FA_PLAN,
                           variant: str = "x86", isa: str | None = None, kernel: str | None = None,
                           n_threads: int = 1, q_block: int | None = None, out: Tensor | None = None) -> Tensor:
    """:func:`mlaref.reference.ops.fa_partial.flash_attn_ext_partial` by a C kernel: f32 ``[Dv + 2, n_head, n_q,
    ne3]``, each row acc[0..Dv), M, S of the blocked online softmax over every cell of ``k``/``v`` as one chunk
    (the plan's dots, ``k_step`` and exp; its ``kv_chunks`` plays no part). A row whose every cell is masked is
    ``(0, ..., 0, -inf, 0)``. ``mask``: f16 ``[n_kv, >= n_q]``, may be a strided column block of a larger mask.
    """
    dst, jobs = _flash_attn_partial(q, k, v, mask, scale, plan, variant, isa, kernel, n_threads, q_block, out)
    if jobs:
        fa_check(_pool.run(jobs).tolist())
    return dst


def flash_attn_partial_jobs(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale, *, out: Tensor,
                            plan=FA_PLAN, variant: str = "x86", isa: str | None = None, kernel: str | None = None,
                            n_threads: int = 1, q_block: int | None = None) -> list[list[int]]:
    """The pool jobs (one step, possibly none) of :func:`flash_attn_ext_partial` into ``out``, checked as it checks
    its arguments; pass the jobs' result words to :func:`fa_check` (only a scratch allocation can fail)."""
    return _flash_attn_partial(q, k, v, mask, scale, plan, variant, isa, kernel, n_threads, q_block, out)[1]


def _flash_attn_partial(q, k, v, mask, scale, plan, variant, isa, kernel, n_threads, q_block, out):
    op = "flash_attn_ext_partial"
    _fa_operands(op, q, k, v, mask, variant)
    if k.ne[1] < 1:
        raise ValueError(f"{op}: a chunk needs at least one KV cell, got k.ne[1] = {k.ne[1]}")
    if mask is not None and (mask.ne[0] != k.ne[1] or mask.ne[1] < q.ne[1]):
        raise ValueError(f"{op}: the mask must be [n_cells = {k.ne[1]}, >= n_q = {q.ne[1]}], got ne {mask.ne[:2]}")
    _check_real(op, "scale", scale)
    return _fa_jobs(op, q, k, v, mask, np.float32(scale), np.float32(0), plan, plan_chunks=False, isa=isa,
                    kernel=kernel, n_threads=n_threads, q_block=q_block, out=out)


def fa_merge(a: Tensor, b: Tensor | None, final: bool, *, isa: str | None = None, kernel: str | None = None,
             n_threads: int = 1, out: Tensor | None = None) -> Tensor:
    """:func:`mlaref.reference.ops.fa_partial.fa_merge` by a C kernel: partial ``b`` (the later cells, or None)
    merged into partial ``a``; ``final`` gives f32 ``[Dv, n_head, n_q, ne3]`` = acc * (1/S) (0 where S = 0), else
    the merged partial ``[Dv + 2, ...]``. ``out`` must not overlap ``a`` or ``b``."""
    dst, jobs = _fa_merge(a, b, final, isa, kernel, n_threads, out)
    if jobs:
        _pool.run(jobs)
    return dst


def fa_merge_jobs(a: Tensor, b: Tensor | None, final: bool, *, out: Tensor, isa: str | None = None,
                  kernel: str | None = None, n_threads: int = 1) -> list[list[int]]:
    """The pool jobs (one step, possibly none) of :func:`fa_merge` into ``out``, checked as it checks its
    arguments."""
    return _fa_merge(a, b, final, isa, kernel, n_threads, out)[1]


def _fa_merge(a, b, final, isa, kernel, n_threads, out):
    op = "fa_merge"
    for what, t in (("a", a), ("b", b)):
        if t is None and what == "b":
            continue
        _check_tensor(op, what, t, ("f32",))
        if not t.is_contiguous() or t.ne[0] < 3:
            raise ValueError(f"{op}: {what} must be a contiguous partial [Dv + 2, n_head, n_q, ne3], got ne {t.ne} "
                             f"nb {t.nb}")
    if b is not None and b.ne != a.ne:
        raise ValueError(f"{op}: a and b must have the same shape, got {a.ne} and {b.ne}")
    if not isinstance(final, (bool, np.bool_)):
        raise TypeError(f"{op}: final must be a bool, got {type(final).__name__}")
    if b is None and not final:
        raise ValueError(f"{op}: a single partial (b = None) can only be finalised (final=True)")
    n_threads = _args.check_threads(n_threads)
    Dv = a.ne[0] - 2
    dst = _output(op, out, (Dv,) + tuple(a.ne[1:]) if final else tuple(a.ne), (("a", a), ("b", b)))
    rows = a.ne[1] * a.ne[2] * a.ne[3]
    if rows == 0:
        return dst, []
    spec, fn, ffi = _kernels.resolve(op, "f32", None, _catalog.FA_MERGE_PLAN, isa=isa, kernel=kernel)

    def args(r0, r1):
        return (_addr(a), _addr(b) if b is not None else 0, _addr(dst), Dv, r0, r1, int(bool(final)))

    return dst, _jobs("fa_merge", fn, ffi, args, _ranges(rows, n_threads, 1))

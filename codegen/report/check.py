"""The ``check`` section: every built kernel against the NumPy reference on a fixed case set; equal bytes = pass.

Fixed case set (seeded from the kernel name, so every run checks the same inputs): row lengths of 1 block,
7 blocks and the MLA row 576 (192 for vec_dot too), 3 to 5 rows at a strided input; quantizer inputs are normal
values at scales 1e-3..1e3 with an all-zero block, exact .5 ties and equal-magnitude sign flips. mul_mat and
flash_attn_ext run a tail case and a real-shape case on 2 threads; copy_rows and concat_rows run padded byte
strides with and without streaming stores. "Equal bytes" is :func:`mlaref.reference.compare.same_bytes`.

This is a smaller, self-contained case set than ``tests/kernels`` (which add guard bytes, poisoned outputs and
more sizes): the report must run where pytest and the test tree are not installed.
"""

from __future__ import annotations

import itertools
import zlib

import numpy as np

from mlaref import reference
from mlaref.codegen import catalog
from mlaref.codegen import kernels as K
from mlaref.codegen.kernels import mm as KM
from mlaref.codegen.kernels import pool, rows
from mlaref.codegen.report.progress import Progress
from mlaref.reference.compare import same_bytes
from mlaref.reference.ops.cpy import cpy as ref_cpy
from mlaref.reference.ops.fa_partial import fa_merge as ref_merge
from mlaref.reference.ops.fa_partial import flash_attn_ext_partial as ref_partial
from mlaref.reference.ops.flash_attn_ext import flash_attn_ext as ref_flash_attn_ext
from mlaref.reference.ops.mul_mat import MulMat_253
from mlaref.reference.ops.vec_dot import vec_dot as ref_vec_dot
from mlaref.reference.tensor import Tensor

__all__ = ["check_kernel", "section_check"]

_REF_CACHE: dict = {}  # reference results shared by the kernels of one (op, types) over ISAs, per process


class _Mismatch(Exception):
    """A kernel's bytes differ from the reference's (the message says where)."""


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(name.encode()))


def _quant_inputs(rng, n_rows: int, n: int) -> np.ndarray:
    x = rng.standard_normal((n_rows, n)).astype(np.float32)
    x *= np.float32(10.0) ** rng.integers(-3, 4, size=(n_rows, 1)).astype(np.float32)
    m = min(32, n)
    if n_rows > 1:
        x[1, :m] = 0
    if n_rows > 2:
        x[2, :m] = (np.arange(m, dtype=np.float32) - 16) + np.float32(0.5)
        x[2, 0] = 127.0
    if n_rows > 3:
        x[3, :m] = np.where(np.arange(m) % 2 == 0, 3.0, -3.0).astype(np.float32)
    return x


def _sizes(block: int, extra=(576,)) -> list[int]:
    sizes = {block, 7 * block} | {n for n in extra if n % block == 0}
    return sorted(sizes)


def _variant_for(fmt, plan: str) -> str:
    if fmt.variants.get(plan) == plan:
        return plan
    for v, impl in fmt.variants.items():
        if impl == plan:
            return v
    raise LookupError(f"the reference {fmt.name} has no quantize variant implemented as {plan!r}")


def _same(got, want) -> tuple[bool, str]:
    """(equal bytes, where they differ): the bit count and the first differing byte."""
    g = np.ascontiguousarray(got).view(np.uint8).reshape(-1)
    w = np.ascontiguousarray(want).view(np.uint8).reshape(-1)
    if g.shape != w.shape:
        return False, f"{g.size} bytes, expected {w.size}"
    if same_bytes(g, w):
        return True, ""
    bits = int(np.unpackbits(g ^ w).sum())
    first = int(np.flatnonzero(g != w)[0])
    return False, f"{bits} bits differ, first at byte {first}"


def check_kernel(name: str, n_rows: int = 5) -> dict:
    """Run kernel ``name`` on the fixed case set against the reference: ``{"status": pass|fail|skipped, ...}``."""
    spec = catalog.by_name()[name]
    rng = _rng(name)
    cases = 0
    fam = spec.family
    try:
        if fam == "dequantize_row":
            fmt = reference.get_type(spec.type_x)
            for n in _sizes(fmt.block_size):
                x = _quant_inputs(rng, n_rows, n)
                variant = "ref" if "ref" in fmt.variants else next(iter(fmt.variants))
                data = reference.quantize(x, fmt.name, variant=variant)
                ok, why = _same(K.dequantize(data, fmt.name, kernel=name), reference.dequantize(data, fmt.name))
                cases += 1
                if not ok:
                    return {"status": "fail", "cases": cases, "detail": f"n={n}: {why}"}
        elif fam == "quantize_row":
            fmt = reference.get_type(spec.type_x)
            variant = _variant_for(fmt, spec.plan)
            for n in _sizes(fmt.block_size):
                big = np.full((n_rows, n + 3), np.nan, dtype=np.float32)
                big[:, :n] = _quant_inputs(rng, n_rows, n)
                x = big[:, :n]  # strided rows whose NaN padding must never be read
                want = reference.quantize(np.ascontiguousarray(x), fmt.name, variant=variant)
                ok, why = _same(K.quantize(x, fmt.name, variant=variant, kernel=name), want)
                cases += 1
                if not ok:
                    return {"status": "fail", "cases": cases, "detail": f"n={n}: {why}"}
        elif fam == "quantize_chunk":
            fmt = reference.get_type(spec.type_x)
            for n in _sizes(fmt.block_size):
                x = _quant_inputs(rng, n_rows, n)
                for im in (None, rng.random(n).astype(np.float32)):
                    with np.errstate(all="ignore"):
                        want = reference.quantize(x, fmt.name, variant="model", imatrix=im)
                    ok, why = _same(K.quantize(x, fmt.name, variant="model", imatrix=im, kernel=name), want)
                    cases += 1
                    if not ok:
                        return {"status": "fail", "cases": cases,
                                "detail": f"n={n} imatrix={'yes' if im is not None else 'no'}: {why}"}
        elif fam == "convert_rows":
            src, dst = reference.get_type(spec.type_x), reference.get_type(spec.type_y)
            variant = _variant_for(dst, spec.plan)
            for n in _sizes(max(src.block_size, dst.block_size)):
                data = reference.quantize(_quant_inputs(rng, n_rows, n), src.name, variant="ref")
                want = reference.quantize(reference.dequantize(data, src.name), dst.name, variant=variant)
                ok, why = _same(K.convert(data, src.name, dst.name, variant=variant, kernel=name), want)
                cases += 1
                if not ok:
                    return {"status": "fail", "cases": cases, "detail": f"n={n}: {why}"}
        elif fam == "vec_dot":
            plan = catalog.VEC_DOT_PLANS[spec.plan]
            element = spec.type_x in ("f32", "f16", "bf16")
            kquant = spec.type_x in ("q4_K", "q6_K")  # 256-value super-blocks
            for n in ([1, 9, 17, 192, 576] if element else [256, 768, 1536] if kquant else [32, 224, 192, 576]):
                x, y = _vec_dot_operands(rng, spec.type_x, spec.type_y, 3, 4, n)
                want = ref_vec_dot(x, spec.type_x, y, spec.type_y, n, plan=plan)
                got = K.vec_dot(x, spec.type_x, y, spec.type_y, n, plan=plan, kernel=name)
                ok, why = _same(got, want)
                cases += 1
                if not ok:
                    return {"status": "fail", "cases": cases, "detail": f"n={n}: {why}"}
        elif fam == "copy_rows":
            for (row_bytes, n_rep, ne), stream in itertools.product(
                    [(34, 1, (3, 2, 2)), (68, 16, (2, 3, 1)), (1152, 1, (1, 1, 1)), (18, 3, (4, 2, 3))], (0, 1)):
                ok, why = _check_copy_rows(name, rng, row_bytes, n_rep, ne, stream)
                cases += 1
                if not ok:
                    return {"status": "fail", "cases": cases,
                            "detail": f"rows {row_bytes}x{n_rep} ne {ne} stream {stream}: {why}"}
        elif fam == "concat_rows":
            for (ra, rb, ne), stream in itertools.product(
                    [(34, 34, (3, 2, 2)), (1024, 128, (5, 3, 1)), (256, 128, (1, 1, 1)), (18, 36, (4, 2, 3))], (0, 1)):
                ok, why = _check_concat_rows(name, rng, ra, rb, ne, stream)
                cases += 1
                if not ok:
                    return {"status": "fail", "cases": cases,
                            "detail": f"rows {ra}+{rb} ne {ne} stream {stream}: {why}"}
        elif fam == "mul_mat":
            cases = _check_mul_mat(name, spec)
        elif fam == "flash_attn_ext":
            cases = _check_flash_attn(name, spec)
        elif fam == "flash_attn_ext_partial":
            cases = _check_fa_partial(name, spec)
        elif fam == "fa_merge":
            cases = _check_fa_merge(name, spec)
        elif fam == "cast_rows":
            cases = _check_cast_rows(name, spec)
        else:
            return {"status": "skipped", "cases": 0, "detail": f"the report has no check for family {fam!r} yet"}
    except _Mismatch as exc:
        return {"status": "fail", "cases": cases, "detail": str(exc)}
    except LookupError as exc:  # the reference lacks a variant / type the kernel implements
        return {"status": "skipped", "cases": cases, "detail": f"no reference to compare with: {exc}"}
    except Exception as exc:  # the kernel or its wrapper raised: a failed check, with the reason
        return {"status": "fail", "cases": cases, "detail": f"{type(exc).__name__}: {exc}"[:500]}
    return {"status": "pass", "cases": cases, "detail": ""}


def _tensor_of(values: np.ndarray, type: str, ne, row_len: int | None = None) -> Tensor:
    """A tensor of ``type`` holding ``values`` (rows, n); with ``row_len`` the rows are the first n values of
    longer rows (the KV-cache layout)."""
    rows, n = values.shape
    full = values if row_len is None else np.concatenate([values, np.ones((rows, row_len - n), np.float32)], 1)
    if type == "f32":
        data = np.ascontiguousarray(full).view(np.uint8)
    else:
        data = reference.quantize(full, type, variant="x86" if type == "q8_0" else "ref")
    data = np.ascontiguousarray(data).reshape(rows, -1)
    t = Tensor.from_bytes(data, type, (full.shape[1],) + tuple(ne[1:]))
    if row_len is None:
        return t
    return t.view(tuple(ne), (t.nb[0], t.nb[1], t.nb[1] * ne[1], t.nb[1] * ne[1] * ne[2]))


def _check_mul_mat(name, spec) -> int:
    """mul_mat kernel vs ``MulMat_253(plan=<the kernel's plan>, variant="x86")``: a K tail with src0 broadcast
    over two src1 matrices, and a strided src1 (cache rows with the rope part skipped), 2 threads."""
    tx, ty = spec.type_x, spec.type_y
    plan = f"mlaref_{spec.plan}"  # the catalog's plan tokens name mlaref's dot orders
    rng = _rng(f"mul_mat {tx} {ty}")  # the same inputs for every ISA of a pair: one reference result per pair
    block = tx not in ("f32", "f16", "bf16") or ty == "q8_0"
    k_tail, k_real = (96, 192) if block else (37, 200)
    if tx in ("q4_K", "q6_K"):
        k_tail, k_real = 768, 512
    cases = [(k_tail, (k_tail, 7, 1, 1), (k_tail, 9, 2, 1), None),
             (k_real, (k_real, 6, 1, 1), (k_real, 11, 1, 1), k_real + 64)]
    for i, (k, ane, bne, row_len) in enumerate(cases):
        key = ("mul_mat", tx, ty, i)
        if key not in _REF_CACHE:
            a = _tensor_of(rng.standard_normal((int(np.prod(ane[1:])), k)).astype(np.float32), tx, ane)
            b = _tensor_of(rng.standard_normal((int(np.prod(bne[1:])), k)).astype(np.float32), ty, bne, row_len)
            _REF_CACHE[key] = (a, b, {})
        a, b, wants = _REF_CACHE[key]
        if plan not in wants:
            wants[plan] = MulMat_253(plan=plan, variant="x86")(a, b)
        want = wants[plan]
        got = KM.mul_mat(a, b, plan=plan, kernel=name, n_threads=2)
        ok, why = _same(got.storage(), want.storage())
        if not ok:
            raise _Mismatch(f"case {i} K={k} a{ane} b{bne}: {why}")
    return len(cases)


def _check_flash_attn(name, spec) -> int:
    """flash_attn_ext kernel vs the reference's blocked order with the kernel's dots: Dk 192 / Dv 128, 2 heads, 70
    cells with partly and half masked rows, k_step 16 and 32 with 3 KV chunks, 2 threads."""
    q, k, v, mask = _fa_operands(spec.type_x, _rng(f"flash_attn_ext {spec.type_x}"))
    plans = [KM.fa_plan(16, 1, "libm", dots=spec.plan), KM.fa_plan(32, 3, "libm", dots=spec.plan)]
    for plan in plans:
        key = ("flash_attn_ext", spec.type_x, plan.name)
        if key not in _REF_CACHE:
            _REF_CACHE[key] = ref_flash_attn_ext(q, k, v, mask, 0.125, algorithm="blocked", plan=plan)
        want = _REF_CACHE[key]
        got = KM.flash_attn_ext(q, k, v, mask, 0.125, plan=plan, kernel=name, n_threads=2, q_block=2)
        ok, why = _same(got.storage(), want.storage())
        if not ok:
            raise _Mismatch(f"plan {plan.name}: {why}")
    return len(plans)


def _fa_operands(t: str, rng):
    """q, K, V (Dk 192 / Dv 128, 2 heads, 70 cells of type t) and an f16 mask [70, 32] with a partly masked row and
    a row masked over cells 40..69 (a fully masked second chunk)."""
    n_kv, nq, nh = 70, 5, 2
    q = Tensor.from_numpy((0.3 * rng.standard_normal((1, nh, nq, 192))).astype(np.float32))
    k = _tensor_of(rng.standard_normal((nh * n_kv, 192)).astype(np.float32), t, (192, n_kv, nh, 1))
    v = _tensor_of(rng.standard_normal((nh * n_kv, 128)).astype(np.float32), t, (128, n_kv, nh, 1))
    m = np.zeros((32, n_kv), np.float16)
    m[1, 10:40] = -np.inf
    m[3, 40:] = -np.inf
    return q, k, v, Tensor.from_numpy(m.reshape(1, 1, 32, n_kv), "f16")


def _chunk(t: Tensor, c0: int, c1: int, axis: int) -> Tensor:
    """Entries [c0, c1) along ``axis`` of ``t``: cells of a K / V tensor (axis 1), columns of a mask (axis 0)."""
    ne = list(t.ne)
    ne[axis] = c1 - c0
    return t.view(tuple(ne), tuple(t.nb[1:]), c0 * t.nb[axis])


def _check_fa_partial(name, spec) -> int:
    """flash_attn_ext_partial kernel vs reference/ops/fa_partial.py on two chunks of 70 cells (the second fully
    masked for one query), k_step 16 and 32, 2 threads."""
    q, k, v, mask = _fa_operands(spec.type_x, _rng(f"flash_attn_ext_partial {spec.type_x}"))
    cases = 0
    for plan in (KM.fa_plan(16, 1, "libm", dots=spec.plan), KM.fa_plan(32, 1, "v_expf_avx2", dots=spec.plan)):
        for c0, c1 in ((0, 40), (40, 70)):
            kc, vc, mc = _chunk(k, c0, c1, 1), _chunk(v, c0, c1, 1), _chunk(mask, c0, c1, 0)
            want = ref_partial(q, kc, vc, mc, 0.125, plan=plan, variant="x86")
            got = KM.flash_attn_ext_partial(q, kc, vc, mc, 0.125, plan=plan, kernel=name, n_threads=2, q_block=2)
            ok, why = _same(got.storage(), want.storage())
            cases += 1
            if not ok:
                raise _Mismatch(f"plan {plan.name} cells {c0}..{c1}: {why}")
    return cases


def _check_fa_merge(name, spec) -> int:
    """fa_merge kernel vs reference/ops/fa_partial.py's fa_merge on partials of Dv 128 and 17 with -inf rows on
    either side: merged, final, and a single partial finalised, 2 threads."""
    rng = _rng("fa_merge")
    cases = 0
    for dv in (128, 17):
        parts = []
        for side in range(2):
            x = rng.standard_normal((3, 4, dv + 2)).astype(np.float32)
            x[..., dv + 1] = np.abs(x[..., dv + 1]) + 0.5  # S > 0
            x[side, 1 + side, :] = 0.0
            x[side, 1 + side, dv] = -np.inf  # a fully masked row on this side
            x[2, 3, :], x[2, 3, dv] = 0.0, -np.inf  # and one on both
            parts.append(Tensor.from_numpy(x.reshape(1, 3, 4, dv + 2)))
        for b, final in ((parts[1], False), (parts[1], True), (None, True)):
            want = ref_merge(parts[0], b, final)
            got = KM.fa_merge(parts[0], b, final, kernel=name, n_threads=2)
            ok, why = _same(got.storage(), want.storage())
            cases += 1
            if not ok:
                raise _Mismatch(f"Dv {dv} {'b' if b is not None else 'no b'} final={final}: {why}")
    return cases


def _check_cast_rows(name, spec) -> int:
    """cast_rows kernel vs the reference cpy on strided 3-D sources (a head's row every 3 rows), 2 threads."""
    rng = _rng(name)
    cases = 0
    for n, ne1, ne2 in ((576, 3, 2), (64, 5, 3)):
        x = rng.standard_normal((ne1 * ne2, n + 32)).astype(np.float32)
        full = _tensor_of(x, spec.type_x, (n + 32, ne1 * ne2, 1, 1))
        src = full.view((n, ne1, ne2, 1), (full.nb[1] * ne2, full.nb[1], full.nb[1] * ne1 * ne2), 0)
        want = ref_cpy(src, Tensor.empty(spec.type_y, src.ne))
        dst = Tensor.empty(spec.type_y, src.ne)
        pool.run(rows.cast_jobs(src, dst, kernel=name, n_threads=2))
        ok, why = _same(dst.storage(), want.storage())
        cases += 1
        if not ok:
            raise _Mismatch(f"n {n} x {ne1} x {ne2}: {why}")
    return cases


def _vec_dot_operands(rng, x_type, y_type, m, n_y, n):
    xf = rng.standard_normal((m, n)).astype(np.float32)
    yf = rng.standard_normal((n_y, n)).astype(np.float32)
    if x_type in ("f32", "f16", "bf16"):
        x = xf.view(np.uint8) if x_type == "f32" else reference.quantize(xf, x_type)
        y = yf.view(np.uint8) if y_type == "f32" else reference.quantize(yf, y_type)
        return np.ascontiguousarray(x).reshape(m, -1), np.ascontiguousarray(y).reshape(n_y, -1)
    y_variant = "iqk" if y_type.endswith("_x4") else "x86"
    return reference.quantize(xf, x_type), reference.quantize(yf, y_type, variant=y_variant)


def _check_copy_rows(name, rng, row_bytes, n_rep, ne, stream) -> tuple[bool, str]:
    """dst row (i1,i2,i3) = n_rep copies of src row (i1,i2,i3) at padded byte strides; bytes between rows kept;
    ``stream``: the kernel's streaming-store choice (the same bytes either way)."""
    _spec, fn, ffi = K.resolve("copy_rows", "bytes", None, "ref", kernel=name)
    s_nb1 = row_bytes + 7
    s_nb = (s_nb1, s_nb1 * ne[0] + 3, (s_nb1 * ne[0] + 3) * ne[1] + 1)
    src = rng.integers(0, 256, size=s_nb[2] * ne[2] + 16, dtype=np.uint8)
    d_nb1 = row_bytes * n_rep + 5
    d_nb = (d_nb1, d_nb1 * ne[0] + 2, (d_nb1 * ne[0] + 2) * ne[1])
    total = d_nb[2] * ne[2]
    dst = np.full(total + 64, 0x5A, dtype=np.uint8)
    fn(ffi.cast("uint8_t *", dst.ctypes.data), ffi.cast("const uint8_t *", src.ctypes.data), row_bytes, n_rep,
       *ne, *s_nb, *d_nb, stream)
    want = np.full(total + 64, 0x5A, dtype=np.uint8)
    for i3 in range(ne[2]):
        for i2 in range(ne[1]):
            for i1 in range(ne[0]):
                s0 = i1 * s_nb[0] + i2 * s_nb[1] + i3 * s_nb[2]
                d0 = i1 * d_nb[0] + i2 * d_nb[1] + i3 * d_nb[2]
                want[d0:d0 + row_bytes * n_rep] = np.tile(src[s0:s0 + row_bytes], n_rep)
    return _same(dst, want)


def _check_concat_rows(name, rng, ra, rb, ne, stream) -> tuple[bool, str]:
    """dst row (i1,i2,i3) = a row ++ b row at padded byte strides; bytes between rows kept; ``stream`` as for
    copy_rows."""
    _spec, fn, ffi = K.resolve("concat_rows", "bytes", None, "ref", kernel=name)

    def strides(row, pad):
        return (row + pad, (row + pad) * ne[0] + 3, ((row + pad) * ne[0] + 3) * ne[1] + 1)

    a_nb, b_nb, d_nb = strides(ra, 7), strides(rb, 2), strides(ra + rb, 5)
    a = rng.integers(0, 256, size=a_nb[2] * ne[2], dtype=np.uint8)
    b = rng.integers(0, 256, size=b_nb[2] * ne[2], dtype=np.uint8)
    total = d_nb[2] * ne[2]
    dst = np.full(total + 64, 0x5A, dtype=np.uint8)
    fn(ffi.cast("uint8_t *", dst.ctypes.data), ffi.cast("const uint8_t *", a.ctypes.data),
       ffi.cast("const uint8_t *", b.ctypes.data), ra, rb, *ne, *a_nb, *b_nb, *d_nb, stream)
    want = np.full(total + 64, 0x5A, dtype=np.uint8)
    for i3 in range(ne[2]):
        for i2 in range(ne[1]):
            for i1 in range(ne[0]):
                d0 = i1 * d_nb[0] + i2 * d_nb[1] + i3 * d_nb[2]
                a0 = i1 * a_nb[0] + i2 * a_nb[1] + i3 * a_nb[2]
                b0 = i1 * b_nb[0] + i2 * b_nb[1] + i3 * b_nb[2]
                want[d0:d0 + ra] = a[a0:a0 + ra]
                want[d0 + ra:d0 + ra + rb] = b[b0:b0 + rb]
    return _same(dst, want)


def section_check(build_result: dict, show: bool, n_rows: int) -> dict:
    """The ``check`` section: :func:`check_kernel` for every kernel of a built module; per-ISA verdicts."""
    built = {(m["family"], m["isa"]): m for m in build_result.get("modules", [])}
    specs = catalog.catalog()
    bar = Progress("check", len(specs), show)
    kernels = {}
    for k, spec in enumerate(specs):
        bar(k, spec.name)
        mod = built.get((spec.family, spec.isa))
        if mod is None:
            kernels[spec.name] = {"status": "skipped", "cases": 0, "detail": "its module was not built"}
        elif mod["status"] != "ok":
            kernels[spec.name] = {"status": "skipped" if mod["status"] == "skipped" else "fail", "cases": 0,
                                  "detail": ("skipped: " if mod["status"] == "skipped" else "build failed: ")
                                  + mod.get("reason", "")[:300]}
        else:
            kernels[spec.name] = check_kernel(spec.name, n_rows)
        kernels[spec.name].update(family=spec.family, isa=spec.isa)
    bar.close()
    per_isa = {}
    for name, r in kernels.items():
        d = per_isa.setdefault(r["isa"], {"pass": 0, "fail": 0, "skipped": 0, "reasons": set()})
        d[r["status"]] += 1
        if r["status"] == "skipped":
            d["reasons"].add(r["detail"])
    isas = {}
    for isa, d in sorted(per_isa.items()):
        if d["fail"]:
            state = "failed"
        elif d["pass"] and not d["skipped"]:
            state = "verified"
        elif d["pass"]:
            state = "partly verified"
        else:
            state = "skipped"
        isas[isa] = {"state": state, "pass": d["pass"], "fail": d["fail"], "skipped": d["skipped"],
                     "reasons": sorted(d["reasons"])}
    n_fail = sum(1 for r in kernels.values() if r["status"] == "fail")
    return {
        "status": "failed" if n_fail else "ok",
        "method": "bytes of the kernel's output equal to the NumPy reference's (mlaref.reference) on the fixed "
                  "case set of codegen/report/check.py (seeded from the kernel name)",
        "totals": {s: sum(1 for r in kernels.values() if r["status"] == s) for s in ("pass", "fail", "skipped")},
        "isas": isas,
        "kernels": kernels,
    }

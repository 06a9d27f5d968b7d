"""The CUDA kernels' correctness cases: inputs, the reference's bytes, guard bytes, and the comparison.

Each case is ``(kernel name, label, run)``; ``run()`` calls the kernel through :mod:`.kernels` and returns ``""``
when its bytes equal the reference's and every guard byte is intact, else what differs. The shapes are those of the
CPU kernel tests: one block, the warp (32 elements or blocks) and one past it, odd tails, more than one warp's worth
of blocks (33), and the MLA rows (576 = 512 + 64, 192 = 128 + 64); inputs are strided (rows at a wider stride than
their bytes) and every output sits between guard bytes (``GUARD_BYTE``), gaps included.

Expected values come from :mod:`mlaref.reference` only: ``ops.repeat`` / ``ops.concat`` / ``ops.cpy`` for the row
copies, ``quantize`` (variant ``x86``) of the exactly widened rows for ``convert``, and ``ops.vec_dot`` under
``cuda_w32`` (transposed) for ``mul_mat``, plus ``ops.mul_mat.mul_mat`` (#253 semantics) end to end;
``ops.flash_attn_ext`` (``algorithm="blocked"``, plan ``cuda_fa_w32``) for flash attention (:data:`FA_SHAPES`:
both MLA head sizes, tails, masks with whole blocks masked, GQA, strided K/V and V a view of K, guard bytes around
a strided output); and the reference executor's nodes for #253's K/V build from a q8_0 cache composed from the
kernels, then attention (:func:`mla_layer_reference`).
"""

from __future__ import annotations

import numpy as np

from mlaref.codegen import catalog as _catalog
from mlaref.codegen.cuda import kernels as _k
from mlaref.reference import fp, get_type, quantize
from mlaref.reference.graphs.deepseek2 import build_attention_block
from mlaref.reference.graphs.executor import run_graph
from mlaref.reference.graphs.synthetic import SyntheticModel, tiny_hparams
from mlaref.reference.ops.concat import concat as ref_concat
from mlaref.reference.ops.flash_attn_ext import flash_attn_ext as ref_flash_attn_ext
from mlaref.reference.ops.mul_mat import mul_mat as ref_mul_mat
from mlaref.reference.ops.repeat import repeat as ref_repeat
from mlaref.reference.ops.vec_dot import vec_dot
from mlaref.reference.tensor import Tensor, aligned_buffer

__all__ = ["GUARD", "GUARD_BYTE", "cases", "MUL_MAT_SHAPES", "CONVERT_SHAPES", "FA_SHAPES", "values", "encode",
           "fa_operands", "mla_layer_reference", "MLA_KEEP"]

GUARD = 64
GUARD_BYTE = 0xA5
# (m weight rows, n_y src1 rows, n): one block; 32 blocks (a warp) and 33; odd row counts (n_y not a multiple of the
# 4 columns a warp runs); the MLA row lengths 576 and 192
MUL_MAT_SHAPES = ((1, 1, 32), (3, 5, 1024), (5, 7, 1056), (17, 9, 576), (33, 4, 192), (2, 3, 96))
CONVERT_SHAPES = ((1, 32), (3, 64), (5, 96), (17, 576), (7, 192), (2, 1056))
# flash attention (Dk, Dv, n_q, n_head, n_head_kv, ne3, n_kv, mask): the CPU FA tests' shapes. One query and three
# whole blocks of 32; GQA with a tail (n_kv 77 = 2*32 + 13) under a causal mask; MLA's 576/512 with V a view of K,
# one KV head for all heads, and a mask whose second block is masked whole ("holes": the block is skipped); a
# single block past the warp (33); two sequences (ne3 2) over one KV set; MLA's 16 heads on one KV head over 300
# cells (the timing shapes' GQA ratio, a tail of 12).
FA_SHAPES = ((192, 128, 1, 4, 4, 1, 96, None), (192, 128, 5, 4, 2, 1, 77, "causal"),
             (576, 512, 3, 4, 1, 1, 100, "holes"), (576, 512, 2, 2, 1, 1, 33, "causal"),
             (192, 128, 3, 2, 1, 2, 45, "holes"), (576, 512, 4, 16, 1, 1, 300, "causal"))


def values(rng, shape, scale: float = 1.0) -> np.ndarray:
    """float32 values with a spread of magnitudes (exponents over 2**-6 .. 2**6), no NaN."""
    v = rng.standard_normal(shape).astype(np.float32)
    return (v * np.float32(scale) * np.exp2(rng.integers(-6, 7, shape)).astype(np.float32)).astype(np.float32)


def encode(v: np.ndarray, type_: str) -> np.ndarray:
    """Rows of float32 values as uint8 rows of ``type_`` (f16 / bf16 by RNE, block types by the reference)."""
    if type_ == "f32":
        return np.ascontiguousarray(v, np.float32).view(np.uint8)
    if type_ == "f16":
        return fp.f32_to_f16(v).view(np.uint8)
    if type_ == "bf16":
        return fp.f32_to_bf16(v).view(np.uint8)
    return quantize(np.ascontiguousarray(v, np.float32), type_, variant="x86" if type_ == "q8_0" else "ref")


def _widen(rows: np.ndarray, type_: str, n: int) -> np.ndarray:
    if type_ == "f32":
        return np.ascontiguousarray(rows).view(np.float32).reshape(-1, n)
    return Tensor.from_bytes(np.ascontiguousarray(rows), type_, (n, rows.shape[0])).to_numpy().reshape(-1, n)


def _strided(rows: np.ndarray, pad: int) -> np.ndarray:
    """The same rows at a stride ``pad`` entries wider (a view into a bigger array)."""
    full = np.zeros((rows.shape[0], rows.shape[1] + pad), rows.dtype)
    full[:, :rows.shape[1]] = rows
    return full[:, :rows.shape[1]]


def _guarded(shape, dtype, pad: int):
    """(full array of guard bytes, the output view of ``shape`` inside it: rows at a stride ``pad`` entries wider)."""
    full = np.empty((shape[0], shape[1] + pad), dtype)
    full.view(np.uint8)[...] = GUARD_BYTE
    return full, full[:, :shape[1]]


def _diff(got: np.ndarray, want: np.ndarray, what: str) -> str:
    g, w = np.ascontiguousarray(got).view(np.uint8), np.ascontiguousarray(want).view(np.uint8)
    if g.shape != w.shape:
        return f"{what}: shape {g.shape} != {w.shape}"
    bad = np.argwhere(g != w)
    if not len(bad):
        return ""
    shown = ", ".join(f"{tuple(int(i) for i in at)} got {int(g[tuple(at)]):#04x} want {int(w[tuple(at)]):#04x}"
                      for at in bad[:4])
    return f"{what}: {len(bad)} of {g.size} bytes differ, first at {tuple(int(i) for i in bad[0])} ({shown})"


def _guards_ok(full: np.ndarray, width_bytes: int) -> str:
    tail = full.view(np.uint8)[:, width_bytes:]
    return "" if (tail == GUARD_BYTE).all() else f"guard bytes overwritten: {(tail != GUARD_BYTE).sum()}"


# -- the row copies (Tensor views in guarded buffers) -----------------------------------------------------------

def _tensor_in_guards(type_: str, ne, nb=None):
    """A tensor of ``ne`` (contiguous, or at strides ``nb``) at offset GUARD in a buffer of guard bytes."""
    t = Tensor.empty(type_, ne)
    nb = nb or t.nb
    span = t.row_size() + sum((n - 1) * s for n, s in zip(t.ne[1:], nb[1:]))  # ggml_nbytes of packed rows
    buf = aligned_buffer(span + 2 * GUARD)
    buf[...] = GUARD_BYTE
    return Tensor(type_, ne, nb, buf, GUARD)


def _expected_buffer(dst: Tensor, result: Tensor) -> np.ndarray:
    """dst's buffer as it was, with result's rows written at dst's row positions."""
    want = dst.data.copy()
    rs = dst.row_size()
    for i3 in range(dst.ne[3]):
        for i2 in range(dst.ne[2]):
            for i1 in range(dst.ne[1]):
                at = dst.offset + i1 * dst.nb[1] + i2 * dst.nb[2] + i3 * dst.nb[3]
                want[at:at + rs] = result.row(i1, i2, i3)
    return want


def _random_tensor(rng, type_: str, ne, nb=None) -> Tensor:
    t = Tensor.empty(type_, ne) if nb is None else _tensor_in_guards(type_, ne, nb)
    rows = encode(values(rng, (t.nrows(), ne[0])), type_)
    for k, (i1, i2, i3) in enumerate(t.rows()):
        t.row(i1, i2, i3)[...] = rows[k]
    return t


def _copy_cases(rng) -> list:
    out = []
    names = {s.family: s.name for s in _catalog.cuda_catalog() if s.family in ("copy_rows", "concat_rows")}
    for t, n0 in (("f16", 64), ("bf16", 64), ("q8_0", 64), ("f16", 6)):
        def rep(t=t, n0=n0):  # MLA: the rope part [n0, n_kv, 1] broadcast over heads; a tile along dims 0 and 3
            src = _random_tensor(rng, t, (n0, 37, 1, 2))
            ne = (n0 * (2 if t != "q8_0" else 1), 37, 5, 4)
            dst = _tensor_in_guards(t, ne)
            want = _expected_buffer(dst, ref_repeat(src, ne))
            _k.repeat(src, ne, out=dst)
            return _diff(dst.data, want, "buffer")
        out.append((names["copy_rows"], f"repeat {t} {n0}x37x1x2 -> x5 heads", rep))

        def cpy(t=t, n0=n0):  # a same-type copy from a strided (permuted-like) view into a strided destination
            base = _random_tensor(rng, t, (n0 * 3, 9, 4))
            rs = Tensor.empty(t, (n0, 1)).row_size()
            src = base.view((n0, 9, 4), (base.nb[1], base.nb[2]), rs)  # the middle third of every row
            dst = _tensor_in_guards(t, src.ne, (src.nb[0], rs + 6, (rs + 6) * 9 + 4, 0))
            want = _expected_buffer(dst, src)
            _k.cpy(src, dst)
            return _diff(dst.data, want, "buffer")
        out.append((names["copy_rows"], f"cpy {t} strided rows", cpy))

        def cat(t=t, n0=n0):  # MLA's K: k_nope [2*n0, n_kv, heads] (a view of wider rows) ++ k_rope [n0, n_kv, heads]
            wide = _random_tensor(rng, t, (4 * n0, 23, 3))
            a = wide.view((2 * n0, 23, 3), (wide.nb[1], wide.nb[2]), 0)
            b = _random_tensor(rng, t, (n0, 23, 3))
            dst = _tensor_in_guards(t, (3 * n0, 23, 3))
            want = _expected_buffer(dst, ref_concat(a, b, 0))
            _k.concat(a, b, 0, out=dst)
            return _diff(dst.data, want, "buffer")
        out.append((names["concat_rows"], f"concat {t} {2 * n0}+{n0} strided a", cat))
    return out


# -- convert and mul_mat (rows) ---------------------------------------------------------------------------------

def _convert_cases(rng) -> list:
    out = []
    for s in _catalog.cuda_catalog():
        if s.family != "convert_rows":
            continue
        for R, n in CONVERT_SHAPES:
            def run(s=s, R=R, n=n):
                v = values(rng, (R, n))
                v[0, :min(n, 32)] = 0.0  # an all-zero block: d = 0, multiplier 0
                src = encode(v, s.type_x)
                x = _strided(src.view(np.float32) if s.type_x == "f32" else src, 8)
                want = quantize(_widen(src, s.type_x, n), s.type_y, variant="x86")
                full, o = _guarded(want.shape, np.uint8, 6)
                _k.convert(x, s.type_x, s.type_y, out=o)
                return _diff(o, want, "rows") or _guards_ok(full, want.shape[1])
            out.append((s.name, f"{R}x{n}", run))
    return out


def _mul_mat_cases(rng) -> list:
    out = []
    for s in _catalog.cuda_catalog():
        if s.family != "mul_mat":
            continue
        plan = _catalog.CUDA_PLANS[s.plan]
        for m, ny, n in MUL_MAT_SHAPES:
            def run(s=s, m=m, ny=ny, n=n, plan=plan):
                x = encode(values(rng, (m, n)), s.type_x)
                y = encode(values(rng, (ny, n)), s.type_y)
                want = vec_dot(x, s.type_x, y, s.type_y, n, plan).T
                full, o = _guarded((ny, m), np.float32, 3)
                _k.mul_mat(_strided(x, 6), s.type_x, _strided(y, 2), s.type_y, n, plan=plan, out=o)
                return _diff(o, want, "dst") or _guards_ok(full, 4 * m)
            out.append((s.name, f"m{m} n_y{ny} n{n}", run))

        def e2e(s=s, plan=plan):  # #253: an f32 src1 converted on the GPU, then the kernel; reference ops.mul_mat
            m, ny, n = 9, 6, 576
            a = Tensor.from_bytes(encode(values(rng, (m, n)), s.type_x), s.type_x, (n, m))
            b = Tensor.from_bytes(values(rng, (ny, n)).view(np.uint8), "f32", (n, ny))
            want = ref_mul_mat(a, b, plan=plan, variant="x86").to_numpy().reshape(ny, m)
            y = _k.convert(b.to_numpy().reshape(ny, n), "f32", s.type_y)
            got = _k.mul_mat(_rows(a), s.type_x, y, s.type_y, n, plan=plan)
            return _diff(got, want, "dst")
        out.append((s.name, "end to end: f32 src1 -> convert -> mul_mat (#253)", e2e))
    return out


def _fa_mask(rng, kind, n_kv: int, n_q: int) -> Tensor | None:
    """An f16 mask [n_kv, n_q + 1] (one spare row, as ggml pads it): 0 / -inf. "causal": query i sees cells up to
    n_kv - n_q + i; "holes": cells 32..63 masked for every query (a whole block skipped), plus random cells masked
    by other bit patterns (-0.0, -1.0: the blocked algorithm's mask is binary), cell 0 always visible."""
    if kind is None:
        return None
    bits = np.zeros((n_q + 1, n_kv), np.uint16)
    if kind == "causal":
        for i in range(n_q + 1):
            bits[i, n_kv - n_q + i + 1:] = 0xFC00
    else:
        bits[:, 32:64] = 0xFC00
        pick = rng.random((n_q + 1, n_kv)) < 0.2
        bits[pick] = rng.choice(np.array([0xFC00, 0x8000, 0xBC00], np.uint16), int(pick.sum()))
        bits[:, 0] = 0
    return Tensor.from_bytes(bits.view(np.uint8), "f16", (n_kv, n_q + 1))


def fa_operands(rng, type_: str, dk: int, dv: int, n_q: int, n_head: int, n_head_kv: int, ne3: int, n_kv: int,
                mask_kind=None):
    """(q, k, v, mask) as MLA builds them: q f32 [Dk, n_q, n_head, ne3]; for Dv < Dk with Dv = 512, V is a view
    of K's first Dv values (one buffer, K's strides); else K and V are views of rows wider than theirs (strided)."""
    ne3_kv = 1
    q = Tensor.from_bytes(values(rng, (ne3 * n_head * n_q, dk), 0.25).view(np.uint8), "f32", (dk, n_q, n_head, ne3))
    wide = Tensor.empty(type_, (dk + 64, n_kv, n_head_kv, ne3_kv))
    wide.data[...] = encode(values(rng, (n_kv * n_head_kv * ne3_kv, dk + 64), 0.25), type_).reshape(-1)
    k = wide.view((dk, n_kv, n_head_kv, ne3_kv), wide.nb[1:], 0)
    if dv == 512:
        v = wide.view((dv, n_kv, n_head_kv, ne3_kv), wide.nb[1:], 0)
    else:
        vw = Tensor.empty(type_, (dv + 32, n_kv, n_head_kv, ne3_kv))
        vw.data[...] = encode(values(rng, (n_kv * n_head_kv * ne3_kv, dv + 32)), type_).reshape(-1)
        v = vw.view((dv, n_kv, n_head_kv, ne3_kv), vw.nb[1:], vw.row_size() - Tensor.empty(type_, (dv, 1)).row_size())
    return q, k, v, _fa_mask(rng, mask_kind, n_kv, n_q)


def _fa_cases(rng) -> list:
    out = []
    for s in _catalog.cuda_catalog():
        if s.family != "flash_attn_ext":
            continue
        plan = _catalog.CUDA_FA_PLANS[s.plan]
        for dk, dv, nq, nh, nhk, ne3, n_kv, mk in FA_SHAPES:
            def run(s=s, dk=dk, dv=dv, nq=nq, nh=nh, nhk=nhk, ne3=ne3, n_kv=n_kv, mk=mk, plan=plan):
                q, k, v, mask = fa_operands(rng, s.type_x, dk, dv, nq, nh, nhk, ne3, n_kv, mk)
                scale = 1.0 / np.sqrt(dk)
                want = ref_flash_attn_ext(q, k, v, mask, scale, algorithm="blocked", plan=plan, variant="x86")
                ne = (dv, nh, nq, ne3)
                dst = _tensor_in_guards("f32", ne, (4, 4 * dv + 12, (4 * dv + 12) * nh + 8,
                                                    ((4 * dv + 12) * nh + 8) * nq))
                expected = _expected_buffer(dst, want)
                _k.flash_attn_ext(q, k, v, mask, scale, plan=plan, out=dst)
                return _diff(dst.data, expected, "buffer")
            label = (f"Dk{dk} Dv{dv} n_q{nq} heads {nh}/{nhk} ne3 {ne3} n_kv{n_kv}" + (f" mask {mk}" if mk else "")
                     + (" (V a view of K)" if dv == 512 else " (strided K, V)"))
            out.append((s.name, label, run))
    return out


# -- #253's K/V build with a q8_0 cache, then attention (one synthetic layer) ----------------------------------------

MLA_KEEP = ("kv_f32-0", "k_nope-0", "v-0", "k-0", "q_concat-0", "KQ_mask (copy)", "kqv-0")


def mla_layer_reference(n_head: int = 4, n_tokens: int = 8, n_ctx: int = 256, seed: int = 7):
    """The reference executor on #253's ``direct`` attention block with a q8_0 cache and q8_0 weights (the synthetic
    tiny model with ``n_head`` heads: K rows of 32 nope + 32 rope values, V rows of 32, latent rank 64), n_kv =
    n_ctx cells, the last ``n_tokens`` written by the graph's cache store; mul_mat under ``cuda_w32`` and flash
    attention ``blocked`` under ``cuda_fa_w32`` (the GPU's orders). Returns (graph, cache after the run, the
    ``attn_kv_b`` weight, the nodes of :data:`MLA_KEEP` by name)."""
    model = SyntheticModel(tiny_hparams(1, n_head=n_head), seed=seed)
    g = build_attention_block(model.hp, n_ctx, variant="direct", cache_type="q8_0", n_tokens=n_tokens,
                              weight_type="q8_0")
    inp = model.inputs(g)
    rng = np.random.default_rng(seed)
    inputs = {"attn_norm-0": rng.standard_normal((n_tokens, model.hp.n_embd)).astype(np.float32),
              "inp_pos": inp["inp_pos"], "KQ_mask": inp["KQ_mask"]}
    weights = model.weights(g)
    kv = model.kv_cache(g)
    out = run_graph(g, weights=weights, kv_cache=kv, inputs=inputs, keep=MLA_KEEP,
                    options={"MUL_MAT": {"plan": "cuda_w32"},
                             "FLASH_ATTN_EXT": {"algorithm": "blocked", "plan": "cuda_fa_w32"}})
    return g, kv[0], weights["blk.0.attn_kv_b.weight"], out


def _mla_case() -> str:
    """#253's K and V from a q8_0 cache on the GPU, kernel by kernel, each compared with the executor's node:
    mul_mat(wkv_b, the cache's latent rows read as q8_0 src1 rows in place) = kv_f32; convert f32 -> q8_0 of whole
    kv_f32 rows (32-blocks never straddle the nope / v halves), then cpy of the nope and v block views into the
    contiguous k_nope and v; repeat of the cache's rope part over heads; concat = K; then flash attention on the
    executor's q and f16 mask = kqv."""
    g, cache, wkv_b, ref = mla_layer_reference()
    hp = g.hparams
    n_kv, H = g.n_kv, hp.n_head
    nope, dv, rank, rot = hp.n_embd_head_qk_nope, hp.n_embd_head_v, hp.n_lora_kv, hp.n_rot
    row = cache.nb[1]
    cells = cache.data[: n_kv * row].reshape(n_kv, row)
    lat = get_type("q8_0").type_size * rank // 32  # latent bytes of a cache row
    kv_f32 = _k.mul_mat(_rows(wkv_b), "q8_0", cells[:, :lat], "q8_0", rank, plan="cuda_w32")
    bad = _diff(kv_f32, ref["kv_f32-0"].to_numpy().reshape(n_kv, -1), "kv_f32")
    conv = _k.convert(kv_f32, "f32", "q8_0")  # (n_kv, H*(nope+dv)/32 blocks)
    ts = get_type("q8_0").type_size
    whole = Tensor.from_bytes(conv, "q8_0", (H * (nope + dv), n_kv))
    per_head = (nope + dv) // 32 * ts
    k_nope, v = Tensor.empty("q8_0", (nope, n_kv, H)), Tensor.empty("q8_0", (dv, n_kv, H))
    _k.cpy(whole.view((nope, n_kv, H), (whole.nb[1], per_head), 0), k_nope)
    _k.cpy(whole.view((dv, n_kv, H), (whole.nb[1], per_head), nope // 32 * ts), v)
    bad = bad or _diff(k_nope.data, ref["k_nope-0"].data, "k_nope") or _diff(v.data, ref["v-0"].data, "v")
    rope = Tensor("q8_0", (rot, n_kv, 1, 1), (ts, row, row * n_kv, row * n_kv), cache.data, lat)
    k_rope = _k.repeat(rope, (rot, n_kv, H, 1))
    bad = bad or _diff(k_rope.data, ref_repeat(rope, (rot, n_kv, H, 1)).data, "k_rope")
    k = _k.concat(k_nope, k_rope, 0)
    bad = bad or _diff(k.data, ref["k-0"].data, "k")
    fa = next(n for n in g.graph.nodes if n.op == "FLASH_ATTN_EXT")
    kqv = _k.flash_attn_ext(ref["q_concat-0"], k, v, ref["KQ_mask (copy)"], fa.op_params["scale"], plan="cuda_fa_w32")
    return bad or _diff(kqv.data, ref["kqv-0"].data, "kqv")


def _rows(t: Tensor) -> np.ndarray:
    return np.stack([t.row(i1, i2, i3) for i1, i2, i3 in t.rows()])


def cases(seed: int = 0) -> list:
    """Every correctness case of every CUDA kernel: ``(kernel name, label, run)``."""
    rng = np.random.default_rng(seed)
    mla = [(s.name, "#253 K/V from a q8_0 cache (4 heads, n_kv 256) + attention, end to end", _mla_case)
           for s in _catalog.cuda_catalog() if s.family == "flash_attn_ext" and s.type_x == "q8_0"]
    return _copy_cases(rng) + _convert_cases(rng) + _mul_mat_cases(rng) + _fa_cases(rng) + mla

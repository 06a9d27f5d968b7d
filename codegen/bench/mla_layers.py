"""`mlaref bench mla`'s three back-ends of one MLA layer: upstream ggml's graph, mlaref's kernels, the NumPy reference.

Each back-end builds one layer's K/V and flash attention at DeepSeek-V2-Lite's shapes for the variants ``f32``
(before PR #253), ``direct`` (#253) and ``chunked`` (mlaref) and runs it; :mod:`mlaref.codegen.bench.mla` times
them and writes the tables. The variants and shapes are explained there.
"""

from __future__ import annotations

import ctypes
import time

import numpy as np

from mlaref.codegen import kernels as K
from mlaref.codegen.kernels import mm as KM
from mlaref.codegen.peers import ggml as ggml_peer
from mlaref.reference.ops.concat import concat
from mlaref.reference.ops.cpy import cast
from mlaref.reference.ops.fa_partial import fa_merge, flash_attn_ext_partial
from mlaref.reference.ops.flash_attn_ext import flash_attn_ext
from mlaref.reference.ops.mul_mat import MulMat_253, MulMat_pre253
from mlaref.reference.ops.repeat import repeat
from mlaref.reference.tensor import Tensor

__all__ = ["VARIANTS", "KERNEL_OPS", "split_kv", "shapes", "mask", "layer_data", "variant_bytes", "GgmlLayer",
           "merge_seconds", "reference_layer", "kernel_layer"]

VARIANTS = ("f32", "direct", "chunked")
_F32, _F16 = 0, 1  # enum ggml_type


def shapes(hp, T: int, n_head: int | None = None) -> dict:
    H = n_head or hp.n_head
    return {
        "n_head": H, "T": T, "rank": hp.n_lora_kv, "rope": hp.n_rot, "nope": hp.n_embd_head_qk_nope,
        "dv": hp.n_embd_head_v, "dk": hp.n_embd_head_qk_nope + hp.n_rot, "kq_scale": float(hp.kq_scale),
    }


def mask(n_kv: int, T: int) -> np.ndarray:
    """The causal mask of the last micro-batch (f16 ``[T, n_kv]``): token t sees cells ``<= n_kv - T + t``."""
    cells = np.arange(n_kv)[None, :]
    last = (n_kv - T + np.arange(T))[:, None]
    return np.where(cells <= last, np.float16(0), np.float16(-np.inf)).astype(np.float16)


def layer_data(s: dict, n_kv: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    H, T = s["n_head"], s["T"]
    return {
        "wkv_b": (rng.standard_normal((H * (s["nope"] + s["dv"]), s["rank"])) / np.sqrt(s["rank"])).astype(np.float16),
        "cache": (0.5 * rng.standard_normal((n_kv, s["rank"] + s["rope"]))).astype(np.float16),
        "q": rng.standard_normal((T, H, s["dk"])).astype(np.float32),
        "mask": mask(n_kv, T),
    }


def split_kv(kv_f32, n: int, H: int, nope: int, dv: int):
    """The K-nope and V views of ``kv_f32 = wkv_b x c_kv`` ([H * (nope + dv), n] f32): per head, ``nope`` rows
    of K, then ``dv`` rows of V."""
    nb1, per_head = kv_f32.nb[1], nope + dv
    k = kv_f32.view((nope, n, H, 1), (4, nb1, 4 * per_head, nb1 * n), 0)
    v = kv_f32.view((dv, n, H, 1), (4, nb1, 4 * per_head, nb1 * n), 4 * nope)
    return k, v


# ----------------------------------------------------------------------------------------------------------
# ggml back-end
# ----------------------------------------------------------------------------------------------------------
def variant_bytes(s: dict, n_kv: int, kv_chunk: int) -> int:
    """Upper bound of the tensor data one variant allocates in a no-reuse ggml context."""
    H, rank, rope, dk, dv, T = s["n_head"], s["rank"], s["rope"], s["dk"], s["dv"], s["T"]
    per_head = s["nope"] + dv
    kvf = 4 * H * per_head * n_kv
    f32 = 4 * (rank + rope) * n_kv + kvf + 4 * rope * H * n_kv + 4 * dk * H * n_kv + 2 * (dk + dv) * H * n_kv
    direct = kvf + 2 * (s["nope"] + dv) * H * n_kv + 2 * rope * H * n_kv + 2 * dk * H * n_kv
    return f32 + 2 * direct + 2 * n_kv * T + 3 * 4 * dv * H * T * (1 + n_kv // max(kv_chunk, 1))


class GgmlLayer:
    """The three variants' graphs for one ``n_kv`` in one ggml context (see the module docstring)."""

    def __init__(self, s: dict, n_kv: int, kv_chunk: int, n_threads: int, seed: int):
        self.g = g = ggml_peer.lib()
        self.s, self.n_kv, self.n_threads = s, n_kv, n_threads
        H, T, rank, rope = s["n_head"], s["T"], s["rank"], s["rope"]
        n_tensors = 64 + 16 * (n_kv // kv_chunk + 1)
        mem = variant_bytes(s, n_kv, kv_chunk) + (64 << 20) + n_tensors * int(g.ggml_tensor_overhead())
        mem += 3 * int(g.ggml_graph_overhead())
        self.ctx = g.ggml_init(g.ggml_init_params(mem_size=mem, mem_buffer=None, no_alloc=False))
        if not self.ctx:
            raise MemoryError(f"bench mla: ggml_init could not allocate {mem} bytes")
        d = layer_data(s, n_kv, seed)
        self.wkv_b = self._input(_F16, (rank, H * (s["nope"] + s["dv"])), d["wkv_b"])
        self.cache = self._input(_F16, (rank + rope, n_kv), d["cache"])
        q_full = self._input(_F32, (s["dk"], H, T), d["q"])
        self.q = g.ggml_permute(self.ctx, q_full, 0, 2, 1, 3)
        self.mask = self._input(_F16, (n_kv, T), d["mask"])
        self.mask_np = d["mask"]
        self.graphs, self.outs, self.plans, self._work = {}, {}, {}, []
        self.n_chunks = {}
        for v in VARIANTS:
            out, n_chunks, kv = getattr(self, f"_build_{v}")(kv_chunk)
            self.outs[v], self.n_chunks[v] = out, n_chunks
            # "<variant>" runs the layer; "<variant>/kv" only its K/V build (the same nodes, without attention)
            self._graph(v, out)
            self._graph(f"{v}/kv", kv)

    def _graph(self, key: str, roots) -> None:
        g = self.g
        gf = g.ggml_new_graph(self.ctx)
        for o in roots:
            g.ggml_build_forward_expand(gf, o)
        plan = g.ggml_graph_plan(gf, self.n_threads, None)
        work = np.empty(max(int(plan.work_size), 1), dtype=np.uint8)
        self._work.append(work)
        plan.work_data = ctypes.cast(work.ctypes.data, type(plan.work_data))
        self.graphs[key], self.plans[key] = gf, plan

    def _input(self, type_id, ne, arr: np.ndarray):
        g = self.g
        t = {1: g.ggml_new_tensor_1d, 2: g.ggml_new_tensor_2d, 3: g.ggml_new_tensor_3d}[len(ne)](self.ctx, type_id, *ne)
        a = np.ascontiguousarray(arr)
        if a.nbytes != int(g.ggml_nbytes(t)):
            raise AssertionError(f"bench mla: {a.nbytes} bytes for a tensor of {int(g.ggml_nbytes(t))}")
        ctypes.memmove(g.ggml_get_data(t), a.ctypes.data, a.nbytes)
        return t

    @staticmethod
    def _nb(t, i: int) -> int:
        return int(t.contents.nb[i])

    def _split(self, kv_f32, n):
        g, s, ctx = self.g, self.s, self.ctx
        per_head = s["nope"] + s["dv"]
        nb1, nb2 = self._nb(kv_f32, 1), 4 * per_head
        k_nope = g.ggml_view_3d(ctx, kv_f32, s["nope"], n, s["n_head"], nb1, nb2, 0)
        v = g.ggml_view_3d(ctx, kv_f32, s["dv"], n, s["n_head"], nb1, nb2, 4 * s["nope"])
        return k_nope, v

    def _direct_kv(self, c0: int, n: int):
        """#253's K/V build for cells ``c0 .. c0 + n`` (``kv_direct`` / one chunk of ``attn_chunked``)."""
        g, s, ctx = self.g, self.s, self.ctx
        row = self._nb(self.cache, 1)
        nope_view = g.ggml_view_2d(ctx, self.cache, s["rank"], n, row, c0 * row)
        kv_f32 = g.ggml_mul_mat(ctx, self.wkv_b, nope_view)
        k_nope_f32, v_f32 = self._split(kv_f32, n)
        v = g.ggml_cast(ctx, v_f32, _F16)
        k_nope = g.ggml_cast(ctx, k_nope_f32, _F16)
        rope_view = g.ggml_view_3d(ctx, self.cache, s["rope"], n, 1, row, row * n, c0 * row + 2 * s["rank"])
        k_rope = g.ggml_repeat_4d(ctx, rope_view, s["rope"], n, s["n_head"], 1)
        k = g.ggml_concat(ctx, k_nope, k_rope, 0)
        return k, v

    def _attn(self, k, v, mask):
        return self.g.ggml_flash_attn_ext(self.ctx, self.q, k, v, mask, self.s["kq_scale"], 0.0, 0.0)

    def _build_direct(self, kv_chunk):
        k, v = self._direct_kv(0, self.n_kv)
        return [self._attn(k, v, self.mask)], 1, [k, v]

    def _build_f32(self, kv_chunk):
        g, s, ctx, n = self.g, self.s, self.ctx, self.n_kv
        row = self._nb(self.cache, 1)
        kv32 = g.ggml_cast(ctx, g.ggml_view_2d(ctx, self.cache, s["rank"] + s["rope"], n, row, 0), _F32)
        r32 = self._nb(kv32, 1)
        nope = g.ggml_view_2d(ctx, kv32, s["rank"], n, r32, 0)
        rope = g.ggml_view_3d(ctx, kv32, s["rope"], 1, n, r32, r32, 4 * s["rank"])
        kv_f32 = g.ggml_mul_mat(ctx, self.wkv_b, nope)
        k_nope_f32, v_f32 = self._split(kv_f32, n)
        rep = g.ggml_repeat_4d(ctx, rope, s["rope"], s["n_head"], n, 1)
        k_rope_f32 = g.ggml_permute(ctx, rep, 0, 2, 1, 3)
        k_f32 = g.ggml_concat(ctx, k_nope_f32, k_rope_f32, 0)
        k = g.ggml_cast(ctx, k_f32, _F16)
        v = g.ggml_cast(ctx, v_f32, _F16)
        return [self._attn(k, v, self.mask)], 1, [k, v]

    def _build_chunked(self, kv_chunk):
        if self.n_kv <= kv_chunk:
            return self._build_direct(kv_chunk)
        outs, kv = [], []
        for c0 in range(0, self.n_kv, kv_chunk):
            n = min(kv_chunk, self.n_kv - c0)
            k, v = self._direct_kv(c0, n)
            mask_c = self._input(_F16, (n, self.s["T"]), self.mask_np[:, c0:c0 + n])
            outs.append(self._attn(k, v, mask_c))
            kv += [k, v]
        return outs, len(outs), kv

    def compute(self, variant: str) -> None:
        status = self.g.ggml_graph_compute(self.graphs[variant], ctypes.byref(self.plans[variant]))
        if status != 0:
            raise RuntimeError(f"bench mla: ggml_graph_compute({variant}) returned status {status}")

    def output_bytes(self, variant: str) -> bytes:
        g = self.g
        parts = []
        for o in self.outs[variant]:
            n = int(g.ggml_nbytes(o))
            buf = (ctypes.c_uint8 * n)()
            ctypes.memmove(buf, g.ggml_get_data(o), n)
            parts.append(bytes(buf))
        return b"".join(parts)

    def free(self) -> None:
        if self.ctx:
            self.g.ggml_free(self.ctx)
            self.ctx = None


def merge_seconds(s: dict, n_boundaries: int, repeats: int) -> float:
    """Median seconds of ``n_boundaries`` reference ``fa_merge`` calls on partials of this shape."""
    if n_boundaries <= 0:
        return 0.0

    rng = np.random.default_rng(1)
    shape = (1, s["T"], s["n_head"], s["dv"] + 2)
    parts = []
    for _ in range(2):
        a = rng.standard_normal(shape).astype(np.float32)
        a[..., -1] = np.abs(a[..., -1]) + 1
        parts.append(Tensor.from_numpy(a))
    times = []
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        acc = parts[0]
        for i in range(n_boundaries):
            acc = fa_merge(acc, parts[1], i == n_boundaries - 1)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


# ----------------------------------------------------------------------------------------------------------
# reference back-end (no ggml-python)
# ----------------------------------------------------------------------------------------------------------
def reference_layer(s: dict, n_kv: int, kv_chunk: int, seed: int) -> dict:
    """Callables running each variant's op sequence on the NumPy reference ops (mlaref.reference.ops)."""

    d = layer_data(s, n_kv, seed)
    H, rank, rope, nope, dv = s["n_head"], s["rank"], s["rope"], s["nope"], s["dv"]
    wkv_b = Tensor.from_numpy(d["wkv_b"].astype(np.float32), "f16")
    cache = Tensor.from_numpy(d["cache"].astype(np.float32), "f16")
    q = Tensor.from_numpy(d["q"]).permute(0, 2, 1, 3)
    mask = Tensor.from_numpy(d["mask"].astype(np.float32), "f16")
    scale = s["kq_scale"]

    def kv_direct(c0, n):
        row = cache.nb[1]
        nope_view = cache.view((rank, n, 1, 1), (2, row, row * n, row * n), c0 * row)
        kv_f32 = MulMat_253()(wkv_b, nope_view)
        k_nope_f32, v_f32 = split_kv(kv_f32, n, H, nope, dv)
        v = cast(v_f32, "f16")
        k_nope = cast(k_nope_f32, "f16")
        rope_view = cache.view((rope, n, 1, 1), (2, row, row * n, row * n), c0 * row + 2 * rank)
        k = concat(k_nope, repeat(rope_view, (rope, n, H, 1)), 0)
        return k, v

    def direct():
        k, v = kv_direct(0, n_kv)
        return flash_attn_ext(q, k, v, mask, scale)

    def f32():
        row = cache.nb[1]
        kv32 = cast(cache.view((rank + rope, n_kv, 1, 1), (2, row, row * n_kv, row * n_kv), 0), "f32")
        r32 = kv32.nb[1]
        nope_v = kv32.view((rank, n_kv, 1, 1), (4, r32, r32 * n_kv, r32 * n_kv), 0)
        rope_v = kv32.view((rope, 1, n_kv, 1), (4, r32, r32, r32 * n_kv), 4 * rank)
        kv_f32 = MulMat_pre253()(wkv_b, nope_v)
        k_nope_f32, v_f32 = split_kv(kv_f32, n_kv, H, nope, dv)
        k_rope_f32 = repeat(rope_v, (rope, H, n_kv, 1)).permute(0, 2, 1, 3)
        k = cast(concat(k_nope_f32, k_rope_f32, 0), "f16")
        return flash_attn_ext(q, k, cast(v_f32, "f16"), mask, scale)

    def chunked():
        if n_kv <= kv_chunk:
            return direct()
        acc = None
        starts = list(range(0, n_kv, kv_chunk))
        for i, c0 in enumerate(starts):
            n = min(kv_chunk, n_kv - c0)
            k, v = kv_direct(c0, n)
            m = Tensor.from_numpy(d["mask"][:, c0:c0 + n].astype(np.float32), "f16")
            part = flash_attn_ext_partial(q, k, v, m, scale)
            last = i == len(starts) - 1
            acc = (fa_merge(part, None, True) if last else part) if acc is None else fa_merge(acc, part, last)
        return acc

    return {"f32": f32, "direct": direct, "chunked": chunked}


# ----------------------------------------------------------------------------------------------------------
# kernels back-end: mlaref's generated C kernels
# ----------------------------------------------------------------------------------------------------------
KERNEL_OPS = {
    "mul_mat": "mlaref.codegen.kernels.mm.mul_mat (generated mul_mat kernel, l16a1 plan; src1 f16 or f32 converted "
               "to q8_0 in the kernel, #253's iqk_quantize_any order)",
    "flash_attn_ext": "mlaref.codegen.kernels.mm.flash_attn_ext (generated kernel, iqk's blocked order)",
    "repeat, concat (cache type)": "mlaref.codegen.kernels.repeat / concat (generated copy_rows kernel)",
    "repeat (f32)": "mlaref.codegen.kernels.repeat (generated copy_rows kernel)",
    "concat (f32)": "mlaref.reference.ops.concat (NumPy; no kernel for f32 concat, as in kernels.concat)",
    "cast f16 <-> f32": "mlaref.reference.ops.cpy.cast (NumPy; kernels.cpy has no float-to-float kernel)",
}


def kernel_layer(s: dict, n_kv: int, kv_chunk: int, n_threads: int, seed: int, weight_type: str) -> dict:
    """Callables for each variant (and ``<variant>/kv``, the K/V build alone) on mlaref's kernels; see KERNEL_OPS."""

    d = layer_data(s, n_kv, seed)
    H, rank, rope, nope, dv = s["n_head"], s["rank"], s["rope"], s["nope"], s["dv"]
    wkv_b = Tensor.from_numpy(d["wkv_b"].astype(np.float32), weight_type)
    cache = Tensor.from_numpy(d["cache"].astype(np.float32), "f16")
    q = Tensor.from_numpy(d["q"]).permute(0, 2, 1, 3)
    mask = Tensor.from_numpy(d["mask"].astype(np.float32), "f16")
    scale = s["kq_scale"]
    row = cache.nb[1]

    def kv_direct(c0, n):
        nope_view = cache.view((rank, n, 1, 1), (2, row, row * n, row * n), c0 * row)
        kv_f32 = KM.mul_mat(wkv_b, nope_view, n_threads=n_threads)
        k_nope_f32, v_f32 = split_kv(kv_f32, n, H, nope, dv)
        v = cast(v_f32, "f16")
        k_nope = cast(k_nope_f32, "f16")
        rope_view = cache.view((rope, n, 1, 1), (2, row, row * n, row * n), c0 * row + 2 * rank)
        return K.concat(k_nope, K.repeat(rope_view, (rope, n, H, 1)), 0), v

    def kv_f32():
        kv32 = cast(cache.view((rank + rope, n_kv, 1, 1), (2, row, row * n_kv, row * n_kv), 0), "f32")
        r32 = kv32.nb[1]
        nope_v = kv32.view((rank, n_kv, 1, 1), (4, r32, r32 * n_kv, r32 * n_kv), 0)
        rope_v = kv32.view((rope, 1, n_kv, 1), (4, r32, r32, r32 * n_kv), 4 * rank)
        kv = KM.mul_mat(wkv_b, nope_v, n_threads=n_threads)
        k_nope_f32, v_f32 = split_kv(kv, n_kv, H, nope, dv)
        k_rope_f32 = K.repeat(rope_v, (rope, H, n_kv, 1)).permute(0, 2, 1, 3)
        return cast(concat(k_nope_f32, k_rope_f32, 0), "f16"), cast(v_f32, "f16")

    def attn(k, v, m):
        return KM.flash_attn_ext(q, k, v, m, scale, n_threads=n_threads)

    masks = {}
    if n_kv > kv_chunk:
        for c0 in range(0, n_kv, kv_chunk):
            masks[c0] = Tensor.from_numpy(d["mask"][:, c0:c0 + kv_chunk].astype(np.float32), "f16")

    def chunked():
        if n_kv <= kv_chunk:
            return attn(*kv_direct(0, n_kv), mask)
        return [attn(*kv_direct(c0, min(kv_chunk, n_kv - c0)), masks[c0]) for c0 in range(0, n_kv, kv_chunk)]

    return {
        "f32": lambda: attn(*kv_f32(), mask),
        "direct": lambda: attn(*kv_direct(0, n_kv), mask),
        "chunked": chunked,
        "f32/kv": kv_f32,
        "direct/kv": lambda: kv_direct(0, n_kv),
    }

"""CUDA flash attention without a GPU: the GPU plan cuda_fa_w32 in the reference (hand-checked cases), the kernel's
exp compiled for the host against the reference's v_expf_avx2, and the wrapper's argument checks (tripwire).

The kernel itself runs in ``mlaref cuda-check`` and tests/cuda/test_cuda_gpu.py (bit for bit against the reference,
codegen/cuda/cases.py), which skip "no CUDA GPU" here."""

import ctypes
import pathlib
import re
import shutil
import subprocess

import numpy as np
import pytest

from mlaref.codegen import catalog
from mlaref.codegen.cuda import build as cuda_build
from mlaref.codegen.cuda import cases, kernels
from mlaref.reference import fp, libm
from mlaref.reference.ops.flash_attn_ext import flash_attn_ext
from mlaref.reference.ops.vexp import v_expf_avx2
from mlaref.reference.plan import CUDA_FA_W32, CUDA_W32, GPU_PLANS, ReductionPlan, get_plan
from mlaref.reference.tensor import Tensor

ROOT = pathlib.Path(__file__).resolve().parents[2]
F32 = np.float32


# -- the plan ----------------------------------------------------------------------------------------------------

def test_the_fa_plan_is_cuda_w32_plus_its_attention_order():
    assert get_plan("cuda_fa_w32") is CUDA_FA_W32 and GPU_PLANS["cuda_fa_w32"] is CUDA_FA_W32
    dot = ("lanes", "accs", "fold", "int_to_float", "fma", "tail", "acc_type")
    assert all(getattr(CUDA_FA_W32, a) == getattr(CUDA_W32, a) for a in dot)  # the scores: cuda_w32's order
    assert (CUDA_FA_W32.k_step, CUDA_FA_W32.q_step, CUDA_FA_W32.kv_chunks, CUDA_FA_W32.exp,
            CUDA_FA_W32.rescale_exp) == (32, 1, 1, "v_expf_avx2", "exp")
    assert CUDA_FA_W32.fa_fingerprint == "k32q1c1e2r"
    assert ReductionPlan(name="x", exp="v_expf_avx2").fa_fingerprint == "k64q64c1e2"  # CPU tokens unchanged
    assert catalog.CUDA_FA_PLANS == {"faw32": "cuda_fa_w32"}


def test_rescale_exp_is_validated():
    with pytest.raises(ValueError, match="rescale_exp"):
        ReductionPlan(name="bad", rescale_exp="v_expf_avx2")


def _one_head(k_scores, v_rows, mask_bits=None):
    """q = ones [32, 1, 1, 1]; K row c = (k_scores[c], 0, ..., 0) in f16, so score c = k_scores[c] exactly (one
    nonzero product, every other lane and step adds +0); V rows as given (f16); mask [n_kv, 1] bits or None."""
    n_kv = len(k_scores)
    q = Tensor.from_numpy(np.ones((1, 1, 1, 32), F32))
    kv = np.zeros((n_kv, 32), F32)
    kv[:, 0] = k_scores
    k = Tensor.from_numpy(kv.reshape(1, 1, n_kv, 32), "f16")
    v = Tensor.from_numpy(np.asarray(v_rows, F32).reshape(1, 1, n_kv, -1), "f16")
    mask = None
    if mask_bits is not None:
        mask = Tensor.from_bytes(np.asarray(mask_bits, np.uint16).view(np.uint8), "f16", (n_kv, 1))
    return q, k, v, mask


def _run(q, k, v, mask, plan=CUDA_FA_W32):
    out = flash_attn_ext(q, k, v, mask, 1.0, algorithm="blocked", plan=plan, variant="x86")
    return out.to_numpy().reshape(-1)


def test_equal_scores_by_hand():
    """40 cells of score 0.5 (a block of 32 and a tail of 8): M = 0.5, every p = v_expf(0) = 1 exactly, S = 40,
    acc[d] = the exact sum of small integers; out = acc * f32(1/40). With the tail masked by -0.0 bits (the mask is
    binary) the tail block is skipped: S = 32 and out = acc * (1/32), exact."""
    rng = np.random.default_rng(3)
    vr = rng.integers(-2, 3, (40, 8)).astype(F32)
    q, k, v, _ = _one_head(np.full(40, 0.5, F32), vr)
    want = (vr.sum(axis=0).astype(F32) * F32(1 / F32(40))).astype(F32)
    assert np.array_equal(_run(q, k, v, None), want)
    bits = np.zeros(40, np.uint16)
    bits[32:] = 0x8000
    q, k, v, mask = _one_head(np.full(40, 0.5, F32), vr, bits)
    assert np.array_equal(_run(q, k, v, mask), vr[:32].sum(axis=0).astype(F32) / F32(32))


def test_rescale_takes_the_plans_exp_by_hand():
    """Cells 0..31 score 0, cell 32 scores 2 (V rows 1 then 2): after block 0, M = 0, S = 32, acc = 32. Block 1
    grows M to 2: ms = e(-2), S = 32*ms (exact), acc = 32*ms; p = e(0) = 1; S = f32(32 ms + 1), acc = f32(32 ms + 2);
    out = f32(acc * f32(1/S)). e is v_expf_avx2 under cuda_fa_w32, libm's expf with rescale_exp "libm"; at -2 the two
    differ by one ulp, and so do the outputs."""
    q, k, v, _ = _one_head(np.r_[np.zeros(32, F32), F32(2)], np.r_[np.ones((32, 4), F32), np.full((1, 4), 2, F32)])
    ms_gpu = v_expf_avx2(np.array([-2], F32))[0]
    ms_libm = libm.expf(np.array([-2], F32))[0]
    assert ms_gpu != ms_libm

    def by_hand(ms):
        s32 = F32(32) * ms
        S, acc = F32(s32 + F32(1)), F32(s32 + F32(2))
        return np.full(4, F32(acc * F32(F32(1) / S)), F32)
    assert np.array_equal(_run(q, k, v, None), by_hand(ms_gpu))
    assert np.array_equal(_run(q, k, v, None, CUDA_FA_W32.replace(rescale_exp="libm")), by_hand(ms_libm))


def test_the_cases_cover_the_brief():
    """Both K/V types, both MLA head sizes, a tail, a whole masked block, GQA, V a view of K, two sequences."""
    shapes = cases.FA_SHAPES
    assert {(dk, dv) for dk, dv, *_ in shapes} == {(192, 128), (576, 512)}
    assert any(n_kv % CUDA_FA_W32.k_step for *_, n_kv, _ in shapes)
    assert any(m == "holes" for *_, m in shapes) and any(m == "causal" for *_, m in shapes)
    assert any(nh != nhk for _, _, _, nh, nhk, *_ in shapes) and any(ne3 > 1 for *_, ne3, _, _ in shapes)
    names = {n for n, _, _ in cases.cases() if "flash_attn_ext" in n}
    assert names == {s.name for s in catalog.cuda_catalog() if s.family == "flash_attn_ext"}


# -- the kernel's exp, compiled for the host -----------------------------------------------------------------------

_SHIM = """#include <math.h>
#include <stdint.h>
#include <string.h>
#define __device__
static float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
static float __fmul_rn(float a, float b) { return a * b; }
static float __fsub_rn(float a, float b) { return a - b; }
static float __uint_as_float(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static uint32_t __float_as_uint(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
"""


def test_the_kernels_v_expf_is_the_references(tmp_path):
    """The device function's source (from the generated file) built by the host C compiler with the CUDA intrinsics
    as their IEEE meaning (each one rounding, no contraction) equals ``v_expf_avx2`` bit for bit: on a grid over
    [-200, 100] (fast path, |n| > 126, |n| > 192), random bit patterns and the arguments a softmax sees (<= 0)."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no host C compiler (gcc / cc) to build the device function for the host")
    spec = next(s for s in catalog.cuda_catalog() if s.family == "flash_attn_ext")
    src = (ROOT / "generated" / spec.path).read_text()
    fn = re.search(r"static __device__ float mla_cu_v_expf\(float x\) \{.*?\n\}\n", src, re.DOTALL).group(0)
    c = tmp_path / "vexp.c"
    c.write_text(_SHIM + fn + "void run(const float *x, float *y, long n) { for (long i = 0; i < n; ++i) "
                              "y[i] = mla_cu_v_expf(x[i]); }\n")
    so = tmp_path / "vexp.so"
    subprocess.run([cc, "-O2", "-std=c11", "-ffp-contract=off", "-fno-fast-math", "-shared", "-fPIC", str(c), "-o",
                    str(so), "-lm"], check=True, capture_output=True)
    lib = ctypes.CDLL(str(so))
    rng = np.random.default_rng(5)
    bits = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
    rand = bits.view(F32)
    x = np.concatenate([np.linspace(-200, 100, 300_001, dtype=F32), rand[np.abs(rand) < 300],
                        -rng.random(100_000).astype(F32) * 30, np.array([0, -0.0, -87.5, -88.8, -133, -192], F32)])
    x = np.ascontiguousarray(x, F32)
    y = np.empty_like(x)
    lib.run(ctypes.c_void_p(x.ctypes.data), ctypes.c_void_p(y.ctypes.data), ctypes.c_long(x.size))
    want = v_expf_avx2(x)
    assert np.array_equal(fp.f32_bits(y), fp.f32_bits(want))


# -- the wrapper's checks ----------------------------------------------------------------------------------------



def _ops(type_="q8_0", dk=192, dv=128, n_q=2, nh=4, nhk=2, n_kv=40, mask="causal"):
    return cases.fa_operands(np.random.default_rng(0), type_, dk, dv, n_q, nh, nhk, 1, n_kv, mask)


def _bad_mask(n_kv=40, n_q=2):
    bits = np.zeros((n_q, n_kv), np.uint16)
    bits[1] = 0xFC00  # query 1 sees nothing
    return Tensor.from_bytes(bits.view(np.uint8), "f16", (n_kv, n_q))


@pytest.mark.parametrize("change,exc,match", [
    ({}, None, None),
    ({"mask": None}, None, None),
    ({"k": "v16"}, ValueError, "one type"),
    ({"q": "q16"}, ValueError, "q must be f32"),
    ({"scale": float("inf")}, ValueError, "finite"),
    ({"scale": True}, ValueError, "scale"),
    ({"plan": "cuda_w32"}, ValueError, "plan"),
    ({"mask": "short"}, ValueError, "cover"),
    ({"mask": "dead"}, ValueError, "every KV cell masked"),
    ({"mask": "f32"}, ValueError, "mask must be f16"),
    ({"v": "rows"}, ValueError, "agree in ne"),
    ({"k": "heads"}, ValueError, "head broadcast"),
    ({"k": "odd"}, ValueError, "multiples of 2"),
    ({"out": "f16"}, ValueError, "out must be a f32"),
    ({"out": "overlap"}, ValueError, "overlaps"),
    ({"iters": -1}, ValueError, "iters"),
    ({"kernel": "mlaref_flash_attn_ext_f16_f16__sm90_faw32"}, ValueError, "computes flash_attn_ext f16"),
    ({"k": "big"}, ValueError, "<= 576"),
])
def test_checks_before_c(tripwire, change, exc, match):
    q, k, v, mask = _ops()
    kw = {"plan": "cuda_fa_w32"}
    scale = 0.1
    for key, what in change.items():
        if key == "scale":
            scale = what
        elif key in ("plan", "iters", "kernel"):
            kw[key] = what
        elif key == "mask":
            mask = {None: None, "short": Tensor.zeros("f16", (39, 2)), "dead": _bad_mask(),
                    "f32": Tensor.zeros("f32", (40, 2))}[what]
        elif key == "k":
            if what == "v16":
                k = Tensor.zeros("f16", k.ne)
            elif what == "heads":
                q = Tensor.zeros("f32", (192, 2, 3, 1))
            elif what == "odd":
                raw = Tensor.zeros("f16", (192 * 2 + 1, 40, 2))
                k = Tensor("f16", (192, 40, 2, 1), (2, 385, 385 * 40, 385 * 80), raw.data, 0)
                v = Tensor.zeros("f16", (128, 40, 2))
            elif what == "big":
                q, k = Tensor.zeros("f32", (608, 2, 4)), Tensor.zeros("q8_0", (608, 40, 2))
        elif key == "q":
            q = Tensor.zeros("f16", q.ne)
        elif key == "v":
            v = Tensor.zeros(v.type, (128, 41, 2))
        elif key == "out":
            if what == "f16":
                kw["out"] = Tensor.zeros("f16", (128, 4, 2, 1))
            else:
                buf = Tensor.zeros("f32", (q.ne[0] * q.ne[1] * q.ne[2],))
                q = Tensor("f32", q.ne, q.nb, buf.data, 0)
                kw["out"] = Tensor("f32", (128, 4, 2, 1), (4, 512, 2048, 4096), buf.data, 0)
    call = lambda: kernels.flash_attn_ext(q, k, v, mask, scale, **kw)
    if exc is None:
        with pytest.raises(tripwire):
            call()
    else:
        with pytest.raises(exc, match=match):
            call()


# -- #253's K/V build: the composition, with the reference ops standing in for the kernels -----------------------

def test_the_mla_composition_reproduces_the_executors_nodes(monkeypatch):
    """cases._mla_case composes the CUDA kernels into #253's K and V (q8_0 cache) and the attention. Here each
    kernel is replaced by the reference op it is checked against on the GPU (mul_mat: vec_dot under cuda_w32;
    convert: quantize x86; cpy / repeat / concat: reference/ops; flash attention: blocked under cuda_fa_w32), so the
    views, offsets and strides of the composition are checked against the executor's nodes without a GPU."""
    from mlaref.reference import quantize
    from mlaref.reference.ops.concat import concat
    from mlaref.reference.ops.cpy import cpy
    from mlaref.reference.ops.repeat import repeat
    from mlaref.reference.ops.vec_dot import vec_dot

    def mul_mat(x, xt, y, yt, n, plan):
        return vec_dot(np.ascontiguousarray(x), xt, np.ascontiguousarray(y), yt, n, plan).T

    def fa(q, k, v, mask, scale, plan):
        return flash_attn_ext(q, k, v, mask, scale, algorithm="blocked", plan=plan, variant="x86")

    stand_ins = {"mul_mat": mul_mat, "convert": lambda x, s, d: quantize(x, d, variant="x86"),
                 "cpy": lambda src, dst: cpy(src, dst), "repeat": repeat, "concat": concat, "flash_attn_ext": fa}
    for name, fn in stand_ins.items():
        monkeypatch.setattr(kernels, name, fn)
    assert cases._mla_case() == ""
    # and the check can fail: a repeat that reads the wrong bytes (the latent part's start), a V taken from the
    # nope blocks (the executor's v node)
    with monkeypatch.context() as m:
        m.setattr(kernels, "repeat", lambda t, ne: repeat(Tensor(t.type, t.ne, t.nb, t.data, 0), ne))
        assert cases._mla_case().startswith("k_rope:")
    nope_v = lambda src, dst: cpy(Tensor(src.type, src.ne, src.nb, src.data, 0), dst)
    monkeypatch.setattr(kernels, "cpy", nope_v)
    assert cases._mla_case().startswith("v:")

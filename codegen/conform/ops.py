"""The conformance ops: per op, the spec's result and the loaded library's for the same input bytes.

Each ``op_*`` takes a case's ``params`` and its generated inputs and returns the two results as :class:`Output`
values, ``(spec, lib)``, or ``(spec, lib, remark)`` where the remark says how the library side was reached, or
raises :class:`Unsupported` with the reason when one side does not define the case.

The library's float orders are taken from the build it is, never from this CPU: the worker reads the features the
loaded library was compiled with (``ggml_cpu_has_*``) and its tuning, and takes from that
:class:`mlaref.reference.builds.GgmlBuild` the vec_dot plan (``ggml_generic``, ``ggml_x86_avx``, ``ggml_x86_avx2``,
``ggml_x86_avx2_znver3``, the AVX-512 plans), soft_max's vector ``expf``, the ``from_float`` variant of src1 and
whether rope's FMA contractions happen. Where upstream refuses what the spec defines and an exact rewrite exists,
the comparison goes through it and the remark names it (mul_mat with an f16 src1: upstream on the src1 widened to
f32, upstream facts §0.10).
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import time

import numpy as np

from mlaref.codegen.conform import peer as _peer
from mlaref.codegen.conform.mla import op_mla_block, op_mla_identity
from mlaref.codegen.conform.outputs import Unsupported, out_f32, out_rows, out_tensor, spec_call
from mlaref.reference import dequantize, get_type, quantize
from mlaref.reference.ops import cast, get_rows, repeat, rope, soft_max
from mlaref.reference.ops.concat import Concat_253, Concat_ggml015, Concat_ggml025
from mlaref.reference.ops.flash_attn_ext import flash_attn_ext, upstream_splits_kv
from mlaref.reference.ops.mul_mat import VEC_DOT_TYPE, mul_mat
from mlaref.reference.ops.mul_mat_iqk import mul_mat_ik2026
from mlaref.reference.ops.vec_dot import supported_pairs, vec_dot
from mlaref.reference.plan import get_plan


# the pieces every op module shares (outputs.py), under this module's old names
_out_f32, _out_tensor, _out_rows, _spec_call = out_f32, out_tensor, out_rows, spec_call


def P():
    """The functions of the library this worker checks (:mod:`mlaref.codegen.conform.peer`)."""
    return _peer.module()


def _is_ik() -> bool:
    """Whether the library checked is the ik_llama.cpp snapshot (ik-llama-cpp-python 0.1.5), whose mul_mat and
    flash attention the spec models as ``mul_mat_ik2026`` and ``algorithm="iqk2026"`` (docs/facts/ik-snapshot*.md)."""
    return P().name == "ik-llama-cpp-python"


def _check_ik_build() -> None:
    """The ik snapshot models are of its AVX2 build without AVX-512 / VNNI; any other build is not modelled."""
    b = P().build()
    if not b.has("avx2", "fma", "f16c") or b.has("avx512f") or b.has("avx512_vnni"):
        raise Unsupported(f"the spec models ik-llama-cpp-python 0.1.5's AVX2 build (no AVX-512, no VNNI); this "
                          f"build is {b.name} ({' '.join(sorted(b.features)) or 'baseline'})")


def _ik_variant(t: str, variant: str, default: str) -> str:
    """The spec's quantize variant of the ik snapshot's routine ``variant`` (ref / x86 / model) for type ``t``: the
    snapshot's own (``ik2026_*``, reference/types/_ik2026.py) where it differs from upstream's, else ``default``."""
    mine = f"ik2026_{variant}"
    return mine if mine in get_type(t).ik2026_variants else default


def _check_lib_type(t: str) -> None:
    if not P().has_type(t):
        if P().name.startswith("ik-"):
            raise Unsupported(f"{P().name} has no type {t}")
        raise Unsupported(f"upstream ggml has no type {t} (an ik_llama.cpp layout)")


# -- the loaded library's build: its float orders, never this CPU's ---------------------------------------------------

def _peer_plan() -> str:
    """The vec_dot plan of the library this worker loaded (``ggml_peer.build().vec_dot_plan``: from the features
    it was compiled with and its tuning, mlaref.reference.builds); a build whose order is not modelled makes the
    case ``unsupported`` with the reason, never a comparison against a guessed order."""
    try:
        return P().build().vec_dot_plan
    except LookupError as exc:
        raise Unsupported(str(exc)) from None


def _peer_build():
    """The :class:`~mlaref.reference.builds.GgmlBuild` of the library this worker loaded."""
    return P().build()


def _peer_simd() -> str:
    """The vector ``expf`` variant of the library this worker loaded (``GgmlBuild.simd``)."""
    return _peer_build().simd


def _src1_variant(weight_type: str) -> str:
    """The from_float variant the loaded build converts src1 (or Q) rows with: that of the vec_dot type."""
    return _peer_build().from_float(VEC_DOT_TYPE.get(weight_type, weight_type))


# -- the ops --------------------------------------------------------------------------------------------------------

def op_quantize(p, inp):
    """quantize rows: variant ref = type_traits.from_float_ref, x86 = CPU type_traits.from_float,
    model = ggml_quantize_chunk (with the imatrix input if the case has one)."""
    t, variant, x = p["type"], p["variant"], inp["x"]
    imatrix = inp.get("imatrix")
    if variant == "iqk" and not _is_ik():
        raise Unsupported("variant iqk is ik_llama.cpp@676f0e71b's IQK from_float; upstream ggml has none "
                          "(its CPU from_float is variant x86)")
    _check_lib_type(t)
    if variant == "iqk":  # the ik snapshot's CPU from_float of an IQK type
        if not P().has_trait(t, "from_float"):
            raise Unsupported(f"{P().name}: the CPU type_traits[{t}].from_float is NULL")
        spec = _spec_call(quantize, x, t, variant="iqk")
        return _out_rows(t, spec, x.shape[1]), _out_rows(t, P().from_float(t, x), x.shape[1])
    # "x86" is the CPU back-end's from_float: in a build without AVX / F16C that is the reference routine
    spec_variant = _peer_build().from_float(t) if variant == "x86" else variant
    if _is_ik():
        spec_variant = _ik_variant(t, variant, spec_variant)
    spec = _spec_call(quantize, x, t, variant=spec_variant, imatrix=imatrix)
    if variant == "ref":
        if P().has_trait(t, "from_float_ref"):
            lib = P().from_float_ref(t, x)
        elif t == "q8_K" and hasattr(P(), "quantize_row_symbol"):
            lib = P().quantize_row_symbol("quantize_row_q8_K_ref", t, x)  # traits entry is NULL upstream
        else:
            raise Unsupported(f"{P().name}: type_traits[{t}].from_float_ref is NULL")
    elif variant == "x86":
        if not P().has_trait(t, "from_float"):
            raise Unsupported(f"{P().name}: the CPU type_traits[{t}].from_float is NULL")
        lib = P().from_float(t, x)
    else:
        lib = P().quantize_chunk(t, x, imatrix)
    return _out_rows(t, spec, x.shape[1]), _out_rows(t, lib, x.shape[1])


def op_dequantize(p, inp):
    """dequantize rows: type_traits.to_float (the exported dequantize_row_<t> where the traits entry is NULL)."""
    t, data, n = p["type"], inp["data"], p["n"]
    _check_lib_type(t)
    spec = _spec_call(dequantize, data, t)
    if P().has_trait(t, "to_float"):
        lib = P().to_float(t, data, n)
    else:
        try:
            if not hasattr(P(), "dequantize_row_symbol"):
                raise NotImplementedError
            lib = P().dequantize_row_symbol(f"dequantize_row_{t}", data, n)
        except NotImplementedError:
            raise Unsupported(f"{P().name}: type_traits[{t}].to_float is NULL and no dequantize_row_{t} is "
                              "exported") from None
    return _out_f32(spec), _out_f32(lib)


def op_vec_dot(p, inp):
    """CPU type_traits[x].vec_dot of every x row with every y row (y of x's vec_dot_type), n values each."""
    xt, yt, n, x, y = p["x_type"], p["y_type"], p["n"], inp["x"], inp["y"]
    if f"{xt}.{yt}" not in supported_pairs():
        raise Unsupported(f"the spec has no vec_dot order for {xt}.{yt}")
    if P().vec_dot_type(xt) != yt:
        raise Unsupported(f"{P().name}'s CPU vec_dot of {xt} takes {P().vec_dot_type(xt)} rows, not {yt} "
                          "(its type traits' vec_dot_type)")
    spec = vec_dot(x, xt, y, yt, n, p.get("plan") or _peer_plan())
    lib = np.array([[P().vec_dot(xt, x[i], y[j], n) for j in range(y.shape[0])] for i in range(x.shape[0])],
                   np.float32)
    return _out_f32(spec), _out_f32(lib)


def _maybe_transposed(t, p):
    return t.transpose() if p.get("src_transposed") else t


def op_cpy(p, inp):
    """ggml_cpy(src, new contiguous tensor of dst_type and src's shape) (= ggml_cast)."""
    src = _maybe_transposed(inp["src"], p)
    dt = p["dst_type"]
    kw = {}
    if _is_ik() and src.type in ("f32", "f16", "bf16") and dt not in ("f32", "f16", "bf16"):
        kw["variant"] = _ik_variant(dt, "x86", "x86" if "x86" in get_type(dt).variants else "ref")
    spec = _spec_call(cast, src, dt, **kw)
    return _out_tensor(spec), _out_tensor(P().cast(src, p["dst_type"], n_threads=p.get("n_threads", 1)))


def _ggml_version() -> str:
    """``"0.15.3"`` / ``"0.25.3"`` for upstream ggml as vendored by the peer, ``"ik"`` for the ik snapshot."""
    if _is_ik():
        return "ik"
    rec = P().build_record() if hasattr(P(), "build_record") else {}
    return "0.25.3" if "0.25.3" in str(rec.get("ggml", "")) else "0.15.3"


def _concat_version(t: str):
    """The spec's concat class for the library's version (reference/ops/concat.py). Against ggml 0.15.3 block
    types are compared with the row semantics the fix adopted (``Concat_ggml025``), so finding F1 shows as a
    mismatch or abort, never as a case nobody ran."""
    v = _ggml_version()
    if v == "ik":
        return Concat_253
    if v == "0.25.3":
        return Concat_ggml025
    return Concat_ggml015 if t in ("f32", "i32", "f16", "bf16") else Concat_ggml025


def op_concat(p, inp):
    spec = _spec_call(_concat_version(inp["a"].type).eval, inp["a"], inp["b"], p["dim"])
    return _out_tensor(spec), _out_tensor(P().concat(inp["a"], inp["b"], p["dim"], n_threads=p.get("n_threads", 1)))


def op_repeat(p, inp):
    spec = _spec_call(repeat, inp["a"], tuple(p["ne"]))
    return _out_tensor(spec), _out_tensor(P().repeat(inp["a"], tuple(p["ne"])))


def op_get_rows(p, inp):
    spec = _spec_call(get_rows, inp["a"], inp["rows"])
    return _out_tensor(spec), _out_tensor(P().get_rows(inp["a"], inp["rows"]))


# ggml 0.25.3 (llama-cpp-python 0.3.36) computes mul_mat of these weight types with at least 8 src1 rows in its
# tiled K-quant kernel (ggml-cpu/tiled/tiled.cpp: ggml_tiled_supported, ggml_tiled_min_batch; on unless
# GGML_CPU_TILED_MM=0): upstream facts, "ggml 0.25.3's tiled mul_mat".
TILED_KQUANT_TYPES = ("q2_K", "q3_K", "q4_K", "q5_K", "q6_K", "iq4_xs", "iq2_xxs", "iq2_xs", "iq2_s", "iq3_xxs",
                      "iq3_s", "iq1_s", "iq1_m")
_NOT_MODELLED = {"expect": "nmse", "bound": 5e-4}  # test-backend-ops' mul_mat bound


def _tiled_kquant(a, b) -> str:
    """Why the library's mul_mat takes a path the spec does not model ('' where it takes the modelled one)."""
    rec = P().build_record() if hasattr(P(), "build_record") else {}
    if "0.25.3" not in str(rec.get("ggml", "")) or a.type not in TILED_KQUANT_TYPES or b.ne[1] < 8:
        return ""
    env = os.environ.get("GGML_CPU_TILED_MM")  # the worker's environment is the library's
    m = re.match(r"\s*[+-]?\d+", env or "")
    if env is not None and (not m or int(m.group()) == 0):  # ggml: enabled = env == NULL || atoi(env) != 0
        return ""
    return (f"ggml 0.25.3 runs {a.type} x {b.ne[1]} src1 rows in its tiled K-quant kernel (ggml-cpu/tiled/"
            "tiled.cpp, >= 8 rows; GGML_CPU_TILED_MM=0 turns it off), an order the spec does not model: compared "
            "within the NMSE bound; with GGML_CPU_TILED_MM=0 the stock path is bit-exact")


def op_mul_mat(p, inp):
    """ggml_mul_mat(a, b): the spec's MulMat_253 with the vec_dot plan of this build (``plan``) and src1 converted
    by the x86 ``from_float``; cases upstream's CPU back-end refuses (its ``supports_op``) are not run."""
    a, b = inp["a"], inp["b"]
    nth = p.get("n_threads", 1)
    if _is_ik():
        _check_ik_build()
        spec = _out_tensor(_spec_call(mul_mat_ik2026, a, b, n_threads=nth))
        return spec, _out_tensor(P().mul_mat(a, b, n_threads=nth)), "the ik snapshot's paths: mul_mat_ik2026"
    if _peer_build().mul_mat_modelled:
        raise Unsupported(_peer_build().mul_mat_modelled)
    spec = _out_tensor(_spec_call(mul_mat, a, b, plan=p.get("plan") or _peer_plan(), variant=_src1_variant(a.type)))
    tiled = _tiled_kquant(a, b)
    if P().mul_mat_supported(a, b):
        lib = _out_tensor(P().mul_mat(a, b, n_threads=p.get("n_threads", 1)))
        return (spec, lib) if not tiled else (spec, lib, tiled, _NOT_MODELLED)
    vdt = P().vec_dot_type(a.type)
    why = (f"upstream's CPU back-end refuses an {b.type} src1 (supports_op: f32 or the vec_dot type {vdt}); "
           "ik_llama.cpp@676f0e71b converts any src1 row with to_float + from_float (PR #253, iqk_quantize_any)")
    if b.type not in ("f16", "bf16"):
        raise Unsupported(why)
    # to_float of f16/bf16 is exact, so #253's result must equal upstream's on src1 widened to f32
    # (upstream facts §0.10).
    lib = P().mul_mat(a, cast(b, "f32"), n_threads=p.get("n_threads", 1))
    how = f"{why}; compared with upstream on src1 widened to f32 (exact), upstream facts §0.10"
    return (spec, _out_tensor(lib), how) if not tiled else (spec, _out_tensor(lib), f"{how}; {tiled}", _NOT_MODELLED)


def op_soft_max(p, inp):
    mask = inp.get("mask")
    spec = _spec_call(soft_max, inp["a"], mask, p["scale"], p.get("max_bias", 0.0),
                      simd=p.get("simd") or _peer_simd())
    lib = P().soft_max_ext(inp["a"], mask, p["scale"], p.get("max_bias", 0.0), n_threads=p.get("n_threads", 1))
    return _out_tensor(spec), _out_tensor(lib)


_ROPE_ARGS = ("n_dims", "mode", "n_ctx_orig", "freq_base", "freq_scale", "ext_factor", "attn_factor", "beta_fast",
              "beta_slow")


def op_rope(p, inp):
    args = [p[k] for k in _ROPE_ARGS]
    spec = _spec_call(rope, inp["a"], inp["pos"], *args, fma=_peer_build().fma)
    return _out_tensor(spec), _out_tensor(P().rope_ext(inp["a"], inp["pos"], *args,
                                                        n_threads=p.get("n_threads", 1)))


def _upstream_fa_algorithm(q, k, v, plan) -> str:
    """The path upstream's ``ggml_compute_forward_flash_attn_ext_f16`` takes (ggml-cpu/ops.cpp@ggml 0.15.3):
    ``tiled`` for an f32 q with f16 or f32 K/V of one type, at least ``GGML_FA_TILE_Q`` = 64 query rows, and Dv
    a multiple of the build's f32 vector width (``GGML_F32_EPR``: the lanes of the plan's f32 dot; no condition
    without SIMD); else the one-chunk path, ``generic``."""
    epr = get_plan(plan).for_pair("f32.f32").lanes
    tiled = (q.type == "f32" and k.type == v.type and k.type in ("f16", "f32") and q.ne[1] >= 64
             and v.ne[0] % epr == 0)
    return "tiled" if tiled else "generic"


def op_flash_attn_ext(p, inp):
    q, k, v, mask = inp["q"], inp["k"], inp["v"], inp.get("mask")
    nth = p.get("n_threads", 1)
    if _is_ik():
        _check_ik_build()
        spec = _spec_call(flash_attn_ext, q, k, v, mask, p["scale"], algorithm="iqk2026", n_threads=nth)
        return _out_tensor(spec), _out_tensor(P().flash_attn_ext(q, k, v, mask, p["scale"], n_threads=nth)), \
            "the ik snapshot's iqk flash attention: algorithm='iqk2026'"
    plan = p.get("plan") or _peer_plan()
    algorithm = p.get("algorithm") or _upstream_fa_algorithm(q, k, v, plan)
    # one query row over >= 512 f16/f32 KV rows: upstream splits the KV rows over its threads and merges
    kv_split = p.get("n_threads", 1) if upstream_splits_kv(q, k, v) and algorithm == "generic" else None
    spec = _spec_call(flash_attn_ext, q, k, v, mask, p["scale"], algorithm=algorithm, plan=plan,
                      variant=_src1_variant(k.type), kv_split=kv_split)
    lib = P().flash_attn_ext(q, k, v, mask, p["scale"], n_threads=p.get("n_threads", 1))
    return _out_tensor(spec), _out_tensor(lib)


def op_selftest_abort(p, inp):
    """Test-only: kill the worker the way a failing GGML_ASSERT does (libc ``abort()``, or raise ``signal``)."""
    sig = p.get("signal", "SIGABRT")
    if sig == "SIGABRT":
        ctypes.CDLL(None).abort()
    if sig == "hang":
        time.sleep(3600)
    os.kill(os.getpid(), getattr(signal, sig))
    raise RuntimeError("unreachable")


OPS = {"quantize": op_quantize, "dequantize": op_dequantize, "vec_dot": op_vec_dot, "cpy": op_cpy,
       "concat": op_concat, "repeat": op_repeat, "get_rows": op_get_rows, "mul_mat": op_mul_mat,
       "soft_max": op_soft_max, "rope": op_rope, "flash_attn_ext": op_flash_attn_ext,
       "mla_block": op_mla_block, "mla_identity": op_mla_identity, "selftest_abort": op_selftest_abort}
TEST_ONLY_OPS = ("selftest_abort",)

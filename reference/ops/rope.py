"""rope, mode 0 (NORM) with YaRN: rotate adjacent pairs of each row by position-dependent angles (``ggml_rope_ext``).

``a`` is f32 ``[ne0, ne1, ne2, ne3]`` (rows packed); ``pos`` is i32 ``[ne2]``: row (i1, i2, i3) uses position
``p = pos[i2]``. Only the first ``n_dims`` values of a row rotate (pairs ``(2k, 2k+1)``); the rest are copied.
Reproduces ``ggml_compute_forward_rope_flt`` / ``ggml_rope_cache_init`` / ``rope_yarn`` (ggml-cpu/ops.cpp, the same
math as ``ggml_compute_forward_rope_f32`` at ggml.c@676f0e71b), all in float32::

    theta_scale = powf(freq_base, -2.0f / n_dims)                      (libm powf)
    corr_dim(b) = n_dims * logf(n_ctx_orig / (b * 2 * (float)M_PI)) / (2 * logf(freq_base))
    c0 = max(0, floorf(corr_dim(beta_fast)));   c1 = min(n_dims - 1, ceilf(corr_dim(beta_slow)))
    theta_0 = (float)p;   theta_{k+1} = theta_k * theta_scale          (repeated multiplication, not powf)
    pair k: theta_interp = freq_scale * theta_k
            if ext_factor != 0:
                ramp  = 1 - min(1, max(0, ((float)k - c0) / max(0.001f, c1 - c0)))
                mix   = ramp * ext_factor
                theta = fma(theta_interp, 1 - mix, theta_k * mix)              (*)
                m     = attn_factor * fma(0.1f, logf(1.0f / freq_scale), 1.0f) (*)
            else: theta = theta_interp; m = attn_factor
            c = cosf(theta) * m;  s = sinf(theta) * m                     (libm cosf, sinf)
            y0 = fma(x0, c, -(x1 * s));   y1 = fma(x0, s, x1 * c)           (*)

(*) ggml's CPU code is compiled in GNU mode, where GCC contracts ``a*b + c*d`` into one FMA (the second
product is rounded, the first is fused). Running upstream ggml (ggml-python, x86-64 with FMA) settles two of
the marked lines: with both the ``theta`` and the output contractions the result is bit-exact; without the
``theta`` one about 23 % of the outputs differ, without the output one 0.7 % (512 tokens x 16 heads, YaRN
parameters of upstream facts §1.3; tests/reference/test_ops_math.py). The ``m`` line gives the same float either way for
``freq_scale = 1/40``, so its contraction is modelled but unconfirmed. ``fma=False`` gives the uncontracted
formulas of a ``-ffp-contract=off`` build. ik_llama.cpp@676f0e71b (C, ``-std=gnu11 -march=native``) is assumed
to contract the same way **[unverified]**.

The transcendentals come from the platform's libm through :mod:`mlaref.reference.libm`: NumPy's float32 ``cos`` /
``sin`` are SIMD implementations that differ from glibc's ``cosf``/``sinf`` in the last bit for about 16 % of
angles drawn as |N(0, 1000)| on this machine (NumPy 2, AVX-512), so they cannot be used. The result is
bit-exact against a ggml that calls the same libm (the ggml-python peer here uses the system glibc). Other modes
(NEOX, multi-rope, vision) are not modelled and raise ValueError.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math

import numpy as np

from mlaref.reference import libm as libm
from mlaref.reference import fp
from mlaref.reference.ops._common import check_rows_contiguous, check_tensor
from mlaref.reference.tensor import Tensor

__all__ = ["rope", "yarn_corr_dims", "rope_cache"]


@functools.cache
def _powf():
    fn = ctypes.CDLL(ctypes.util.find_library("m")).powf
    fn.restype = ctypes.c_float
    fn.argtypes = [ctypes.c_float, ctypes.c_float]
    return fn


def _f(x) -> np.float32:
    return np.float32(x)


def yarn_corr_dims(n_dims: int, n_ctx_orig: int, freq_base, beta_fast, beta_slow) -> tuple[np.float32, np.float32]:
    """``ggml_rope_yarn_corr_dims``: the first and last pair index of the YaRN ramp, in float32."""
    two_pi = _f(2) * _f(math.pi)
    log_base = _f(libm.logf(_f(freq_base)))

    def corr(n_rot):
        arg = _f(_f(n_ctx_orig) / _f(_f(n_rot) * two_pi))
        return _f(_f(_f(n_dims) * _f(libm.logf(arg))) / _f(_f(2) * log_base))

    start = np.floor(corr(beta_fast)).astype(np.float32)
    end = np.ceil(corr(beta_slow)).astype(np.float32)
    return _f(max(_f(0), start)), _f(min(_f(n_dims - 1), end))


def rope_cache(positions, n_dims, n_ctx_orig, freq_base, freq_scale, ext_factor, attn_factor, beta_fast,
               beta_slow, fma=True):
    """cos and sin, float32 ``(len(positions), n_dims // 2)``, as ``ggml_rope_cache_init`` fills its cache."""
    freq_scale, ext_factor, attn_factor = _f(freq_scale), _f(ext_factor), _f(attn_factor)
    theta_scale = _f(_powf()(float(_f(freq_base)), float(_f(_f(-2.0) / _f(n_dims)))))
    c0, c1 = yarn_corr_dims(n_dims, n_ctx_orig, freq_base, beta_fast, beta_slow)
    mscale = attn_factor
    if ext_factor != 0:
        lg = libm.logf(_f(_f(1) / freq_scale))
        corr = fp.fmaf(_f(0.1), lg, _f(1)) if fma else _f(_f(1) + _f(_f(0.1) * lg))
        mscale = _f(mscale * _f(corr))
    theta = np.asarray(positions, dtype=np.int64).astype(np.float32)
    thetas = np.empty((theta.size, n_dims // 2), dtype=np.float32)
    for k in range(n_dims // 2):
        interp = (freq_scale * theta).astype(np.float32)
        if ext_factor != 0:
            y = _f(_f(_f(k) - c0) / max(_f(0.001), _f(c1 - c0)))
            ramp = _f(_f(1) - min(_f(1), max(_f(0), y)))
            mix = _f(ramp * ext_factor)
            if fma:
                thetas[:, k] = fp.fmaf(interp, _f(_f(1) - mix), (theta * mix).astype(np.float32))
            else:
                thetas[:, k] = (interp * _f(_f(1) - mix)).astype(np.float32) + (theta * mix).astype(np.float32)
        else:
            thetas[:, k] = interp
        theta = (theta * theta_scale).astype(np.float32)
    cos = (libm.cosf(thetas) * mscale).astype(np.float32)
    sin = (libm.sinf(thetas) * mscale).astype(np.float32)
    return cos, sin


def rope(a: Tensor, pos: Tensor, n_dims: int, mode: int = 0, n_ctx_orig: int = 0, freq_base: float = 10000.0,
         freq_scale: float = 1.0, ext_factor: float = 0.0, attn_factor: float = 1.0, beta_fast: float = 32.0,
         beta_slow: float = 1.0, *, fma: bool = True) -> Tensor:
    """``ggml_rope_ext(a, pos, NULL, n_dims, mode, n_ctx_orig, freq_base, freq_scale, ext_factor, attn_factor,
    beta_fast, beta_slow)`` for mode 0."""
    check_tensor("rope", "a", a, ("f32",))
    check_tensor("rope", "pos", pos, ("i32",))
    if mode != 0:
        raise ValueError(f"rope: only mode 0 (GGML_ROPE_TYPE_NORMAL) is modelled, got mode {mode}")
    if not isinstance(n_dims, (int, np.integer)) or n_dims <= 0 or n_dims % 2 or n_dims > a.ne[0]:
        raise ValueError(f"rope: n_dims must be a positive even number <= a.ne[0] = {a.ne[0]}, got {n_dims}")
    if pos.nelements() != a.ne[2] or pos.ne[0] != a.ne[2]:
        raise ValueError(f"rope: pos must be a vector of a.ne[2] = {a.ne[2]} positions, got ne {pos.ne}")
    if _f(freq_scale) == 0 or not np.isfinite(_f(freq_scale)):
        raise ValueError(f"rope: freq_scale must be finite and non-zero, got {freq_scale}")
    check_rows_contiguous("rope", "a", a)
    p = pos.to_numpy().reshape(-1)
    cos, sin = rope_cache(p, n_dims, n_ctx_orig, freq_base, freq_scale, ext_factor, attn_factor, beta_fast,
                          beta_slow, fma)
    x = a.to_numpy()  # (ne3, ne2, ne1, ne0)
    c = cos[None, :, None, :]
    s = sin[None, :, None, :]
    x0 = x[..., 0:n_dims:2]
    x1 = x[..., 1:n_dims:2]
    y = x.copy()
    if fma:
        y[..., 0:n_dims:2] = fp.fmaf(x0, c, -(x1 * s).astype(np.float32))
        y[..., 1:n_dims:2] = fp.fmaf(x0, s, (x1 * c).astype(np.float32))
    else:
        y[..., 0:n_dims:2] = (x0 * c).astype(np.float32) - (x1 * s).astype(np.float32)
        y[..., 1:n_dims:2] = (x0 * s).astype(np.float32) + (x1 * c).astype(np.float32)
    dst = Tensor.empty("f32", a.ne)
    dst.storage()[...] = y
    return dst

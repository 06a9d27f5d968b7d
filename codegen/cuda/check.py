"""``mlaref cuda-check --out DIR``: build every CUDA kernel, run each against the reference, time them; JSON + log.

Steps, each recorded in ``DIR/cuda-check.json`` and logged to ``DIR/cuda-check.log`` (and stdout):

1. **build**: ``nvcc`` once per family (:mod:`.build`), in parallel; the nvcc release and each library's time.
   Without nvcc the check stops here (exit 1).
2. **GPU probe** (:func:`.build.gpu_status`): without a GPU the runs and timings are skipped with that reason and
   the check exits 0 (the build step is what a machine without a GPU can check).
3. **correctness**: every case of :mod:`.cases` (bit-exact bytes, guard bytes); exit 1 if one fails.
4. **timings** (medians of ``--repeats`` runs of ``iters`` launches between CUDA events; host transfers excluded):
   the row copies of MLA's K (repeat of the rope part over heads, concat of k_nope and k_rope) against
   ``cudaMemcpy`` device-to-device bandwidth (bytes read + written per second, and their ratio); ``convert``;
   ``mul_mat`` against ``torch.matmul`` of the same weights in f16 (when torch is there), as TFLOP/s, weight
   GB/s, and fractions of the device's measured peaks (a large f16 ``torch.matmul`` and the memcpy bandwidth);
   ``flash_attn_ext`` (f16 and q8_0 K/V) on the ggml-cuda peer probe's FlashMLA-2 shapes against torch's f16
   ``scaled_dot_product_attention``, as TFLOP/s and a fraction of the f16 peak.

It needs only NumPy and Jinja2 (and torch for the torch baseline): no cffi, gguf or platformdirs.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import statistics
import sys
import time

import numpy as np

from mlaref.codegen import catalog as _catalog
from mlaref.codegen.cuda import build as _cbuild
from mlaref.codegen.cuda import cases as _cases
from mlaref.codegen.cuda import kernels as _k
from mlaref.reference import get_type
from mlaref.reference.tensor import Tensor

__all__ = ["configure", "run", "build_step", "correctness_step", "timing_step"]


class _Log:
    def __init__(self, path: pathlib.Path | None):
        self.fh = open(path, "w") if path else None

    def __call__(self, msg: str) -> None:
        print(msg, flush=True)
        if self.fh:
            self.fh.write(msg + "\n")
            self.fh.flush()


def build_step(log, jobs: int) -> dict:
    exe = _cbuild.nvcc()
    out = {"nvcc": exe, "nvcc_version": _cbuild.nvcc_version(), "flags": list(_cbuild.NVCC_FLAGS), "libraries": {}}
    if exe is None:
        log("build: nvcc not found; nothing to build")
        out["ok"] = False
        return out
    log(f"build: {out['nvcc_version']} ({exe}), {jobs} jobs, flags {' '.join(_cbuild.NVCC_FLAGS)}")
    t0 = time.perf_counter()
    ok = True
    from concurrent.futures import ThreadPoolExecutor

    def one(fam):
        t = time.perf_counter()
        try:
            path = _cbuild.build(fam)
            return fam, {"ok": True, "path": str(path), "seconds": round(time.perf_counter() - t, 2)}
        except _cbuild.BuildError as exc:
            return fam, {"ok": False, "error": str(exc)[-4000:]}

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for fam, res in pool.map(one, ("runtime",) + _cbuild.families()):
            out["libraries"][fam] = res
            ok &= res["ok"]
            log(f"  {fam:14s} " + (f"ok ({res['seconds']} s)" if res["ok"] else "FAILED\n" + res["error"]))
    out["ok"], out["seconds"] = ok, round(time.perf_counter() - t0, 2)
    return out


def correctness_step(log) -> dict:
    results = []
    for name, label, fn in _cases.cases():
        try:
            detail = fn()
        except Exception as exc:  # a failing case is a result to record, not the end of the check
            detail = f"{type(exc).__name__}: {exc}"
        results.append({"kernel": name, "case": label, "ok": not detail, "detail": detail})
        log(f"  {'ok  ' if not detail else 'FAIL'} {name} [{label}]" + (f": {detail}" if detail else ""))
    n_ok = sum(r["ok"] for r in results)
    log(f"correctness: {n_ok} of {len(results)} cases bit-exact")
    return {"cases": results, "passed": n_ok, "total": len(results)}


def _median_ms(fn, repeats: int) -> float:
    return statistics.median(fn() for _ in range(repeats))


def _torch_timed(torch, f, iters: int, repeats: int) -> tuple[float, float]:
    """(median ms of one ``f()`` over ``repeats`` timings of ``iters`` calls between CUDA events, after one call;
    the device's f16 TFLOP/s measured the same way on an 8192^3 torch matmul)."""
    def timed(g, n):
        g()
        torch.cuda.synchronize()
        t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t0.record()
        for _ in range(n):
            g()
        t1.record()
        torch.cuda.synchronize()
        return t0.elapsed_time(t1) / n
    ms = _median_ms(lambda: timed(f, iters), repeats)
    big = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
    peak_ms = _median_ms(lambda: timed(lambda: big @ big, 10), repeats)
    return ms, 2 * 8192**3 / (peak_ms * 1e-3) / 1e12


def _memcpy_gbs(nbytes: int, iters: int, repeats: int) -> float:
    lib = _cbuild.runtime()
    ms = np.zeros(1, np.float32)

    def once():
        rc = lib.fn("mlaref_cuda_memcpy_d2d_timed")(nbytes, iters, ms.ctypes.data)
        if rc:
            raise _k.CudaError(lib.error(rc))
        return float(ms[0]) / iters
    return 2 * nbytes / (_median_ms(once, repeats) * 1e-3) / 1e9


def _f16_tensor(rng, ne) -> Tensor:
    t = Tensor.empty("f16", ne)
    t.data[...] = rng.integers(0, 0x3C00, t.data.size // 2, dtype=np.uint16).view(np.uint8)  # finite, |v| < 1
    return t


def _torch_matmul(x_f16: np.ndarray, y_f16: np.ndarray, iters: int, repeats: int):
    """(ms per f16 torch.matmul of these operands, measured f16 TFLOP/s peak) or (None, why not)."""
    try:
        import torch
    except ImportError as exc:
        return None, f"torch not importable ({exc})"
    a = torch.from_numpy(x_f16.view(np.float16)).cuda()
    b = torch.from_numpy(y_f16.view(np.float16)).cuda().T.contiguous()

    return _torch_timed(torch, lambda: a @ b, iters, repeats)


def timing_step(log, repeats: int, n_kv: int, heads: int) -> dict:
    rng = np.random.default_rng(1)
    out = {"note": "medians of per-launch times between CUDA events; host<->device transfers excluded"}
    bw = _memcpy_gbs(1 << 28, 20, repeats)
    out["memcpy_d2d_GBps"] = round(bw, 1)
    log(f"timing: cudaMemcpy device-to-device {bw:.0f} GB/s (bytes read + written)")
    rope = _f16_tensor(rng, (64, n_kv, 1))
    k_rope = Tensor.empty("f16", (64, n_kv, heads))
    nope = _f16_tensor(rng, (128, n_kv, heads))
    k = Tensor.empty("f16", (192, n_kv, heads))
    rows = {}
    for label, fn, moved in (
        (f"repeat f16 rope [64, {n_kv}, 1] -> {heads} heads", lambda: _k.repeat(rope, k_rope.ne, out=k_rope, iters=10)[1],
         k_rope.nbytes() + rope.nbytes()),
        (f"concat f16 [128 + 64, {n_kv}, {heads}] (MLA K)", lambda: _k.concat(nope, k_rope, 0, out=k, iters=10)[1],
         k.nbytes() * 2),
    ):
        ms = _median_ms(fn, repeats)
        gbs = moved / (ms * 1e-3) / 1e9
        rows[label] = {"ms": round(ms, 4), "GBps": round(gbs, 1), "of_memcpy": round(gbs / bw, 3)}
        log(f"  {label}: {ms:.3f} ms, {gbs:.0f} GB/s = {gbs / bw:.2f} x memcpy")
    out["row_copies"] = rows
    conv = {}
    x = _cases.values(rng, (512, 4096))
    for dst in _catalog.CUDA_CONVERT:
        ms = _median_ms(lambda: _k.convert(x, "f32", dst, iters=10)[1], repeats)
        conv[f"f32 -> {dst} [512 x 4096]"] = {"ms": round(ms, 4)}
        log(f"  convert f32 -> {dst} [512 x 4096]: {ms:.3f} ms")
    out["convert"] = conv
    out["mul_mat"] = _mul_mat_timing(log, rng, repeats, bw)
    try:  # a failing flash-attention timing is recorded; the JSON of the run is still written
        out["flash_attn_ext"] = _fa_timing(log, rng, repeats)
    except Exception as exc:  # noqa: BLE001 - any failure is a result to keep
        out["flash_attn_ext"] = {"error": f"{type(exc).__name__}: {exc}"}
        log(f"  flash_attn_ext timing FAILED: {type(exc).__name__}: {exc}")
    return out


# flash attention timing shapes (Dk, Dv, n_head, n_head_kv, n_q, n_kv): the ggml-cuda peer probe's FlashMLA-2 cases
# (codegen/peers/cuda.py default_cases: 16 heads x 512 queries; 192/128 with a K/V head per head (#253) and on 2 K/V
# heads (what ggml-cuda supports, upstream facts §10.4); 576/512 on one)
FA_TIMING_SHAPES = ((192, 128, 16, 16, 512, 4096), (192, 128, 16, 2, 512, 4096), (576, 512, 16, 1, 512, 4096))


def _torch_sdpa(q, k, v, scale: float, iters: int, repeats: int):
    """(ms per torch scaled_dot_product_attention in f16 on these values, f16 peak TFLOP/s) or (None, why not).
    q (H, n_q, Dk), k (Hkv, n_kv, Dk), v (Hkv, n_kv, Dv) float32 values; K/V heads expanded for GQA."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError as exc:
        return None, f"torch not importable ({exc})"
    rep = q.shape[0] // k.shape[0]
    tq = torch.from_numpy(q).cuda().half()[None]
    tk = torch.from_numpy(k).cuda().half().repeat_interleave(rep, 0)[None]
    tv = torch.from_numpy(v).cuda().half().repeat_interleave(rep, 0)[None]

    return _torch_timed(torch, lambda: F.scaled_dot_product_attention(tq, tk, tv, scale=scale), iters, repeats)


def _fa_timing(log, rng, repeats: int) -> dict:
    """Our flash attention (no mask, as the peer probe) per K/V type against torch's f16 SDPA on the same values:
    ms, TFLOP/s (2 n_q n_kv H (Dk + Dv) flops), the ratio and the fraction of the f16 matmul peak."""
    res = {}
    for dk, dv, h, hkv, nq, nkv in FA_TIMING_SHAPES:
        qv = _cases.values(rng, (h, nq, dk), 0.25)
        kv = _cases.values(rng, (hkv, nkv, dk), 0.25)
        vv = kv[..., :dv].copy() if dv == 512 else _cases.values(rng, (hkv, nkv, dv))
        scale = float(1 / np.sqrt(dk))
        t_ms, peak = _torch_sdpa(qv, kv, vv, scale, 3, repeats)
        q = Tensor.from_bytes(qv.view(np.uint8).reshape(-1), "f32", (dk, nq, h))  # ggml's [Dk, n_q, H]
        flops = 2 * nq * nkv * h * (dk + dv)
        for t in _catalog.CUDA_FA_KV:
            k = Tensor.from_bytes(_cases.encode(kv.reshape(-1, dk), t).reshape(-1), t, (dk, nkv, hkv))
            v = Tensor.from_bytes(_cases.encode(vv.reshape(-1, dv), t).reshape(-1), t, (dv, nkv, hkv))
            ms = _median_ms(lambda: _k.flash_attn_ext(q, k, v, None, scale, iters=3)[1], repeats)
            tflops = flops / (ms * 1e-3) / 1e12
            row = {"ms": round(ms, 3), "TFLOPs": round(tflops, 3)}
            if t_ms is not None:
                row |= {"torch_sdpa_f16_ms": round(t_ms, 3), "vs_torch_f16": round(t_ms / ms, 4),
                        "TFLOPs_of_f16_peak": round(tflops / peak, 4), "f16_peak_TFLOPs": round(peak, 1)}
            label = f"{t} K/V Dk {dk} Dv {dv}, {h} heads on {hkv}, n_q {nq}, n_kv {nkv}"
            res[label] = row
            log(f"  flash_attn_ext {label}: {ms:.2f} ms, {tflops:.2f} TFLOP/s"
                + (f"; torch SDPA f16 {t_ms:.2f} ms ({t_ms / ms:.3f}x ours), {tflops / peak:.4f} of the f16 peak"
                   if t_ms is not None else f"; {peak}"))
    return res


def _random_rows(rng, type_: str, rows: int, n: int) -> np.ndarray:
    """Rows of random valid blocks (the format's ``random_blocks``): timing needs no quantizer search."""
    fmt = get_type(type_)
    blocks = fmt.random_blocks(rng, rows * n // fmt.block_size)
    return np.ascontiguousarray(blocks).view(np.uint8).reshape(rows, -1)


def _mul_mat_timing(log, rng, repeats: int, bw: float) -> dict:
    res = {}
    m, kdim = 4096, 4096
    w = _cases.values(rng, (m, kdim), 0.05)
    w16 = _cases.encode(w, "f16")
    for n_y in (1, 16, 128):
        src1 = _cases.values(rng, (n_y, kdim))
        y16 = _cases.encode(src1, "f16")
        t_ms, peak = _torch_matmul(w16, y16, 20, repeats)
        for wt, vdt in _catalog.CUDA_MUL_MAT.items():
            xw = w16 if wt == "f16" else _random_rows(rng, wt, m, kdim)
            y = y16 if vdt == "f16" else _cases.encode(src1, vdt)
            ms = _median_ms(lambda: _k.mul_mat(xw, wt, y, vdt, kdim, iters=20)[1], repeats)
            tflops = 2 * m * n_y * kdim / (ms * 1e-3) / 1e12
            gbs = xw.nbytes / (ms * 1e-3) / 1e9
            row = {"ms": round(ms, 4), "TFLOPs": round(tflops, 3), "weight_GBps": round(gbs, 1),
                   "weight_GBps_of_memcpy": round(gbs / bw, 3)}
            if t_ms is not None:
                row |= {"torch_f16_ms": round(t_ms, 4), "vs_torch_f16": round(t_ms / ms, 3),
                        "TFLOPs_of_f16_peak": round(tflops / peak, 4), "f16_peak_TFLOPs": round(peak, 1)}
            label = f"{wt} [{m} x {kdim}] x {n_y} rows"
            res[label] = row
            log(f"  mul_mat {label}: {ms:.3f} ms, {tflops:.2f} TFLOP/s, weights {gbs:.0f} GB/s"
                + (f"; torch f16 {t_ms:.3f} ms ({t_ms / ms:.2f}x ours), peak {peak:.0f} TFLOP/s" if t_ms else
                   f"; {peak}"))
    return res


def configure(parser) -> None:
    parser.add_argument("--out", required=True, help="directory for cuda-check.json and cuda-check.log")
    parser.add_argument("--jobs", type=int, default=min(8, os.cpu_count() or 1), help="parallel nvcc processes")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median)")
    parser.add_argument("--n-kv", type=int, default=8192, help="KV length of the row-copy timings")
    parser.add_argument("--heads", type=int, default=128, help="heads of the row-copy timings")
    parser.add_argument("--no-timing", action="store_true", help="build and check correctness only")


def run(args) -> int:
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = _Log(out / "cuda-check.log")
    doc = {"python": sys.version.split()[0], "numpy": np.__version__, "host": platform.node(),
           "kernels": [s.name for s in _catalog.cuda_catalog()]}
    doc["build"] = build_step(log, args.jobs)
    status = _cbuild.gpu_status()
    doc["gpu_status"] = status
    rc = 0 if doc["build"]["ok"] else 1
    if rc == 0 and not _cbuild.gpu_present():
        log(f"{status}; the kernels were built (compile-only), runs and timings skipped")
    elif rc == 0:
        doc["device"] = _device()
        log(f"device: {doc['device']}")
        doc["correctness"] = correctness_step(log)
        rc = 0 if doc["correctness"]["passed"] == doc["correctness"]["total"] else 1
        if not args.no_timing:
            doc["timing"] = timing_step(log, args.repeats, args.n_kv, args.heads)
    (out / "cuda-check.json").write_text(json.dumps(doc, indent=1) + "\n")
    log(f"wrote {out / 'cuda-check.json'}; exit {rc}")
    return rc


def _device() -> dict:
    import ctypes

    lib = _cbuild.runtime()
    name = ctypes.create_string_buffer(256)
    major, minor, mem = ctypes.c_int(), ctypes.c_int(), ctypes.c_int64()
    rc = lib.fn("mlaref_cuda_device_name")(name, 256, ctypes.byref(major), ctypes.byref(minor), ctypes.byref(mem))
    if rc:
        return {"error": lib.error(rc)}
    return {"name": name.value.decode(), "compute_capability": f"{major.value}.{minor.value}",
            "memory_GiB": round(mem.value / 2**30, 1)}

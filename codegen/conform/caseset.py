"""The specification's conformance case set: every op and type of the brief, its quick subset and the findings.

``codegen/conform/cases/`` holds the committed case files: ``default.json`` is :func:`default_cases` as written by
``mlaref conform --write-cases codegen/conform/cases/default.json`` (a test checks it is current), and each
``finding-*.json`` is the minimal reproducer of a finding in docs/conformance-findings.md (:func:`finding_cases`).
Every input's seed derives from the case id and the input's name, so adding a case changes no other case.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from mlaref.codegen.conform.case import Case
from mlaref.reference import registry
from mlaref.reference.ops.mul_mat import VEC_DOT_TYPE

CASES_DIR = Path(__file__).resolve().parent / "cases"

# -- upstream facts §1.3: DeepSeek-V2-Lite's rope / attention constants, in float32 ------------------------------------
KQ_SCALE = 0.11472137
FREQ_SCALE = float(np.float32(1.0) / np.float32(40.0))
ATTN_FACTOR = float(np.float32(1.0) / (np.float32(1.0) + np.float32(0.1) * np.float32(np.log(np.float32(40.0)))))
YARN = {"n_dims": 64, "mode": 0, "n_ctx_orig": 4096, "freq_base": 10000.0, "freq_scale": FREQ_SCALE,
        "ext_factor": 1.0, "attn_factor": ATTN_FACTOR, "beta_fast": 32.0, "beta_slow": 1.0}

_FINDING_CONCAT = {"kind": "finding", "text": "F1 in docs/conformance-findings.md: upstream's concat_any steps "
                                              "over elements with block strides for block types, so it reads and "
                                              "writes past the rows (fixed upstream in ggml-org/llama.cpp PR "
                                              "#25247, after this ggml-python's ggml 0.15.3)"}


_FINDING_DUP = {"kind": "finding", "text": "F2 in docs/conformance-findings.md: the ik_llama.cpp snapshot's "
                                            "dup_same_cont splits a contiguous same-type copy by elements but "
                                            "copies blocks, so a q8_0 -> q8_0 cpy reads and writes 32 times the "
                                            "tensor's bytes (the harness's guard bytes after the result catch it); "
                                            "with 2 threads the second copy lands far past it (the process hangs "
                                            "or crashes)"}


def finding_cases() -> list[Case]:
    """Minimal reproducers of the findings in docs/conformance-findings.md (codegen/conform/cases/finding-*.json)."""
    return [_mk("finding/F1/concat_q8_0_dim0_one_block_each", "concat", {"dim": 0},
                {"a": {"gen": "normal", "type": "q8_0", "shape": [1, 32]},
                 "b": {"gen": "normal", "type": "q8_0", "shape": [1, 32]}},
                note="ik_llama.cpp@676f0e71b (concat_any, PR #253) and the spec copy each row's bytes: dst = "
                     "[a's block, b's block]", known=_FINDING_CONCAT),
            _mk("finding/F2/cpy_q8_0_q8_0_one_thread", "cpy", {"dst_type": "q8_0", "n_threads": 1},
                {"src": {"gen": "normal", "type": "q8_0", "shape": [2, 64]}},
                note="upstream splits the copy by blocks (dup_same_cont, ggml-cpu/ops.cpp of ggml 0.15.3): "
                     "bit-exact there", known=_FINDING_DUP)]


def _kq_pad(n_q: int) -> int:
    """Mask rows for ``n_q`` queries: ik_llama.cpp's ggml_flash_attn_ext asserts ``mask->ne[1] >=
    GGML_PAD(n_q, GGML_KQ_MASK_PAD)`` with GGML_KQ_MASK_PAD = 16 (ggml/include/ggml.h, ggml/src/ggml.c of the
    ik-llama-cpp-python 0.1.5 sdist); upstream reads the first n_q rows of any taller mask."""
    return -(-n_q // 16) * 16


def _seed(case_id: str, name: str) -> int:
    return zlib.crc32(f"{case_id}/{name}".encode())


def _mk(case_id, op, params, inputs, **kw) -> Case:
    for name, spec in inputs.items():
        spec.setdefault("seed", _seed(case_id, name))
    return Case(case_id, op, params, inputs, **kw)


def _quantize_note(t: str, variant: str) -> str:
    if t == "q8_K":
        return ("upstream's CPU from_float of Q8_K is quantize_row_q8_K_ref (d = 1/iscale, may be negative); "
                "ik_llama.cpp@676f0e71b's IQK build uses iqk_quantize_row_q8_K (d = amax/127, ties to even): "
                "upstream facts §4d")
    if t in ("q8_0", "q8_1") and variant == "x86":
        return "x86 from_float: id = 127/amax and ties to even (ref: 1/d and roundf); same in ik_llama.cpp"
    return ""


def default_cases() -> list[Case]:
    """The specification's case set: small, deterministic, covering every op and type of the brief."""
    cases = []
    formats = registry()
    # quantize: every registered format x variant (model also with an imatrix where the format uses one)
    for t, fmt in sorted(formats.items()):
        n = 512
        for variant in fmt.variants:
            inputs = {"x": {"gen": "normal", "shape": [4, n], "scale": 1.0}}
            cases.append(_mk(f"quantize/{t}/{variant}", "quantize", {"type": t, "variant": variant}, inputs,
                             note=_quantize_note(t, variant)))
            if variant == "model" and fmt.takes_imatrix:
                inputs = {"x": {"gen": "normal", "shape": [4, n]},
                          "imatrix": {"gen": "uniform", "low": 0.05, "high": 2.0, "shape": [n]}}
                cases.append(_mk(f"quantize/{t}/model+imatrix", "quantize", {"type": t, "variant": "model"}, inputs))
    # q8 rounding ties: ref (roundf, ties away from zero) and x86 (127/amax, ties to even) must each match upstream
    for t in ("q8_0", "q8_1"):
        for variant in ("ref", "x86"):
            cases.append(_mk(f"quantize/{t}/{variant}/ties", "quantize", {"type": t, "variant": variant},
                             {"x": {"gen": "ties", "shape": [2, 256]}}, note=_quantize_note(t, variant)))
    # dequantize: every format, random blocks of the valid domain
    for t in sorted(formats):
        n = 512
        cases.append(_mk(f"dequantize/{t}", "dequantize", {"type": t, "n": n},
                         {"data": {"gen": "blocks", "type": t, "rows": 3, "n": n}}))
    # vec_dot: every pair upstream ggml's CPU traits define for the types the spec knows
    for xt in ("f32", "f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "iq4_nl", "q4_K", "q6_K"):
        yt = VEC_DOT_TYPE[xt]  # the registry's vec_dot type
        n = 512 if yt == "q8_K" else (100 if xt == "f32" else 288)  # 288 = 9 blocks: iq4_nl's scalar tail
        cases.append(_mk(
            f"vec_dot/{xt}.{yt}", "vec_dot", {"x_type": xt, "y_type": yt, "n": n},
            {"x": {"gen": "quantized", "type": xt, "variant": "ref", "shape": [3, n], "scale": 0.5},
             "y": {"gen": "quantized", "type": yt, "variant": "x86", "shape": [4, n]}},
            note="the vec_dot plan of the library's build (mlaref.reference.builds); ik_llama.cpp's x86 mul_mat uses "
                 "iqk kernels instead (upstream facts §4a)"))
    # cpy: the conversions of upstream facts §4d
    cpy_list = [("f32", "f16", False), ("f32", "f16", True), ("f32", "bf16", False), ("f32", "q8_0", False),
                ("f32", "q4_0", False), ("f32", "q5_1", False), ("f32", "iq4_nl", False), ("f32", "q4_K", False),
                ("f32", "q6_K", False), ("f16", "f32", False), ("bf16", "f32", False), ("f16", "bf16", False),
                ("bf16", "f16", False), ("f16", "q8_0", False), ("q8_0", "f32", False), ("q4_K", "f32", False),
                ("f32", "f32", True), ("q8_0", "q8_0", False), ("q8_0", "f16", False)]
    for st, dt, tr in cpy_list:
        shape = [3, 8, 256] if not tr else [2, 64, 32]
        cid = f"cpy/{st}->{dt}" + ("/transposed" if tr else "")
        note = ""
        if (st, dt) == ("f32", "q8_0"):
            note = "CPU from_float = quantize_row_q8_0 (x86 variant), not _ref: upstream facts §4d"
        if (st, dt) == ("q8_0", "f16"):
            note = "quant -> f32 only (dup_q); ik_llama.cpp@676f0e71b and upstream both abort otherwise"
        known = {"kind": "upstream-lacks", "text": "upstream ggml_compute_forward_dup aborts for a quantized "
                                                   "src unless dst is f32 (as ik_llama.cpp)"} \
            if (st, dt) == ("q8_0", "f16") else _FINDING_DUP if (st, dt) == ("q8_0", "q8_0") else None
        cases.append(_mk(cid, "cpy", {"dst_type": dt, "src_transposed": tr, "n_threads": 2},
                         {"src": {"gen": "normal", "type": st, "shape": shape}}, note=note, known=known))
    # concat: dims 0..3 for f32, dim 0 for f16 and q8_0
    for dim in range(4):
        sa, sb = [2, 3, 4, 64], [2, 3, 4, 64]
        sb[3 - dim] = {0: 32, 1: 2, 2: 5, 3: 1}[dim]
        cases.append(_mk(f"concat/f32/dim{dim}", "concat", {"dim": dim, "n_threads": 2},
                         {"a": {"gen": "normal", "type": "f32", "shape": sa},
                          "b": {"gen": "normal", "type": "f32", "shape": sb}}))
    cases.append(_mk("concat/f16/dim0", "concat", {"dim": 0},
                     {"a": {"gen": "normal", "type": "f16", "shape": [3, 4, 128]},
                      "b": {"gen": "normal", "type": "f16", "shape": [3, 4, 64]}},
                     note="upstream: element path concat_f16; ik_llama.cpp@676f0e71b: row memcpy (concat_any, "
                          "#253); same bytes for dim 0"))
    for t, dim in (("f16", 2), ("bf16", 1), ("q8_0", 1), ("q8_0", 2)):
        sb = [3, 4, 64]
        sb[2 - dim] = {1: 2, 2: 5}[dim]
        block = t == "q8_0"
        cases.append(_mk(f"concat/{t}/dim{dim}", "concat", {"dim": dim},
                         {"a": {"gen": "normal", "type": t, "shape": [3, 4, 64]},
                          "b": {"gen": "normal", "type": t, "shape": sb}},
                         note=("upstream 0.25.3 copies rows along any dim (concat_any); 0.15.3 copies ne0 blocks per "
                               "row, so the rows it writes later repair the result but the last row writes past "
                               "the tensor (F1: a heap overflow even where the bytes come out right); ik_llama.cpp "
                               "asserts dim == 0" if block else
                               "upstream: element path along any dim (concat_f16); ik_llama.cpp asserts dim == 0"),
                         known=_FINDING_CONCAT if block else None))
    cases.append(_mk("concat/q8_0/dim0", "concat", {"dim": 0},
                     {"a": {"gen": "normal", "type": "q8_0", "shape": [3, 4, 128]},
                      "b": {"gen": "normal", "type": "q8_0", "shape": [3, 4, 64]}},
                     note="ik_llama.cpp@676f0e71b copies each row's bytes (concat_any, dim 0, PR #253)",
                     known=_FINDING_CONCAT))
    # repeat: f32, f16, q8_0
    for t in ("f32", "f16", "q8_0"):
        known = None
        if t == "q8_0":
            known = {"kind": "upstream-lacks",
                     "text": "upstream ggml_compute_forward_repeat has no path for block types (GGML_ABORT); "
                             "ik_llama.cpp@676f0e71b copies whole rows (repeat_any, PR #253)"}
        cases.append(_mk(f"repeat/{t}", "repeat", {"ne": [128, 4, 6, 2]},
                         {"a": {"gen": "normal", "type": t, "shape": [1, 2, 2, 64]}}, known=known))
    # get_rows: f32, f16, q8_0 (and a K-quant)
    for t in ("f32", "f16", "q8_0", "q4_K"):
        cases.append(_mk(f"get_rows/{t}", "get_rows", {},
                         {"a": {"gen": "normal", "type": t, "shape": [2, 10, 256]},
                          "rows": {"gen": "ints", "low": 0, "high": 10, "shape": [2, 7], "first": [9, 0]}}))
    # mul_mat: weight types x src1 {f32, f16}
    for wt in ("f32", "f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "iq4_nl", "q4_K", "q6_K"):
        for bt in ("f32", "f16"):
            note = "the vec_dot plan of the library's build, src1 by the x86 from_float"
            if wt == "f16" and bt == "f32":
                note += ("; upstream (no IQK) rounds src1 to f16 (vec_dot_type F16), ik_llama.cpp's x86 IQK path "
                         "computes F16 x F32 in f32: upstream facts §4a")
            elif wt in ("q4_K", "q6_K"):
                note += ("; ik_llama.cpp's x86 build quantizes src1 with iqk_quantize_row_q8_K (d = amax/127) "
                         "and runs iqk kernels: upstream facts §4a, §4d")
            elif wt not in ("f32", "f16", "bf16"):
                note += ("; ik_llama.cpp's x86 build quantizes src1 to Q8_0_X4/Q8_1_X4 and runs iqk kernels "
                         "(a different float order): upstream facts §4a")
            cases.append(_mk(f"mul_mat/{wt}x{bt}", "mul_mat", {"n_threads": 2},
                             {"a": {"gen": "normal", "type": wt, "shape": [1, 16, 256], "scale": 0.1},
                              "b": {"gen": "normal", "type": bt, "shape": [2, 5, 256]}},
                             note=note))
    # soft_max with a mask (f16; f32 with ALiBi)
    cases.append(_mk("soft_max/f32/mask_f16", "soft_max", {"scale": KQ_SCALE, "n_threads": 2},
                     {"a": {"gen": "normal", "type": "f32", "shape": [1, 4, 6, 100], "scale": 4.0},
                      "mask": {"gen": "mask", "type": "f16", "shape": [8, 100], "inf_frac": 0.3, "normal": True}},
                     note="ggml_v_expf of the library's build (16, 8 or 4 lanes) for whole chunks, libm expf for "
                          "the tail"))
    cases.append(_mk("soft_max/f32/mask_f32_alibi", "soft_max", {"scale": 1.0, "max_bias": 8.0},
                     {"a": {"gen": "normal", "type": "f32", "shape": [1, 4, 6, 64], "scale": 4.0},
                      "mask": {"gen": "mask", "type": "f32", "shape": [6, 64], "inf_frac": 0.3, "normal": True}}))
    # rope mode 0 with YaRN (upstream facts §1.3): q_rope-like rows [64, 16 heads, 24 tokens]
    cases.append(_mk("rope/f32/yarn", "rope", dict(YARN, n_threads=2),
                     {"a": {"gen": "normal", "type": "f32", "shape": [1, 24, 16, 64]},
                      "pos": {"gen": "ints", "low": 0, "high": 16384, "shape": [24], "first": [0, 1, 4095, 4096]}},
                     note="libm cosf/sinf/logf and GNU-mode FMA contractions; ik_llama.cpp assumed to contract alike"))
    # flash_attn_ext: Dk 192 / Dv 128, f16 K/V (and q8_0), 4 heads sharing one KV head
    for kv, nq in (("f16", 8), ("f16", 64), ("q8_0", 8), ("q8_0", 64)):
        tiled = nq >= 64 and kv == "f16"
        note = ("upstream's one-chunk algorithm (n_q < GGML_FA_TILE_Q = 64, or K/V not f16/f32): the spec's "
                "'generic' algorithm" if not tiled else
                "upstream's tiled path (n_q >= 64, f16 K/V): the spec's 'tiled' algorithm")
        note += "; ik_llama.cpp@676f0e71b runs iqk's blocked algorithm instead (upstream facts §4e)"
        cases.append(_mk(f"flash_attn_ext/{kv}/dk192_dv128/nq{nq}", "flash_attn_ext",
                         {"scale": KQ_SCALE, "n_threads": 2},
                         {"q": {"gen": "normal", "type": "f32", "shape": [1, 4, nq, 192]},
                          "k": {"gen": "normal", "type": kv, "shape": [1, 1, 256, 192]},
                          "v": {"gen": "normal", "type": kv, "shape": [1, 1, 256, 128]},
                          "mask": {"gen": "mask", "type": "f16", "shape": [_kq_pad(nq), 256], "inf_frac": 0.2}},
                         note=note))
    # token generation: one query row over the 576-wide latent cache (V a view of K's first 512 columns in the
    # graphs; separate tensors here), >= 512 KV rows: upstream's split-KV path, one chunk per thread
    for nth in (1, 3):
        cases.append(_mk(f"flash_attn_ext/f16/dk576_dv512/nq1_nkv640/t{nth}", "flash_attn_ext",
                         {"scale": KQ_SCALE, "n_threads": nth},
                         {"q": {"gen": "normal", "type": "f32", "shape": [1, 4, 1, 576]},
                          "k": {"gen": "normal", "type": "f16", "shape": [1, 1, 640, 576]},
                          "v": {"gen": "normal", "type": "f16", "shape": [1, 1, 640, 512]},
                          "mask": {"gen": "mask", "type": "f16", "shape": [_kq_pad(1), 640], "inf_frac": 0.2}},
                         note=f"upstream's split-KV path (1 query, >= 512 f16 KV rows): {nth} chunk(s), one per "
                              "thread, merged in order: the spec's kv_split; ik_llama.cpp@676f0e71b runs iqk's "
                              "blocked algorithm instead (upstream facts §4e)"))
    return cases + pr253_cases()


# -- PR #253's own ops at the shapes of DeepSeek-V2-Lite's attention (upstream facts §1.3) ----------------------------
KV_LORA, ROPE, N_HEAD, NOPE, V_HEAD = 512, 64, 16, 128, 128
_NOTE_253 = "PR #253 (ik_llama.cpp@676f0e71b): "


def pr253_cases() -> list[Case]:
    """The cases of PR #253's ops as the MLA graphs build them: the K/V decompression ``mul_mat`` of the
    ``wkv_b`` weight ([512, 4096]) with a view of the latent cache ([512 of 576, n_kv]) of f16, bf16 or q8_0;
    ``concat`` of the compressed KV with the RoPE part along dim 0; ``repeat`` of the RoPE K over heads; the
    cache store ``cpy``; flash attention at Dk 192 / Dv 128 and at 576 / 512 with V a view of K, under causal
    masks (whole KV blocks masked for the first query rows)."""
    cases = []
    w = KV_LORA + ROPE
    for wt in ("f16", "q8_0", "iq4_nl", "q4_0", "q4_K", "q6_K"):
        for ct in ("f16", "bf16", "q8_0"):
            for n_kv in (7, 64):
                cid = f"pr253/mul_mat/{wt}x{ct}_cache_view/nkv{n_kv}"
                cases.append(_mk(cid, "mul_mat", {"n_threads": 2},
                                 {"a": {"gen": "normal", "type": wt, "shape": [1, N_HEAD * (NOPE + V_HEAD), KV_LORA],
                                        "scale": 0.05},
                                  "cache": {"gen": "normal", "type": ct, "shape": [1, n_kv, w]},
                                  "b": {"gen": "view", "of": "cache", "cols": [0, KV_LORA]}},
                                 note=_NOTE_253 + f"mul_mat takes a {ct} src1 (any type: to_float + the vec_dot "
                                      "type's from_float, iqk_quantize_any); upstream's supports_op refuses it"))
    for t in ("f16", "bf16", "q8_0"):
        for n in (1, 37):
            cases.append(_mk(f"pr253/concat/{t}/kv_rope/n{n}", "concat", {"dim": 0, "n_threads": 2},
                             {"a": {"gen": "normal", "type": t, "shape": [1, n, 1, KV_LORA]},
                              "b": {"gen": "normal", "type": t, "shape": [1, n, 1, ROPE]}},
                             note=_NOTE_253 + "concat_any copies each row's bytes (dim 0)",
                             known=_FINDING_CONCAT if t == "q8_0" else None))
    for t in ("f16", "q8_0"):
        known = None
        if t == "q8_0":
            known = {"kind": "upstream-lacks",
                     "text": "upstream ggml_compute_forward_repeat has no path for block types (GGML_ABORT); "
                             "ik_llama.cpp@676f0e71b copies whole rows (repeat_any, PR #253)"}
        cases.append(_mk(f"pr253/repeat/{t}/k_rope_over_heads", "repeat", {"ne": [ROPE, N_HEAD, 37, 1]},
                         {"a": {"gen": "normal", "type": t, "shape": [1, 37, 1, ROPE]}},
                         note=_NOTE_253 + "repeat_any copies whole rows", known=known))
    for t in ("f16", "q8_0"):
        cases.append(_mk(f"pr253/cpy/f32->{t}/cache_store", "cpy", {"dst_type": t, "n_threads": 2},
                         {"src": {"gen": "normal", "type": "f32", "shape": [1, 1, 37, w]}},
                         note="the latent cache store: the CPU from_float of the cache type"))
    for kv in ("f16", "q8_0"):
        for nq, nkv in ((1, 256), (8, 256), (64, 256), (512, 512)):
            causal = {"gen": "mask", "type": "f16", "shape": [_kq_pad(nq), nkv], "causal": nq}
            heads = 1 if nq >= 512 else 4  # the spec's float order in NumPy: keep a case to seconds
            cases.append(_mk(f"pr253/flash_attn_ext/{kv}/dk192_dv128/nq{nq}_nkv{nkv}", "flash_attn_ext",
                             {"scale": KQ_SCALE, "n_threads": 2},
                             {"q": {"gen": "normal", "type": "f32", "shape": [1, heads, nq, NOPE + ROPE]},
                              "k": {"gen": "normal", "type": kv, "shape": [1, heads, nkv, NOPE + ROPE]},
                              "v": {"gen": "normal", "type": kv, "shape": [1, heads, nkv, V_HEAD]},
                              "mask": causal},
                             note=_NOTE_253 + "the f32 / direct branches' attention (K and V decompressed "
                                              "per head)"))
            cases.append(_mk(f"pr253/flash_attn_ext/{kv}/dk576_dv512_v_view/nq{nq}_nkv{nkv}", "flash_attn_ext",
                             {"scale": KQ_SCALE, "n_threads": 2},
                             {"q": {"gen": "normal", "type": "f32", "shape": [1, heads, nq, w]},
                              "k": {"gen": "normal", "type": kv, "shape": [1, 1, nkv, w]},
                              "v": {"gen": "view", "of": "k", "cols": [0, KV_LORA]},
                              "mask": causal},
                             note=_NOTE_253 + "FlashMLA-2: attention over the latent cache, V the first 512 "
                                              "columns of K"))
    return cases + mla_block_cases()


MLA_NODES = ("k-0", "v-0", "kqv-0", "kqv_out-0")


def mla_block_cases() -> list[Case]:
    """One DeepSeek-V2-Lite layer's attention as one graph (the ``lite-attn`` preset: V2-Lite's attention shapes,
    synthetic q8_0 weights): the spec's executor against the peer (``mla_block``) for both branches and both
    cache types, and the peer's direct branch against its own f32 branch (``mla_identity``). Every case of one
    graph shares the input ``x`` (one seed), so a worker computes each graph once."""
    cases = []
    x = {"gen": "normal", "shape": [32, 2048], "seed": 253}
    base = {"preset": "lite-attn", "weight_type": "q8_0", "n_tokens": 32, "n_ctx": 256, "seed": 1, "n_threads": 2}
    for ct in ("f16", "q8_0"):
        for variant in ("f32", "direct"):
            for node in MLA_NODES:
                cases.append(_mk(f"pr253/mla_block/{ct}_cache/{variant}/{node}", "mla_block",
                                 dict(base, cache_type=ct, variant=variant, node=node), {"x": dict(x)},
                                 note="the ik graph (fused_rms_norm, #253's any-type src1): runs on ik_llama.cpp "
                                      "through mlaref's harness"))
        for node in MLA_NODES:
            cases.append(_mk(f"pr253/mla_identity/{ct}_cache/{node}", "mla_identity",
                             dict(base, cache_type=ct, variant="direct", node=node), {"x": dict(x)},
                             note="#253's claim on the real system: K and V built in the cache type give the f32 "
                                  "branch's bytes"))
    return cases


def quick_cases() -> list[Case]:
    """A fast subset: one case per op family and kind of type, plus the known gaps and findings."""
    keep = ("quantize/q8_0/", "quantize/q4_K/model+imatrix", "quantize/iq4_nl/model", "quantize/q8_K/",
            "dequantize/q4_K", "dequantize/q8_0", "vec_dot/q8_0", "vec_dot/iq4_nl", "vec_dot/f16", "vec_dot/q6_K",
            "cpy/f32->q8_0", "cpy/f32->f16/", "cpy/q8_0->f16", "concat/f32/dim1", "concat/q8_0", "repeat/",
            "get_rows/q8_0", "mul_mat/q8_0xf", "mul_mat/f16xf32", "mul_mat/q4_Kxf32", "soft_max/f32/mask_f16",
            "rope/", "flash_attn_ext/f16/dk192_dv128/nq8", "pr253/mla_block/q8_0_cache/direct/kqv_out-0",
            "pr253/mla_identity/q8_0_cache/kqv_out-0")
    return [c for c in default_cases() if any(c.id.startswith(k) for k in keep)]


def select(cases, ops=None, types=None) -> list[Case]:
    """Cases whose op is in ``ops`` and that involve any type in ``types`` (None: no filter)."""
    out = []
    for c in cases:
        if ops and c.op not in ops:
            continue
        if types and not set(types) & set(c.types()):
            continue
        out.append(c)
    return out

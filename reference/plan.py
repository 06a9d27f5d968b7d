"""ReductionPlan: the float accumulation order of a dot product or an attention reduction, as a value.

A dot product has an exact integer part (quantized blocks) and a float part whose result depends on the order
of its roundings. A plan fixes that order, so the NumPy reference (``ops/vec_dot.py``, ``ops/mul_mat.py``,
``ops/flash_attn_ext.py``) and every generated kernel that carries the plan's fingerprint produce the same
bytes, whatever ISA runs it (style.md section 4).

Lane map of a lane plan (``lanes`` = L float lanes, ``accs`` = A accumulators, ``S = L*A`` slots)::

    element pairs (f32, f16, bf16): element i of the row
        step  = i // S                   one FMA per slot and step, steps in order
        acc   = (i // L) % A             acc a lives in its own register (or in lanes a*8..a*8+7 of a wider one)
        lane  = i % L

    32-blocks (q8_0, q4_0, iq4_nl, ...; int_to_float = "lane4"): block b of the row gives 8 int32 lane sums,
        lane j = sum of the 4 products of elements 4j..4j+3 (what maddubs+madd or dpbusd leave), converted
        to float exactly (|sum| < 2**24); then acc_slot[j] = fma(d_b, float(lane_j), acc_slot[j]), with
        slot = b % (L*A/8). So an AVX-512 kernel runs an l8a2 plan with block 2k in lanes 0..7 and block 2k+1
        in lanes 8..15 of one zmm register, and l16a1 gives the same bytes as l8a2.

    32-blocks with int_to_float = "lane8" (ggml's AVX-without-AVX2 code): block b gives 4 int32 lane sums,
        lane j = the 8 products of elements 4j..4j+3 and 16+4j..16+4j+3 (the block's two 16-byte halves
        madd'ed and added), and fills 4 float lanes: slot = b % (L*A/4), so two blocks share one 8-lane register
        (block 2k in lanes 0..3, 2k+1 in lanes 4..7).

    fold "halves" (8 -> 4 -> 2 -> 1, v[i] + v[i + half]), applied first across accumulators, then across lanes:

        acc0: | a0 a1 a2 a3 a4 a5 a6 a7 |     acc0 + acc1 -> | s0 .. s7 |
        acc1: | b0 b1 b2 b3 b4 b5 b6 b7 |     s[i] + s[i+4] -> t0..t3; t[i] + t[i+2] -> u0, u1; u0 + u1

    "halves" is exactly ggml's ``hsum_float_8`` ((l0+h0 + l2+h2) + (l1+h1 + l3+h3)) and AVX-512's
    ``_mm512_reduce_add_ps`` as GCC expands it. fold "hadd" is ``GGML_F32x8_REDUCE`` on AVX2 builds: halves down
    to 4 lanes, then two ``_mm_hadd_ps``: (t0+t1) + (t2+t3).

Serial plans (``lanes == 1``) are ggml's scalar formulas; ``acc_type`` says whether the running sum is a float
(quantized pairs) or a double (ggml's ``ggml_float`` sums of f16/f32/bf16 products). A lane plan with
``acc_type == "f64"`` keeps float lanes but reduces each accumulator on its own (halves) and adds the results to
a double in accumulator order; ``dot2`` lanes take two adjacent products per step (AVX512-BF16 ``vdpbf16ps``).

Named plans for ggml's own orders (style.md 4.9) resolve per pair, because ggml's x86 code uses a different
register layout per pair (``plan.for_pair("iq4_nl.q8_0")``). Which one a given build of ggml runs is
``mlaref.reference.builds.GgmlBuild.vec_dot_plan``:

* ``ggml_generic``: the scalar C source of ``ggml_vec_dot_<x>_<y>_generic`` / ``ggml_vec_dot_f16`` without
  SIMD, each operation rounded once (``-ffp-contract=off``).
* ``ggml_generic_gnu``: the same compiled in GNU C mode with FMA available: GCC contracts the last
  ``sumf += a*b`` into one fused multiply-add (read from the disassembly of ggml-python's libggml-cpu.so).
* ``ggml_x86_avx512``: upstream ggml's ``vec_dot`` as ggml-python builds it natively on Intel Sapphire Rapids
  (AVX-512 F/BW/VL/VNNI/BF16/FP16): q8_0, q4_0, q5_0, q4_1, q5_1, q4_K, q6_K l8a1 (their AVX2 code), iq4_nl l8a2, f32
  l16a4, f16 l32a4 in **f16** arithmetic, bf16 two ``vdpbf16ps`` accumulators.
* ``ggml_x86_avx512_znver4``: the same source as GCC builds it natively on AMD Zen 4 (AVX-512 without FP16): the
  block pairs as above except iq4_nl's odd last block (rounded product, then add), f32 l16a4 with the leftovers
  vectorised in chunks of 8 only, f16 l16a4 in f32 arithmetic.
* ``ggml_x86_avx512_icelake``: the same source built natively on Intel Ice Lake (AVX-512 with neither BF16 nor
  FP16): block pairs and f32 as ``ggml_x86_avx512``, f16 as ``_znver4``, bf16 widened to f32 in two 16-lane FMA
  accumulators, each reduced into a double.
* ``ggml_x86_avx512_bf16``: the avx512bf16 level (inferred, not run): ``_icelake`` with bf16 as ``ggml_x86_avx512``.
* ``ggml_x86_avx2``: the same code built at the avx2 level (AVX2+FMA+F16C, GCC's generic tuning): the block pairs
  as above, f32/f16 l8a4 with the hadd fold, bf16 widened to f32 in four 8-lane FMA accumulators.
* ``ggml_x86_avx2_znver3``: the same built natively on AMD Zen 3 (-march=znver3): as ``ggml_x86_avx2`` except
  iq4_nl's odd last block (rounded product, then add).
* ``ggml_x86_avx``: the same code built at the avx level (AVX without FMA, F16C, AVX2): nothing fused; q8_0, q4_0
  and iq4_nl two blocks per register (int_to_float "lane8") and an odd last block in scalar code; q5_0, q4_1,
  q5_1, q4_K, q6_K as AVX2 unfused; f32/f16 l8a4 hadd and bf16 l8a4 halves, unfused.
* ``mlaref_l8a1``, ``mlaref_l8a2``, ``mlaref_l16a1``, ``mlaref_l16a2``: mlaref's kernel plans: FMA, halves, f32
  lanes; ragged steps leave the missing slots untouched.
* ``mlaref_l8s1``: mlaref's block-serial plan: the six 32-block pairs (q8_0, q4_0, q5_0, iq4_nl with q8_0; q4_1,
  q5_1 with q8_1) serial with FMA, each block's exact int sum taken once (``ggml_generic_gnu``'s per-block formulas:
  q8_0 / q5_0 / iq4_nl ``acc = fma(sumi, dx*dy, acc)``, q4_0 ``acc = fma(f32(sumi*dx), dy, acc)``, q4_1 / q5_1
  ``acc = acc + fma(dx*dy, sumi, f32(mx*sy))``), blocks in order from +0, no fold; element and k-quant pairs as
  ``mlaref_l8a1``. It is the per-block step of ik_llama.cpp's interleaved-row kernel (``mul_mat_q8_0_r8_q8_2``,
  ``ggml/src/iqk/iqk_gemm_legacy_quants.cpp`` of the ik-llama-cpp-python 0.1.5 snapshot, docs/facts/ik-snapshot.md
  §3: one exact int32 sum per block and row, one fma per block), so an AVX2 kernel computes 8 rows' block sums in
  the 8 lanes of one register.

Flash-attention parameters (``k_step``, ``q_step``, ``kv_chunks``, ``exp``) are used by
:mod:`mlaref.reference.ops.flash_attn_ext` only: KV chunks are merged in index order, never derived from a
thread count (style.md 4.8). ``q_step`` does not change the numbers there (Q rows are converted one by one); it is
carried for the kernels' tiling. ``rescale_exp`` says which exp rescales the running state when the maximum grows
(and merges chunks): libm's ``expf`` (iqk) or the plan's ``exp`` (``"exp"``; the GPU plan ``cuda_fa_w32``). Their
token is ``fa_fingerprint`` (e.g. ``k64q64c1e2`` for v_expf_avx2, ``k32q1c1e2r`` for cuda_fa_w32).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

__all__ = [
    "ReductionPlan",
    "PLANS",
    "get_plan",
    "GGML_GENERIC",
    "GGML_GENERIC_GNU",
    "GGML_X86_AVX",
    "GGML_X86_AVX2",
    "GGML_X86_AVX2_ZNVER3",
    "GGML_X86_AVX512_BF16",
    "GGML_ARM_NEON",
    "GGML_ARM_DOTPROD",
    "GGML_ARM_FP16",
    "GGML_X86_AVX512",
    "GGML_X86_AVX512_ZNVER4",
    "GGML_X86_AVX512_ICELAKE",
    "MLAREF_L8A1",
    "MLAREF_L8A2",
    "MLAREF_L16A1",
    "MLAREF_L16A2",
    "MLAREF_L8S1",
]

_FOLDS = ("halves", "hadd", "serial", "xor")
_INT_TO_FLOAT = ("lane4", "lane8", "block")
_ACC_TYPES = ("f32", "f16", "f64")
_TAILS = ("masked", "scalar_f32", "scalar_f32m", "scalar_gcc", "scalar_gcc8", "scalar_f64")
_EXPS = ("libm", "v_expf_avx2", "v_expf_avx512")
_RESCALE_EXPS = ("libm", "exp")
_ACC_FOLDS = ("lanewise", "each")
_LANE_MAPS = ("quad", "pair")
_SUMMS = ("last", "pairs", "split")


@dataclass(frozen=True)
class ReductionPlan:
    """The order of a float reduction (see the module docstring for the lane map).

    ``tail`` says what happens to the elements / blocks after the last full step of ``lanes*accs`` slots:
    ``masked`` (mlaref: they are absent, the slots keep their value), ``scalar_f32`` (ggml: added to the folded
    float sum one by one with the pair's scalar formula, fused), ``scalar_f32m`` (the same, a rounded product then
    an add), ``scalar_gcc`` (ggml's f32 leftovers loop as GCC vectorised it: chunks of 8, then 4, as rounded
    products added in order, then fused scalar FMAs), ``scalar_gcc8`` (the same with chunks of 8 only: GCC's
    znver4 tuning),
    ``scalar_f64`` (ggml's f16 leftovers: exact products added to a double).
    """

    name: str
    lanes: int = 1
    accs: int = 1
    fold: str = "serial"
    fma: bool = True
    int_to_float: str = "block"
    acc_type: str = "f32"
    tail: str = "masked"
    k_step: int = 64
    q_step: int = 64
    kv_chunks: int = 1
    exp: str = "libm"
    by_pair: tuple = field(default=(), compare=True)
    pairs_only: bool = False  # a family of per-pair plans with no default (ggml's x86 plans)
    dot2: bool = False  # each lane takes 2 adjacent products per step, odd then even (vdpbf16ps)
    # The orders of ggml's NEON kernels (GGML_ARM_* below); the defaults mean "as every x86 plan".
    acc_fold: str = "lanewise"  # accumulators added lane by lane, then folded; "each": each folded on its own
    lane_map: str = "quad"  # int lanes of "lane8": vdotq_s32 groups ("quad") or its vmull/vpaddl emulation ("pair")
    summs: str = "last"  # q4_1 / q5_1's m*s terms: one sum added last, per two blocks ("pairs"), even/odd ("split")
    block_pairs: bool = False  # a serial block plan that takes two blocks per step (NEON iq4_nl)
    superblock: bool = False  # a serial k-quant plan with one int sum per super-block
    lane_fold_f32: bool = False  # f16 accumulators whose lanes are folded in f32
    # flash attention (blocked): the exp of the running-max rescale and of the chunk merge: libm expf (iqk) or the
    # plan's ``exp`` (a GPU cannot run libm; the GPU plan cuda_fa_w32 below)
    rescale_exp: str = "libm"

    def __post_init__(self):
        if self.lanes < 1 or self.lanes & (self.lanes - 1):
            raise ValueError(f"ReductionPlan {self.name}: lanes must be a power of two >= 1, got {self.lanes}")
        if self.accs < 1 or self.accs & (self.accs - 1):
            raise ValueError(f"ReductionPlan {self.name}: accs must be a power of two >= 1, got {self.accs}")
        for attr, allowed in (("fold", _FOLDS), ("int_to_float", _INT_TO_FLOAT), ("acc_type", _ACC_TYPES),
                              ("tail", _TAILS), ("exp", _EXPS), ("rescale_exp", _RESCALE_EXPS)):
            if getattr(self, attr) not in allowed:
                raise ValueError(f"ReductionPlan {self.name}: {attr} must be one of {allowed}, "
                                 f"got {getattr(self, attr)!r}")
        if (self.fold == "serial") != (self.lanes == 1 and self.accs == 1):
            raise ValueError(f"ReductionPlan {self.name}: fold 'serial' goes with lanes == accs == 1 and only then")
        if self.int_to_float == "lane4" and self.lanes * self.accs < 8:
            raise ValueError(f"ReductionPlan {self.name}: int_to_float 'lane4' needs lanes*accs >= 8 "
                             f"(8 lane sums per 32-block)")
        if self.int_to_float == "lane8" and self.lanes * self.accs < 4:
            raise ValueError(f"ReductionPlan {self.name}: int_to_float 'lane8' needs lanes*accs >= 4 "
                             f"(4 lane sums per 32-block)")
        if self.acc_type == "f64" and self.fold != "serial" and self.tail not in ("masked", "scalar_f64"):
            raise ValueError(f"ReductionPlan {self.name}: f64 accumulation of lane sums takes tail 'masked' or "
                             f"'scalar_f64', got {self.tail!r}")
        for attr, allowed in (("acc_fold", _ACC_FOLDS), ("lane_map", _LANE_MAPS), ("summs", _SUMMS)):
            if getattr(self, attr) not in allowed:
                raise ValueError(f"ReductionPlan {self.name}: {attr} must be one of {allowed}, "
                                 f"got {getattr(self, attr)!r}")
        if self.lane_map == "pair" and self.int_to_float != "lane8":
            raise ValueError(f"ReductionPlan {self.name}: lane_map 'pair' goes with int_to_float 'lane8'")
        if (self.block_pairs or self.superblock) and self.fold != "serial":
            raise ValueError(f"ReductionPlan {self.name}: block_pairs and superblock are for serial plans")
        if self.lane_fold_f32 and self.acc_type != "f16":
            raise ValueError(f"ReductionPlan {self.name}: lane_fold_f32 goes with acc_type 'f16'")
        if self.fold == "xor" and (self.accs != 1 or self.lanes < 2):
            raise ValueError(f"ReductionPlan {self.name}: fold 'xor' (a warp's butterfly) takes accs == 1, lanes >= 2")
        if self.k_step < 1 or self.q_step < 1 or self.kv_chunks < 1:
            raise ValueError(f"ReductionPlan {self.name}: k_step, q_step and kv_chunks must be >= 1")

    @property
    def fingerprint(self) -> str:
        """Short token for kernel names: ``l8a2``, plus ``m`` without FMA, ``h`` for the hadd fold, ``x16`` for
        f16 / ``x64`` for f64 accumulators; serial plans are ``s1``."""
        if self.fold == "serial":
            fp = "s1"
        else:
            fp = f"l{self.lanes}a{self.accs}"
        if self.dot2:
            fp += "d2"
        if not self.fma:
            fp += "m"
        if self.fold == "hadd":
            fp += "h"
        if self.acc_type != "f32":
            fp += {"f16": "x16", "f64": "x64"}[self.acc_type]
        return fp

    @property
    def fa_fingerprint(self) -> str:
        """Token of the flash-attention parameters: ``k{k_step}q{q_step}c{kv_chunks}`` + ``e0`` (libm expf),
        ``e2`` (v_expf AVX2) or ``e5`` (v_expf AVX-512), + ``r`` when the rescale takes that exp too."""
        e = {"libm": "e0", "v_expf_avx2": "e2", "v_expf_avx512": "e5"}[self.exp]
        r = "r" if self.rescale_exp == "exp" else ""
        return f"k{self.k_step}q{self.q_step}c{self.kv_chunks}{e}{r}"

    def for_pair(self, pair: str) -> "ReductionPlan":
        """The plan that runs for the type pair ``"x.y"`` (e.g. ``"iq4_nl.q8_0"``; a bare ``"f16"`` means f16.f16)."""
        if "." not in pair:
            pair = f"{pair}.{pair}"
        x, y = pair.split(".", 1)
        plain = f"{x}.{y[:-3]}" if y.endswith("_x4") else pair  # the x4 layouts move bytes, not the order
        for key, plan in self.by_pair:
            if key in (pair, plain):
                return plan
        if self.pairs_only:
            raise ValueError(f"plan {self.name} does not define the pair {pair!r}; it defines "
                             f"{', '.join(k for k, _ in self.by_pair)}")
        return self

    def replace(self, **changes) -> "ReductionPlan":
        """A copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)


def _lane(name, lanes, accs, **kw):
    return ReductionPlan(name=name, lanes=lanes, accs=accs, fold=kw.pop("fold", "halves"),
                         int_to_float=kw.pop("int_to_float", "lane4"), **kw)


_ELEMENT_PAIRS = ("f32.f32", "f16.f16", "bf16.bf16")

GGML_GENERIC = ReductionPlan(
    name="ggml_generic", fma=False,
    by_pair=tuple((p, ReductionPlan(name="ggml_generic", fma=False, acc_type="f64")) for p in _ELEMENT_PAIRS),
)
GGML_GENERIC_GNU = ReductionPlan(
    name="ggml_generic_gnu", fma=True,
    by_pair=tuple((p, ReductionPlan(name="ggml_generic_gnu", fma=True, acc_type="f64")) for p in _ELEMENT_PAIRS),
)

# ggml-cpu/arch/x86/quants.c: q8_0/q4_0/q5_0/q4_1/q5_1 use one __m256 accumulator, one FMA per block, and
# hsum_float_8; iq4_nl alternates blocks between accum1/accum2, adds them, and finishes an odd block in scalar.
_X86_BLOCKS = (
    ("q8_0.q8_0", _lane("ggml_x86", 8, 1)),
    ("q4_0.q8_0", _lane("ggml_x86", 8, 1)),
    ("q5_0.q8_0", _lane("ggml_x86", 8, 1)),
    ("q4_1.q8_1", _lane("ggml_x86", 8, 1)),
    ("q5_1.q8_1", _lane("ggml_x86", 8, 1)),
    ("iq4_nl.q8_0", _lane("ggml_x86", 8, 2, tail="scalar_f32")),
    ("q4_K.q8_K", _lane("ggml_x86", 8, 1)),
    ("q6_K.q8_K", _lane("ggml_x86", 8, 1)),
)
# ggml-cpu/vec.cpp + simd-mappings.h. AVX-512: GGML_F32_STEP 64 / EPR 16 (4 zmm accumulators, reduced
# (a0+a2)+(a1+a3) then _mm512_reduce_add_ps); with AVX512-FP16 the f16 dot runs GGML_F16x32 in half precision
# (STEP 128 / EPR 32, vfmadd231ph), converted to double after the fold; with AVX512-BF16 the bf16 dot runs two
# vdpbf16ps accumulators over 64-element steps (c1: elements 0..31, c2: 32..63; lane l the pair 2l, 2l+1), each
# reduced on its own and added to a double (acc_type "f64"); leftovers as the tail says.
GGML_X86_AVX512 = ReductionPlan(
    name="ggml_x86_avx512", pairs_only=True,
    by_pair=_X86_BLOCKS + (
        ("f32.f32", _lane("ggml_x86_avx512", 16, 4, int_to_float="block", tail="scalar_gcc")),
        ("f16.f16", _lane("ggml_x86_avx512", 32, 4, int_to_float="block", acc_type="f16", tail="scalar_f64")),
        ("bf16.bf16", _lane("ggml_x86_avx512", 16, 2, int_to_float="block", acc_type="f64", dot2=True,
                            tail="scalar_f64")),
    ),
)
# The same source as GCC builds it with -march=native on AMD Zen 4 (AVX-512 F/BW/VL/VNNI/BF16, no AVX512-FP16),
# measured against ggml-python's libggml-cpu on an AMD EPYC: without FP16 the f16 dot converts each 16-lane step
# to f32 (GGML_F32Cx16: STEP 64 / EPR 16, f32 FMA) and reduces like f32; GCC's znver4 tuning vectorises the f32
# leftovers in chunks of 8 only (no chunk of 4); iq4_nl's odd last block is a rounded product then an add.
GGML_X86_AVX512_ZNVER4 = ReductionPlan(
    name="ggml_x86_avx512_znver4", pairs_only=True,
    by_pair=tuple((k, v) for k, v in _X86_BLOCKS if k != "iq4_nl.q8_0") + (
        ("iq4_nl.q8_0", _lane("ggml_x86", 8, 2, tail="scalar_f32m")),
        ("f32.f32", _lane("ggml_x86_avx512_znver4", 16, 4, int_to_float="block", tail="scalar_gcc8")),
        ("f16.f16", _lane("ggml_x86_avx512_znver4", 16, 4, int_to_float="block", tail="scalar_f64")),
        ("bf16.bf16", _lane("ggml_x86_avx512", 16, 2, int_to_float="block", acc_type="f64", dot2=True,
                            tail="scalar_f64")),
    ),
)
# The same source as GCC builds it with -march=native on Intel Ice Lake server (AVX-512 F/BW/VL/VNNI/VBMI, neither
# BF16 nor FP16), measured against ggml-python's libggml-cpu on a Xeon: block pairs and the f32 dot as on Sapphire
# Rapids (Intel tuning: leftovers in chunks of 8 then 4, iq4_nl's odd block fused), the f16 dot in f32 as on
# Zen 4, and the bf16 dot by vec.cpp's AVX512F branch: bf16 widened to f32, two 16-lane accumulators over
# 32-element steps (c1: elements 0..15, c2: 16..31), ``c = mul + c`` contracted by GCC into one FMA, each
# accumulator reduced on its own and added to a double.
GGML_X86_AVX512_ICELAKE = ReductionPlan(
    name="ggml_x86_avx512_icelake", pairs_only=True,
    by_pair=_X86_BLOCKS + (
        ("f32.f32", _lane("ggml_x86_avx512", 16, 4, int_to_float="block", tail="scalar_gcc")),
        ("f16.f16", _lane("ggml_x86_avx512_znver4", 16, 4, int_to_float="block", tail="scalar_f64")),
        ("bf16.bf16", _lane("ggml_x86_avx512_icelake", 16, 2, int_to_float="block", acc_type="f64",
                            tail="scalar_f64")),
    ),
)
# AVX2 + FMA + F16C (the avx2 level, GCC's generic tuning), measured against ggml-python's library built at that
# level on an AMD EPYC (Zen 3): GGML_F32_STEP 32 / EPR 8 with GGML_F32x8_REDUCE (hadd), f16 through F32Cx8 in f32;
# bf16 (vec.cpp's AVX2 branch): bf16 widened to f32, four 8-lane accumulators over 32-element steps, ``c = mul + c``
# contracted into one FMA, folded (c1+c3)+(c2+c4) and then 8 -> 4 -> 2 -> 1 by halves into one float that starts
# the double sum of the leftovers.
_X86_AVX2_BF16 = _lane("ggml_x86_avx2", 8, 4, int_to_float="block", tail="scalar_f64")
GGML_X86_AVX2 = ReductionPlan(
    name="ggml_x86_avx2", pairs_only=True,
    by_pair=_X86_BLOCKS + (
        ("f32.f32", _lane("ggml_x86_avx2", 8, 4, fold="hadd", int_to_float="block", tail="scalar_gcc")),
        ("f16.f16", _lane("ggml_x86_avx2", 8, 4, fold="hadd", int_to_float="block", tail="scalar_f64")),
        ("bf16.bf16", _X86_AVX2_BF16),
    ),
)
# The same source built natively on AMD Zen 3 (-march=native = znver3, AVX2 without AVX-512), measured against
# ggml-python's library there: as the avx2 level except iq4_nl's odd last block, a rounded product then an add
# (as GCC's znver4 tuning does too).
GGML_X86_AVX2_ZNVER3 = ReductionPlan(
    name="ggml_x86_avx2_znver3", pairs_only=True,
    by_pair=tuple((k, v) for k, v in GGML_X86_AVX2.by_pair if k != "iq4_nl.q8_0") + (
        ("iq4_nl.q8_0", _lane("ggml_x86", 8, 2, tail="scalar_f32m")),
    ),
)
# AVX without FMA, F16C or AVX2 (the avx level: -msse4.2 -mavx, GCC's generic tuning), measured against ggml-python's
# library built at that level on an AMD EPYC (Zen 3). Nothing is fused (GCC cannot contract without -mfma).
# arch/x86/quants.c@ggml 0.15.3, the ``__AVX__`` branches: q8_0, q4_0 and iq4_nl take two blocks per 8-lane
# register (``quad_fp16_delta_float``: block 2k in lanes 0..3, 2k+1 in lanes 4..7), each lane the sum of 8
# products (``mul_sum_i8_quad_float``: int_to_float "lane8"), ``accum + deltas*p``, hsum_float_8, then an odd last
# block by the scalar formula; q5_0, q4_1, q5_1, q4_K and q6_K are the AVX2 lane maps with ``acc + d*q`` (q4_K's
# min accumulator likewise). vec.cpp / simd-mappings.h: f32 and f16 (F32Cx8 through the f16 table, no F16C) as on
# AVX2 with ``_mm256_add_ps(_mm256_mul_ps(b, c), a)``; f32 leftovers are rounded products added in order; bf16 the
# AVX2 branch unfused.
_X86_AVX_QUAD = _lane("ggml_x86_avx", 8, 1, fma=False, int_to_float="lane8", tail="scalar_f32m")
_X86_AVX_ONE = _lane("ggml_x86_avx", 8, 1, fma=False)
GGML_X86_AVX = ReductionPlan(
    name="ggml_x86_avx", pairs_only=True, fma=False,  # element-wise a*b + c (flash attention's V update) unfused
    by_pair=(
        ("q8_0.q8_0", _X86_AVX_QUAD),
        ("q4_0.q8_0", _X86_AVX_QUAD),
        ("iq4_nl.q8_0", _X86_AVX_QUAD),
        ("q5_0.q8_0", _X86_AVX_ONE),
        ("q4_1.q8_1", _X86_AVX_ONE),
        ("q5_1.q8_1", _X86_AVX_ONE),
        ("q4_K.q8_K", _X86_AVX_ONE),
        ("q6_K.q8_K", _X86_AVX_ONE),
        ("f32.f32", _lane("ggml_x86_avx", 8, 4, fold="hadd", fma=False, int_to_float="block", tail="scalar_f32m")),
        ("f16.f16", _lane("ggml_x86_avx", 8, 4, fold="hadd", fma=False, int_to_float="block", tail="scalar_f64")),
        ("bf16.bf16", _lane("ggml_x86_avx", 8, 4, fma=False, int_to_float="block", tail="scalar_f64")),
    ),
)
# AVX-512 with AVX512-BF16 and GCC's generic tuning (the avx512bf16 level): inferred, not run (no such CPU here):
# the Ice Lake plan with the bf16 dot on vdpbf16ps as on Zen 4 and Sapphire Rapids.
GGML_X86_AVX512_BF16 = ReductionPlan(
    name="ggml_x86_avx512_bf16", pairs_only=True,
    by_pair=tuple((k, v) for k, v in GGML_X86_AVX512_ICELAKE.by_pair if k != "bf16.bf16") + (
        ("bf16.bf16", _lane("ggml_x86_avx512", 16, 2, int_to_float="block", acc_type="f64", dot2=True,
                            tail="scalar_f64")),
    ),
)


# ggml's vec_dot on aarch64 (NEON, + dotprod, + fp16 vector arithmetic), read from arch/arm/quants.c, vec.cpp and
# simd-mappings.h at ggml 0.15.3 and checked bit for bit against that source cross-built with GCC 12 for each level
# (mlaref.codegen.peers.cross), run under qemu-user. GCC in GNU mode contracts ``a*b + c`` on aarch64 (FMA is part
# of the base ISA), but the ``vmlaq_n_f32`` intrinsic expands to a multiply and an add, each rounded.
#
# ===============  ====================  ==========================================================================
# pair             plan                  ggml's NEON code
# ===============  ====================  ==========================================================================
# q8_0, q4_0,      l4a2, unfused,        two ``float32x4_t`` sums: block 2k -> ``sumv0``, 2k+1 -> ``sumv1``;
# q5_0, q4_1,      ``lane8``,            ``sumv += float(int lanes) * (dx*dy)`` (``vmlaq_n_f32``); each sum folded
# q5_1             ``acc_fold="each"``,  by ``vaddvq_f32`` ((l0+l1)+(l2+l3), fold ``hadd`` on 4 lanes), the two
#                  tail ``scalar_f32``   floats added; an odd last block by the generic formula, fused. Int lanes:
#                                        ``vdotq_s32`` (products 4j..4j+3 of each 16-byte half) with dotprod, its
#                                        emulation (``lane_map="pair"``: products 2j, 2j+1, 8+2j, 9+2j) without.
#                                        q4_1: ``summs += m0*s0 + m1*s1`` per two blocks (``summs="pairs"``);
#                                        q5_1: even / odd blocks in two fused sums (``summs="split"``)
# iq4_nl           serial,               ``sumf += d0*S0 + d1*S1`` per two blocks (first product fused), then
#                  ``block_pairs``       an odd last block fused
# q4_K, q6_K       serial,               one int sum per super-block; q4_K ``sumf -= dmin*mins`` then
#                  ``superblock``        ``sumf += d*sumi``; q6_K ``sum += d*(isum - 32*isum_mins)``; all fused
# f32              l4a4 hadd, tail       GGML_F32_STEP 16 / EPR 4 (``vfmaq_f32``), accumulators by halves,
#                  ``scalar_gcc``        ``vaddvq_f32``; leftovers (< 16) as GCC vectorises them: chunks of 4
#                                        rounded products added in order, then fused
# f16              l4a4 hadd, f32,       without FP16 vector arithmetic: GGML_F32Cx4 (f16 widened, f32 FMA);
#                  tail ``scalar_f64``   leftovers exact products added to a double
# f16 (fp16)       l8a4 in f16, lanes    with it: GGML_F16x8 (``vfmaq_f16``), accumulators by halves in f16, then
#                  in f32, ``hadd``      lanes 0..3 + 4..7 and ``vaddvq_f32`` in f32 (``lane_fold_f32``)
# bf16             serial f64            no NEON branch: ggml's scalar double sum of exact products
# ===============  ====================  ==========================================================================

def _arm(name: str, **kw) -> ReductionPlan:
    return ReductionPlan(name=name, **kw)


def _blocks(name: str, lane_map: str) -> tuple:
    """The 32-block pairs of a NEON level: l4a2 unfused, each accumulator folded by vaddvq_f32."""
    def two(**kw):
        return _arm(name, lanes=4, accs=2, fold="hadd", fma=False, int_to_float="lane8", acc_fold="each",
                    lane_map=lane_map, tail="scalar_f32", **kw)
    return (
        ("q8_0.q8_0", two()),
        ("q4_0.q8_0", two()),
        ("q5_0.q8_0", two()),
        ("q4_1.q8_1", two(summs="pairs")),
        ("q5_1.q8_1", two(summs="split")),
        ("iq4_nl.q8_0", _arm(name, block_pairs=True)),
        ("q4_K.q8_K", _arm(name, superblock=True)),
        ("q6_K.q8_K", _arm(name, superblock=True)),
    )


def _elements(name: str, fp16: bool) -> tuple:
    f16 = (_arm(name, lanes=8, accs=4, fold="hadd", int_to_float="block", acc_type="f16", lane_fold_f32=True,
                tail="scalar_f64") if fp16 else
           _arm(name, lanes=4, accs=4, fold="hadd", int_to_float="block", tail="scalar_f64"))
    return (
        ("f32.f32", _arm(name, lanes=4, accs=4, fold="hadd", int_to_float="block", tail="scalar_gcc")),
        ("f16.f16", f16),
        ("bf16.bf16", _arm(name, acc_type="f64")),
    )


def _family(name: str, lane_map: str, fp16: bool) -> ReductionPlan:
    # fma=True: element-wise a*b + c in plain C (flash attention's V update) is contracted by GCC on aarch64
    return _arm(name, pairs_only=True, fma=True, by_pair=_blocks(name, lane_map) + _elements(name, fp16))


GGML_ARM_NEON = _family("ggml_arm_neon", "pair", False)  # -march=armv8-a
GGML_ARM_DOTPROD = _family("ggml_arm_dotprod", "quad", False)  # -march=armv8.2-a+dotprod
GGML_ARM_FP16 = _family("ggml_arm_fp16", "quad", True)  # -march=armv8.2-a+fp16+dotprod


MLAREF_L8A1 = _lane("mlaref_l8a1", 8, 1)
MLAREF_L8A2 = _lane("mlaref_l8a2", 8, 2)
MLAREF_L16A1 = _lane("mlaref_l16a1", 16, 1)
MLAREF_L16A2 = _lane("mlaref_l16a2", 16, 2)
# block-serial: ggml_generic_gnu's fused per-block formulas for the 32-block pairs, l8a1 for the others
_SERIAL_BLOCK_PAIRS = ("q8_0.q8_0", "q4_0.q8_0", "q5_0.q8_0", "iq4_nl.q8_0", "q4_1.q8_1", "q5_1.q8_1")
MLAREF_L8S1 = _lane("mlaref_l8s1", 8, 1,
                    by_pair=tuple((p, ReductionPlan(name="mlaref_l8s1", fma=True)) for p in _SERIAL_BLOCK_PAIRS))

PLANS: dict[str, ReductionPlan] = {
    p.name: p
    for p in (GGML_GENERIC, GGML_GENERIC_GNU, GGML_X86_AVX, GGML_X86_AVX2, GGML_X86_AVX2_ZNVER3, GGML_X86_AVX512,
              GGML_X86_AVX512_ZNVER4, GGML_X86_AVX512_ICELAKE, GGML_X86_AVX512_BF16, GGML_ARM_NEON, GGML_ARM_DOTPROD,
              GGML_ARM_FP16, MLAREF_L8A1, MLAREF_L8A2, MLAREF_L16A1, MLAREF_L16A2, MLAREF_L8S1)
}


# ---- GPU plans (the CUDA target, codegen/cuda; docs/cuda.md) ---------------------------------------------------
# A warp is a 32-lane register file, and its reduction order is a plan like any other. ``cuda_w32`` is the order of
# every CUDA dot product mlaref generates (mul_mat over converted rows):
#
#   element pairs (f16.f16, ...): lane l takes elements l, l+32, l+64, ... in increasing order,
#       acc_l = fmaf(x_i, y_i, acc_l) (one rounding per step; a lane past the end of the row does nothing);
#   32-blocks (q8_0.q8_0, iq4_nl.q8_0, ...; int_to_float "block"): lane l takes blocks l, l+32, ...; a block's
#       32 products are summed exactly in int32 (|sum| <= 32*127*128 < 2**24, so the float of it is exact), then
#       acc_l = fmaf(f32(dx*dy), float(sumi), acc_l), dx*dy rounded once, as the lane plans of the CPU kernels;
#   fold "xor": the shuffle-xor butterfly, for o = 16, 8, 4, 2, 1: v[l] = v[l] + v[l ^ o] in every lane; the
#       result is lane 0's. (Float addition commutes exactly, so lanes l and l ^ o hold equal values after each
#       step and the butterfly computes the bytes of fold "halves" over 32 lanes; the test says so by hand.)
#
# Kernels compile with ``nvcc -fmad=false`` and spell every FMA (``__fmaf_rn``) and rounding (``__fmul_rn``).
CUDA_W32 = ReductionPlan(name="cuda_w32", lanes=32, accs=1, fold="xor", int_to_float="block", tail="masked")
# ``cuda_fa_w32``: flash attention's "blocked" algorithm (ops/flash_attn_ext.py) as the CUDA kernel
# (codegen/templates/cuda/flash_attn_ext.cu.j2) computes it, one thread block per query row:
#
#   scores: s = vec_dot(K row, Q row converted to K's vec_dot type) in cuda_w32's order (one warp per KV row),
#       then s*scale rounded once; the mask is binary (f16 bits other than +0.0 -> -inf);
#   k_step 32: one block of KV cells per warp width; the block's max is exact; the softmax state (M, S) and
#       acc[d] follow the reference's serial block steps;
#   exp "v_expf_avx2" for p = exp(s - M) and, with rescale_exp "exp", for the rescale exp(M - smax) too: the
#       polynomial is single IEEE fma / mul / add steps plus integer bit operations, which a device function
#       reproduces with __fmaf_rn / __fmul_rn / __fadd_rn under -fmad=false (libm's expf and CUDA's expf/__expf
#       are other functions);
#   S += the block's p summed as the reference does: 8-lane vectors added in order, then the halves fold;
#   acc[d] = fmaf(V[k][d], p[k], acc[d]) for the block's cells in order (one thread per output dim d);
#   kv_chunks 1 (no KV split, so no merge); q_step 1 (a thread block takes one query row).
CUDA_FA_W32 = CUDA_W32.replace(name="cuda_fa_w32", k_step=32, q_step=1, kv_chunks=1, exp="v_expf_avx2",
                               rescale_exp="exp")
GPU_PLANS: dict[str, ReductionPlan] = {p.name: p for p in (CUDA_W32, CUDA_FA_W32)}
__all__ += ["GPU_PLANS", "CUDA_W32", "CUDA_FA_W32"]


def get_plan(plan) -> ReductionPlan:
    """A plan by name (``"mlaref_l8a2"``, ``"ggml_generic"``, ``"cuda_w32"``, ...); a ReductionPlan is returned
    as is. ``PLANS`` holds the CPU plans, ``GPU_PLANS`` the GPU ones; names are unique across both."""
    if isinstance(plan, ReductionPlan):
        return plan
    found = (PLANS.get(plan) or GPU_PLANS.get(plan)) if isinstance(plan, str) else None
    if found is None:
        raise ValueError(f"unknown plan {plan!r}; known: {', '.join([*PLANS, *GPU_PLANS])}")
    return found

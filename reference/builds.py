"""Builds of upstream ggml's CPU back-end: which code paths, and so which orders and roundings, a build runs.

Upstream ggml picks its SIMD code at compile time from the compiler's predefined ISA macros (``__SSE3__``,
``__AVX__``, ``__AVX2__``, ``__FMA__``, ``__AVX512F__``, ...), and the compiler adds two choices of its own that
change bytes: GNU C contracts ``a*b + c`` into one fused multiply-add wherever the target has FMA
(``-ffp-contract=fast``, GCC's default outside ISO mode), and its tuning (``-mtune``, implied by
``-march=native``) decides how plain C leftover loops are vectorised. A :class:`GgmlBuild` names both: the
feature set the library was compiled with and the tuning. Its properties say which named plan and which vector
``expf`` the specification must use to give that build's bytes; every op that depends on the build takes those
names as parameters (``plan=`` for vec_dot / mul_mat / flash_attn_ext, ``simd=`` for soft_max and SILU).

The build levels (``LEVELS``) are ggml's own CMake switches with ``GGML_NATIVE=OFF``
(ggml/CMakeLists.txt and ggml/src/ggml-cpu/CMakeLists.txt at ggml 0.15.3, as vendored by ggml-python 0.0.45):

===============  ==========================================================  ========================================
level            compiler flags (GGML_* options)                              what changes (ggml-cpu/vec.h, vec.cpp,
                                                                              simd-mappings.h, arch/x86/quants.c)
===============  ==========================================================  ========================================
``generic``      none: the x86-64 baseline (SSE, SSE2)                        scalar C everywhere except soft_max and
                                                                              SILU, which have an SSE2 ``v_expf``
``avx``          ``-msse4.2 -mavx`` (GGML_SSE42, GGML_AVX)                    8-lane f32/f16/bf16 dots without FMA;
                                                                              the quants' ``__AVX__`` branches
``avx2``         ``avx`` + ``-mavx2 -mfma -mf16c -mbmi2``                     8-lane dots with FMA; ``__AVX2__`` quants;
                                                                              8-lane ``v_expf`` in soft_max / SILU
``avx512``       ``avx2`` + ``-mavx512f -mavx512cd -mavx512vl -mavx512dq      16-lane dots; 16-lane ``v_expf``
                 -mavx512bw`` (GGML_AVX512)
``avx512vnni``   ``avx512`` + ``-mavx512vnni``                                int8 lane sums only (same bytes)
``avx512bf16``   ``avx512vnni`` + ``-mavx512bf16``                            the bf16 dot on ``vdpbf16ps``
===============  ==========================================================  ========================================

On aarch64 (``ARM_LEVELS``, ``GGML_CPU_ARM_ARCH``): ``aarch64-neon`` (``armv8-a``: NEON, its int8 dot emulated),
``aarch64-dotprod`` (``armv8.2-a+dotprod``: ``vdotq_s32``), ``aarch64-fp16`` (``armv8.2-a+fp16+dotprod``: f16 dots
in half precision). FMA is part of the base ISA, so GCC contracts there at every level.

A native build (``GGML_NATIVE=ON``, what ``pip install ggml-python`` compiles from its sdist) has the features of
the CPU it was built on and that CPU's tuning; AVX512-FP16 (half-precision f16 dots) is reachable only that way.
Which (features, tuning) pairs have been run against a real build is in ``VERIFIED``; the docs' Conformance page
lists them with the machine that checked each.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GgmlBuild", "LEVELS", "LEVEL_ORDER", "ARM_LEVELS", "FEATURES", "level", "VERIFIED"]

# The feature names a build is described by (GCC's predefined-macro names, lower case; avx512 = F/CD/VL/DQ/BW).
FEATURES = ("sse3", "ssse3", "sse4_2", "avx", "avx2", "fma", "f16c", "bmi2", "avx512f", "avx512cd", "avx512vl",
            "avx512dq", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16", "neon", "dotprod", "fp16_va",
            "llamafile")

_AVX = frozenset({"sse3", "ssse3", "sse4_2", "avx"})
_AVX2 = _AVX | {"avx2", "fma", "f16c", "bmi2"}
_AVX512 = _AVX2 | {"avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"}

LEVELS: dict[str, frozenset[str]] = {
    "generic": frozenset(),
    "avx": _AVX,
    "avx2": _AVX2,
    "avx512": _AVX512,
    "avx512vnni": _AVX512 | {"avx512_vnni"},
    "avx512bf16": _AVX512 | {"avx512_vnni", "avx512_bf16"},
}
LEVEL_ORDER = tuple(LEVELS)

# The aarch64 levels: GGML_CPU_ARM_ARCH = armv8-a, armv8.2-a+dotprod, armv8.2-a+fp16+dotprod (GGML_NATIVE=OFF),
# cross-built with GCC and run under qemu-user (mlaref.codegen.peers.cross).
ARM_LEVELS: dict[str, frozenset[str]] = {
    "aarch64-neon": frozenset({"neon"}),
    "aarch64-dotprod": frozenset({"neon", "dotprod"}),
    "aarch64-fp16": frozenset({"neon", "dotprod", "fp16_va"}),
}

# (plan, tuning) pairs run bit for bit against a real build: the machine that ran each, for the docs.
VERIFIED = {
    ("ggml_generic", "generic"): "AMD EPYC (Zen 3), ggml-python 0.0.45 built at level generic",
    ("ggml_x86_avx", "generic"): "AMD EPYC (Zen 3), ggml-python 0.0.45 built at level avx",
    ("ggml_x86_avx2", "generic"): "AMD EPYC (Zen 3), ggml-python 0.0.45 built at level avx2",
    ("ggml_x86_avx2_znver3", "znver3"): "AMD EPYC (Zen 3), ggml-python 0.0.45 built natively",
    ("ggml_x86_avx512", "sapphirerapids"): "Intel Sapphire Rapids, ggml-python 0.0.45 built natively",
    ("ggml_x86_avx512_znver4", "znver4"): "AMD EPYC (Zen 4), ggml-python 0.0.45 built natively",
    ("ggml_x86_avx512_icelake", "icelake-server"): "Intel Ice Lake Xeon, ggml-python 0.0.45 built natively",
    ("ggml_arm_neon", "generic"): "qemu-aarch64 on AMD EPYC (Zen 3), ggml 0.15.3 cross-built with GCC 12, armv8-a",
    ("ggml_arm_dotprod", "generic"): "qemu-aarch64 on AMD EPYC (Zen 3), ggml 0.15.3 cross-built with GCC 12, "
                                     "armv8.2-a+dotprod",
    ("ggml_arm_fp16", "generic"): "qemu-aarch64 on AMD EPYC (Zen 3), ggml 0.15.3 cross-built with GCC 12, "
                                  "armv8.2-a+fp16+dotprod",
}


@dataclass(frozen=True)
class GgmlBuild:
    """One build of upstream ggml's CPU back-end: ``features`` it was compiled with (names of ``FEATURES``), and
    the compiler's ``tune`` (``generic`` for a level build; the CPU's ``-mtune`` name for a native one, e.g.
    ``znver3``, ``icelake-server``)."""

    features: frozenset
    tune: str = "generic"
    name: str = ""

    def __post_init__(self):
        unknown = set(self.features) - set(FEATURES)
        if unknown:
            raise ValueError(f"GgmlBuild: unknown features {sorted(unknown)}; known: {', '.join(FEATURES)}")
        object.__setattr__(self, "features", frozenset(self.features))
        if not self.name:
            object.__setattr__(self, "name", f"{self.level}/{self.tune}")

    def has(self, *names: str) -> bool:
        return set(names) <= self.features

    @property
    def level(self) -> str:
        """The highest of ``LEVELS`` whose features this build has (a native build has more)."""
        if "neon" in self.features:
            best = "aarch64-neon"
            for name, feats in ARM_LEVELS.items():
                if feats <= self.features:
                    best = name
            return best
        best = "generic"
        for name, feats in LEVELS.items():
            if feats <= self.features:
                best = name
        return best

    @property
    def fma(self) -> bool:
        """Whether GCC may fuse ``a*b + c`` (GNU C contracts wherever the target has FMA; on aarch64 always)."""
        return "fma" in self.features or "neon" in self.features

    @property
    def vec_dot_plan(self) -> str:
        """The named plan (``mlaref.reference.plan``) of this build's ``vec_dot`` for every pair.

        Raises ``LookupError`` for a build whose order is neither modelled nor inferable (never for a level)."""
        t = self.tune
        if self.has("neon"):
            return "ggml_arm_fp16" if self.has("fp16_va") else "ggml_arm_dotprod" if self.has("dotprod") \
                else "ggml_arm_neon"
        if self.has("avx512f"):
            if self.has("avx512_fp16"):
                return "ggml_x86_avx512"  # Sapphire Rapids: f16 dots in half precision
            if t.startswith("znver"):
                return "ggml_x86_avx512_znver4"
            if self.has("avx512_bf16"):
                return "ggml_x86_avx512_bf16"
            return "ggml_x86_avx512_icelake"
        if self.has("avx2", "fma"):
            return "ggml_x86_avx2_znver3" if t.startswith("znver") else "ggml_x86_avx2"
        if self.has("avx"):
            if self.fma:
                raise LookupError(f"ggml build {self.name}: AVX with FMA but without AVX2 is not a level ggml "
                                  f"builds; its order is not modelled")
            return "ggml_x86_avx"
        return "ggml_generic"

    @property
    def mul_mat_modelled(self) -> str:
        """'' where the spec models this build's ``mul_mat`` (vec_dot rows, ``ggml_compute_forward_mul_mat``), else
        why not: with ``GGML_LLAMAFILE`` (``ggml_cpu_has_llamafile()``; ggml's CMake default is OFF and
        ggml-python keeps it, llama.cpp turns it on) llamafile's ``sgemm`` takes contiguous f32 / f16 / bf16 /
        q8_0 / q4_0 ... products over first (ggml-cpu.c@ggml 0.15.3, ``#if GGML_USE_LLAMAFILE``), in tiles of
        its own order, which the spec does not model."""
        if "llamafile" in self.features:
            return (f"ggml build {self.name} has llamafile's sgemm (GGML_LLAMAFILE), which takes mul_mat over "
                    "in an order the spec does not model")
        return ""

    @property
    def simd(self) -> str:
        """The vector ``expf`` (and chunk width) of soft_max and SILU: ``avx512`` (16 lanes, AVX512F+DQ),
        ``avx2`` (8 lanes, AVX2+FMA), ``sse2_fma`` / ``sse2_avx`` / ``sse2`` (4 lanes: with FMA; without FMA but
        compiled with AVX, which changes soft_max's horizontal sum; the x86-64 baseline)."""
        if self.has("neon"):
            return "neon"
        if self.has("avx512f", "avx512dq"):
            return "avx512"
        if self.has("avx2", "fma"):
            return "avx2"
        if self.fma:
            return "sse2_fma"
        return "sse2_avx" if self.has("avx") else "sse2"

    def from_float(self, type_name: str) -> str:
        """The quantize variant (``mlaref.reference.quantize``) of the CPU back-end's ``from_float`` for
        ``type_name`` in this build: arch/x86/quants.c's q8_0 / q8_1 code (``127/amax``, ties to even) is
        compiled under ``__AVX__``, the F16C ``vcvtps2ph`` of f16 rows (NaN payloads) under ``__F16C__``; without
        them the CPU back-end falls back to the reference routine (``ref``)."""
        if self.has("neon"):  # arch/arm/quants.c: q8_0 / q8_1 round as the x86 code does; q8_K, f16: reference
            return "x86" if type_name in ("q8_0", "q8_1") else "ref" if type_name in ("q8_K", "f16") else "x86"
        if type_name in ("q8_0", "q8_1"):
            return "x86" if self.has("avx") else "ref"
        if type_name == "f16":
            return "x86" if self.has("f16c") else "ref"
        return "x86"

    @property
    def verified(self) -> str:
        """The machine that checked this build's vec_dot plan bit for bit, or '' where the plan is inferred."""
        try:
            return VERIFIED.get((self.vec_dot_plan, self.tune), "")
        except LookupError:
            return ""


def level(name: str, tune: str = "generic") -> GgmlBuild:
    """The build of level ``name`` (``LEVELS`` or ``ARM_LEVELS``), compiled with ``GGML_NATIVE=OFF`` (tuning
    ``generic``)."""
    feats = LEVELS.get(name, ARM_LEVELS.get(name))
    if feats is None:
        raise ValueError(f"unknown ggml build level {name!r}; known: {', '.join((*LEVELS, *ARM_LEVELS))}")
    return GgmlBuild(feats, tune, name if tune == "generic" else f"{name}/{tune}")

"""The ISA table: every instruction-set token mlaref generates kernels for, as a feature bundle with a priority.

A token names a *bundle* of CPU features that a kernel may use, as Highway's targets do
(``hwy/detect_targets.h``): ``avx2`` means AVX2 + FMA + F16C together, because every CPU that has AVX2 (Haswell,
Zen 1 and later) has the other two and ggml's AVX2 paths use all three. Dispatch (:mod:`mlaref.codegen.dispatch`)
takes, among the tokens of the running architecture, the one with the highest ``priority`` whose ``features``
the CPU reports; ``implies`` lists the tokens whose kernels also run wherever this one runs.

=============  =======  =========================================================  ============  =====  ========
token          arch     features (/proc/cpuinfo flag names)                        gcc flags     bits   priority
=============  =======  =========================================================  ============  =====  ========
``scalar``     any      (none)                                                     (none)        32     0
``avx2``       x86_64   avx2 fma f16c                                              -mavx2 ...    256    20
``avx512``     x86_64   + avx512f avx512cd avx512bw avx512dq avx512vl              -mavx512f ... 512    30
``avx512vnni`` x86_64   + avx512_vnni                                              -mavx512vnni  512    40
``neon``       aarch64  asimd                                                      -march=armv8-a 128   20
``neondot``    aarch64  + asimddp                                                  +dotprod      128    30
=============  =======  =========================================================  ============  =====  ========

GPU tokens live in their own table, ``CUDA_ISAS``, so nothing that walks the CPU table (dispatch, the cffi build,
``mlaref info``'s feature lines) ever meets one: ``sm90`` is NVIDIA compute capability 9.0 (H100 / H200), built by
``nvcc -arch=sm_90`` (:mod:`mlaref.codegen.cuda`); its ``vector_bits`` are a warp's 32 float lanes. :func:`get`
and the kernel-name grammar know both tables; :func:`tokens` and :func:`for_arch` list the CPU tokens only.

Names elsewhere (for the docs page): NumPy calls the x86 bundles ``AVX2 FMA3 F16C`` / ``AVX512_SKX`` /
``AVX512_CLX`` and the ARM ones ``ASIMD`` / ``ASIMDDP``; Highway ``HWY_AVX2`` / ``HWY_AVX3`` / ``HWY_AVX3_DL``
(which also needs VBMI2 etc.; the nearest) / ``HWY_NEON``; ggml's build macros ``__AVX2__ __FMA__ __F16C__`` /
``__AVX512F__ ...`` / ``__AVX512VNNI__`` / ``__ARM_NEON`` / ``__ARM_FEATURE_DOTPROD``.
"""

from __future__ import annotations

import dataclasses

__all__ = ["Isa", "ISAS", "CUDA_ISAS", "get", "tokens", "all_tokens", "for_arch", "host_arch"]


@dataclasses.dataclass(frozen=True)
class Isa:
    """One ISA token: what a kernel compiled for it may use and how to compile it."""

    token: str
    arch: str  # "any", "x86_64" or "aarch64"
    implies: tuple[str, ...]  # tokens whose kernels run wherever this one runs (transitively closed)
    cflags: tuple[str, ...]  # gcc flags added to the common ones (build.COMMON_CFLAGS)
    features: tuple[str, ...]  # every /proc/cpuinfo flag the bundle needs (implied bundles included)
    vector_bits: int
    priority: int
    numpy: str
    highway: str
    ggml: str

    @property
    def cross(self) -> bool:
        """True when kernels of this token cannot run on the build host's architecture natively."""
        return self.arch not in ("any", host_arch())


_X86_AVX2 = ("avx2", "fma", "f16c")
_X86_AVX512 = _X86_AVX2 + ("avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl")
_AVX2_FLAGS = ("-mavx2", "-mfma", "-mf16c")
_AVX512_FLAGS = _AVX2_FLAGS + ("-mavx512f", "-mavx512cd", "-mavx512bw", "-mavx512dq", "-mavx512vl")

ISAS: dict[str, Isa] = {
    isa.token: isa
    for isa in (
        Isa("scalar", "any", (), (), (), 32, 0, "(baseline)", "HWY_EMU128", "(no SIMD macros)"),
        Isa("avx2", "x86_64", ("scalar",), _AVX2_FLAGS, _X86_AVX2, 256, 20,
            "AVX2 FMA3 F16C", "HWY_AVX2", "__AVX2__ __FMA__ __F16C__"),
        Isa("avx512", "x86_64", ("scalar", "avx2"), _AVX512_FLAGS, _X86_AVX512, 512, 30,
            "AVX512_SKX", "HWY_AVX3", "__AVX512F__ __AVX512BW__ __AVX512DQ__ __AVX512VL__"),
        Isa("avx512vnni", "x86_64", ("scalar", "avx2", "avx512"), _AVX512_FLAGS + ("-mavx512vnni",),
            _X86_AVX512 + ("avx512_vnni",), 512, 40, "AVX512_CLX", "HWY_AVX3_DL (nearest)", "__AVX512VNNI__"),
        Isa("neon", "aarch64", ("scalar",), ("-march=armv8-a",), ("asimd",), 128, 20,
            "ASIMD", "HWY_NEON", "__ARM_NEON"),
        Isa("neondot", "aarch64", ("scalar", "neon"), ("-march=armv8.2-a+dotprod",), ("asimd", "asimddp"), 128, 30,
            "ASIMDDP", "HWY_NEON (+dotprod)", "__ARM_FEATURE_DOTPROD"),
    )
}


# GPU targets: arch "cuda" (never the host's, so ``cross`` is true and CPU code skips them); cflags are nvcc's.
CUDA_ISAS: dict[str, Isa] = {
    "sm90": Isa("sm90", "cuda", (), ("-arch=sm_90",), ("sm_90",), 1024, 0, "(none)", "(none)",
                "GGML_USE_CUDA, __CUDA_ARCH__ 900"),
}


def get(token: str) -> Isa:
    """The ISA of ``token`` (CPU or GPU table); ValueError naming the known tokens otherwise."""
    found = ISAS.get(token) or CUDA_ISAS.get(token)
    if found is None:
        raise ValueError(f"unknown ISA token {token!r}; known: {', '.join(all_tokens())}")
    return found


def all_tokens() -> tuple[str, ...]:
    """The CPU tokens, then the GPU tokens: every ISA a kernel name may carry."""
    return tuple(ISAS) + tuple(CUDA_ISAS)


def tokens() -> tuple[str, ...]:
    """The CPU tokens, in table order."""
    return tuple(ISAS)


def host_arch() -> str:
    """The machine architecture as ``x86_64`` / ``aarch64`` (other names pass through)."""
    import platform

    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


def for_arch(arch: str) -> tuple[Isa, ...]:
    """The tokens that can run on ``arch``, highest priority first (``scalar`` last)."""
    found = [i for i in ISAS.values() if i.arch in ("any", arch)]
    return tuple(sorted(found, key=lambda i: -i.priority))

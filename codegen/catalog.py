"""The kernel catalog: every KernelSpec mlaref generates. The only place to add a kernel variant.

A spec is (family, type_x, type_y, isa, plan). Its name follows :mod:`mlaref.codegen.naming`; its template is
``codegen/templates/<family>.c.j2``, whose TOML header lists the values each parameter may take
(:mod:`mlaref.codegen.render` enforces them). Couplings between parameters (a variant that exists only for some
types, ISAs that only make sense where a template uses SIMD primitives) live in :meth:`KernelSpec.validate`.

Families (one cffi module per family and ISA, :mod:`mlaref.codegen.build`):

==================  =====================================================================================
family              C signature (all sizes int64_t, strides in bytes)
==================  =====================================================================================
``dequantize_row``  ``(const uint8_t *x, float *y, n_rows, n, x_stride, y_stride)``
``quantize_row``    ``(const float *x, uint8_t *y, n_rows, n, x_stride, y_stride)``
``quantize_chunk``  ``(const float *x, uint8_t *y, const float *qw, n_rows, n, x_stride, y_stride)``: the model
                    quantizers of ``ggml_quantize_chunk``; ``qw`` is the importance matrix (``n`` floats, one
                    per column, the same for every row) or NULL for none
``convert_rows``    ``(const uint8_t *x, uint8_t *y, float *scratch, n_rows, n, x_stride, y_stride)``
``copy_rows``       ``(uint8_t *dst, const uint8_t *src, row_bytes, n_rep, ne1, ne2, ne3, s_nb1..3, d_nb1..3,
                    stream)``
``concat_rows``     ``(uint8_t *dst, const uint8_t *a, const uint8_t *b, a_bytes, b_bytes, ne1, ne2, ne3,
                    a_nb1..3, b_nb1..3, d_nb1..3, stream)``
``cast_rows``       ``(uint8_t *dst, const uint8_t *src, n, ne1, ne2, ne3, s_nb1..3, d_nb1..3)``
``vec_dot``         ``(const uint8_t *x, x_stride, m, const uint8_t *y, y_stride, n_y, n, float *out, out_stride)``
``mul_mat``,        ``int``, with the shapes and strides of every operand and one thread's range (``SIGNATURES``);
``flash_attn_ext``  ``flash_attn_ext_partial`` (the chunked variant's partial attention) takes flash_attn_ext's
                    arguments and writes rows of acc, M, S, undivided
``fa_merge``        ``(const float *a, const float *b, float *dst, Dv, r0, r1, final)``: rows [r0, r1) of two
                    partials merged (b NULL: a finalised), plan ``libm`` (its expf)
==================  =====================================================================================

vec_dot plans (kernel-name token -> reference/plan.py plan): ``l8a1`` / ``l8a2`` -> ``mlaref_l8a1`` /
``mlaref_l8a2`` (every ISA; ``l16a1`` gives the same bytes as ``l8a2`` by the plan's lane map, so it is not a
separate kernel), ``ggml_generic`` (scalar C, serial: scalar ISA only), ``ggml_x86_avx2`` (block pairs with plain
y, scalar and the x86 ISAs: its float order is ggml's AVX2 path, and the wider ISAs only sum the exact int8 lanes
faster). ``avx512vnni`` and ``neondot`` only change the int8 lane sums, so only block pairs get them.

ISA rule: a format whose row code calls the SIMD primitives (``simd/<isa>.h.j2``) gets a kernel for every ISA
in ``ROW_ISAS``; a format whose code is plain scalar C gets only ``scalar`` (another ISA would compile the same
loop with other flags and add nothing). ``avx512vnni`` and ``neondot`` differ from their base ISA only in integer
dot products, so only ``vec_dot`` and the block-weight ``mul_mat`` / ``flash_attn_ext`` kernels use them. The
byte-copy families (``copy_rows``, ``concat_rows``) exist for ``COPY_ISAS``: the x86 ISAs write large outputs with
streaming stores; NEON would add nothing to the portable C.
"""

from __future__ import annotations

import dataclasses
import functools
from types import MappingProxyType

from mlaref.codegen import naming
from mlaref.reference.types import get_type

__all__ = ["KernelSpec", "catalog", "check_computes", "FAMILIES", "SIGNATURES", "QUANT_VARIANTS", "MODEL_QUANT_TYPES", "ROW_ISAS",
           "CudaKernelSpec", "cuda_catalog", "cuda_by_name", "CUDA_SIGNATURES"]

ROW_ISAS = ("scalar", "avx2", "avx512", "neon")
# The byte-copy families: the x86 ISAs differ from the portable C only by streaming stores for large outputs.
COPY_ISAS = ("scalar", "avx2", "avx512")

# the prototype of flash_attn_ext and of flash_attn_ext_partial (the same kernel with another output)
_FA_SIGNATURE = ("int {name}(const uint8_t *q, const uint8_t *k, const uint8_t *v, const uint8_t *mask, "
                 "float *dst, int64_t Dk, int64_t Dv, int64_t nq, int64_t nh, int64_t ne3, int64_t nbq1, "
                 "int64_t nbq2, int64_t nbq3, int64_t n_kv, int64_t nhk, int64_t ne3k, int64_t nbk1, "
                 "int64_t nbk2, int64_t nbk3, int64_t nbv1, int64_t nbv2, int64_t nbv3, int64_t nbm1, "
                 "int64_t nbm2, int64_t nbm3, int64_t mne2, int64_t mne3, float scale, float softcap, "
                 "int64_t k_step, int64_t kv_chunks, int exp_kind, int64_t q_block, int64_t u0, int64_t u1);")
# C prototypes per family, ``{name}`` filled in; build.py hands them to cffi's cdef (read-only).
SIGNATURES = MappingProxyType({
    "dequantize_row": "void {name}(const uint8_t *x, float *y, int64_t n_rows, int64_t n, int64_t x_stride, "
                      "int64_t y_stride);",
    "quantize_row": "void {name}(const float *x, uint8_t *y, int64_t n_rows, int64_t n, int64_t x_stride, "
                    "int64_t y_stride);",
    "quantize_chunk": "void {name}(const float *x, uint8_t *y, const float *qw, int64_t n_rows, int64_t n, "
                      "int64_t x_stride, int64_t y_stride);",
    "convert_rows": "void {name}(const uint8_t *x, uint8_t *y, float *scratch, int64_t n_rows, int64_t n, "
                    "int64_t x_stride, int64_t y_stride);",
    "cast_rows": "void {name}(uint8_t *dst, const uint8_t *src, int64_t n, int64_t ne1, int64_t ne2, int64_t ne3, "
                 "int64_t s_nb1, int64_t s_nb2, int64_t s_nb3, int64_t d_nb1, int64_t d_nb2, int64_t d_nb3);",
    "vec_dot": "void {name}(const uint8_t *x, int64_t x_stride, int64_t m, const uint8_t *y, int64_t y_stride, "
               "int64_t n_y, int64_t n, float *out, int64_t out_stride);",
    "copy_rows": "void {name}(uint8_t *dst, const uint8_t *src, int64_t row_bytes, int64_t n_rep, int64_t ne1, "
                 "int64_t ne2, int64_t ne3, int64_t s_nb1, int64_t s_nb2, int64_t s_nb3, int64_t d_nb1, "
                 "int64_t d_nb2, int64_t d_nb3, int64_t stream);",
    "concat_rows": "void {name}(uint8_t *dst, const uint8_t *a, const uint8_t *b, int64_t a_bytes, int64_t b_bytes, "
                   "int64_t ne1, int64_t ne2, int64_t ne3, int64_t a_nb1, int64_t a_nb2, int64_t a_nb3, "
                   "int64_t b_nb1, int64_t b_nb2, int64_t b_nb3, int64_t d_nb1, int64_t d_nb2, int64_t d_nb3, "
                   "int64_t stream);",
    # mul_mat / flash_attn_ext (see the end of this file): one thread's part, src0 rows [r0, r1) x src1 columns
    # [c0, c1) / (head, query block) units [u0, u1); 0 when it succeeded
    "mul_mat": "int {name}(const uint8_t *src0, const uint8_t *src1, float *dst, int64_t K, int64_t M, "
               "int64_t ne02, int64_t ne03, int64_t nb01, int64_t nb02, int64_t nb03, int64_t N, int64_t ne12, "
               "int64_t ne13, int64_t nb11, int64_t nb12, int64_t nb13, int64_t r0, int64_t r1, int64_t c0, "
               "int64_t c1);",
    "flash_attn_ext": _FA_SIGNATURE,
    # the partial kernel is flash_attn_ext's with another output (codegen/templates/flash_attn_ext_partial.c.j2)
    "flash_attn_ext_partial": _FA_SIGNATURE,
    "fa_merge": "void {name}(const float *a, const float *b, float *dst, int64_t Dv, int64_t r0, int64_t r1, "
                "int64_t final);",
})
FAMILIES = tuple(SIGNATURES)

# Formats whose dequantizer exists in C (codegen/templates/formats/<type>.h.j2) and whether it uses SIMD primitives
# (f32's row copy counts: its fixed-size moves become the ISA's vector moves).
DEQUANT_TYPES = MappingProxyType({
    "f32": True, "f16": True, "bf16": True, "q4_0": True, "q4_1": True, "q5_0": True, "q5_1": True,
    "q8_0": True, "q8_1": True, "iq4_nl": True, "q8_K": True, "q4_K": True, "q6_K": True,
    "q8_0_x4": True, "q8_1_x4": True,
})
# Quantizers in C: type -> {variant: uses SIMD primitives}. Variants are those of reference/types (upstream facts §4d);
# a variant that coincides with ``ref`` for a type (q4_0's ``x86``) is the ``ref`` kernel.
QUANT_VARIANTS = MappingProxyType({t: MappingProxyType(v) for t, v in {
    "f16": {"ref": True, "x86": True},
    "bf16": {"ref": True},
    "q4_0": {"ref": True},
    "q4_1": {"ref": True},
    "q5_0": {"ref": True},
    "q5_1": {"ref": True},
    "q8_0": {"ref": True, "x86": True},
    "q8_1": {"ref": True, "x86": True},
    "q8_K": {"ref": True, "iqk": True},
    "iq4_nl": {"ref": True},
    "q8_0_x4": {"iqk": True},
    "q8_1_x4": {"iqk": True},
}.items()})
# Model quantizers in C (family quantize_chunk, plan "model"): the formats whose ``ggml_quantize_chunk`` runs a search
# (iq4_nl's ntry = 7 scale tries; q4_K's make_qkx2/qkx3 + make_qp; q6_K's make_qx), with and without an imatrix
# (one kernel: qw NULL is "no imatrix", as in ggml). Their vector code keeps the scalar float order by putting
# independent groups (blocks, sub-blocks) in the lanes, so it is written for AVX2 (and runs on the avx2 kernel on
# AVX-512 machines); elsewhere the scalar C is the kernel.
MODEL_QUANT_TYPES = ("iq4_nl", "q4_K", "q6_K")
MODEL_QUANT_ISAS = ("scalar", "avx2")
# convert_rows: src1 row types -> the vec_dot types they are converted to (upstream facts §4a, #253's iqk_quantize_any).
CONVERT_SOURCES = ("f16", "bf16", "q8_0")
# vec_dot pairs (upstream facts §4a; reference/ops/_vecdot_pairs.py): x type -> y types, x's vec_dot_type (from the
# format registry) and then that type's interleaved IQK layout where one exists
VEC_DOT_X_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q5_0", "iq4_nl", "q4_1", "q5_1", "q4_K", "q6_K")
_X4_LAYOUTS = {"q8_0": ("q8_0_x4",), "q8_1": ("q8_1_x4",)}


def _vec_dot_ys(x: str) -> tuple[str, ...]:
    vdt = get_type(x).vec_dot_type
    return (vdt, *_X4_LAYOUTS.get(vdt, ()))


VEC_DOT_PAIRS = MappingProxyType({x: _vec_dot_ys(x) for x in VEC_DOT_X_TYPES})
VEC_DOT_PLANS = MappingProxyType({"l8a1": "mlaref_l8a1", "l8a2": "mlaref_l8a2", "ggml_generic": "ggml_generic",
                                  "ggml_x86_avx2": "ggml_x86_avx2"})
VEC_DOT_ISAS = ("scalar", "avx2", "avx512", "avx512vnni", "neon", "neondot")
CONVERT_TARGETS = ("f16", "q8_0", "q8_1", "q8_K", "q8_0_x4", "q8_1_x4")


@dataclasses.dataclass(frozen=True, order=True)
class KernelSpec:
    """One generated kernel: what it computes (family, types) and how (ISA, plan)."""

    family: str
    type_x: str
    type_y: str | None
    isa: str
    plan: str

    @functools.cached_property
    def name(self) -> str:
        return naming.format(self.family, self.type_x, self.type_y, self.isa, self.plan)

    @property
    def template(self) -> str:
        return f"{self.family}.c.j2"

    @property
    def path(self) -> str:
        """The file of this kernel relative to generated/."""
        return f"{self.family}/{self.name}.c"

    def params(self) -> dict:
        """The template parameters (checked against the template's TOML header)."""
        p = {"type_x": self.type_x, "isa": self.isa, "plan": self.plan}
        if self.type_y is not None:
            p["type_y"] = self.type_y
        return p

    def signature(self) -> str:
        return SIGNATURES[self.family].format(name=self.name)

    def validate(self) -> "KernelSpec":
        """Raise ValueError naming the broken coupling; return self when the spec is consistent."""
        where = f"kernel spec {self.family}/{self.type_x}/{self.type_y}/{self.isa}/{self.plan}"
        if self.family not in SIGNATURES:
            raise ValueError(f"{where}: family must be one of {', '.join(SIGNATURES)}")
        if self.family in MM_FAMILIES:  # mul_mat / flash_attn_ext: see the end of this file
            return _validate_mm(self, where)
        if self.family == "cast_rows":  # see the end of this file
            return _validate_cast(self, where)
        if self.family == "fa_merge":  # see the end of the mul_mat section
            return _validate_fa_merge(self, where)
        two_types = self.family in ("convert_rows", "vec_dot")
        if two_types != (self.type_y is not None):
            raise ValueError(f"{where}: type_y is required for convert_rows and vec_dot, forbidden for {self.family}")
        if self.family == "vec_dot":
            return self._validate_vec_dot(where)
        if self.isa in ("avx512vnni", "neondot"):
            raise ValueError(f"{where}: {self.isa} differs from its base ISA only in integer dot products; "
                             f"use it for vec_dot only")
        if self.family == "dequantize_row":
            simd = DEQUANT_TYPES.get(self.type_x)
            if simd is None:
                raise ValueError(f"{where}: no C dequantizer for {self.type_x}")
            if self.plan != "ref":
                raise ValueError(f"{where}: dequantize has no order to choose; its plan is 'ref'")
        elif self.family == "quantize_chunk":
            if self.type_x not in MODEL_QUANT_TYPES:
                raise ValueError(f"{where}: model quantizer kernels exist for {', '.join(MODEL_QUANT_TYPES)}")
            if self.plan != "model":
                raise ValueError(f"{where}: quantize_chunk computes the model variant; its plan is 'model'")
            if self.isa not in MODEL_QUANT_ISAS:
                raise ValueError(f"{where}: quantize_chunk kernels exist for {', '.join(MODEL_QUANT_ISAS)}")
            return self
        elif self.family in ("quantize_row", "convert_rows"):
            target = self.type_x if self.family == "quantize_row" else self.type_y
            variants = QUANT_VARIANTS.get(target)
            if variants is None:
                raise ValueError(f"{where}: no C quantizer for {target}")
            if self.plan not in variants:
                raise ValueError(f"{where}: {target} has quantize variants {', '.join(variants)}, not {self.plan!r}")
            simd = variants[self.plan]
            if self.family == "convert_rows":
                if self.type_x not in CONVERT_SOURCES or self.type_x == self.type_y:
                    raise ValueError(f"{where}: convert_rows takes a source in {', '.join(CONVERT_SOURCES)} "
                                     f"different from the target")
                simd = simd or DEQUANT_TYPES[self.type_x]
        else:  # copy_rows, concat_rows
            simd = self.isa in COPY_ISAS
            if self.type_x != "bytes" or self.plan != "ref":
                raise ValueError(f"{where}: {self.family} is type-agnostic: type 'bytes', plan 'ref'")
            if not simd:
                raise ValueError(f"{where}: {self.family} is generated for {', '.join(COPY_ISAS)} (the x86 ISAs "
                                 f"add streaming stores; elsewhere the portable C is the kernel)")
        if self.isa != "scalar" and not simd:
            raise ValueError(f"{where}: the row code of this kernel is plain C (no SIMD primitives); only the "
                             f"scalar ISA is generated for it")
        if self.isa not in ROW_ISAS:
            raise ValueError(f"{where}: row kernels exist for {', '.join(ROW_ISAS)}")
        return self

    def _validate_vec_dot(self, where: str) -> "KernelSpec":
        if self.type_y not in VEC_DOT_PAIRS.get(self.type_x, ()):
            raise ValueError(f"{where}: {self.type_x}.{self.type_y} is not a vec_dot pair (upstream facts §4a)")
        if self.plan not in VEC_DOT_PLANS:
            raise ValueError(f"{where}: vec_dot plans are {', '.join(VEC_DOT_PLANS)}")
        element = self.type_x in ("f32", "f16", "bf16")
        if self.isa not in VEC_DOT_ISAS:
            raise ValueError(f"{where}: vec_dot kernels exist for {', '.join(VEC_DOT_ISAS)}")
        if element and self.isa in ("avx512vnni", "neondot"):
            raise ValueError(f"{where}: {self.isa} changes only int8 dot products; element pairs use its base ISA")
        if self.plan in ("ggml_generic", "ggml_x86_avx2") and self.type_y.endswith("_x4"):
            raise ValueError(f"{where}: ggml's own plans go with ggml's plain vec_dot types, not {self.type_y}")
        if self.plan == "ggml_generic" and self.isa != "scalar":
            raise ValueError(f"{where}: ggml_generic is a serial order; only the scalar ISA is generated for it")
        if self.plan == "ggml_x86_avx2" and (element or self.isa in ("neon", "neondot")):
            raise ValueError(f"{where}: ggml_x86_avx2 is generated for block pairs on scalar and the x86 ISAs")
        return self


def _row_isas(simd: bool) -> tuple[str, ...]:
    return ROW_ISAS if simd else ("scalar",)


@functools.cache
def catalog() -> tuple[KernelSpec, ...]:
    """Every kernel, sorted by name. Editing this function is how a variant is added."""
    specs = []
    for t, simd in DEQUANT_TYPES.items():
        specs += [KernelSpec("dequantize_row", t, None, i, "ref") for i in _row_isas(simd)]
    for t, variants in QUANT_VARIANTS.items():
        for plan, simd in variants.items():
            specs += [KernelSpec("quantize_row", t, None, i, plan) for i in _row_isas(simd)]
    specs += [KernelSpec("quantize_chunk", t, None, i, "model") for t in MODEL_QUANT_TYPES for i in MODEL_QUANT_ISAS]
    for src in CONVERT_SOURCES:
        for dst in CONVERT_TARGETS:
            if dst == src:
                continue
            for plan, simd in QUANT_VARIANTS[dst].items():
                specs += [KernelSpec("convert_rows", src, dst, i, plan)
                          for i in _row_isas(simd or DEQUANT_TYPES[src])]
    specs += [KernelSpec(f, "bytes", None, i, "ref") for f in ("copy_rows", "concat_rows") for i in COPY_ISAS]
    for tx, tys in VEC_DOT_PAIRS.items():
        for ty in tys:
            for plan in VEC_DOT_PLANS:
                for i in VEC_DOT_ISAS:
                    try:
                        specs.append(KernelSpec("vec_dot", tx, ty, i, plan)._validate_vec_dot(""))
                    except ValueError:
                        continue
    specs += mm_specs()  # mul_mat / flash_attn_ext: see the end of this file
    specs += cast_specs()  # cast_rows: see the end of this file
    for s in specs:
        s.validate()
    names = [s.name for s in specs]
    assert len(set(names)) == len(names), "duplicate kernel names in the catalog"
    return tuple(sorted(specs, key=lambda s: s.name))


def check_computes(spec, kernel: str, family: str, type_x: str, type_y: str | None, plan: str) -> None:
    """Raise ValueError unless the spec named ``kernel`` (CPU or CUDA) computes (family, type_x, type_y, plan)."""
    if (spec.family, spec.type_x, spec.type_y, spec.plan) != (family, type_x, type_y, plan):
        raise ValueError(f"kernel: {kernel} computes {spec.family} {spec.type_x}/{spec.type_y} [{spec.plan}], "
                         f"not {family} {type_x}/{type_y} [{plan}]")


@functools.cache
def by_name() -> dict[str, KernelSpec]:
    return {s.name: s for s in catalog()}


@functools.cache
def by_key() -> dict[tuple, dict[str, KernelSpec]]:
    """(family, type_x, type_y, plan) -> {isa: spec}: what dispatch chooses among."""
    out: dict[tuple, dict[str, KernelSpec]] = {}
    for s in catalog():
        out.setdefault((s.family, s.type_x, s.type_y, s.plan), {})[s.isa] = s
    return out


# ---- mul_mat and flash_attn_ext (helper H11; entry points in codegen/kernels/mm.py) --------------------------
# mul_mat: type_x = src0 (weight), type_y = src1 (its columns are converted to type_x's vec_dot type inside the
# kernel, #253 semantics); flash_attn_ext: type_x = K type, type_y = V type. Plan "l16a1" = mlaref_l16a1 for every
# dot product; flash attention's k_step, kv_chunks and exp are run-time arguments taken from the plan value. Both
# families also have "l8a1" (mlaref_l8a1 dots, K.Q for flash attention: one 8-lane accumulator per output, so AVX2
# holds a 4 x 3 register tile) on the ISAs of MM_L8A1_ISAS; the 16-lane avx512 kernels keep l16a1 only. "l8s1"
# (mlaref_l8s1: block-serial 32-block dots, 8 interleaved src0 / K rows per avx2 tile) below.
# neon / neondot kernels run under qemu only here (tests/kernels/test_neon_mm.py); neondot (sdot) exists for the
# int8 32-block weights, like avx512vnni, but not for k-quants, whose int16 products sdot cannot take.
MM_FAMILIES = ("mul_mat", "flash_attn_ext", "flash_attn_ext_partial")
FA_FAMILIES = ("flash_attn_ext", "flash_attn_ext_partial")
MM_X_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q5_0", "iq4_nl", "q4_1", "q5_1", "q4_K", "q6_K")
MM_Y_TYPES = ("f32", "f16", "bf16", "q8_0")
FA_KV_TYPES = ("f16", "q8_0")
MM_ISAS = ("scalar", "avx2", "avx512", "avx512vnni", "neon", "neondot")
MM_PLANS = ("l16a1", "l8a1", "l8s1")
MM_L8A1_ISAS = ("scalar", "avx2")
# l8s1 (mlaref_l8s1: the 32-block pairs block-serial; element and k-quant pairs are l8a1 there, whose kernels run
# them): mul_mat kernels for the 32-block weights and flash_attn_ext kernels for q8_0 K only, on these ISAs
MM_L8S1_ISAS = ("scalar", "avx2")
MM_L8S1_X_TYPES = ("q8_0", "q4_0", "q5_0", "iq4_nl", "q4_1", "q5_1")


def _validate_mm(spec: KernelSpec, where: str) -> KernelSpec:
    if spec.type_y is None:
        raise ValueError(f"{where}: {spec.family} needs type_y")
    if spec.plan not in MM_PLANS:
        raise ValueError(f"{where}: {spec.family} plans are {', '.join(MM_PLANS)}")
    if spec.isa not in MM_ISAS:
        raise ValueError(f"{where}: {spec.family} kernels exist for {', '.join(MM_ISAS)}")
    if spec.family == "mul_mat":
        if spec.type_x not in MM_X_TYPES or spec.type_y not in MM_Y_TYPES:
            raise ValueError(f"{where}: mul_mat takes src0 in {', '.join(MM_X_TYPES)} and src1 in "
                             f"{', '.join(MM_Y_TYPES)}")
        x_block = spec.type_x not in ("f32", "f16", "bf16")
    else:
        if spec.type_x not in FA_KV_TYPES or spec.type_y != spec.type_x:
            raise ValueError(f"{where}: {spec.family} takes K and V of one type in {', '.join(FA_KV_TYPES)}")
        x_block = spec.type_x == "q8_0"
    if spec.isa == "avx512vnni" and not x_block:
        raise ValueError(f"{where}: avx512vnni changes only int8 dot products; element types use avx512")
    if spec.isa == "neondot" and (not x_block or spec.type_x in ("q4_K", "q6_K")):
        # sdot multiplies int8; element and k-quant (int16 values) pairs would compile neon's code again
        raise ValueError(f"{where}: neondot changes only int8 dot products (32-block weights); others use neon")
    if spec.plan == "l8a1" and spec.isa not in MM_L8A1_ISAS:
        raise ValueError(f"{where}: plan l8a1 has {spec.family} kernels for {', '.join(MM_L8A1_ISAS)} only")
    if spec.plan == "l8s1":
        if spec.isa not in MM_L8S1_ISAS:
            raise ValueError(f"{where}: plan l8s1 has {spec.family} kernels for {', '.join(MM_L8S1_ISAS)} only")
        if spec.type_x not in (MM_L8S1_X_TYPES if spec.family == "mul_mat" else ("q8_0",)):
            raise ValueError(f"{where}: plan l8s1 has kernels for the 32-block weights {', '.join(MM_L8S1_X_TYPES)} "
                             f"(mul_mat) and q8_0 K ({spec.family}) only (the other pairs run l8a1's kernels)")
    return spec


# fa_merge (the chunked variant's merge of flash_attn_ext_partial rows): element-wise f32 over rows; its plan token
# names the exp it calls (libm expf, as flash_attn_ext's chunk merge). Row ISAs: its loops use the 16-lane mm_vf
# primitives of simd/mm_<isa>.h.j2, which every row ISA has; vnni / sdot would change nothing in it.
FA_MERGE_PLAN = "libm"


def _validate_fa_merge(spec: KernelSpec, where: str) -> KernelSpec:
    if (spec.type_x, spec.type_y, spec.plan) != ("f32", None, FA_MERGE_PLAN):
        raise ValueError(f"{where}: fa_merge merges f32 partials: type f32, no type_y, plan {FA_MERGE_PLAN!r}")
    if spec.isa not in ROW_ISAS:
        raise ValueError(f"{where}: fa_merge kernels exist for {', '.join(ROW_ISAS)}")
    return spec


def mm_specs() -> list[KernelSpec]:
    """The mul_mat, flash_attn_ext, flash_attn_ext_partial (validated by :func:`_validate_mm`) and fa_merge
    kernels."""
    out = []
    for fam, pairs in (("mul_mat", [(x, y) for x in MM_X_TYPES for y in MM_Y_TYPES]),
                       *((f, [(t, t) for t in FA_KV_TYPES]) for f in FA_FAMILIES)):
        for tx, ty in pairs:
            for i in MM_ISAS:
                for plan in MM_PLANS:
                    try:
                        out.append(_validate_mm(KernelSpec(fam, tx, ty, i, plan), ""))
                    except ValueError:
                        continue
    return out + [_validate_fa_merge(KernelSpec("fa_merge", "f32", None, i, FA_MERGE_PLAN), "") for i in ROW_ISAS]
# ---- end of mul_mat and flash_attn_ext ------------------------------------------------------------------------


# ---- cast_rows: the float casts of a graph (ggml_cast / ggml_cpy with f32 on one side) ----------------------------
# type_x = source, type_y = destination; one of them is f32. To f32 is to_float (plan "ref"); from f32 is the
# quantize variant of the destination that ggml's cpy uses on x86 (reference/ops/cpy.py): f16 and q8_0 "x86",
# bf16 "ref". ISAs as the byte copies (the x86 ones add SIMD conversions; NEON would add nothing checked here).
CAST_TYPES = ("f16", "bf16", "q8_0")
CAST_PLANS = MappingProxyType({"f16": "x86", "bf16": "ref", "q8_0": "x86"})


def _validate_cast(spec: KernelSpec, where: str) -> KernelSpec:
    pair = (spec.type_x, spec.type_y)
    if "f32" not in pair or spec.type_x == spec.type_y or not set(pair) - {"f32"} <= set(CAST_TYPES):
        raise ValueError(f"{where}: cast_rows converts between f32 and one of {', '.join(CAST_TYPES)}")
    want = "ref" if spec.type_y == "f32" else CAST_PLANS[spec.type_y]
    if spec.plan != want:
        raise ValueError(f"{where}: a cast to {spec.type_y} has plan {want!r} (ggml's x86 cpy), not {spec.plan!r}")
    if spec.isa not in COPY_ISAS:
        raise ValueError(f"{where}: cast_rows is generated for {', '.join(COPY_ISAS)}")
    return spec


def cast_specs() -> list[KernelSpec]:
    """The cast_rows kernels: f32 <-> each of CAST_TYPES on every COPY_ISAS ISA."""
    out = []
    for t in CAST_TYPES:
        for tx, ty, plan in ((t, "f32", "ref"), ("f32", t, CAST_PLANS[t])):
            out += [_validate_cast(KernelSpec("cast_rows", tx, ty, i, plan), "") for i in COPY_ISAS]
    return out
# ---- end of cast_rows -------------------------------------------------------------------------------------------


# ---- CUDA (sm90): the GPU target (codegen/cuda builds it with nvcc; docs/cuda.md) ------------------------------
# Their own catalog, so CPU dispatch, the cffi build and the CPU kernel tests never meet a GPU kernel; the same name
# grammar, the ISA token ``sm90`` (isa.CUDA_ISAS), ``generated/cuda/<family>/<name>.cu`` from
# ``codegen/templates/cuda/<family>.cu.j2``, and the manifest's ``cuda_kernels`` table. Each .cu file holds one
# ``__global__`` kernel and two host entries (``extern "C"``): ``<name>`` takes host buffers, copies them to the
# device, launches, synchronises and copies the outputs back (returns a cudaError_t), ``<name>_timed`` does the
# same with ``iters`` timed launches between CUDA events. Families (sizes int64_t, strides and offsets in bytes):
#
# ==============  ===================================================================================================
# copy_rows       #253's repeat / same-type cpy: dst row (i1,i2,i3) = n_rep copies of src row (i1,i2,i3); plan ref
# concat_rows     concat along dim 0: dst row = a row then b row; plan ref
# convert_rows    src1 rows (f32, f16, bf16) -> q8_0 (x86: 127/amax, ties to even) or f16; plan = the variant
# mul_mat         dst[j, i] = vec_dot(weight row i, converted row j) for f16.f16, q8_0.q8_0, iq4_nl.q8_0; plan w32
# flash_attn_ext  softmax(scale*K.Q + mask).V, type_x = K type, type_y = V type (one type: f16 or q8_0), Dk <= 576,
#                 Dv <= 512, Q f32 converted on the GPU, GQA, ggml's output layout; plan faw32 (cuda_fa_w32)
# ==============  ===================================================================================================
CUDA_SIGNATURES = MappingProxyType({
    "copy_rows": "int {name}{timed}(uint8_t *dst, int64_t dst_size, const uint8_t *src, int64_t src_size, "
                 "int64_t row_bytes, int64_t n_rep, int64_t ne1, int64_t ne2, int64_t ne3, int64_t s_nb1, "
                 "int64_t s_nb2, int64_t s_nb3, int64_t d_nb1, int64_t d_nb2, int64_t d_nb3{iters});",
    "concat_rows": "int {name}{timed}(uint8_t *dst, int64_t dst_size, const uint8_t *a, int64_t a_size, "
                   "const uint8_t *b, int64_t b_size, int64_t a_bytes, int64_t b_bytes, int64_t ne1, int64_t ne2, "
                   "int64_t ne3, int64_t a_nb1, int64_t a_nb2, int64_t a_nb3, int64_t b_nb1, int64_t b_nb2, "
                   "int64_t b_nb3, int64_t d_nb1, int64_t d_nb2, int64_t d_nb3{iters});",
    "convert_rows": "int {name}{timed}(const uint8_t *x, int64_t x_size, uint8_t *y, int64_t y_size, int64_t n_rows, "
                    "int64_t n, int64_t x_stride, int64_t y_stride{iters});",
    "mul_mat": "int {name}{timed}(const uint8_t *x, int64_t x_size, int64_t x_stride, int64_t m, const uint8_t *y, "
               "int64_t y_size, int64_t y_stride, int64_t n_y, int64_t n, float *out, int64_t out_size, "
               "int64_t out_stride{iters});",
    "flash_attn_ext": "int {name}{timed}(const uint8_t *q, int64_t q_size, const uint8_t *k, int64_t k_size, "
                      "const uint8_t *v, int64_t v_size, const uint8_t *mask, int64_t mask_size, uint8_t *out, "
                      "int64_t out_size, int64_t dk, int64_t dv, int64_t n_q, int64_t n_head, int64_t ne3, "
                      "int64_t n_kv, int64_t n_head_kv, int64_t ne3_kv, int64_t m_ne2, int64_t m_ne3, "
                      "int64_t q_nb1, int64_t q_nb2, int64_t q_nb3, int64_t k_nb1, int64_t k_nb2, int64_t k_nb3, "
                      "int64_t v_nb1, int64_t v_nb2, int64_t v_nb3, int64_t m_nb1, int64_t m_nb2, int64_t m_nb3, "
                      "int64_t o_nb1, int64_t o_nb2, int64_t o_nb3, int64_t scale_bits{iters});",
})
CUDA_ISA_TOKENS = ("sm90",)
CUDA_CONVERT = MappingProxyType({"q8_0": ("f32", "f16", "bf16"), "f16": ("f32", "bf16")})  # target -> sources
CUDA_CONVERT_PLAN = "x86"  # q8_0: 127/amax and ties to even; f16: round to nearest even (the x86 variants)
CUDA_MUL_MAT = MappingProxyType({"f16": "f16", "q8_0": "q8_0", "iq4_nl": "q8_0"})  # weight -> its vec_dot type
CUDA_PLANS = MappingProxyType({"w32": "cuda_w32"})  # mul_mat plan token -> reference/plan.py GPU plan
CUDA_FA_KV = ("f16", "q8_0")  # flash_attn_ext: K and V of one of these types
CUDA_FA_PLANS = MappingProxyType({"faw32": "cuda_fa_w32"})  # flash_attn_ext plan token -> GPU plan
CUDA_FA_DK_MAX, CUDA_FA_DV_MAX = 576, 512  # the kernel's shared-memory Q and per-thread accumulators


class CudaKernelSpec(KernelSpec):
    """A CUDA kernel: a KernelSpec whose template, file and signature are the GPU target's."""

    @property
    def template(self) -> str:
        return f"cuda/{self.family}.cu.j2"

    @property
    def path(self) -> str:
        return f"cuda/{self.family}/{self.name}.cu"

    def signature(self, timed: bool = False) -> str:
        return CUDA_SIGNATURES[self.family].format(name=self.name, timed="_timed" if timed else "",
                                                   iters=", int64_t iters, float *ms" if timed else "")

    def validate(self) -> "CudaKernelSpec":
        where = f"CUDA kernel spec {self.family}/{self.type_x}/{self.type_y}/{self.isa}/{self.plan}"
        if self.family not in CUDA_SIGNATURES:
            raise ValueError(f"{where}: CUDA families are {', '.join(CUDA_SIGNATURES)}")
        if self.isa not in CUDA_ISA_TOKENS:
            raise ValueError(f"{where}: CUDA kernels are generated for {', '.join(CUDA_ISA_TOKENS)}")
        if self.family in ("copy_rows", "concat_rows"):
            if (self.type_x, self.type_y, self.plan) != ("bytes", None, "ref"):
                raise ValueError(f"{where}: {self.family} is type-agnostic: type 'bytes', plan 'ref'")
        elif self.family == "convert_rows":
            if self.type_x not in CUDA_CONVERT.get(self.type_y, ()):
                raise ValueError(f"{where}: CUDA convert_rows takes {dict(CUDA_CONVERT)} (target: sources)")
            if self.plan != CUDA_CONVERT_PLAN:
                raise ValueError(f"{where}: CUDA convert_rows computes the {CUDA_CONVERT_PLAN!r} variant")
        elif self.family == "flash_attn_ext":
            if self.type_x not in CUDA_FA_KV or self.type_y != self.type_x:
                raise ValueError(f"{where}: CUDA flash_attn_ext takes K and V of one type in {', '.join(CUDA_FA_KV)}")
            if self.plan not in CUDA_FA_PLANS:
                raise ValueError(f"{where}: CUDA flash_attn_ext plans are {', '.join(CUDA_FA_PLANS)}")
        else:
            if CUDA_MUL_MAT.get(self.type_x) != self.type_y:
                raise ValueError(f"{where}: CUDA mul_mat takes weight.vec_dot_type pairs {dict(CUDA_MUL_MAT)}")
            if self.plan not in CUDA_PLANS:
                raise ValueError(f"{where}: CUDA mul_mat plans are {', '.join(CUDA_PLANS)}")
        return self


@functools.cache
def cuda_catalog() -> tuple[CudaKernelSpec, ...]:
    """Every CUDA kernel, sorted by name (validated). Editing this function is how a GPU variant is added."""
    specs = [CudaKernelSpec(f, "bytes", None, i, "ref") for f in ("copy_rows", "concat_rows") for i in CUDA_ISA_TOKENS]
    specs += [CudaKernelSpec("convert_rows", src, dst, i, CUDA_CONVERT_PLAN)
              for dst, srcs in CUDA_CONVERT.items() for src in srcs for i in CUDA_ISA_TOKENS]
    specs += [CudaKernelSpec("mul_mat", w, vdt, i, p) for w, vdt in CUDA_MUL_MAT.items() for i in CUDA_ISA_TOKENS
              for p in CUDA_PLANS]
    specs += [CudaKernelSpec("flash_attn_ext", t, t, i, p) for t in CUDA_FA_KV for i in CUDA_ISA_TOKENS
              for p in CUDA_FA_PLANS]
    for s in specs:
        s.validate()
    return tuple(sorted(specs, key=lambda s: s.name))


@functools.cache
def cuda_by_name() -> dict[str, CudaKernelSpec]:
    return {s.name: s for s in cuda_catalog()}
# ---- end of CUDA ------------------------------------------------------------------------------------------------

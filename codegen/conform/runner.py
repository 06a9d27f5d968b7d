"""mlaref conform: run the specification's case set against a real libggml, op by op, and give a verdict per case.

A *case* is a small JSON-serialisable value (:class:`Case`): an op, its parameters, and its inputs described by
generator + seed (never raw data), so ``mlaref conform --case FILE`` replays it anywhere. For every case the
spec side (``mlaref.reference``) and the library side (upstream ggml through ggml-python, or another build given
with ``--lib``) compute the same thing from the same input bytes, and the outputs are compared:

================================  =================================================================================
verdict                           meaning
================================  =================================================================================
``bit-exact``                     equal bytes (f32 outputs compared as their 32-bit patterns)
``within NMSE bound (v <= b)``    not equal, but NMSE(lib, spec) = sum((lib - spec)^2) / sum(spec^2) <= b, where
                                  the spec does not model the library's float order; b is ggml test-backend-ops'
                                  bound: 1e-7, 5e-4 for mul_mat and flash_attn_ext
``mismatch (...)``                the first differing element (index, spec bits vs library bits, ulps), the count of
                                  differing elements and the NMSE
``unsupported (...)``             one side does not define the case (the reason says which and why)
``aborted (...)``                 the library killed its worker (signal, ggml's last stderr line) or timed out
================================  =================================================================================

Every case runs in a worker process (``python -m mlaref.codegen.conform --worker``) that reads cases from stdin
and writes one JSON line per result: a crash in the library kills only that worker, the parent reports the case
``aborted`` and starts a new worker for the next one. Each case has a time limit (``--timeout``).

Which library runs (``--peer ggml-python@LEVEL`` or ``--lib PATH``): ggml-python loads ``lib/libggml.so`` (with
``libggml-base.so`` and ``libggml-cpu.so`` beside it) from its package directory and has no environment variable
to point it elsewhere (``ggml/ggml.py: load_shared_library``). For another build the run makes a copy of the
ggml-python package in a temporary directory whose ``lib`` entries link to the given build's libraries, and the
workers import ``ggml`` from there. ``--peer ggml-python@LEVEL`` is the build of that level from ggml-python's
own sdist (``mlaref peer build``, :mod:`mlaref.codegen.peers.build`), built on first use; ``--peer ggml-python``
(the default) is the installed package's library. A ``--lib`` build must have the C API and struct layouts of
ggml-python's header version: the run prints ``ggml_version()`` / ``ggml_commit()`` of the library loaded and
warns when the version differs.

Expectations. A case says ``expect: exact`` where the spec models the library's own order. The worker reads the
features the loaded library was compiled with (``ggml_cpu_has_*``) and its tuning, and takes from that
:class:`mlaref.reference.builds.GgmlBuild` the vec_dot plan (``ggml_generic``, ``ggml_x86_avx``,
``ggml_x86_avx2``, ``ggml_x86_avx2_znver3``, the AVX-512 plans) and soft_max's vector ``expf``; never this CPU's
features. Also exact: quantize variants ``ref``/``x86``/``model``, rope with GNU-mode FMA contractions,
flash_attn_ext's one-chunk and tiled paths), ``expect: nmse`` elsewhere. Where upstream ggml's semantics differ from ik_llama.cpp@676f0e71b
(upstream facts §4), the case's ``note`` says so and the verdict text carries it. Where upstream refuses what the spec
defines, the verdict is ``unsupported`` with the reason, or, when an exact rewrite exists, a comparison through it
that the verdict names (mul_mat with an f16 src1: upstream on the src1 widened to f32, upstream facts §0.10). ``known``
names a documented gap (``upstream-lacks``: a worker death becomes ``unsupported``, with the signal as evidence) or
finding (docs/conformance-findings.md); a mismatch or abort is *explained* only when a ``known`` entry covers it,
and ``mlaref conform`` exits 1 when any verdict is unexplained.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

from mlaref.reference.compare import nmse, ulps

SCHEMA = "mlaref.conform.case/1"
CASES_DIR = Path(__file__).resolve().parent / "cases"
NMSE_DEFAULT = 1e-7
NMSE_BOUND = {"mul_mat": 5e-4, "flash_attn_ext": 5e-4}  # ggml tests/test-backend-ops.cpp max_nmse_err()
DEFAULT_TIMEOUT = 60.0
STATUSES = ("bit-exact", "within NMSE bound", "mismatch", "unsupported", "aborted")

# -- upstream facts §1.3: DeepSeek-V2-Lite's rope / attention constants, in float32 ------------------------------------
KQ_SCALE = 0.11472137
FREQ_SCALE = float(np.float32(1.0) / np.float32(40.0))
ATTN_FACTOR = float(np.float32(1.0) / (np.float32(1.0) + np.float32(0.1) * np.float32(np.log(np.float32(40.0)))))
YARN = {"n_dims": 64, "mode": 0, "n_ctx_orig": 4096, "freq_base": 10000.0, "freq_scale": FREQ_SCALE,
        "ext_factor": 1.0, "attn_factor": ATTN_FACTOR, "beta_fast": 32.0, "beta_slow": 1.0}


# ==================================================================================================================
# Cases
# ==================================================================================================================

@dataclasses.dataclass
class Case:
    """One replayable conformance case.

    ``inputs`` maps an input name to its generator spec (``{"gen": ..., "seed": ..., ...}``, see
    :func:`make_input`); ``expect`` is ``"exact"`` or ``"nmse"``; ``bound`` overrides the op's NMSE bound;
    ``note`` is the upstream-versus-ik_llama.cpp remark shown with the verdict; ``known`` (optional) is
    ``{"kind": "upstream-lacks" | "finding", "text": ...}`` for a documented gap or finding.
    """

    id: str
    op: str
    params: dict
    inputs: dict
    expect: str = "exact"
    bound: float | None = None
    note: str = ""
    known: dict | None = None

    def __post_init__(self):
        if self.op not in OPS:
            raise ValueError(f"case {self.id!r}: unknown op {self.op!r}; known: {', '.join(sorted(OPS))}")
        if self.expect not in ("exact", "nmse"):
            raise ValueError(f"case {self.id!r}: expect must be 'exact' or 'nmse', got {self.expect!r}")
        if self.known is not None and self.known.get("kind") not in ("upstream-lacks", "finding"):
            raise ValueError(f"case {self.id!r}: known.kind must be 'upstream-lacks' or 'finding'")
        for name, spec in self.inputs.items():
            if not isinstance(spec, dict) or spec.get("gen") not in GENERATORS or "seed" not in spec:
                raise ValueError(f"case {self.id!r}: input {name!r} needs a known 'gen' "
                                 f"({', '.join(GENERATORS)}) and a 'seed'")

    @property
    def nmse_bound(self) -> float:
        return self.bound if self.bound is not None else NMSE_BOUND.get(self.op, NMSE_DEFAULT)

    def types(self) -> list[str]:
        """Every type name the case involves (for ``--types``)."""
        out = [v for k, v in self.params.items() if k.endswith("type") and isinstance(v, str)]
        out += [s["type"] for s in self.inputs.values() if isinstance(s.get("type"), str)]
        return sorted(set(out))

    def to_json(self) -> dict:
        d = {"schema": SCHEMA, "id": self.id, "op": self.op, "params": self.params, "inputs": self.inputs,
             "expect": self.expect}
        for k in ("bound", "note", "known"):
            if getattr(self, k):
                d[k] = getattr(self, k)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Case":
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            raise ValueError(f"not a conformance case (schema must be {SCHEMA!r}): {str(d)[:80]}")
        extra = set(d) - {"schema", "id", "op", "params", "inputs", "expect", "bound", "note", "known"}
        if extra:
            raise ValueError(f"case {d.get('id')!r}: unknown fields {sorted(extra)}")
        return cls(d["id"], d["op"], d["params"], d["inputs"], d.get("expect", "exact"), d.get("bound"),
                   d.get("note", ""), d.get("known"))


def _dumps(obj) -> str:
    """Indented JSON with short lists of numbers kept on one line (shapes, positions)."""
    text = json.dumps(obj, indent=1, sort_keys=True)

    def one_line(m):
        return "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]"

    return re.sub(r"\[\s+([-0-9.e+,\s]+?)\s+\]", one_line, text)


def cases_text(cases) -> str:
    """The text of a case file: one case (a JSON object) or several (``{"schema": ..., "cases": [...]}``)."""
    cases = list(cases)
    doc = cases[0].to_json() if len(cases) == 1 else {"schema": SCHEMA, "cases": [c.to_json() for c in cases]}
    return _dumps(doc) + "\n"


def save_cases(path, cases) -> None:
    """Write :func:`cases_text` of ``cases`` to ``path``."""
    Path(path).write_text(cases_text(cases))


def load_cases(path) -> list[Case]:
    """Read a case file written by :func:`save_cases`."""
    try:
        doc = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from None
    if isinstance(doc, dict) and "cases" in doc:
        if doc.get("schema") != SCHEMA:
            raise ValueError(f"{path}: schema must be {SCHEMA!r}")
        return [Case.from_json(c) for c in doc["cases"]]
    return [Case.from_json(doc)]


def _seed(case_id: str, name: str) -> int:
    return zlib.crc32(f"{case_id}/{name}".encode())


# -- input generators ----------------------------------------------------------------------------------------------

def _gen_normal(rng, s):
    """float32 N(0, scale^2) of ``shape`` (NumPy order); with ``type``, a contiguous Tensor of that type (f16/bf16
    rounded to nearest even, block types quantized by the spec's ``ref`` routine: both sides get the same bytes)."""
    x = (rng.standard_normal(s["shape"]) * s.get("scale", 1.0)).astype(np.float32)
    if "type" not in s:
        return x
    from mlaref.reference.tensor import Tensor  # noqa: PLC0415

    return Tensor.from_numpy(x, s["type"])


def _gen_uniform(rng, s):
    """float32 uniform in [low, high) of ``shape`` (importance weights)."""
    return rng.uniform(s["low"], s["high"], s["shape"]).astype(np.float32)


def _gen_ties(rng, s):
    """float32 rows ``shape`` (rows, n) of 32-blocks whose first value is 127 and the others k + 0.5 (|k| < 127):
    with amax = 127 the q8 scale is exactly 1, so every other value is a rounding tie (roundf and round-to-even
    disagree on half of them)."""
    x = (rng.integers(-126, 126, size=s["shape"]) + 0.5).astype(np.float32)
    x.reshape(-1, 32)[:, 0] = 127.0
    return x


def _gen_blocks(rng, s):
    """uint8 rows ``(rows, row_size(n))`` of random blocks in the format's valid domain (``random_rows``)."""
    from mlaref.reference import get_type  # noqa: PLC0415

    return get_type(s["type"]).random_rows(rng, s["rows"], s["n"])


def _gen_quantized(rng, s):
    """uint8 rows: N(0, scale^2) values of ``shape`` (rows, n) quantized by the spec's ``variant``."""
    from mlaref.reference import quantize  # noqa: PLC0415

    x = (rng.standard_normal(s["shape"]) * s.get("scale", 1.0)).astype(np.float32)
    if s["type"] == "f32":
        return x.view(np.uint8)
    if s["type"] == "f16":
        from mlaref.reference import fp  # noqa: PLC0415

        return fp.f32_to_f16(x).view(np.uint8)
    if s["type"] == "bf16":
        from mlaref.reference import fp  # noqa: PLC0415

        return fp.f32_to_bf16(x).view(np.uint8)
    return quantize(x, s["type"], variant=s.get("variant", "ref"))


def _gen_ints(rng, s):
    """An i32 Tensor of ``shape`` with values in [low, high); ``first`` values, if given, lead the flat array."""
    from mlaref.reference.tensor import Tensor  # noqa: PLC0415

    v = rng.integers(s["low"], s["high"], size=s["shape"]).astype(np.int32)
    first = s.get("first", [])
    v.reshape(-1)[: len(first)] = first
    return Tensor.from_numpy(v)


def _gen_mask(rng, s):
    """A mask Tensor ``shape`` (n_q, n_kv) of ``type``: zeros, a fraction ``inf_frac`` of -inf, column 0 kept finite;
    ``normal`` adds N(0, 1) values to the finite entries (soft_max takes real-valued masks)."""
    from mlaref.reference.tensor import Tensor  # noqa: PLC0415

    m = np.zeros(s["shape"], np.float32)
    if s.get("normal"):
        m = rng.standard_normal(s["shape"]).astype(np.float32)
    m[rng.random(s["shape"]) < s.get("inf_frac", 0.0)] = -np.inf
    m[..., 0] = 0.0
    return Tensor.from_numpy(m, s.get("type", "f16"))


GENERATORS = {"normal": _gen_normal, "uniform": _gen_uniform, "ties": _gen_ties, "blocks": _gen_blocks,
              "quantized": _gen_quantized, "ints": _gen_ints, "mask": _gen_mask}


def make_input(spec: dict):
    """The input a generator spec describes: ``GENERATORS[spec["gen"]](np.random.default_rng(spec["seed"]), spec)``."""
    return GENERATORS[spec["gen"]](np.random.default_rng(spec["seed"]), spec)


# ==================================================================================================================
# Ops: each returns (spec, lib) Outputs, or (spec, lib, remark), or raises Unsupported
# ==================================================================================================================

class Unsupported(Exception):
    """One side does not define the case; the message says which side and why."""


@dataclasses.dataclass
class Output:
    """An op's result as stored values: ``kind`` is ``f32`` / ``f16`` / ``bf16`` (element bits) or a block type
    (bytes, compared byte by byte); ``values`` float32 values for the NMSE (dequantized for block types)."""

    kind: str
    data: np.ndarray  # uint8 bytes, C order
    shape: tuple  # NumPy shape of the elements (or of the rows of bytes for block types)
    values: np.ndarray


def _out_f32(arr: np.ndarray) -> Output:
    """A float32 NumPy array -> Output."""
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    return Output("f32", arr.view(np.uint8).reshape(-1), arr.shape, arr)


def _out_tensor(t) -> Output:
    """A contiguous mlaref Tensor -> Output."""
    raw = t.raw()
    if t.type in ("f32", "f16", "bf16", "i32"):
        return Output(t.type, raw.reshape(-1), (t.ne[3], t.ne[2], t.ne[1], t.ne[0]),
                      t.to_numpy().astype(np.float32))
    return Output(t.type, raw.reshape(-1), raw.shape, t.to_numpy())


def _out_rows(kind: str, rows: np.ndarray, n: int) -> Output:
    """uint8 rows of a block or element type -> Output (values by the spec's dequantize)."""
    from mlaref.reference import dequantize  # noqa: PLC0415

    rows = np.ascontiguousarray(rows, dtype=np.uint8)
    if kind == "f32":
        v = rows.view(np.float32).reshape(rows.shape[0], n)
        return Output("f32", rows.reshape(-1), v.shape, v.copy())
    if kind in ("f16", "bf16"):
        from mlaref.reference import fp  # noqa: PLC0415

        bits = rows.view(np.uint16).reshape(rows.shape[0], n)
        v = fp.f16_to_f32(bits) if kind == "f16" else fp.bf16_to_f32(bits)
        return Output(kind, rows.reshape(-1), v.shape, v)
    return Output(kind, rows.reshape(-1), rows.shape, dequantize(rows, kind))


def _peer():
    from mlaref.codegen.peers import ggml as ggml_peer  # noqa: PLC0415

    return ggml_peer


def _ops():
    from mlaref.codegen.peers import ggml_ops as ggml_ops  # noqa: PLC0415

    return ggml_ops


def _spec_call(fn, *args, **kwargs):
    """Call the spec; its TypeError/ValueError (the spec does not define this case) becomes Unsupported."""
    try:
        return fn(*args, **kwargs)
    except (TypeError, ValueError, NotImplementedError) as exc:
        raise Unsupported(f"the spec does not define it: {exc}") from None


def _traits_fn(type_name: str, field: str, cpu: bool):
    g = _peer().lib()
    tr = (g.ggml_get_type_traits_cpu if cpu else g.ggml_get_type_traits)(_peer().ggml_type(type_name)).contents
    return getattr(tr, field)


def _check_lib_type(t: str) -> None:
    if t not in _peer().GGML_TYPE:
        raise Unsupported(f"upstream ggml has no type {t} (an ik_llama.cpp@676f0e71b-only layout)")


def op_quantize(p, inp):
    """quantize rows: variant ref = type_traits.from_float_ref, x86 = CPU type_traits.from_float,
    model = ggml_quantize_chunk (with the imatrix input if the case has one)."""
    from mlaref.reference import quantize  # noqa: PLC0415

    t, variant, x = p["type"], p["variant"], inp["x"]
    imatrix = inp.get("imatrix")
    if variant == "iqk":
        raise Unsupported("variant iqk is ik_llama.cpp@676f0e71b's IQK from_float; upstream ggml has none "
                          "(its CPU from_float is variant x86)")
    _check_lib_type(t)
    # "x86" is the CPU back-end's from_float: in a build without AVX / F16C that is the reference routine
    spec_variant = _peer_build().from_float(t) if variant == "x86" else variant
    spec = _spec_call(quantize, x, t, variant=spec_variant, imatrix=imatrix)
    peer = _peer()
    if variant == "ref":
        if _traits_fn(t, "from_float_ref", cpu=False):
            lib = peer.from_float_ref(t, x)
        elif t == "q8_K":
            lib = peer.quantize_row_symbol("quantize_row_q8_K_ref", t, x)  # traits entry is NULL upstream
        else:
            raise Unsupported(f"upstream type_traits[{t}].from_float_ref is NULL")
    elif variant == "x86":
        lib = peer.from_float(t, x)
    else:
        lib = peer.quantize_chunk(t, x, imatrix)
    return _out_rows(t, spec, x.shape[1]), _out_rows(t, lib, x.shape[1])


def op_dequantize(p, inp):
    """dequantize rows: type_traits.to_float (the exported dequantize_row_<t> where the traits entry is NULL)."""
    from mlaref.reference import dequantize  # noqa: PLC0415

    t, data, n = p["type"], inp["data"], p["n"]
    _check_lib_type(t)
    spec = _spec_call(dequantize, data, t)
    peer = _peer()
    if _traits_fn(t, "to_float", cpu=False):
        lib = peer.to_float(t, data, n)
    else:
        try:
            lib = peer.dequantize_row_symbol(f"dequantize_row_{t}", data, n)
        except NotImplementedError:
            raise Unsupported(f"upstream type_traits[{t}].to_float is NULL and no dequantize_row_{t} is exported")\
                from None
    return _out_f32(spec), _out_f32(lib)


def op_vec_dot(p, inp):
    """CPU type_traits[x].vec_dot of every x row with every y row (y of x's vec_dot_type), n values each."""
    from mlaref.reference.ops.vec_dot import supported_pairs, vec_dot  # noqa: PLC0415

    xt, yt, n, x, y = p["x_type"], p["y_type"], p["n"], inp["x"], inp["y"]
    if f"{xt}.{yt}" not in supported_pairs():
        raise Unsupported(f"the spec has no vec_dot order for {xt}.{yt}")
    spec = vec_dot(x, xt, y, yt, n, p.get("plan") or _peer_plan())
    peer = _peer()
    lib = np.array([[peer.vec_dot(xt, x[i], y[j], n) for j in range(y.shape[0])] for i in range(x.shape[0])],
                   np.float32)
    return _out_f32(spec), _out_f32(lib)


def _maybe_transposed(t, p):
    return t.transpose() if p.get("src_transposed") else t


def op_cpy(p, inp):
    """ggml_cpy(src, new contiguous tensor of dst_type and src's shape) (= ggml_cast)."""
    from mlaref.reference.ops import cast  # noqa: PLC0415

    src = _maybe_transposed(inp["src"], p)
    spec = _spec_call(cast, src, p["dst_type"])
    return _out_tensor(spec), _out_tensor(_ops().cast(src, p["dst_type"], n_threads=p.get("n_threads", 1)))


def op_concat(p, inp):
    from mlaref.reference.ops import concat  # noqa: PLC0415

    spec = _spec_call(concat, inp["a"], inp["b"], p["dim"])
    return _out_tensor(spec), _out_tensor(_ops().concat(inp["a"], inp["b"], p["dim"],
                                                        n_threads=p.get("n_threads", 1)))


def op_repeat(p, inp):
    from mlaref.reference.ops import repeat  # noqa: PLC0415

    spec = _spec_call(repeat, inp["a"], tuple(p["ne"]))
    return _out_tensor(spec), _out_tensor(_ops().repeat(inp["a"], tuple(p["ne"])))


def op_get_rows(p, inp):
    from mlaref.reference.ops import get_rows  # noqa: PLC0415

    spec = _spec_call(get_rows, inp["a"], inp["rows"])
    return _out_tensor(spec), _out_tensor(_ops().get_rows(inp["a"], inp["rows"]))


def _mul_mat_supported(a, b) -> bool:
    """Ask the library: its CPU back-end's ``supports_op`` for this MUL_MAT node (shapes only, no data)."""
    g = _peer().lib()
    ops = _ops()
    ctx = g.ggml_init(g.ggml_init_params(mem_size=1 << 20, mem_buffer=None, no_alloc=True))
    try:
        ta = g.ggml_new_tensor_4d(ctx, ops.type_id(a.type), *a.ne)
        tb = g.ggml_new_tensor_4d(ctx, ops.type_id(b.type), *b.ne)
        node = g.ggml_mul_mat(ctx, ta, tb)
        backend = g.ggml_backend_cpu_init()
        try:
            return bool(g.ggml_backend_supports_op(backend, node))
        finally:
            g.ggml_backend_free(backend)
    finally:
        g.ggml_free(ctx)


def op_mul_mat(p, inp):
    """ggml_mul_mat(a, b): the spec's MulMat_253 with the vec_dot plan of this build (``plan``) and src1 converted
    by the x86 ``from_float``; cases upstream's CPU back-end refuses (its ``supports_op``) are not run."""
    from mlaref.reference.ops.mul_mat import mul_mat  # noqa: PLC0415

    from mlaref.reference.ops import cast  # noqa: PLC0415

    a, b = inp["a"], inp["b"]
    if _peer_build().mul_mat_modelled:
        raise Unsupported(_peer_build().mul_mat_modelled)
    spec = _out_tensor(_spec_call(mul_mat, a, b, plan=p.get("plan") or _peer_plan(), variant=_src1_variant(a.type)))
    if _mul_mat_supported(a, b):
        return spec, _out_tensor(_ops().mul_mat(a, b, n_threads=p.get("n_threads", 1)))
    vdt = _ops().type_name(int(_traits_fn(a.type, "vec_dot_type", cpu=True)))
    why = (f"upstream's CPU back-end refuses an {b.type} src1 (supports_op: f32 or the vec_dot type {vdt}); "
           "ik_llama.cpp@676f0e71b converts any src1 row with to_float + from_float (PR #253, iqk_quantize_any)")
    if b.type not in ("f16", "bf16"):
        raise Unsupported(why)
    # to_float of f16/bf16 is exact, so #253's result must equal upstream's on src1 widened to f32
    # (upstream facts §0.10).
    lib = _ops().mul_mat(a, cast(b, "f32"), n_threads=p.get("n_threads", 1))
    return spec, _out_tensor(lib), f"{why}; compared with upstream on src1 widened to f32 (exact), upstream facts §0.10"


def op_soft_max(p, inp):
    from mlaref.reference.ops import soft_max  # noqa: PLC0415

    mask = inp.get("mask")
    spec = _spec_call(soft_max, inp["a"], mask, p["scale"], p.get("max_bias", 0.0),
                      simd=p.get("simd") or _peer_simd())
    lib = _ops().soft_max_ext(inp["a"], mask, p["scale"], p.get("max_bias", 0.0), n_threads=p.get("n_threads", 1))
    return _out_tensor(spec), _out_tensor(lib)


_ROPE_ARGS = ("n_dims", "mode", "n_ctx_orig", "freq_base", "freq_scale", "ext_factor", "attn_factor", "beta_fast",
              "beta_slow")


def op_rope(p, inp):
    from mlaref.reference.ops import rope  # noqa: PLC0415

    args = [p[k] for k in _ROPE_ARGS]
    spec = _spec_call(rope, inp["a"], inp["pos"], *args, fma=_peer_build().fma)
    return _out_tensor(spec), _out_tensor(_ops().rope_ext(inp["a"], inp["pos"], *args,
                                                          n_threads=p.get("n_threads", 1)))


def _upstream_fa_algorithm(q, k, v, plan) -> str:
    """The path upstream's ``ggml_compute_forward_flash_attn_ext_f16`` takes (ggml-cpu/ops.cpp@ggml 0.15.3):
    ``tiled`` for an f32 q with f16 or f32 K/V of one type, at least ``GGML_FA_TILE_Q`` = 64 query rows, and Dv
    a multiple of the build's f32 vector width (``GGML_F32_EPR``: the lanes of the plan's f32 dot; no condition
    without SIMD); else the one-chunk path, ``generic``."""
    from mlaref.reference.plan import get_plan  # noqa: PLC0415

    epr = get_plan(plan).for_pair("f32.f32").lanes
    tiled = (q.type == "f32" and k.type == v.type and k.type in ("f16", "f32") and q.ne[1] >= 64
             and v.ne[0] % epr == 0)
    return "tiled" if tiled else "generic"


def op_flash_attn_ext(p, inp):
    from mlaref.reference.ops.flash_attn_ext import flash_attn_ext, upstream_splits_kv  # noqa: PLC0415

    q, k, v, mask = inp["q"], inp["k"], inp["v"], inp.get("mask")
    plan = p.get("plan") or _peer_plan()
    algorithm = p.get("algorithm") or _upstream_fa_algorithm(q, k, v, plan)
    # one query row over >= 512 f16/f32 KV rows: upstream splits the KV rows over its threads and merges
    kv_split = p.get("n_threads", 1) if upstream_splits_kv(q, k, v) and algorithm == "generic" else None
    spec = _spec_call(flash_attn_ext, q, k, v, mask, p["scale"], algorithm=algorithm, plan=plan,
                      variant=_src1_variant(k.type), kv_split=kv_split)
    lib = _ops().flash_attn_ext(q, k, v, mask, p["scale"], n_threads=p.get("n_threads", 1))
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
       "selftest_abort": op_selftest_abort}
TEST_ONLY_OPS = ("selftest_abort",)


# ==================================================================================================================
# Comparison
# ==================================================================================================================

_BITS = {"f32": np.uint32, "i32": np.uint32, "f16": np.uint16, "bf16": np.uint16}


def compare(spec: Output, lib: Output, expect: str, bound: float) -> dict:
    """The verdict fields of one comparison (status, text, nmse, first difference)."""
    if spec.kind != lib.kind or spec.data.size != lib.data.size:
        return {"status": "mismatch", "text": f"mismatch (spec gives {spec.kind} {tuple(spec.shape)}, the library "
                                              f"{lib.kind} {tuple(lib.shape)})", "nmse": None}
    if np.array_equal(spec.data, lib.data):
        return {"status": "bit-exact", "text": "bit-exact", "nmse": 0.0}
    err = nmse(lib.values, spec.values) if spec.values.size == lib.values.size else float("inf")
    if expect == "nmse" and err <= bound:
        return {"status": "within NMSE bound", "text": f"within NMSE bound ({err:.3g} <= {bound:g})", "nmse": err}
    if spec.kind in _BITS:
        dt = _BITS[spec.kind]
        sb, lb = spec.data.view(dt), lib.data.view(dt)
        diff = np.nonzero(sb != lb)[0]
        i = int(diff[0])
        idx = np.unravel_index(i, spec.shape)
        width = 8 * np.dtype(dt).itemsize
        first = {"index": [int(v) for v in idx], "spec_bits": f"0x{int(sb[i]):0{width // 4}x}",
                 "lib_bits": f"0x{int(lb[i]):0{width // 4}x}", "ulps": ulps(int(sb[i]), int(lb[i]), width)}
        where = (f"element {first['index']} (NumPy order): spec {first['spec_bits']} vs ggml {first['lib_bits']}, "
                 f"{first['ulps']} ulp")
        count = f"{diff.size} of {sb.size} elements differ"
    else:
        diff = np.nonzero(spec.data != lib.data)[0]
        i = int(diff[0])
        from mlaref.reference import get_type  # noqa: PLC0415

        ts = get_type(spec.kind).type_size
        row_bytes = spec.shape[-1]
        r, off = divmod(i, row_bytes)
        blk, byte = divmod(off, ts)
        s, lval = int(spec.data[i]), int(lib.data[i])
        first = {"row": r, "block": blk, "byte": byte, "spec_byte": f"0x{s:02x}", "lib_byte": f"0x{lval:02x}",
                 "bits": bin(s ^ lval).count("1")}
        where = (f"row {r} block {blk} byte {byte}: spec 0x{s:02x} vs ggml 0x{lval:02x} "
                 f"({first['bits']} bits differ)")
        count = f"{diff.size} of {spec.data.size} bytes differ"
    nm = "" if not np.isfinite(err) else f"; NMSE {err:.3g}"
    if expect == "nmse":
        nm += f" > bound {bound:g}"
    return {"status": "mismatch", "text": f"mismatch ({where}; {count}{nm})", "nmse": err, "first": first}


# ==================================================================================================================
# Worker
# ==================================================================================================================

def _run_in_worker(case: Case) -> dict:
    """Compute one case in this process; the verdict fields (never raises for a case the spec or ggml refuses).

    An op returns ``(spec, lib)`` or ``(spec, lib, remark)``: the remark (how the library side was reached) is
    appended to the verdict text in brackets."""
    t0 = time.perf_counter()
    try:
        inputs = {name: make_input(spec) for name, spec in case.inputs.items()}
        spec, lib, *remark = OPS[case.op](case.params, inputs)
        res = compare(spec, lib, case.expect, case.nmse_bound)
        if remark:
            res["text"] += f" [{remark[0]}]"
    except Unsupported as exc:
        res = {"status": "unsupported", "text": f"unsupported ({exc})", "nmse": None}
    res["seconds"] = round(time.perf_counter() - t0, 4)
    return res


def _shim_package(lib_path: str) -> str:
    """A temporary copy of the ggml-python package whose ``lib/`` links to another build's libraries."""
    from mlaref.codegen.peers import build as peer_build  # noqa: PLC0415

    p = Path(lib_path).expanduser().resolve()
    lib_dir = p if p.is_dir() else p.parent
    if not (lib_dir / "libggml.so").exists():
        raise FileNotFoundError(f"--lib {lib_path}: no libggml.so in {lib_dir}")
    return str(peer_build.make_shim(lib_dir))


def worker_main(argv=None) -> int:
    """The worker loop: one JSON case per stdin line -> one JSON result line on the protocol stream."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever the C library prints goes to stderr, never into the protocol
    shim = os.environ.get("MLAREF_CONFORM_SHIM")
    if shim:
        sys.path.insert(0, shim)
    peer = _peer()
    info = {"ready": True}
    if peer.available():
        g = peer.lib()
        g.ggml_cpu_init()  # fills the f16 table the CPU kernels read
        info["ggml"] = {"file": str(Path(g.__file__).parent / "lib"), "header_version": g.GGML_VERSION,
                        "version": g.ggml_version().decode(), "commit": g.ggml_commit().decode()}
        b = peer.build()
        try:
            plan = b.vec_dot_plan
        except LookupError:
            plan = None
        info["ggml"]["build"] = {"name": b.name, "level": b.level, "tune": b.tune, "features": sorted(b.features),
                                 "vec_dot_plan": plan, "simd": b.simd, "verified": b.verified}
    else:
        info["error"] = peer.unavailable_reason()
    proto.write(json.dumps(info) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        case = Case.from_json(json.loads(line))
        print(f"mlaref-conform: case {case.id}", file=sys.stderr, flush=True)
        proto.write(json.dumps(_run_in_worker(case)) + "\n")
    return 0


class Worker:
    """A worker process (``python -m mlaref.codegen.conform --worker``) and its protocol pipe."""

    def __init__(self, shim: str | None = None):
        env = dict(os.environ, GGML_NO_BACKTRACE="1", PYTHONUNBUFFERED="1")  # no gdb attach on GGML_ABORT
        env.pop("MLAREF_CONFORM_SHIM", None)
        if shim:
            env["MLAREF_CONFORM_SHIM"] = shim
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-m", "mlaref.codegen.conform", "--worker"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                                     env=env, text=True, bufsize=1)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.proc.stdout, selectors.EVENT_READ)
        self.info = self._read(120.0)
        if self.info is None or not self.info.get("ready"):
            raise RuntimeError(f"conform worker did not start: {self._stderr_tail(0)}")

    def _read(self, timeout: float):
        if not self.sel.select(timeout):
            return None
        line = self.proc.stdout.readline()
        return json.loads(line) if line else None

    def _stderr_tail(self, start: int) -> str:
        self.stderr.seek(start)
        lines = [ln.strip() for ln in self.stderr.read().decode(errors="replace").splitlines() if ln.strip()]
        lines = [ln for ln in lines if not ln.startswith("mlaref-conform: case")]
        # ggml's messages carry the build's absolute source path: keep it from the source tree on
        return re.sub(r"\S*/(ggml/src/)", r"\1", lines[-1])[:300] if lines else ""

    def run(self, case: Case, timeout: float) -> dict:
        """The verdict fields of ``case``; ``{"died": ...}`` if the worker died or timed out (it is then dead)."""
        self.stderr.seek(0, os.SEEK_END)
        start = self.stderr.tell()
        t0 = time.perf_counter()
        try:
            self.proc.stdin.write(json.dumps(case.to_json()) + "\n")
            self.proc.stdin.flush()
            res = self._read(timeout)
        except (BrokenPipeError, OSError, json.JSONDecodeError):
            res = None
        if res is not None:
            return res
        try:  # EOF arrives a moment before the exit status: give a dying worker time to be reaped
            rc = self.proc.wait(5 if time.perf_counter() - t0 < timeout else 0.01)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            self.proc.kill()
            rc = self.proc.wait()
        if timed_out:
            why = f"timeout after {timeout:g} s"
        elif rc < 0:
            why = signal.Signals(-rc).name
        else:
            why = f"worker exited with status {rc}"
        tail = self._stderr_tail(start)
        return {"died": why + (f": {tail}" if tail else ""), "seconds": round(time.perf_counter() - t0, 4)}

    def close(self) -> None:
        """End the worker (EOF on its stdin; killed after 10 s) and release its pipes and stderr file."""
        try:
            self.proc.stdin.close()
        except OSError:  # the worker died with data still buffered for it
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.sel.close()
        self.proc.stdout.close()
        self.stderr.close()


# ==================================================================================================================
# The run
# ==================================================================================================================

def verdict_for(case: Case, res: dict) -> dict:
    """The full verdict record of ``case`` from the worker's fields (a death becomes aborted / unsupported)."""
    v = {"id": case.id, "op": case.op, "types": case.types(), "expect": case.expect, "bound": case.nmse_bound}
    if "died" in res:
        known = case.known or {}
        if known.get("kind") == "upstream-lacks":
            v.update(status="unsupported", text=f"unsupported ({known['text']}; confirmed: the worker died, "
                                                f"{res['died']})")
        else:
            v.update(status="aborted", text=f"aborted ({res['died']})")
        v["nmse"] = None
    else:
        v.update({k: res[k] for k in ("status", "text", "nmse") if k in res})
        if "first" in res:
            v["first"] = res["first"]
    v["seconds"] = res.get("seconds")
    if case.note:
        v["note"] = case.note
    if case.known and v["status"] in ("mismatch", "aborted"):
        v["text"] += f" [{case.known['kind']}: {case.known['text']}]"
    v["explained"] = v["status"] in ("bit-exact", "within NMSE bound", "unsupported") or bool(case.known)
    return v


def run_cases(cases, *, lib_path: str | None = None, timeout: float = DEFAULT_TIMEOUT, progress=None) -> dict:
    """Run ``cases`` in workers; returns ``{"ggml": library info, "verdicts": [...]}`` in case order."""
    verdicts = []
    worker = None
    info = {}
    shim = _shim_package(lib_path) if lib_path else None
    try:
        for case in cases:
            if worker is None:
                worker = Worker(shim)
                info = worker.info.get("ggml", info)
                if "error" in worker.info:
                    raise RuntimeError(f"mlaref conform: the library cannot be loaded: {worker.info['error']}")
            res = worker.run(case, timeout)
            if "died" in res:
                worker.close()
                worker = None
            v = verdict_for(case, res)
            verdicts.append(v)
            if progress:
                progress(v)
    finally:
        if worker is not None:
            worker.close()
        if shim:
            shutil.rmtree(shim, ignore_errors=True)
    return {"ggml": info, "verdicts": verdicts}


# ==================================================================================================================
# The case set
# ==================================================================================================================

_FINDING_CONCAT = {"kind": "finding", "text": "F1 in docs/conformance-findings.md: upstream's concat_any steps "
                                              "over elements with block strides for block types, so it reads and "
                                              "writes past the rows (fixed upstream in ggml-org/llama.cpp PR "
                                              "#25247, after this ggml-python's ggml 0.15.3)"}


def finding_cases() -> list[Case]:
    """Minimal reproducers of the findings in docs/conformance-findings.md (codegen/conform/cases/finding-*.json)."""
    return [_mk("finding/F1/concat_q8_0_dim0_one_block_each", "concat", {"dim": 0},
                {"a": {"gen": "normal", "type": "q8_0", "shape": [1, 32]},
                 "b": {"gen": "normal", "type": "q8_0", "shape": [1, 32]}},
                note="ik_llama.cpp@676f0e71b (concat_any, PR #253) and the spec copy each row's bytes: dst = "
                     "[a's block, b's block]", known=_FINDING_CONCAT)]


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


def _peer_plan() -> str:
    """The vec_dot plan of the library this worker loaded (``ggml_peer.build().vec_dot_plan``: from the features
    it was compiled with and its tuning, mlaref.reference.builds); a build whose order is not modelled makes the
    case ``unsupported`` with the reason, never a comparison against a guessed order."""
    from mlaref.codegen.peers import ggml as ggml_peer  # noqa: PLC0415

    try:
        return ggml_peer.vec_dot_plan()
    except LookupError as exc:
        raise Unsupported(str(exc)) from None


def _peer_build():
    """The :class:`~mlaref.reference.builds.GgmlBuild` of the library this worker loaded."""
    from mlaref.codegen.peers import ggml as ggml_peer  # noqa: PLC0415

    return ggml_peer.build()


def _peer_simd() -> str:
    """The vector ``expf`` variant of the library this worker loaded (``GgmlBuild.simd``)."""
    return _peer_build().simd


def _src1_variant(weight_type: str) -> str:
    """The from_float variant the loaded build converts src1 (or Q) rows with: that of the vec_dot type."""
    from mlaref.reference.ops.mul_mat import VEC_DOT_TYPE  # noqa: PLC0415

    return _peer_build().from_float(VEC_DOT_TYPE.get(weight_type, weight_type))


def default_cases() -> list[Case]:
    """The specification's case set: small, deterministic, covering every op and type of the brief."""
    from mlaref.reference import registry  # noqa: PLC0415

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
    vdt = {"f32": "f32", "f16": "f16", "bf16": "bf16", "q4_0": "q8_0", "q4_1": "q8_1", "q5_0": "q8_0",
           "q5_1": "q8_1", "q8_0": "q8_0", "iq4_nl": "q8_0", "q4_K": "q8_K", "q6_K": "q8_K"}
    for xt, yt in vdt.items():
        n = 512 if yt == "q8_K" else (100 if xt == "f32" else 288)  # 288 = 9 blocks: iq4_nl's scalar tail
        cases.append(_mk(
            f"vec_dot/{xt}.{yt}", "vec_dot", {"x_type": xt, "y_type": yt, "n": n},
            {"x": {"gen": "quantized", "type": xt, "variant": "ref", "shape": [3, n], "scale": 0.5},
             "y": {"gen": "quantized", "type": yt, "variant": "x86", "shape": [4, n]}},
            note="the vec_dot plan of the library's build (mlaref.reference.builds); ik_llama.cpp's x86 mul_mat uses iqk "
                 "kernels instead (upstream facts §4a)"))
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
            if (st, dt) == ("q8_0", "f16") else None
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
                     note="ggml_v_expf of the library's build (16, 8 or 4 lanes) for whole chunks, libm expf for the tail"))
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
                          "mask": {"gen": "mask", "type": "f16", "shape": [nq, 256], "inf_frac": 0.2}},
                         note=note))
    # token generation: one query row over the 576-wide latent cache (V a view of K's first 512 columns in the
    # graphs; separate tensors here), >= 512 KV rows: upstream's split-KV path, one chunk per thread
    for nth in (1, 3):
        cases.append(_mk(f"flash_attn_ext/f16/dk576_dv512/nq1_nkv640/t{nth}", "flash_attn_ext",
                         {"scale": KQ_SCALE, "n_threads": nth},
                         {"q": {"gen": "normal", "type": "f32", "shape": [1, 4, 1, 576]},
                          "k": {"gen": "normal", "type": "f16", "shape": [1, 1, 640, 576]},
                          "v": {"gen": "normal", "type": "f16", "shape": [1, 1, 640, 512]},
                          "mask": {"gen": "mask", "type": "f16", "shape": [1, 640], "inf_frac": 0.2}},
                         note=f"upstream's split-KV path (1 query, >= 512 f16 KV rows): {nth} chunk(s), one per "
                              "thread, merged in order: the spec's kv_split; ik_llama.cpp@676f0e71b runs iqk's "
                              "blocked algorithm instead (upstream facts §4e)"))
    return cases


def quick_cases() -> list[Case]:
    """A fast subset: one case per op family and kind of type, plus the known gaps and findings."""
    keep = ("quantize/q8_0/", "quantize/q4_K/model+imatrix", "quantize/iq4_nl/model", "quantize/q8_K/",
            "dequantize/q4_K", "dequantize/q8_0", "vec_dot/q8_0", "vec_dot/iq4_nl", "vec_dot/f16", "vec_dot/q6_K",
            "cpy/f32->q8_0", "cpy/f32->f16/", "cpy/q8_0->f16", "concat/f32/dim1", "concat/q8_0", "repeat/",
            "get_rows/q8_0", "mul_mat/q8_0xf", "mul_mat/f16xf32", "mul_mat/q4_Kxf32", "soft_max/f32/mask_f16",
            "rope/", "flash_attn_ext/f16/dk192_dv128/nq8")
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


# ==================================================================================================================
# CLI
# ==================================================================================================================

def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--peer", metavar="NAME[@LEVEL]", help="the peer to check: ggml-python (the installed "
                        "package's library, the default) or ggml-python@LEVEL (native, generic, avx, avx2, avx512, "
                        "avx512vnni, avx512bf16: built from its sdist on first use, see mlaref peer)")
    parser.add_argument("--lib", metavar="PATH", help="a libggml.so (or its directory) of another build with "
                                                      "ggml-python's header version (default: ggml-python's own)")
    ops = ", ".join(o for o in OPS if o not in TEST_ONLY_OPS)
    parser.add_argument("--ops", metavar="a,b,...", help=f"only these ops ({ops})")
    parser.add_argument("--types", metavar="a,b,...", help="only cases involving one of these types")
    parser.add_argument("--all-levels", action="store_true", help="check the installed library and ggml-python "
                        "built at every level this CPU runs, one run each")
    parser.add_argument("--json", metavar="FILE", help="also write the verdicts as JSON")
    parser.add_argument("--json-dir", metavar="DIR", help="also write each run's verdicts as DIR/<build>.json "
                                                          "(the docs' snapshots: docs/data/conform)")
    parser.add_argument("--case", metavar="FILE", action="append",
                        help="replay the case(s) of a case file instead of the case set (repeatable)")
    parser.add_argument("--quick", action="store_true", help="a fast subset of the case set")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per case (default %(default)s)")
    parser.add_argument("--write-cases", metavar="FILE", help="write the selected cases to a case file and exit")
    parser.add_argument("--list", action="store_true", help="list the selected cases and exit")


def _split(s):
    return [v.strip() for v in s.split(",") if v.strip()] if s else None


def run(args) -> int:
    if args.case:
        cases = [c for f in args.case for c in load_cases(f)]
    else:
        cases = quick_cases() if args.quick else default_cases()
    ops, types = _split(args.ops), _split(args.types)
    for o in ops or ():
        if o not in OPS:
            print(f"mlaref conform: unknown op {o!r}; known: {', '.join(OPS)}", file=sys.stderr)
            return 2
    cases = select(cases, ops, types)
    if args.write_cases:
        save_cases(args.write_cases, cases)
        print(f"wrote {len(cases)} case(s) to {args.write_cases}")
        return 0
    if args.list:
        for c in cases:
            print(f"{c.id}  ({c.op}, expect {c.expect})")
        return 0
    if not cases:
        print("mlaref conform: no case selected", file=sys.stderr)
        return 2
    w = max(len(c.id) for c in cases)

    def progress(v):
        print(f"{v['id']:<{w}}  {v['text']}" + ("" if v["explained"] else "  <-- UNEXPLAINED"), flush=True)
        if v.get("note") and v["status"] != "bit-exact":
            print(f"{'':<{w}}    note: {v['note']}", flush=True)

    try:
        targets = _targets(args)
    except (ValueError, RuntimeError) as exc:
        print(f"mlaref conform: {exc}", file=sys.stderr)
        return 2
    worst = 0
    for label, lib_path in targets:
        if len(targets) > 1:
            print(f"\n=== {label}", flush=True)
        try:
            if callable(lib_path):
                lib_path = lib_path()
            result = run_cases(cases, lib_path=lib_path, timeout=args.timeout, progress=progress)
        except (RuntimeError, FileNotFoundError, ImportError, ValueError) as exc:
            print(f"mlaref conform: {label}: {exc}", file=sys.stderr)
            return 2
        unexplained = _summarise(result)
        worst = max(worst, 1 if unexplained else 0)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        if args.json_dir:
            out = Path(args.json_dir)
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{snapshot_name(result)}.json").write_text(json.dumps(result, indent=1) + "\n")
    return worst


def snapshot_name(result: dict) -> str:
    """The file stem of a run's snapshot: its build's name (``avx2``, ``native-znver3``)."""
    b = result.get("ggml", {}).get("build") or {}
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", b.get("name") or "unknown")


def _targets(args) -> list:
    """(label, lib path or a callable that builds it) for each library the run checks."""
    from mlaref.codegen.peers import build as peer_build  # noqa: PLC0415

    if args.all_levels:
        if args.lib or args.peer:
            raise ValueError("--all-levels runs the installed library and every level; give no --peer or --lib")
        return [("ggml-python (installed)", None)] + [
            (f"ggml-python@{lv}", lambda lv=lv: str(peer_build.ensure(lv, progress=True) / "lib"))
            for lv in peer_build.runnable_levels()]
    if args.peer:
        _, level = peer_build.parse_peer(args.peer)
        if level is not None:
            if args.lib:
                raise ValueError("give --peer NAME@LEVEL or --lib, not both")
            miss = peer_build.missing_for(level)
            if miss:
                raise ValueError(f"level {level} needs CPU features this machine lacks: {', '.join(miss)}")
            return [(args.peer, lambda: str(peer_build.ensure(level, progress=True) / "lib"))]
    return [(args.lib or "ggml-python (installed)", args.lib)]


def _summarise(result: dict) -> int:
    """Print a run's library, build model and counts; return the number of unexplained verdicts."""
    g = result["ggml"]
    counts = {s: sum(v["status"] == s for v in result["verdicts"]) for s in STATUSES}
    unexplained = sum(not v["explained"] for v in result["verdicts"])
    print(f"\nlibggml {g.get('version', '?')} ({g.get('commit', '?')}) from {g.get('file', '?')}")
    b = g.get("build") or {}
    if b:
        print(f"build {b['name']} (compiled with {' '.join(b['features']) or 'the x86-64 baseline'}): vec_dot plan "
              f"{b['vec_dot_plan']}, v_expf {b['simd']}; " + (f"verified on {b['verified']}" if b["verified"]
                                                                else "this plan is inferred, not yet run bit for bit"))
    if g.get("version") != g.get("header_version"):
        print(f"warning: the library is version {g.get('version')}, ggml-python's header is "
              f"{g.get('header_version')}: struct layouts may differ", file=sys.stderr)
    print(", ".join(f"{n} {s}" for s, n in counts.items()) + f"; {unexplained} unexplained")
    return unexplained

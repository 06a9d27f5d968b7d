"""The peer a conformance worker checks: ggml-python's bindings, or a peer's harness (any peer).

A worker runs against one library. With ``MLAREF_CONFORM_HARNESS`` set to a harness library
(:mod:`mlaref.codegen.peers.harness`, one per peer and level) every call goes through it; otherwise through
ggml-python's ctypes bindings (the installed build or a shim, :mod:`mlaref.codegen.peers.ggml`). Both sides offer
the same functions (:data:`API`), so :mod:`.ops` is written once for every peer. ``module()`` is the module of graph
ops and type traits for this process; :func:`info` describes the library for the run's header.
"""

from __future__ import annotations

import os
import types
from pathlib import Path

from mlaref.codegen.peers import ggml as ggml_peer
from mlaref.codegen.peers import ggml_ops, harness, harness_ops

__all__ = ["API", "ENV", "info", "module", "uses_harness"]

ENV = "MLAREF_CONFORM_HARNESS"
API = ("build", "has_type", "has_trait", "vec_dot_type", "from_float", "from_float_ref", "to_float", "vec_dot",
       "quantize_chunk", "cast", "concat", "repeat", "get_rows", "mul_mat", "mul_mat_supported", "soft_max_ext",
       "rope_ext", "flash_attn_ext")


def uses_harness() -> bool:
    return bool(os.environ.get(ENV))


def _ggml_python() -> types.SimpleNamespace:
    """ggml-python's bindings under the names of :data:`API`."""
    def has_type(name):
        return name in ggml_peer.GGML_TYPE

    def has_trait(name, field):
        g = ggml_peer.lib()
        cpu = field in ("from_float", "vec_dot")
        tr = (g.ggml_get_type_traits_cpu if cpu else g.ggml_get_type_traits)(ggml_peer.ggml_type(name)).contents
        return bool(getattr(tr, field))

    def vec_dot_type(name):
        return ggml_ops.type_name(int(ggml_peer.vec_dot_type(name)))

    def mul_mat_supported(a, b):
        g = ggml_peer.lib()
        ctx = g.ggml_init(g.ggml_init_params(mem_size=1 << 20, mem_buffer=None, no_alloc=True))
        try:
            node = g.ggml_mul_mat(ctx, g.ggml_new_tensor_4d(ctx, ggml_ops.type_id(a.type), *a.ne),
                                  g.ggml_new_tensor_4d(ctx, ggml_ops.type_id(b.type), *b.ne))
            backend = g.ggml_backend_cpu_init()
            try:
                return bool(g.ggml_backend_supports_op(backend, node))
            finally:
                g.ggml_backend_free(backend)
        finally:
            g.ggml_free(ctx)

    ns = types.SimpleNamespace(has_type=has_type, has_trait=has_trait, vec_dot_type=vec_dot_type,
                               mul_mat_supported=mul_mat_supported, name="ggml-python")
    for fn in ("build", "from_float", "from_float_ref", "to_float", "vec_dot", "quantize_chunk",
               "quantize_row_symbol", "dequantize_row_symbol"):
        setattr(ns, fn, getattr(ggml_peer, fn))
    for fn in ("cast", "concat", "repeat", "get_rows", "mul_mat", "soft_max_ext", "rope_ext", "flash_attn_ext"):
        setattr(ns, fn, getattr(ggml_ops, fn))
    return ns


def _harness() -> types.SimpleNamespace:
    harness.load(os.environ[ENV])
    ns = types.SimpleNamespace(name=harness_ops.peer_name(), build_record=harness_ops.record)
    for fn in (*API, "quantize_row_symbol", "dequantize_row_symbol"):
        setattr(ns, fn, getattr(harness_ops, fn))
    return ns


_module = None


def module() -> types.SimpleNamespace:
    """The functions of :data:`API` for the library this process checks (made once)."""
    global _module
    if _module is None:
        _module = _harness() if uses_harness() else _ggml_python()
    return _module


def available() -> tuple[bool, str]:
    """(True, '') if this process can load its library, else (False, why)."""
    if uses_harness():
        try:
            module()
        except (OSError, harness.HarnessError) as exc:
            return False, f"the harness {os.environ[ENV]} cannot be loaded: {exc}"
        return True, ""
    if not ggml_peer.available():
        return False, ggml_peer.unavailable_reason()
    return True, ""


def info() -> dict:
    """What the worker loaded, for the run's header: file, version, and its build (features, tune, plan)."""
    m = module()
    if uses_harness():
        rec = harness_ops.record()
        out = {"peer": m.name, "file": str(Path(os.environ[ENV]).parents[2] / "lib"), "harness": os.environ[ENV],
               "version": rec.get("version"), "vendors": rec.get("ggml"), "commit": rec.get("commit")}
    else:
        g = ggml_peer.lib()
        g.ggml_cpu_init()  # fills the f16 table the CPU kernels read
        out = {"peer": "ggml-python", "file": str(Path(g.__file__).parent / "lib"), "header_version": g.GGML_VERSION,
               "version": g.ggml_version().decode(), "commit": g.ggml_commit().decode()}
    b = m.build()
    try:
        plan = b.vec_dot_plan
    except LookupError:
        plan = None
    out["build"] = {"name": b.name, "level": b.level, "tune": b.tune, "features": sorted(b.features),
                    "vec_dot_plan": plan, "simd": b.simd, "verified": b.verified}
    return out


"""Run-time dispatch: for each (op, types, plan) the highest-priority ISA that is usable here.

An ISA is usable when (1) its architecture is this machine's, (2) the CPU reports all its features
(:mod:`mlaref.codegen.cpu`), (3) it is not listed in ``MLAREF_DISABLE_ISA`` (comma-separated tokens), and (4) when
an ISA is forced (``MLAREF_ISA=<token>`` or :func:`forced`), it is that token or one the token implies. Among the
kernels the catalog has for the op, the usable one of highest priority whose module builds wins. Since all ISAs
of one plan give identical bytes, dispatch changes speed only.

Decisions are cached per process, keyed on the request and on everything that can change the answer: the
``force`` argument, the :func:`forced` context, ``MLAREF_ISA``, ``MLAREF_DISABLE_ISA`` and ``MLAREF_SANITIZE`` (it
selects another build of the module). CPU features and the catalog are fixed for a process. A hit costs a few
dictionary look-ups instead of the ISA walk (tens of microseconds), which matters for row-sized calls. Failures
are not cached, so their messages stay current; :func:`cache_clear` empties the cache.

The decision tree on x86-64, by CPU generation::

    AVX-512 VNNI (Cascade Lake 2019, Ice Lake, Zen 4) -> avx512vnni   (vec_dot only; row kernels fall to avx512)
    AVX-512 F/CD/BW/DQ/VL (Skylake-SP 2017)           -> avx512
    AVX2 + FMA + F16C (Haswell 2013, Zen 1 2017)      -> avx2
    anything else                                     -> scalar
and on aarch64: dotprod (Cortex-A76 / Neoverse N1, Apple M1) -> neondot; any ARMv8 -> neon; else scalar.
"""

from __future__ import annotations

import contextlib
import contextvars
import os

from mlaref.codegen import build
from mlaref.codegen import catalog as _catalog
from mlaref.codegen import cpu as _cpu
from mlaref.codegen import isa as _isa

__all__ = ["disabled", "forced_isa", "candidates", "choose", "forced", "table", "cache_clear", "state_key",
           "DispatchError"]

_FORCED: contextvars.ContextVar[str | None] = contextvars.ContextVar("mlaref_forced_isa", default=None)
_BROKEN: dict[tuple[str, str], str] = {}  # (family, isa) -> build error, remembered per process
_CHOSEN: dict[tuple, tuple] = {}  # (request, state_key) -> (KernelSpec, module)
_ENV = os.environ


class DispatchError(LookupError):
    """No usable kernel for a request (or a forced ISA this CPU lacks)."""


def disabled() -> frozenset[str]:
    raw = os.environ.get("MLAREF_DISABLE_ISA", "")
    toks = frozenset(t.strip() for t in raw.split(",") if t.strip())
    for t in toks:
        _isa.get(t)
    return toks


def forced_isa() -> str | None:
    """The ISA forced by :func:`forced` (innermost) or ``MLAREF_ISA``; None when nothing is forced."""
    tok = _FORCED.get() or os.environ.get("MLAREF_ISA") or None
    if tok is not None:
        _isa.get(tok)
    return tok


def candidates(force: str | None = None) -> list[str]:
    """Usable ISA tokens here, highest priority first."""
    force = force or forced_isa()
    off = disabled()
    order = [i.token for i in _isa.for_arch(_isa.host_arch())]
    if force is not None:
        miss = _cpu.missing(force)
        if miss:
            raise DispatchError(f"ISA {force!r} is forced but this CPU lacks: {', '.join(miss)}")
        if force in off:
            raise DispatchError(f"ISA {force!r} is both forced and disabled (MLAREF_DISABLE_ISA)")
        allowed = {force, *_isa.get(force).implies}
        order = [t for t in order if t in allowed]
    return [t for t in order if t not in off and _cpu.supported(t)]


def state_key(force: str | None = None) -> tuple:
    """Everything besides the request that decides a dispatch: the cache key part for ``force``."""
    return (force, _FORCED.get(), _ENV.get("MLAREF_ISA"), _ENV.get("MLAREF_DISABLE_ISA"), _ENV.get("MLAREF_SANITIZE"))


def cache_clear() -> None:
    """Forget every cached dispatch decision (the next :func:`choose` walks the ISAs again)."""
    _CHOSEN.clear()


def choose(family: str, type_x: str, type_y: str | None, plan: str, force: str | None = None):
    """(KernelSpec, module) of the kernel to run; DispatchError naming what is missing otherwise."""
    key = (family, type_x, type_y, plan, state_key(force))
    hit = _CHOSEN.get(key)
    if hit is not None:
        return hit
    hit = _choose(family, type_x, type_y, plan, force)
    _CHOSEN[key] = hit
    return hit


def _choose(family: str, type_x: str, type_y: str | None, plan: str, force: str | None):
    have = _catalog.by_key().get((family, type_x, type_y, plan), {})
    what = f"{family} {type_x}{'/' + type_y if type_y else ''} plan {plan}"
    if not have:
        raise DispatchError(f"no kernel in the catalog for {what}")
    tried = []
    for tok in candidates(force):
        spec = have.get(tok)
        if spec is None:
            continue
        if (family, tok) in _BROKEN:
            tried.append(f"{tok}: {_BROKEN[(family, tok)].splitlines()[0]}")
            continue
        try:
            return spec, build.load(family, tok)
        except build.BuildError as exc:
            _BROKEN[(family, tok)] = str(exc)
            tried.append(f"{tok}: {str(exc).splitlines()[0]}")
    raise DispatchError(f"no usable kernel for {what}: catalog ISAs {sorted(have)}, usable here "
                        f"{candidates(force)}; {'; '.join(tried) or 'none matched'}")


@contextlib.contextmanager
def forced(token: str):
    """Force ``token`` (and the ISAs it implies) inside the block, as ``MLAREF_ISA`` does for a process."""
    _isa.get(token)
    reset = _FORCED.set(token)
    try:
        yield
    finally:
        _FORCED.reset(reset)


def table() -> list[tuple[str, str]]:
    """(op key, chosen kernel name) for every (op, types, plan) of the catalog, for ``mlaref info``."""
    keys = sorted({(s.family, s.type_x, s.type_y, s.plan) for s in _catalog.catalog()},
                  key=lambda k: (k[0], k[1], k[2] or "", k[3]))
    usable = candidates()
    out = []
    for fam, tx, ty, plan in keys:
        key = f"{fam} {tx}{'/' + ty if ty else ''} [{plan}]"
        if os.environ.get("MLAREF_INFO_NO_BUILD"):
            best = [s for s in _catalog.catalog() if (s.family, s.type_x, s.type_y, s.plan) == (fam, tx, ty, plan)
                    and s.isa in usable]
            best.sort(key=lambda s: -_isa.get(s.isa).priority)
            out.append((key, best[0].name if best else "(none)"))
            continue
        try:
            out.append((key, choose(fam, tx, ty, plan)[0].name))
        except DispatchError as exc:
            out.append((key, f"(none: {exc})"))
    return out

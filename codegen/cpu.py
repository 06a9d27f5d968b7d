"""CPU feature probe: the features of this processor (``/proc/cpuinfo`` on Linux) and its last-level cache.

Feature names are the kernel's flag names as ``/proc/cpuinfo`` prints them (``flags`` on x86, ``Features`` on
ARM): ``avx2 fma f16c avx512f avx512cd avx512bw avx512dq avx512vl avx512_vnni`` / ``asimd asimddp``.
``mlaref info`` (:mod:`mlaref.codegen.cli.info`) reports them.
"""

from __future__ import annotations

import functools
import os

from mlaref.codegen import isa as _isa

__all__ = ["features", "missing", "supported", "llc_bytes", "host_arch_is_x86"]

_CPUINFO = "/proc/cpuinfo"
_CACHES = "/sys/devices/system/cpu/cpu0/cache"
LLC_FALLBACK = 16 << 20  # when sysfs does not say (a copy op of 4 MiB and more then streams, the earlier rule)


@functools.cache
def features(path: str = _CPUINFO) -> frozenset[str]:
    """The CPU feature flags of the first processor listed in ``path``; empty where it cannot be read."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


@functools.cache
def llc_bytes(path: str = _CACHES) -> int:
    """Bytes of the last-level cache of cpu0 (the largest data or unified cache sysfs lists, e.g. ``49152K``), or
    ``LLC_FALLBACK`` where sysfs cannot be read. The row copies choose streaming stores against it."""
    best = 0
    try:
        entries = sorted(os.listdir(path))
    except OSError:
        return LLC_FALLBACK
    for entry in entries:
        if not entry.startswith("index"):
            continue
        try:
            with open(os.path.join(path, entry, "type")) as f:
                kind = f.read().strip()
            with open(os.path.join(path, entry, "size")) as f:
                size = f.read().strip()
        except OSError:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1:], 1)
        digits = size[:-1] if size[-1:] in "KMG" else size
        if kind in ("Data", "Unified") and digits.isdigit():
            best = max(best, int(digits) * scale)
    return best or LLC_FALLBACK


def missing(token: str) -> tuple[str, ...]:
    """The features ``token`` needs that this machine lacks (its architecture counted as one when different)."""
    info = _isa.get(token)
    if info.arch not in ("any", _isa.host_arch()):
        return (f"arch {info.arch}",)
    have = features()
    return tuple(f for f in info.features if f not in have)


def host_arch_is_x86() -> bool:
    return _isa.host_arch() == "x86_64"


def supported(token: str) -> bool:
    return not missing(token)

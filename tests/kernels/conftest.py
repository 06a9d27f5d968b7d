"""Kernel-test helpers: the manifest as test parameters, ISA skips, sizes, poisoned and guarded outputs, diffs.

Every kernel test is parametrised from generated/manifest.json with the kernel name as its id, so a new catalog
entry gets its tests with no test edits (XNNPACK's one tester per family driven by the registry).
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

MANIFEST = pathlib.Path(__file__).resolve().parents[2] / "generated" / "manifest.json"
GUARD = 64  # guard bytes after every output
GUARD_BYTE = 0xA5
POISON_BYTE = 0xFF  # float32 0xFFFFFFFF is a NaN; u8 0xFF is no valid result of a C store we make by accident


def manifest_kernels(family: str | tuple[str, ...] | None = None) -> dict[str, dict]:
    """The manifest's kernels, all or those of ``family`` (a name or a tuple of names)."""
    kernels = json.loads(MANIFEST.read_text())["kernels"]
    families = (family,) if isinstance(family, str) else family
    return {k: v for k, v in kernels.items() if families is None or v["family"] in families}


def kernel_params(family: str, *, native_only: bool = True):
    """pytest params (id = kernel name) of a family; kernels for another architecture are left out when
    ``native_only`` (they have their own qemu test)."""
    from mlaref.codegen import isa

    out = []
    for name, k in sorted(manifest_kernels(family).items()):
        if native_only and isa.get(k["isa"]).cross:
            continue
        out.append(pytest.param(name, id=name))
    return out


def require_isa(token: str) -> None:
    """Skip, naming the missing CPU features, when this machine cannot run ``token``'s kernels."""
    from mlaref.codegen import cpu

    miss = cpu.missing(token)
    if miss:
        pytest.skip(f"this CPU lacks {', '.join(miss)} (needed by ISA {token})")


def require_reference(type_name: str):
    from mlaref.reference import get_type

    try:
        return get_type(type_name)
    except (KeyError, ValueError) as exc:
        pytest.skip(f"the reference has no format {type_name!r} yet ({exc})")


def row_sizes(block_size: int, vector_values: int = 16) -> list[int]:
    """Row lengths in values: 1 block, the SIMD tile and tile +- 1, odd tails, and the MLA rows 576 and 192."""
    if block_size == 1:
        t = vector_values
        sizes = {1, t - 1, t, t + 1, 2 * t + 5, 37, 576, 192}
    else:
        sizes = {block_size * k for k in (1, 2, 3, 4, 5, 7)} | {n for n in (192, 576) if n % block_size == 0}
    return sorted(sizes)


class Guarded:
    """An output of ``n_rows`` rows of ``row_len`` items at a row stride with a gap, poisoned, plus guard bytes.

    ``array`` is the (n_rows, row_len) view handed to the kernel; ``check()`` asserts that the gaps between rows
    and the guard bytes after the last row still hold their fill.
    """

    def __init__(self, n_rows: int, row_len: int, dtype, gap_items: int = 3):
        dtype = np.dtype(dtype)
        self.row_bytes = row_len * dtype.itemsize
        self.stride = self.row_bytes + gap_items * dtype.itemsize
        total = self.stride * n_rows + GUARD
        self.buf = np.full(total + 64, GUARD_BYTE, dtype=np.uint8)
        start = (-self.buf.ctypes.data) % 64  # 64-byte aligned start
        self.raw = self.buf[start : start + total]
        for r in range(n_rows):
            self.raw[r * self.stride : r * self.stride + self.row_bytes] = POISON_BYTE
        self.array = np.lib.stride_tricks.as_strided(
            self.raw.view(dtype) if dtype.itemsize == 1 else self.raw[: (total // dtype.itemsize) * dtype.itemsize].view(dtype),
            (n_rows, row_len), (self.stride, dtype.itemsize))
        self.n_rows = n_rows

    def check(self) -> None:
        for r in range(self.n_rows):
            gap = self.raw[r * self.stride + self.row_bytes : (r + 1) * self.stride]
            assert np.all(gap == GUARD_BYTE), f"row {r}: the kernel wrote into the gap after the row"
        tail = self.raw[self.n_rows * self.stride :]
        assert np.all(tail == GUARD_BYTE), f"the kernel wrote {np.count_nonzero(tail != GUARD_BYTE)} guard bytes"


def assert_same_bytes(got: np.ndarray, want: np.ndarray, block_bytes: int, what: str) -> None:
    """Equal bytes, or a failure naming the bad blocks, the worst block and the number of differing bits."""
    g = np.ascontiguousarray(got).view(np.uint8).reshape(-1)
    w = np.ascontiguousarray(want).view(np.uint8).reshape(-1)
    assert g.shape == w.shape, f"{what}: {g.size} bytes vs {w.size} expected"
    if np.array_equal(g, w):
        return
    nbits = np.unpackbits(g ^ w).reshape(-1, 8).sum(axis=1)
    n = g.size // block_bytes * block_bytes
    per_block = nbits[:n].reshape(-1, block_bytes).sum(axis=1) if n else np.zeros(0)
    bad = np.flatnonzero(per_block)
    worst = int(bad[np.argmax(per_block[bad])]) if bad.size else -1
    raise AssertionError(
        f"{what}: {int(nbits.sum())} bits differ in {bad.size} of {per_block.size} blocks "
        f"(first bad blocks {bad[:10].tolist()}; worst block {worst} with {int(per_block[worst]) if worst >= 0 else 0} "
        f"bits: got {g[worst * block_bytes:(worst + 1) * block_bytes].tobytes().hex() if worst >= 0 else ''} "
        f"want {w[worst * block_bytes:(worst + 1) * block_bytes].tobytes().hex() if worst >= 0 else ''})"
    )


def quant_inputs(rng, n_rows: int, n: int) -> np.ndarray:
    """float32 rows for quantizers: normal values at several scales, an all-zero block, exact .5 ties, a block of
    equal magnitudes with both signs (first-wins ties of the signed max), tiny and large magnitudes."""
    x = rng.standard_normal((n_rows, n)).astype(np.float32)
    x *= np.float32(10.0) ** rng.integers(-3, 4, size=(n_rows, 1)).astype(np.float32)
    m = min(32, n)
    if n_rows > 1:
        x[1, :m] = 0
    if n_rows > 2:
        # amax = 127 makes d = 1 and id = 1 (ref) = 127/127 (x86): x*id hits .5 ties exactly
        x[2, :m] = (np.arange(m, dtype=np.float32) - 16) + np.float32(0.5)
        x[2, 0] = 127.0
    if n_rows > 3:
        x[3, :m] = np.where(np.arange(m) % 2 == 0, 3.0, -3.0).astype(np.float32)
    if n_rows > 4:
        x[4] *= np.float32(1e-6)
    return x


class _Helpers:
    manifest_kernels = staticmethod(manifest_kernels)
    require_isa = staticmethod(require_isa)
    require_reference = staticmethod(require_reference)
    row_sizes = staticmethod(row_sizes)
    Guarded = Guarded
    assert_same_bytes = staticmethod(assert_same_bytes)
    quant_inputs = staticmethod(quant_inputs)


@pytest.fixture(scope="session")
def kt():
    """The helpers above, for test modules (conftest modules are not importable under importlib mode)."""
    return _Helpers


def pytest_generate_tests(metafunc):
    """``kernel_name`` parameters: every manifest kernel of the module's ``FAMILY`` (a name, a tuple of names, or
    None for all families; native ISAs unless the module sets ``NATIVE_ONLY = False``; only ``ISAS`` if set), the
    kernel name as the test id."""
    if "kernel_name" not in metafunc.fixturenames:
        return
    from mlaref.codegen import isa

    family = getattr(metafunc.module, "FAMILY", None)
    native_only = getattr(metafunc.module, "NATIVE_ONLY", True)
    only = getattr(metafunc.module, "ISAS", None)
    names = [n for n, k in sorted(manifest_kernels(family).items())
             if not (native_only and isa.get(k["isa"]).cross) and (only is None or k["isa"] in only)]
    metafunc.parametrize("kernel_name", names, ids=names)


def variant_for(fmt, plan: str) -> str:
    """The reference quantize variant whose implementation is ``plan`` (the variant of that name first)."""
    if fmt.variants.get(plan) == plan:
        return plan
    for v, impl in fmt.variants.items():
        if impl == plan:
            return v
    pytest.skip(f"the reference {fmt.name} has no variant implemented as {plan!r} (variants {fmt.variants})")


_Helpers.variant_for = staticmethod(variant_for)


@pytest.fixture(scope="module")
def driver():
    """The qemu-aarch64 driver of the cross-compiled kernels (test_neon*.py); skips naming the missing tool."""
    from mlaref.codegen import build

    reason = build.cross_tools_missing("aarch64")
    if reason:
        pytest.skip(reason)
    return build.cross_driver("aarch64")

"""Cross-build upstream ggml for aarch64 at three levels and run its CPU code under qemu-user through a C driver.

ggml-python's ctypes bindings cannot load an aarch64 library into an x86 Python, so the peer is a small static
aarch64 program, ``codegen/peers/ggml_cross_driver.c`` linked against ggml's ``ggml-base`` and ``ggml-cpu`` static
libraries, that reads requests on stdin and answers on stdout (its header comment is the protocol). The levels
are ggml's own CMake switch ``GGML_CPU_ARM_ARCH`` (ggml/src/ggml-cpu/CMakeLists.txt at ggml 0.15.3, as vendored by
ggml-python 0.0.45) with ``GGML_NATIVE=OFF``:

===================  ==============================  =================================================================
level                ``GGML_CPU_ARM_ARCH``           what the compiler defines (what changes in ggml-cpu)
===================  ==============================  =================================================================
``aarch64-neon``     ``armv8-a``                     ``__ARM_NEON``, ``__ARM_FEATURE_FMA``: NEON code, ``vdotq_s32``
                                                     emulated by ``vmull_s8`` + ``vpaddlq_s16`` (another int lane map)
``aarch64-dotprod``  ``armv8.2-a+dotprod``           ``+ __ARM_FEATURE_DOTPROD``: ``vdotq_s32``
``aarch64-fp16``     ``armv8.2-a+fp16+dotprod``      ``+ __ARM_FEATURE_FP16_VECTOR_ARITHMETIC``: the f16 dot in half
                                                     precision (``vfmaq_f16``)
===================  ==============================  =================================================================

Each level is configured with a CMake toolchain file (``CMAKE_SYSTEM_NAME Linux``, ``CMAKE_SYSTEM_PROCESSOR
aarch64``, ``aarch64-linux-gnu-gcc`` / ``-g++``), ``BUILD_SHARED_LIBS=OFF``, ``GGML_OPENMP=OFF``,
``GGML_LLAMAFILE=OFF``, built (targets ``ggml-base`` and ``ggml-cpu`` only) into the user cache
(``<cache>/peers/ggml-python-0.0.45/<level>/``) under a file lock, and the driver is linked statically beside the
libraries (rebuilt alone when its source changes). A level takes about two minutes on 2 cores.

Python API: :func:`call_vec_dot`, :func:`call_from_float`, :func:`call_to_float`, :func:`call_soft_max`,
:func:`compiled_features`. Without the cross compilers, qemu-user or cmake every entry point raises
:class:`CrossToolsMissing` naming the Debian packages.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mlaref.codegen import build as _build
from mlaref.codegen.peers import build as peer_build
from mlaref.reference import get_type
from mlaref.reference.ops.mul_mat import VEC_DOT_TYPE
from mlaref.reference.tensor import row_size

__all__ = [
    "APT_PACKAGES",
    "CC",
    "CXX",
    "LEVELS",
    "LEVEL_ORDER",
    "QEMU",
    "CrossToolsMissing",
    "build_dir",
    "built",
    "call_from_float",
    "call_soft_max",
    "call_to_float",
    "call_vec_dot",
    "call_vec_dot_many",
    "compiled_features",
    "driver",
    "ensure",
    "record",
    "run",
    "tools_missing",
]

# level -> GGML_CPU_ARM_ARCH (the -march= that ggml's CMake passes for GGML_NATIVE=OFF)
LEVELS = {
    "aarch64-neon": "armv8-a",
    "aarch64-dotprod": "armv8.2-a+dotprod",
    "aarch64-fp16": "armv8.2-a+fp16+dotprod",
}
LEVEL_ORDER = tuple(LEVELS)
CC, CXX, QEMU = "aarch64-linux-gnu-gcc", "aarch64-linux-gnu-g++", "qemu-aarch64"
APT_PACKAGES = {CC: "gcc-aarch64-linux-gnu", CXX: "g++-aarch64-linux-gnu", QEMU: "qemu-user", "cmake": "cmake"}
DRIVER_SOURCE = Path(__file__).resolve().parent / "ggml_cross_driver.c"
RECORD = "mlaref-build.json"
_TARGETS = ("ggml-base", "ggml-cpu")
_TOOLCHAIN = f"""set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER {CC})
set(CMAKE_CXX_COMPILER {CXX})
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
"""
# ggml_cross_driver.c's 'F' answer: 16 int32, these first
_FEATURE_NAMES = ("neon", "arm_fma", "fp16_va", "dotprod", "matmul_int8", "sve", "sme",
                  "__ARM_FEATURE_DOTPROD", "__ARM_FEATURE_FMA", "__ARM_FEATURE_FP16_VECTOR_ARITHMETIC",
                  "__ARM_FEATURE_MATMUL_INT8", "__ARM_FEATURE_SVE")


class CrossToolsMissing(peer_build.PeerBuildError):
    """The aarch64 cross compilers, qemu-user or cmake are not on PATH; the message names the apt packages."""


def tools_missing() -> str | None:
    """None when every tool is on PATH, else a sentence naming the missing tools and their Debian packages."""
    missing = [t for t in (CC, CXX, QEMU, "cmake") if shutil.which(t) is None]
    if not missing:
        return None
    pkgs = " ".join(APT_PACKAGES[t] for t in missing)
    return (f"the aarch64 ggml peer needs {', '.join(missing)} on PATH "
            f"(Debian/Ubuntu: apt-get install {pkgs})")


def _check_tools() -> None:
    reason = tools_missing()
    if reason:
        raise CrossToolsMissing(reason)


def _check_level(level: str) -> None:
    if level not in LEVELS:
        raise ValueError(f"unknown aarch64 level {level!r}; known: {', '.join(LEVELS)}")


def build_dir(level: str) -> Path:
    return _build.cache_dir() / "peers" / f"{peer_build.PEER}-{peer_build.VERSION}" / level


def built(level: str) -> bool:
    return (build_dir(level) / "lib" / RECORD).exists()


def record(level: str) -> dict:
    """What was built for ``level`` (``lib/mlaref-build.json``), or {} if it is not built."""
    path = build_dir(level) / "lib" / RECORD
    return json.loads(path.read_text()) if path.exists() else {}


def _cmake_args(level: str, toolchain: Path) -> list[str]:
    return [f"-DCMAKE_TOOLCHAIN_FILE={toolchain}", "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF",
            "-DGGML_NATIVE=OFF", "-DGGML_OPENMP=OFF", "-DGGML_LLAMAFILE=OFF", "-DGGML_CCACHE=OFF",
            "-DGGML_BUILD_TESTS=OFF", "-DGGML_BUILD_EXAMPLES=OFF", f"-DGGML_CPU_ARM_ARCH={LEVELS[level]}"]


def _run_tool(cmd, what: str, cwd=None) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    if res.returncode != 0:
        tail = "\n".join((res.stdout + res.stderr).strip().splitlines()[-15:])
        raise peer_build.PeerBuildError(f"{what} failed ({' '.join(str(c) for c in cmd[:3])} ...):\n{tail}")


def ensure(level: str, progress: bool | None = None) -> Path:
    """The directory of ``level``'s build (``lib/`` with the static libraries, ``include/``), built if absent."""
    _check_level(level)
    _check_tools()
    out = build_dir(level)
    if built(level):
        return out
    progress = sys.stderr.isatty() if progress is None else progress
    from filelock import FileLock

    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out.parent / f"{level}.lock")):
        if built(level):
            return out
        with tempfile.TemporaryDirectory(prefix="mlaref-xpeer-") as tmp:
            work = Path(tmp)
            src = peer_build.fetch_sdist(work, progress) / "vendor" / "ggml"
            toolchain = work / "aarch64.cmake"
            toolchain.write_text(_TOOLCHAIN)
            bdir = work / "build"
            t0 = time.perf_counter()
            peer_build.say(progress, f"configuring {peer_build.PEER} {peer_build.VERSION} for {level} "
                                      f"(-march={LEVELS[level]})")
            _run_tool(["cmake", "-S", str(src), "-B", str(bdir), *_cmake_args(level, toolchain)], "cmake configure")
            peer_build.say(progress, f"building ggml-base and ggml-cpu for {level} (about two minutes on 2 cores)")
            _run_tool(["cmake", "--build", str(bdir), "-j", str(max(1, os.cpu_count() or 1)), "--target",
                       *_TARGETS], "cmake build")
            if out.exists():
                shutil.rmtree(out)
            (out / "lib").mkdir(parents=True)
            for lib in ("libggml-base.a", "libggml-cpu.a"):
                shutil.copy2(bdir / "src" / lib, out / "lib" / lib)
            shutil.copytree(src / "include", out / "include")
            rec = {"peer": peer_build.PEER, "version": peer_build.VERSION, "ggml": "0.15.3", "level": level,
                   "march": LEVELS[level], "compiler": _version(CC),
                   "cmake_args": _cmake_args(level, Path("aarch64.cmake")), "seconds": round(time.perf_counter() - t0, 1)}
            (out / "lib" / RECORD).write_text(json.dumps(rec, indent=1) + "\n")
            peer_build.say(progress, f"{level} built in {rec['seconds']} s -> {out}")
    return out


def _version(tool: str) -> str:
    try:
        return subprocess.run([tool, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        return "?"


def driver(level: str) -> Path:
    """The static aarch64 driver linked against ``level``'s libraries (built once per driver source)."""
    out = ensure(level)
    key = hashlib.sha256(DRIVER_SOURCE.read_bytes() + LEVELS[level].encode() + _version(CXX).encode()).hexdigest()[:12]
    exe = out / f"ggml-driver-{key}"
    if exe.exists():
        return exe
    from filelock import FileLock

    with FileLock(str(out / "driver.lock")):
        if exe.exists():
            return exe
        with tempfile.TemporaryDirectory(prefix="mlaref-xdrv-", dir=out) as tmp:
            obj, tmp_exe = Path(tmp) / "driver.o", Path(tmp) / "driver"
            _run_tool([CC, "-O2", "-std=c11", f"-march={LEVELS[level]}", "-I", str(out / "include"), "-c",
                       str(DRIVER_SOURCE), "-o", str(obj)], "compiling the aarch64 ggml driver")
            _run_tool([CXX, "-static", str(obj), str(out / "lib" / "libggml-cpu.a"),
                       str(out / "lib" / "libggml-base.a"), "-lm", "-lpthread", "-o", str(tmp_exe)],
                      "linking the aarch64 ggml driver")
            os.replace(tmp_exe, exe)
    return exe


def run(level: str, request: bytes, timeout: float = 600) -> bytes:
    """Run the driver of ``level`` under qemu-user on ``request`` (the protocol bytes); its stdout."""
    exe = driver(level)
    res = subprocess.run([QEMU, str(exe)], input=request, capture_output=True, timeout=timeout)
    if res.returncode != 0:
        tail = res.stderr.decode(errors="replace").strip().splitlines()[-5:]
        raise peer_build.PeerBuildError(f"{QEMU} ggml driver ({level}) exited with {res.returncode}: "
                                        + " | ".join(tail))
    return res.stdout


def _i32(*vals) -> bytes:
    return struct.pack(f"<{len(vals)}i", *vals)


def _type_id(type_name: str) -> int:
    if type_name == "f32":
        return 0
    if type_name == "f16":
        return 1
    return int(get_type(type_name).ggml_type)


def _row_bytes(type_name: str, n: int) -> int:
    return row_size(type_name, n)


def compiled_features(level: str) -> dict[str, bool]:
    """``ggml_cpu_has_*`` of the build as it runs under qemu (neon, arm_fma, fp16_va, dotprod, matmul_int8, sve,
    sme), and the ``__ARM_FEATURE_*`` macros the driver was compiled with."""
    vals = struct.unpack("<16i", run(level, b"F"))
    return {name: bool(v) for name, v in zip(_FEATURE_NAMES, vals)}




def _vec_dot_request(type: str, X, Y, n: int) -> tuple[bytes, tuple[int, int]]:
    X = np.ascontiguousarray(X, np.uint8)
    Y = np.ascontiguousarray(Y, np.uint8)
    if type in VEC_DOT_TYPE:
        bx, by = _row_bytes(type, n), _row_bytes(VEC_DOT_TYPE[type], n)
        if X.shape[1:] != (bx,) or Y.shape[1:] != (by,):
            raise ValueError(f"call_vec_dot: {type} rows of n = {n} are {bx} bytes and {VEC_DOT_TYPE[type]} "
                             f"rows {by}; got {X.shape} and {Y.shape}")
    req = b"D" + _i32(_type_id(type), n, X.shape[0], Y.shape[0]) + X.tobytes() + Y.tobytes()
    return req, (X.shape[0], Y.shape[0])


def call_vec_dot_many(level: str, calls) -> list[np.ndarray]:
    """:func:`call_vec_dot` for each ``(type, X, Y, n)`` of ``calls``, all in one qemu run."""
    reqs = [_vec_dot_request(*c) for c in calls]
    out = run(level, b"".join(r for r, _ in reqs))
    res, off = [], 0
    for _, (m, k) in reqs:
        res.append(np.frombuffer(out, "<f4", count=m * k, offset=off).reshape(m, k).copy())
        off += 4 * m * k
    if off != len(out):
        raise peer_build.PeerBuildError(f"ggml driver ({level}) answered {len(out)} bytes, expected {off}")
    return res


def call_vec_dot(level: str, type: str, X, Y, n: int) -> np.ndarray:
    """float32 ``(len(X), len(Y))``: the CPU type traits' ``vec_dot`` of ``type`` in ``level``'s build for every
    x row (uint8 rows of ``type``) and y row (uint8 rows of its ``vec_dot_type``: q8_0, q8_1, q8_K, or itself)."""
    return call_vec_dot_many(level, [(type, X, Y, n)])[0]


def call_from_float(level: str, type: str, x) -> np.ndarray:
    """uint8 rows: the CPU type traits' ``from_float`` of ``type`` (e.g. q8_0, q8_1, q8_K, f16) on float32 rows."""
    x = np.ascontiguousarray(x, np.float32)
    r, n = x.shape
    out = run(level, b"Q" + _i32(_type_id(type), n, r) + x.tobytes())
    return np.frombuffer(out, np.uint8).reshape(r, -1).copy()


def call_to_float(level: str, type: str, rows, n: int) -> np.ndarray:
    """float32 ``(R, n)``: ``ggml_get_type_traits(type)->to_float`` on uint8 rows."""
    rows = np.ascontiguousarray(rows, np.uint8)
    out = run(level, b"T" + _i32(_type_id(type), n, rows.shape[0]) + rows.tobytes())
    return np.frombuffer(out, "<f4").reshape(rows.shape[0], n).copy()


def call_soft_max(level: str, a, mask=None, scale: float = 1.0, max_bias: float = 0.0) -> np.ndarray:
    """``ggml_soft_max_ext(a, mask, scale, max_bias)`` in ``level``'s build (one thread). ``a``: float32 of shape
    ``(ne3, ne2, ne1, ne0)`` (or fewer leading dims); ``mask``: None, or float32 / float16 ``(ne1, ne0)``."""
    a = np.ascontiguousarray(a, np.float32)
    shape = a.shape
    a4 = a.reshape((1,) * (4 - a.ndim) + shape)
    ne = tuple(reversed(a4.shape))
    if mask is None:
        mt, mb = -1, b""
    else:
        mask = np.ascontiguousarray(mask)
        if mask.shape != (ne[1], ne[0]):
            raise ValueError(f"call_soft_max: mask must be (ne1, ne0) = {(ne[1], ne[0])}, got {mask.shape}")
        mt = 1 if mask.dtype == np.float16 else 0
        mb = mask.astype(np.float16 if mt else np.float32).tobytes()
    req = b"S" + _i32(*ne, mt) + struct.pack("<2f", scale, max_bias) + a4.tobytes() + mb
    return np.frombuffer(run(level, req), "<f4").reshape(shape).copy()

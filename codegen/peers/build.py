"""Build upstream ggml at each CPU level from ggml-python's source distribution, and run code against one build.

``mlaref peer build ggml-python --level LEVEL`` fetches the sdist (``pip download --no-binary :all: --no-deps
ggml-python==VERSION``), configures its vendored ggml with CMake at the level's switches (``GGML_NATIVE=OFF``,
``mlaref.reference.builds.LEVELS``), builds only the ``ggml``, ``ggml-base`` and ``ggml-cpu`` targets, and
installs the libraries into the user cache (``<cache>/peers/ggml-python-VERSION/LEVEL/``) under a file lock, with
a record of what was built (``lib/mlaref-build.json``: version, level, features, tuning, compiler, flags). A level that
this CPU cannot run is refused before anything is built. ``level="native"`` builds with ``GGML_NATIVE=ON``.

ggml-python loads ``lib/libggml.so`` from its own package directory, so a build is used through a *shim*: a copy
of the installed package's Python files beside a ``lib/`` of links to the build (:func:`shim`). Code runs against
it in a child process (:func:`call`), one library per process: ``PYTHONPATH=<shim>`` makes ``import ggml`` load
that build. On a cold cache a level takes about a minute on 2 cores (ggml 0.15.3's CPU back-end).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from mlaref.codegen import build as _build
from mlaref.codegen import cpu
from mlaref.reference import builds

__all__ = ["PEER", "VERSION", "LEVEL_CMAKE", "RECORD", "missing_for", "runnable_levels", "build_dir", "built", "record",
           "ensure", "make_shim", "shim", "call", "call_many", "native_tune", "PeerBuildError"]

PEER = "ggml-python"
VERSION = "0.0.45"  # vendors upstream ggml 0.15.3

_OFF = ("GGML_SSE42", "GGML_AVX", "GGML_AVX2", "GGML_BMI2", "GGML_FMA", "GGML_F16C", "GGML_AVX512",
        "GGML_AVX512_VBMI", "GGML_AVX512_VNNI", "GGML_AVX512_BF16", "GGML_AVX_VNNI")
# The GGML_* switches that turn a level on (everything in _OFF not named here is OFF).
LEVEL_CMAKE = {
    "generic": (),
    "avx": ("GGML_SSE42", "GGML_AVX"),
    "avx2": ("GGML_SSE42", "GGML_AVX", "GGML_AVX2", "GGML_BMI2", "GGML_FMA", "GGML_F16C"),
    "avx512": ("GGML_SSE42", "GGML_AVX", "GGML_AVX2", "GGML_BMI2", "GGML_FMA", "GGML_F16C", "GGML_AVX512"),
    "avx512vnni": ("GGML_SSE42", "GGML_AVX", "GGML_AVX2", "GGML_BMI2", "GGML_FMA", "GGML_F16C", "GGML_AVX512",
                   "GGML_AVX512_VNNI"),
    "avx512bf16": ("GGML_SSE42", "GGML_AVX", "GGML_AVX2", "GGML_BMI2", "GGML_FMA", "GGML_F16C", "GGML_AVX512",
                   "GGML_AVX512_VNNI", "GGML_AVX512_BF16"),
}
# /proc/cpuinfo names of what each level's code needs from the CPU.
_CPU_NEEDS = {
    "generic": (),
    "avx": ("sse4_2", "avx"),
    "avx2": ("sse4_2", "avx", "avx2", "fma", "f16c", "bmi2"),
    "avx512": ("avx2", "fma", "f16c", "bmi2", "avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"),
    "avx512vnni": ("avx2", "fma", "f16c", "bmi2", "avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw",
                   "avx512_vnni"),
    "avx512bf16": ("avx2", "fma", "f16c", "bmi2", "avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw",
                   "avx512_vnni", "avx512_bf16"),
}
_TARGETS = ("ggml", "ggml-base", "ggml-cpu")
RECORD = "mlaref-build.json"  # beside the libraries: what was built, read back by ggml_peer.build()


class PeerBuildError(RuntimeError):
    """A peer could not be fetched or built; the message says what is missing or what failed."""


def missing_for(level: str) -> list[str]:
    """The CPU features this machine lacks to run ``level`` (empty: it runs here)."""
    if level == "native":
        return []
    if level not in LEVEL_CMAKE:
        raise ValueError(f"unknown level {level!r}; known: native, {', '.join(LEVEL_CMAKE)}")
    if os.uname().machine != "x86_64":
        return ["x86_64"]
    return [f for f in _CPU_NEEDS[level] if f not in cpu.features()]


def runnable_levels() -> list[str]:
    """The levels of ``builds.LEVEL_ORDER`` this CPU can run, lowest first."""
    return [lv for lv in builds.LEVEL_ORDER if not missing_for(lv)]


def build_dir(level: str) -> Path:
    return _build.cache_dir() / "peers" / f"{PEER}-{VERSION}" / level


def built(level: str) -> bool:
    return (build_dir(level) / "lib" / RECORD).exists()


def record(level: str) -> dict:
    """What was built for ``level`` (``lib/mlaref-build.json``), or {} if it is not built."""
    path = build_dir(level) / "lib" / RECORD
    return json.loads(path.read_text()) if path.exists() else {}


def native_tune() -> str:
    """GCC's ``-mtune`` for ``-march=native`` on this machine (``znver3``, ``icelake-server``, ...), or
    ``generic`` when the compiler does not say."""
    cc = _build.compiler()
    try:
        out = subprocess.run([*cc, "-march=native", "-Q", "--help=target"], capture_output=True, text=True,
                             timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "generic"
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] == "-mtune=" and len(parts) > 1:
            return parts[1]
    return "generic"


def say(progress, text):
    if progress:
        print(f"mlaref peer: {text}", file=sys.stderr, flush=True)


def fetch_sdist(work: Path, progress: bool) -> Path:
    """The unpacked ggml-python sdist (cached beside the builds)."""
    root = build_dir("_src").parent
    src = root / "_src" / f"ggml_python-{VERSION}"
    if (src / "vendor" / "ggml" / "CMakeLists.txt").exists():
        return src
    say(progress, f"fetching {PEER}=={VERSION} (source distribution) with pip")
    dl = work / "dl"
    cmd = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", "--quiet",
           "-d", str(dl), f"{PEER}=={VERSION}"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    tars = sorted(dl.glob("*.tar.gz")) if dl.exists() else []
    if res.returncode != 0 or not tars:
        tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
        raise PeerBuildError(f"could not download the {PEER} {VERSION} sdist with pip (network or index?): "
                             + " | ".join(tail))
    unpack = root / "_src"
    unpack.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tars[0]) as tf:
        tf.extractall(unpack, filter="data")
    if not (src / "vendor" / "ggml" / "CMakeLists.txt").exists():
        raise PeerBuildError(f"the {PEER} {VERSION} sdist has no vendor/ggml/CMakeLists.txt")
    return src


def _cmake_args(level: str) -> list[str]:
    args = ["-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=ON", "-DGGML_BUILD_TESTS=OFF",
            "-DGGML_BUILD_EXAMPLES=OFF", "-DGGML_OPENMP=OFF", "-DGGML_CCACHE=OFF", "-DGGML_LLAMAFILE=OFF"]
    if level == "native":
        return args + ["-DGGML_NATIVE=ON"]
    on = set(LEVEL_CMAKE[level])
    return args + ["-DGGML_NATIVE=OFF"] + [f"-D{opt}={'ON' if opt in on else 'OFF'}" for opt in _OFF]


def ensure(level: str, progress: bool | None = None) -> Path:
    """The directory of ``level``'s build (its ``lib/``), built first if the cache lacks it."""
    missing = missing_for(level)
    if missing:
        raise PeerBuildError(f"level {level} needs CPU features this machine lacks: {', '.join(missing)}")
    progress = sys.stderr.isatty() if progress is None else progress
    out = build_dir(level)
    if built(level):
        return out
    for tool in ("cmake",):
        if shutil.which(tool) is None:
            raise PeerBuildError(f"building {PEER} needs {tool} on PATH (apt-get install {tool})")
    if not _build.compiler() or shutil.which(_build.compiler()[0]) is None:
        raise PeerBuildError("building a peer needs a C compiler (CC or cc on PATH)")
    from filelock import FileLock  # noqa: PLC0415

    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out.parent / f"{level}.lock")):
        if built(level):
            return out
        with tempfile.TemporaryDirectory(prefix="mlaref-peer-") as tmp:
            work = Path(tmp)
            src = fetch_sdist(work, progress)
            bdir = work / "build"
            t0 = time.perf_counter()
            say(progress, f"configuring {PEER} {VERSION} at level {level}")
            _run(["cmake", "-S", str(src / "vendor" / "ggml"), "-B", str(bdir), *_cmake_args(level)], "configure")
            say(progress, f"building ggml, ggml-base and ggml-cpu (level {level}; about a minute on 2 cores)")
            _run(["cmake", "--build", str(bdir), "-j", str(max(1, os.cpu_count() or 1)), "--target", *_TARGETS],
                 "build")
            if out.exists():
                shutil.rmtree(out)
            (out / "lib").mkdir(parents=True)
            for so in (bdir / "src").glob("libggml*.so*"):
                if so.is_file() and not so.is_symlink():
                    shutil.copy2(so, out / "lib" / so.name)
            for so in (bdir / "src").glob("libggml*.so*"):
                if so.is_symlink():
                    (out / "lib" / so.name).symlink_to(os.readlink(so))
            record = {"peer": PEER, "version": VERSION, "ggml": "0.15.3", "level": level,
                      "features": sorted(builds.LEVELS.get(level, ())) if level != "native" else None,
                      "tune": native_tune() if level == "native" else "generic",
                      "compiler": _build.compiler_version(), "cmake_args": _cmake_args(level),
                      "seconds": round(time.perf_counter() - t0, 1)}
            (out / "lib" / RECORD).write_text(json.dumps(record, indent=1) + "\n")
            say(progress, f"level {level} built in {record['seconds']} s -> {out}")
    return out


def _run(cmd, what):
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        tail = "\n".join((res.stdout + res.stderr).strip().splitlines()[-15:])
        raise PeerBuildError(f"cmake {what} of {PEER} failed ({' '.join(cmd[:3])} ...):\n{tail}")


def make_shim(lib_dir, root=None) -> Path:
    """A copy of the installed ggml-python package's Python files in ``root`` (a new temporary directory if None)
    whose ``ggml/lib/`` links to the libraries in ``lib_dir`` (and its ``mlaref-build.json``, if any); put
    ``root`` on ``PYTHONPATH`` and ``import ggml`` loads that build."""
    import importlib.util  # noqa: PLC0415

    lib_dir = Path(lib_dir).expanduser().resolve()
    if not (lib_dir / "libggml.so").exists():
        raise FileNotFoundError(f"no libggml.so in {lib_dir}")
    spec = importlib.util.find_spec("ggml")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("running another ggml build needs the ggml-python package (its Python bindings) installed")
    pkg = Path(list(spec.submodule_search_locations)[0])
    root = Path(tempfile.mkdtemp(prefix="mlaref-ggml-")) if root is None else Path(root)
    (root / "ggml" / "lib").mkdir(parents=True)
    for f in pkg.iterdir():
        if f.suffix == ".py" or f.name == "py.typed":
            shutil.copy2(f, root / "ggml" / f.name)  # copies, not links: ggml.py resolves its own path
    for f in lib_dir.iterdir():
        if f.name.startswith("libggml") or f.name == RECORD:
            (root / "ggml" / "lib" / f.name).symlink_to(f.resolve())
    return root


def shim(level: str) -> Path:
    """A directory to put on ``PYTHONPATH`` so that ``import ggml`` loads ``level``'s build (built if needed)."""
    out = ensure(level)
    dst = out / "shim"
    if (dst / "ggml" / "lib").exists():
        return dst
    tmp = Path(tempfile.mkdtemp(prefix="shim-", dir=out))
    make_shim(out / "lib", tmp / "root")
    try:
        (tmp / "root").rename(dst)
    except OSError:  # another process made it first
        pass
    shutil.rmtree(tmp, ignore_errors=True)
    return dst


_CHILD = r"""
import pickle, sys, importlib
sys.path.insert(0, sys.argv[1])
calls = pickle.load(sys.stdin.buffer)
out = []
for target, args, kwargs in calls:
    mod, fn = target.split(":")
    out.append(getattr(importlib.import_module(mod), fn)(*args, **kwargs))
sys.stdout.buffer.write(pickle.dumps(out))
"""


def call_many(level: str, calls, timeout: float = 600) -> list:
    """``[(target, args, kwargs), ...]`` with ``target = "module:function"``, run in order in one child process
    whose ``import ggml`` loads ``level``'s build; their return values (pickled) come back as a list. A crash in
    the library raises ``PeerBuildError`` with the end of its stderr."""
    calls = [(t, tuple(a), dict(k)) for t, a, k in calls]
    for t, _, _ in calls:
        if t.count(":") != 1:
            raise ValueError(f"call target must be 'module:function', got {t!r}")
    path = str(shim(level))
    env = dict(os.environ, GGML_NO_BACKTRACE="1")
    res = subprocess.run([sys.executable, "-c", _CHILD, path], input=pickle.dumps(calls), capture_output=True,
                         env=env, timeout=timeout)
    if res.returncode != 0:
        tail = res.stderr.decode(errors="replace").strip().splitlines()[-5:]
        raise PeerBuildError(f"{calls[0][0] if calls else 'nothing'}{' ...' if len(calls) > 1 else ''} against "
                             f"{PEER} level {level} exited with {res.returncode}: " + " | ".join(tail))
    return pickle.loads(res.stdout)


def call(level: str, target: str, *args, timeout: float = 600, **kwargs):
    """``module:function(*args, **kwargs)`` run in a child process whose ``import ggml`` loads ``level``'s build;
    its return value (pickled) comes back (:func:`call_many` with one call)."""
    return call_many(level, [(target, args, kwargs)], timeout=timeout)[0]


# ==================================================================================================================
# CLI: mlaref peer list | mlaref peer build NAME [--level LEVEL ...]
# ==================================================================================================================

def parse_peer(spec: str) -> tuple[str, str | None]:
    """``NAME[@LEVEL]`` -> (name, level or None); raises ValueError naming what is wrong."""
    name, _, lvl = spec.partition("@")
    if name != PEER:
        raise ValueError(f"unknown peer {name!r}; known: {PEER} ({PEER} {VERSION}, upstream ggml 0.15.3)")
    if lvl and lvl != "native" and lvl not in LEVEL_CMAKE:
        raise ValueError(f"unknown level {lvl!r} of {PEER}; known: native, {', '.join(LEVEL_CMAKE)}")
    return name, (lvl or None)


def configure(parser) -> None:
    sub = parser.add_subparsers(dest="peer_command", metavar="ACTION")
    sub.add_parser("list", help="the peers and levels, which run on this CPU, and which are built")
    b = sub.add_parser("build", help="build a peer's ggml CPU library at some levels into the user cache")
    b.add_argument("name", help=PEER)
    b.add_argument("--level", action="append", metavar="LEVEL",
                   help="native or one of " + ", ".join(LEVEL_CMAKE) + " (repeatable; default: every level this "
                        "CPU runs)")


def run(args) -> int:
    if args.peer_command in (None, "list"):
        print(f"{PEER} {VERSION} (upstream ggml 0.15.3); builds in {build_dir('x').parent}")
        for lv in ("native", *LEVEL_CMAKE):
            miss = missing_for(lv)
            rec = record(lv)
            state = (f"built ({rec.get('seconds', '?')} s, {rec.get('compiler', '?')}, tune {rec.get('tune')})"
                     if rec else "not built")
            runs = "runs here" if not miss else f"cannot run here (missing {', '.join(miss)})"
            if lv == "native":
                plan = "that of the CPU it is built on"
            else:
                b = builds.level(lv)
                plan = f"{b.vec_dot_plan} ({'verified on ' + b.verified if b.verified else 'inferred, not yet run'})"
            print(f"  {PEER}@{lv:<11} {runs}; {state}; vec_dot plan {plan}")
        return 0
    try:
        parse_peer(args.name)
        levels = args.level or runnable_levels()
        for lv in levels:
            parse_peer(f"{args.name}@{lv}")
        for lv in levels:
            out = ensure(lv, progress=True)
            print(f"{PEER}@{lv}: {out / 'lib'}", flush=True)
    except (ValueError, PeerBuildError) as exc:
        print(f"mlaref peer: {exc}", file=sys.stderr)
        return 2
    return 0

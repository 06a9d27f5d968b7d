"""Build the peers' ggml at each CPU level from their source distributions, and run code against one build.

Three peers (:data:`PEERS`), each a package on the index that vendors a ggml:

=======================  =========  ==========================================  ==================================
peer                     version    vendors                                     CMake source, targets
=======================  =========  ==========================================  ==================================
``ggml-python``          0.0.45     upstream ggml 0.15.3                        ``vendor/ggml``; ggml, ggml-base,
                                                                                ggml-cpu
``llama-cpp-python``     0.3.36     llama.cpp with upstream ggml 0.25.3         ``vendor/llama.cpp``; ggml,
                                                                                ggml-base, ggml-cpu
``ik-llama-cpp-python``  0.1.5      ik_llama.cpp (a snapshot of April 2026)     ``vendor/ik_llama.cpp``; ggml
=======================  =========  ==========================================  ==================================

``mlaref peer build NAME --level LEVEL`` fetches the sdist (``pip download --no-binary :all: --no-deps
NAME==VERSION``), configures its vendored ggml with CMake at the level's switches (``GGML_NATIVE=OFF``,
``mlaref.reference.builds.LEVELS``; the llama.cpp trees are configured from their root with every ``LLAMA_BUILD_*``
off, because their ggml directory alone lacks ``ggml.pc.in``), builds only the ggml library targets, and
installs the libraries into the user cache (``<cache>/peers/NAME-VERSION/LEVEL/``) under a file lock, with
a record of what was built (``lib/mlaref-build.json``: version, level, features, tuning, compiler, flags). A level that
this CPU cannot run is refused before anything is built. ``level="native"`` builds with ``GGML_NATIVE=ON``.
On 2 idle cores a level takes about a minute (ggml-python), 2.5 minutes (llama-cpp-python) and 11 minutes
(ik-llama-cpp-python: 22 CPU-minutes of iqk sources).

Only ggml-python has Python bindings that fit its ``ggml.h``; the other two are run through mlaref's C harness
(:mod:`mlaref.codegen.peers.harness`), which works for all three.

ggml-python loads ``lib/libggml.so`` from its own package directory, so a build is used through a *shim*: a copy
of the installed package's Python files beside a ``lib/`` of links to the build (:func:`shim`). Code runs against
it in a child process (:func:`call`), one library per process: ``PYTHONPATH=<shim>`` makes ``import ggml`` load
that build. On a cold cache a level takes about a minute on 2 cores (ggml 0.15.3's CPU back-end).
"""

from __future__ import annotations

import dataclasses
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

__all__ = [
    "LEVEL_CMAKE",
    "PEER",
    "PEERS",
    "RECORD",
    "VERSION",
    "PeerBuildError",
    "PeerSpec",
    "build_dir",
    "built",
    "call",
    "call_many",
    "run_calls",
    "ensure",
    "make_shim",
    "missing_for",
    "native_tune",
    "peer_spec",
    "record",
    "runnable_levels",
    "shim",
]

PEER = "ggml-python"
VERSION = "0.0.45"  # vendors upstream ggml 0.15.3


@dataclasses.dataclass(frozen=True)
class PeerSpec:
    """One peer: the package on the index and how its vendored ggml is built."""

    name: str
    version: str
    vendors: str  # what the sdist vendors, in words
    source: str  # the CMake source directory inside the unpacked sdist
    targets: tuple[str, ...]  # the CMake targets built (the ggml libraries only)
    lib_dirs: tuple[str, ...]  # where the build tree puts the libraries, relative to it
    cmake: tuple[str, ...] = ()  # further CMake switches
    minutes: int = 1  # a cold build of one level on 2 cores, roughly

    @property
    def unpacked(self) -> str:
        return f"{self.name.replace('-', '_')}-{self.version}"


_NO_LLAMA = ("-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF",
             "-DLLAMA_BUILD_TOOLS=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_COMMON=OFF")
PEERS = {
    "ggml-python": PeerSpec("ggml-python", "0.0.45", "upstream ggml 0.15.3", "vendor/ggml",
                            ("ggml", "ggml-base", "ggml-cpu"), ("src",), (), 1),
    "llama-cpp-python": PeerSpec("llama-cpp-python", "0.3.36", "llama.cpp with upstream ggml 0.25.3",
                                 "vendor/llama.cpp", ("ggml", "ggml-base", "ggml-cpu"), ("bin", "ggml/src"),
                                 _NO_LLAMA, 3),
    "ik-llama-cpp-python": PeerSpec("ik-llama-cpp-python", "0.1.5", "ik_llama.cpp (a snapshot of April 2026)",
                                    "vendor/ik_llama.cpp", ("ggml",), ("bin", "ggml/src"),
                                    (*_NO_LLAMA, "-DGGML_CUDA=OFF", "-DGGML_NCCL=OFF"), 11),
}


def peer_spec(name: str) -> PeerSpec:
    """The :class:`PeerSpec` of ``name``; a ValueError lists the known peers."""
    try:
        return PEERS[name]
    except KeyError:
        raise ValueError(f"unknown peer {name!r}; known: "
                         + ", ".join(f"{p.name} ({p.version}, {p.vendors})" for p in PEERS.values())) from None

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


def build_dir(level: str, peer: str = PEER) -> Path:
    spec = peer_spec(peer)
    return _build.cache_dir() / "peers" / f"{spec.name}-{spec.version}" / level


def built(level: str, peer: str = PEER) -> bool:
    return (build_dir(level, peer) / "lib" / RECORD).exists()


def record(level: str, peer: str = PEER) -> dict:
    """What was built for ``level`` of ``peer`` (``lib/mlaref-build.json``), or {} if it is not built."""
    path = build_dir(level, peer) / "lib" / RECORD
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


def source_dir(peer: str = PEER) -> Path:
    """Where the unpacked sdist of ``peer`` lives (it may not be there yet: :func:`fetch_sdist`)."""
    spec = peer_spec(peer)
    return build_dir("_src", peer) / spec.unpacked


def fetch_sdist(work: Path, progress: bool, peer: str = PEER) -> Path:
    """The unpacked sdist of ``peer`` (cached beside its builds)."""
    spec = peer_spec(peer)
    src = source_dir(peer)
    if (src / spec.source / "CMakeLists.txt").exists():
        return src
    say(progress, f"fetching {spec.name}=={spec.version} (source distribution) with pip")
    dl = work / "dl"
    cmd = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", "--quiet",
           "-d", str(dl), f"{spec.name}=={spec.version}"]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired:
        raise PeerBuildError(f"pip download of {spec.name} {spec.version} took more than 30 minutes") from None
    tars = sorted(dl.glob("*.tar.gz")) if dl.exists() else []
    if res.returncode != 0 or not tars:
        tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
        raise PeerBuildError(f"could not download the {spec.name} {spec.version} sdist with pip (network or "
                             "index?): " + " | ".join(tail))
    unpack = src.parent
    unpack.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tars[0]) as tf:
        tf.extractall(unpack, filter="data")
    if not (src / spec.source / "CMakeLists.txt").exists():
        raise PeerBuildError(f"the {spec.name} {spec.version} sdist has no {spec.source}/CMakeLists.txt")
    return src


def include_dir(peer: str = PEER) -> Path:
    """The directory of ``peer``'s public ggml headers (``ggml.h``, ...) in its unpacked sdist."""
    spec = peer_spec(peer)
    base = source_dir(peer) / spec.source
    return base / "include" if (base / "include" / "ggml.h").exists() else base / "ggml" / "include"


def _cmake_args(level: str, peer: str = PEER) -> list[str]:
    args = ["-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=ON", "-DGGML_BUILD_TESTS=OFF",
            "-DGGML_BUILD_EXAMPLES=OFF", "-DGGML_OPENMP=OFF", "-DGGML_CCACHE=OFF", "-DGGML_LLAMAFILE=OFF",
            *peer_spec(peer).cmake]
    if level == "native":
        return args + ["-DGGML_NATIVE=ON"]
    on = set(LEVEL_CMAKE[level])
    return args + ["-DGGML_NATIVE=OFF"] + [f"-D{opt}={'ON' if opt in on else 'OFF'}" for opt in _OFF]


def ensure(level: str, progress: bool | None = None, peer: str = PEER) -> Path:
    """The directory of ``peer``'s build at ``level`` (its ``lib/``), built first if the cache lacks it."""
    spec = peer_spec(peer)
    missing = missing_for(level)
    if missing:
        raise PeerBuildError(f"level {level} needs CPU features this machine lacks: {', '.join(missing)}")
    progress = sys.stderr.isatty() if progress is None else progress
    out = build_dir(level, peer)
    if built(level, peer):
        return out
    for tool in ("cmake",):
        if shutil.which(tool) is None:
            raise PeerBuildError(f"building {spec.name} needs {tool} on PATH (apt-get install {tool})")
    if not _build.compiler() or shutil.which(_build.compiler()[0]) is None:
        raise PeerBuildError("building a peer needs a C compiler (CC or cc on PATH)")
    from filelock import FileLock

    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out.parent / f"{level}.lock")):
        if built(level, peer):
            return out
        with tempfile.TemporaryDirectory(prefix="mlaref-peer-") as tmp:
            work = Path(tmp)
            src = fetch_sdist(work, progress, peer)
            bdir = work / "build"
            t0 = time.perf_counter()
            say(progress, f"configuring {spec.name} {spec.version} at level {level}")
            _run(["cmake", "-S", str(src / spec.source), "-B", str(bdir), *_cmake_args(level, peer)], "configure",
                 spec.name)
            say(progress, f"building {', '.join(spec.targets)} (level {level}; about {spec.minutes} minute"
                          f"{'s' if spec.minutes > 1 else ''} on 2 cores)")
            _run(["cmake", "--build", str(bdir), "-j", str(max(1, os.cpu_count() or 1)), "--target", *spec.targets],
                 "build", spec.name)
            if out.exists():
                shutil.rmtree(out)
            (out / "lib").mkdir(parents=True)
            found = [so for d in spec.lib_dirs for so in sorted((bdir / d).glob("libggml*.so*"))]
            for so in found:
                if so.is_file() and not so.is_symlink() and not (out / "lib" / so.name).exists():
                    shutil.copy2(so, out / "lib" / so.name)
            for so in found:
                if so.is_symlink() and not (out / "lib" / so.name).exists():
                    (out / "lib" / so.name).symlink_to(os.readlink(so))
            if not (out / "lib" / "libggml.so").exists():
                raise PeerBuildError(f"the {spec.name} build made no libggml.so in {', '.join(spec.lib_dirs)}")
            record = {"peer": spec.name, "version": spec.version, "ggml": spec.vendors, "level": level,
                      "commit": None,  # an sdist carries no git metadata: the vendored commit is not known
                      "features": sorted(builds.LEVELS.get(level, ())) if level != "native" else None,
                      "tune": native_tune() if level == "native" else "generic",
                      "compiler": _build.compiler_version(), "cmake_args": _cmake_args(level, peer),
                      "seconds": round(time.perf_counter() - t0, 1)}
            (out / "lib" / RECORD).write_text(json.dumps(record, indent=1) + "\n")
            say(progress, f"level {level} built in {record['seconds']} s -> {out}")
    return out


def _run(cmd, what, name=PEER):
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        tail = "\n".join((res.stdout + res.stderr).strip().splitlines()[-15:])
        raise PeerBuildError(f"cmake {what} of {name} failed ({' '.join(cmd[:3])} ...):\n{tail}")


def make_shim(lib_dir, root=None) -> Path:
    """A copy of the installed ggml-python package's Python files in ``root`` (a new temporary directory if None)
    whose ``ggml/lib/`` links to the libraries in ``lib_dir`` (and its ``mlaref-build.json``, if any); put
    ``root`` on ``PYTHONPATH`` and ``import ggml`` loads that build."""
    import importlib.util

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


def run_calls(child: str, arg: str, calls, timeout: float, what: str, error=None) -> list:
    """Run ``child`` (a Python script taking ``arg``) with the pickled ``[(target, args, kwargs), ...]`` on its
    stdin (``target = "module:function"``) and return what it pickles to stdout; a non-zero exit raises ``error``
    (PeerBuildError by default) with ``what`` and the end of its stderr. Shared by ggml-python's shim calls and
    the harness calls (:mod:`.harness`)."""
    calls = [(t, tuple(a), dict(k)) for t, a, k in calls]
    for t, _, _ in calls:
        if t.count(":") != 1:
            raise ValueError(f"call target must be 'module:function', got {t!r}")
    env = dict(os.environ, GGML_NO_BACKTRACE="1")
    res = subprocess.run([sys.executable, "-c", child, arg], input=pickle.dumps(calls), capture_output=True,
                         env=env, timeout=timeout)
    if res.returncode != 0:
        tail = res.stderr.decode(errors="replace").strip().splitlines()[-5:]
        raise (error or PeerBuildError)(f"{calls[0][0] if calls else 'nothing'}{' ...' if len(calls) > 1 else ''} "
                                        f"against {what} exited with {res.returncode}: " + " | ".join(tail))
    return pickle.loads(res.stdout)


def call_many(level: str, calls, timeout: float = 600) -> list:
    """``[(target, args, kwargs), ...]`` with ``target = "module:function"``, run in order in one child process
    whose ``import ggml`` loads ``level``'s build; their return values (pickled) come back as a list. A crash in
    the library raises ``PeerBuildError`` with the end of its stderr."""
    return run_calls(_CHILD, str(shim(level)), calls, timeout, f"{PEER} level {level}")


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
    peer_spec(name)
    if lvl and lvl != "native" and lvl not in LEVEL_CMAKE:
        raise ValueError(f"unknown level {lvl!r} of {name}; known: native, {', '.join(LEVEL_CMAKE)}")
    return name, (lvl or None)


def configure(parser) -> None:
    sub = parser.add_subparsers(dest="peer_command", metavar="ACTION")
    sub.add_parser("list", help="the peers and levels, which run on this CPU, and which are built")
    b = sub.add_parser("build", help="build a peer's ggml CPU library at some levels into the user cache")
    b.add_argument("name", help=", ".join(PEERS))
    b.add_argument("--level", action="append", metavar="LEVEL",
                   help="native or one of " + ", ".join(LEVEL_CMAKE) + " (repeatable; default: every level this "
                        f"CPU runs for {PEER}, native for the others)")


def _list() -> None:
    for spec in PEERS.values():
        print(f"{spec.name} {spec.version} ({spec.vendors}); builds in {build_dir('x', spec.name).parent}; "
              f"about {spec.minutes} min a level on 2 cores")
        for lv in ("native", *LEVEL_CMAKE):
            miss = missing_for(lv)
            rec = record(lv, spec.name)
            state = (f"built ({rec.get('seconds', '?')} s, {rec.get('compiler', '?')}, tune {rec.get('tune')})"
                     if rec else "not built")
            runs = "runs here" if not miss else f"cannot run here (missing {', '.join(miss)})"
            if spec.name != PEER:
                print(f"  {spec.name}@{lv:<11} {runs}; {state}")
                continue
            if lv == "native":
                plan = "that of the CPU it is built on"
            else:
                b = builds.level(lv)
                plan = f"{b.vec_dot_plan} ({'verified on ' + b.verified if b.verified else 'inferred, not yet run'})"
            print(f"  {spec.name}@{lv:<11} {runs}; {state}; vec_dot plan {plan}")


def run(args) -> int:
    if args.peer_command in (None, "list"):
        _list()
        return 0
    try:
        parse_peer(args.name)
        levels = args.level or (runnable_levels() if args.name == PEER else ["native"])
        for lv in levels:
            parse_peer(f"{args.name}@{lv}")
        for lv in levels:
            out = ensure(lv, progress=True, peer=args.name)
            print(f"{args.name}@{lv}: {out / 'lib'}", flush=True)
    except (ValueError, PeerBuildError) as exc:
        print(f"mlaref peer: {exc}", file=sys.stderr)
        return 2
    return 0

"""The cffi build: one out-of-line API-mode extension per (family, ISA), in a content-addressed cache under a lock.

cffi recompiles on every ``compile()``, so the cache is ours. A module's key is the sha256 of

* the generated C sources of the family's kernels for that ISA (paths and bytes) and the cdef,
* the compile flags: ``COMMON_CFLAGS`` + the ISA's ``-m`` flags (+ sanitizer flags when ``MLAREF_SANITIZE=1``),
* the compiler's ``--version`` line, the Python ABI (``sys.implementation.cache_tag`` + ``EXT_SUFFIX``) and the
  cffi version.

The extension lives at ``<cache>/_mlaref_<family>_<isa>_<key16><EXT_SUFFIX>``; ``<cache>`` is ``MLAREF_CACHE_DIR``
or the platformdirs user cache dir (``~/.cache/mlaref`` on Linux). A ``filelock`` per module serialises
concurrent builders (pytest-xdist workers, two processes); the finished file is moved into place with an atomic
rename, so a reader never sees half a library.

``-std=c11 -ffp-contract=off -fno-fast-math`` keep GCC from fusing ``a*b + c`` on its own (in GNU mode it would
on FMA targets; upstream facts §4), so the C computes what the template says.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.machinery
import importlib.util
import io
import os
import pathlib
import shlex
import subprocess
import sys
import sysconfig
import tempfile

from mlaref.codegen import catalog as _catalog
from mlaref.codegen import isa as _isa

__all__ = ["COMMON_CFLAGS", "BuildError", "cache_dir", "cflags", "load", "load_runtime", "module_key",
           "compiler_version", "sanitize_enabled", "build_all"]

COMMON_CFLAGS = ("-O2", "-std=c11", "-ffp-contract=off", "-fno-fast-math")
SANITIZE_FLAGS = ("-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined")
GENERATED_DIR = pathlib.Path(__file__).resolve().parent.parent / "generated"


class BuildError(RuntimeError):
    """A kernel module failed to compile; the message holds the compiler output."""


def sanitize_enabled() -> bool:
    return os.environ.get("MLAREF_SANITIZE", "") not in ("", "0")


def cache_dir() -> pathlib.Path:
    """``MLAREF_CACHE_DIR`` if set, else the user cache dir of platformdirs; created if missing."""
    env = os.environ.get("MLAREF_CACHE_DIR")
    if env:
        path = pathlib.Path(env)
    else:
        import platformdirs

        path = pathlib.Path(platformdirs.user_cache_dir("mlaref"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def compiler() -> list[str]:
    """The C compiler Python's build machinery uses (``CC``, else sysconfig's)."""
    return shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")


@functools.cache
def _version_of(cc: tuple[str, ...]) -> str:
    try:
        out = subprocess.run([*cc, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    return out.stdout.splitlines()[0].strip() if out.stdout else "unknown"


def compiler_version() -> str:
    return _version_of(tuple(compiler()))


def cflags(isa: str) -> tuple[str, ...]:
    """All compile flags of a module of ``isa``."""
    flags = COMMON_CFLAGS + _isa.get(isa).cflags
    return flags + SANITIZE_FLAGS if sanitize_enabled() else flags


def specs_for(family: str, isa: str) -> list[_catalog.KernelSpec]:
    return [s for s in _catalog.catalog() if s.family == family and s.isa == isa]


def _cdef(specs) -> str:
    return "\n".join(s.signature() for s in specs) + "\n"


def module_key(family: str, isa: str) -> tuple[str, str]:
    """(module name, full sha256 key) of the (family, isa) module (hashed once per process and setting)."""
    return _module_key(family, isa, str(GENERATED_DIR), cflags(isa))


@functools.lru_cache(maxsize=None)
def _module_key(family: str, isa: str, _generated: str, _flags: tuple) -> tuple[str, str]:
    import cffi

    specs = specs_for(family, isa)
    if not specs:
        raise LookupError(f"the catalog has no {family} kernels for {isa}")
    h = hashlib.sha256()
    for s in specs:
        try:
            source = (GENERATED_DIR / s.path).read_bytes()
        except FileNotFoundError:
            raise BuildError(f"generated/{s.path} is missing: generated/ is out of date; run "
                             f"`python -m mlaref.codegen.generate`") from None
        h.update(s.path.encode() + b"\0" + source + b"\0")
    h.update(_cdef(specs).encode())
    h.update(" ".join(cflags(isa)).encode() + b"\0")
    h.update(compiler_version().encode() + b"\0")
    h.update((sys.implementation.cache_tag + (sysconfig.get_config_var("EXT_SUFFIX") or "")).encode() + b"\0")
    h.update(cffi.__version__.encode())
    key = h.hexdigest()
    return f"_mlaref_{family}_{isa}_{key[:16]}", key


def _import(modname: str, path: pathlib.Path):
    loader = importlib.machinery.ExtensionFileLoader(modname, str(path))
    spec = importlib.util.spec_from_file_location(modname, str(path), loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def _compile(family: str, isa: str, modname: str, final: pathlib.Path) -> None:
    import cffi

    specs = specs_for(family, isa)
    ffi = cffi.FFI()
    cdef = _cdef(specs)
    ffi.cdef(cdef)
    sources = [str(GENERATED_DIR / s.path) for s in specs]
    link = list(SANITIZE_FLAGS) if sanitize_enabled() else []
    ffi.set_source(modname, "#include <stdint.h>\n" + cdef, sources=sources, extra_compile_args=list(cflags(isa)),
                   extra_link_args=link, libraries=["m"])
    _compile_ffi(ffi, modname, final, f"{family}, {isa}")


def _compile_ffi(ffi, modname: str, final: pathlib.Path, what: str) -> None:
    """Compile a configured cffi module in a temporary dir and move it to ``final`` (an atomic rename)."""
    with tempfile.TemporaryDirectory(prefix=f"{modname}-", dir=final.parent) as tmp:
        log_path = pathlib.Path(tmp) / "build.log"
        try:
            with _captured_fds(log_path):
                built = ffi.compile(tmpdir=tmp, verbose=False)
        except Exception as exc:  # distutils raises CompileError / LinkError; the compiler wrote to fd 2
            log = log_path.read_text(errors="replace") if log_path.exists() else ""
            raise BuildError(f"building {modname} ({what}) failed: {exc}\n{log[-4000:]}") from exc
        os.replace(built, final)


@contextlib.contextmanager
def _captured_fds(path: pathlib.Path):
    """Send fds 1 and 2 (the compiler subprocesses write there, not to sys.stdout) to ``path``."""
    sys.stdout.flush()
    sys.stderr.flush()
    with open(path, "wb") as log:
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


_LOADED: dict[tuple[str, str], object] = {}


def load(family: str, isa: str):
    """The compiled module (``.lib``, ``.ffi``) of ``family`` kernels for ``isa``: from this process, the cache,
    or a fresh build. Raises BuildError if the compiler fails, ValueError for a cross-architecture ISA."""
    info = _isa.get(isa)
    if info.cross:
        raise ValueError(f"{isa} kernels are for {info.arch}; they run through the qemu driver (build.run_cross), "
                         f"not in this {_isa.host_arch()} process")
    modname, _ = module_key(family, isa)
    return _cached(family, modname, lambda final: _compile(family, isa, modname, final))


def _cached(group: str, modname: str, compile_to):
    """The module ``modname``: from this process, the cache dir, or ``compile_to(final path)`` under its lock."""
    cached = _LOADED.get((group, modname))
    if cached is not None:
        return cached
    from filelock import FileLock

    root = cache_dir()
    final = root / f"{modname}{sysconfig.get_config_var('EXT_SUFFIX') or '.so'}"
    with FileLock(str(root / f"{modname}.lock")):
        if not final.exists():
            compile_to(final)
    module = _import(modname, final)
    _LOADED[(group, modname)] = module
    return module


def load_runtime(stem: str, source: pathlib.Path, cdef: str, libraries=()):
    """A hand-written C runtime module (``codegen/<stem>.c``, e.g. the thread pool) built like the kernel modules:
    ``COMMON_CFLAGS`` (+ sanitizer flags), cached under a key of its source, cdef, flags and compiler."""
    import cffi

    flags = COMMON_CFLAGS + ((*SANITIZE_FLAGS,) if sanitize_enabled() else ())
    h = hashlib.sha256()
    for part in (source.read_bytes(), cdef.encode(), " ".join(flags).encode(), " ".join(libraries).encode(),
                 compiler_version().encode(), cffi.__version__.encode(),
                 (sys.implementation.cache_tag + (sysconfig.get_config_var("EXT_SUFFIX") or "")).encode()):
        h.update(part + b"\0")
    modname = f"_mlaref_{stem}_{h.hexdigest()[:16]}"

    def compile_to(final: pathlib.Path) -> None:
        ffi = cffi.FFI()
        ffi.cdef(cdef)
        link = list(SANITIZE_FLAGS) if sanitize_enabled() else []
        ffi.set_source(modname, "#include <stdint.h>\n" + cdef, sources=[str(source)], extra_compile_args=list(flags),
                       extra_link_args=link, libraries=list(libraries))
        _compile_ffi(ffi, modname, final, source.name)

    return _cached(stem, modname, compile_to)


def build_all(isas=None, progress: bool | None = None) -> dict[tuple[str, str], str]:
    """Build (or load) every runnable (family, ISA) module; returns {(family, isa): "ok" or the error}.

    A progress line per module goes to stderr when more than three modules are involved.
    """
    isas = [i for i in (isas or _isa.tokens()) if not _isa.get(i).cross]
    jobs = [(f, i) for f in _catalog.FAMILIES for i in isas if specs_for(f, i)]
    show = progress if progress is not None else len(jobs) > 3
    result = {}
    for k, (family, isa) in enumerate(jobs, 1):
        if show:
            print(f"\rmlaref build [{k}/{len(jobs)}] {family} {isa}        ", end="", file=sys.stderr, flush=True)
        try:
            load(family, isa)
            result[(family, isa)] = "ok"
        except BuildError as exc:
            result[(family, isa)] = str(exc)
    if show:
        print(file=sys.stderr)
    return result


# -- cross-compiled kernels under qemu-user ------------------------------------------------------------------

CROSS_TOOLS = {"aarch64": ("aarch64-linux-gnu-gcc", "qemu-aarch64")}
_CROSS_FAMILIES = {"dequantize_row": 1, "quantize_row": 2, "convert_rows": 3, "vec_dot": 4, "mul_mat": 5,
                   "flash_attn_ext": 6, "flash_attn_ext_partial": 6, "fa_merge": 7}
# the pointer arguments of the mul_mat / flash_attn_ext kernels that read inputs (the output pointer follows them)
_CROSS_INPUTS = {"mul_mat": 2, "flash_attn_ext": 4, "flash_attn_ext_partial": 4, "fa_merge": 2}
DRIVER_SOURCE = pathlib.Path(__file__).resolve().parent / "neon_driver.c"


def cross_tools_missing(arch: str = "aarch64") -> str | None:
    """None when the cross compiler and qemu for ``arch`` are on PATH, else a reason naming the missing tool."""
    import shutil

    tools = CROSS_TOOLS.get(arch)
    if tools is None:
        return f"no cross toolchain known for {arch}"
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        return f"{' and '.join(missing)} not found on PATH (apt-get install gcc-aarch64-linux-gnu qemu-user)"
    return None


def cross_driver(arch: str = "aarch64") -> pathlib.Path:
    """A static ``arch`` executable holding every row, vec_dot, mul_mat, flash_attn_ext(_partial) and fa_merge kernel of
    that architecture's ISAs, each compiled with its own ISA's flags, plus codegen/neon_driver.c; built once into the
    cache. Each kernel's object file is cached too (keyed by its source, flags and compiler), so a changed template
    recompiles only the kernels it renders differently."""
    reason = cross_tools_missing(arch)
    if reason:
        raise BuildError(reason)
    cc = CROSS_TOOLS[arch][0]
    specs = [s for s in _catalog.catalog() if s.family in _CROSS_FAMILIES and _isa.get(s.isa).arch == arch]
    h = hashlib.sha256()
    for s in specs:
        h.update(s.path.encode() + b"\0" + (GENERATED_DIR / s.path).read_bytes() + b"\0" + " ".join(cflags(s.isa)).encode())
    cc_version = _version_of((cc,))
    h.update(DRIVER_SOURCE.read_bytes() + cc_version.encode())
    key = h.hexdigest()[:16]
    root = cache_dir()
    exe = root / f"_mlaref_driver_{arch}_{key}"
    from filelock import FileLock

    with FileLock(str(root / f"_mlaref_driver_{arch}_{key}.lock")):
        if exe.exists():
            return exe
        with tempfile.TemporaryDirectory(prefix=f"_mlaref_driver_{arch}-", dir=root) as tmp:
            tmp = pathlib.Path(tmp)
            import concurrent.futures

            def compile_one(k_spec):
                k, s = k_spec
                src = GENERATED_DIR / s.path
                oh = hashlib.sha256(src.read_bytes() + " ".join(cflags(s.isa)).encode() + cc_version.encode())
                cached = root / f"_mlaref_obj_{arch}_{s.name}_{oh.hexdigest()[:16]}.o"
                if cached.exists():
                    return str(cached)
                obj = tmp / f"k{k}.o"
                cmd = [cc, *cflags(s.isa), "-c", str(src), "-o", str(obj)]
                r = subprocess.run(cmd, capture_output=True, text=True)
                if r.returncode:
                    raise BuildError(f"{' '.join(cmd)} failed:\n{r.stderr[-4000:]}")
                os.replace(obj, cached)
                return str(cached)

            with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 2) as pool:
                objs = list(pool.map(compile_one, enumerate(specs)))
            protos = "\n".join(s.signature() for s in specs)
            rows = "\n".join(f'    {{"{s.name}", {_CROSS_FAMILIES[s.family]}, (void (*)(void)){s.name}}},' for s in specs)
            (tmp / "mla_table.h").write_text(f"{protos}\nstatic const struct mla_entry mla_table[] = {{\n{rows}\n}};\n")
            out = tmp / "driver"
            cmd = [cc, *COMMON_CFLAGS, "-static", "-I", str(tmp), str(DRIVER_SOURCE), *objs, "-lm", "-o", str(out)]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode:
                raise BuildError(f"{' '.join(cmd)} failed:\n{r.stderr[-4000:]}")
            os.replace(out, exe)
    return exe


def run_cross(name: str, inp: bytes, out: bytes, n_rows: int, n: int, x_stride: int, y_stride: int,
              extra: tuple[int, int, int] | None = None) -> bytes:
    """Run kernel ``name`` (its ISA's architecture) under qemu on ``inp``; ``out`` is the output buffer's initial
    bytes (poison, gaps, guards); returns the buffer after the call. Arguments are the C kernel's; vec_dot
    kernels take ``extra = (n_y, y_stride, y_offset)`` with the y rows in ``inp`` from ``y_offset`` and
    ``y_stride`` (the 7th argument) standing for the output row stride."""
    spec = _catalog.by_name()[name]
    arch = _isa.get(spec.isa).arch
    arch = _isa.host_arch() if arch == "any" else arch
    exe = cross_driver("aarch64" if arch == "any" else arch)
    qemu = CROSS_TOOLS[arch][1]
    with tempfile.TemporaryDirectory(prefix="mlaref-qemu-") as tmp:
        fin, fout = pathlib.Path(tmp) / "in", pathlib.Path(tmp) / "out"
        fin.write_bytes(inp)
        fout.write_bytes(out)
        args = [qemu, str(exe), name, str(n_rows), str(n), str(x_stride), str(y_stride), str(fin), str(fout)]
        args += [str(v) for v in (extra or ())]
        r = subprocess.run(args, capture_output=True, text=True, timeout=120)
        if r.returncode:
            raise RuntimeError(f"{qemu} {name}: exit {r.returncode}: {r.stderr[-2000:]}")
        return fout.read_bytes()


def run_cross_kernel(name: str, inputs, out: bytes, jobs) -> tuple[list[int], bytes]:
    """Run a mul_mat / flash_attn_ext(_partial) / fa_merge kernel ``name`` under qemu, once per job, in order, on
    the same buffers: ``inputs`` are the bytes its input pointers point at, in signature order (None for NULL),
    ``out`` the output buffer's initial bytes (poison, guards), each job the kernel's remaining arguments in order
    (one thread's part; float arguments as their f32 bits; fa_merge returns nothing and reports 0). Returns the
    kernel's return value per job and the output buffer after the last."""
    spec = _catalog.by_name()[name]
    n_in = _CROSS_INPUTS.get(spec.family)
    if n_in is None:
        raise ValueError(f"run_cross_kernel runs {', '.join(_CROSS_INPUTS)} kernels, not {spec.family}")
    if len(inputs) != n_in:
        raise ValueError(f"{name}: {n_in} input buffers expected, got {len(inputs)}")
    arch = _isa.get(spec.isa).arch
    if arch not in CROSS_TOOLS:
        raise ValueError(f"{name} is a {arch} kernel; the qemu driver holds the {', '.join(CROSS_TOOLS)} ones")
    exe = cross_driver(arch)
    blob, offsets = bytearray(), []
    for b in inputs:
        if b is None:
            offsets.append(-1)
            continue
        blob += bytes(-len(blob) % 64)  # each input 64-byte aligned, as the driver aligns the file's buffer
        offsets.append(len(blob))
        blob += b
    words = ";".join(",".join(str(int(v)) for v in (*offsets, *job)) for job in jobs)
    with tempfile.TemporaryDirectory(prefix="mlaref-qemu-") as tmp:
        fin, fout = pathlib.Path(tmp) / "in", pathlib.Path(tmp) / "out"
        fin.write_bytes(bytes(blob) or b"\0")
        fout.write_bytes(out)
        args = [CROSS_TOOLS[arch][1], str(exe), name, str(fin), str(fout), words]
        r = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
        rcs = [int(line.split()[1]) for line in r.stdout.splitlines() if line.startswith("rc ")]
        if r.returncode or len(rcs) != len(jobs):
            raise RuntimeError(f"{args[0]} {name}: exit {r.returncode}: {r.stderr[-2000:]}")
        return rcs, fout.read_bytes()

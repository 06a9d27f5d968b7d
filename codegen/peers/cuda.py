"""Upstream ggml's CUDA back-end as a peer: bundle its source here, build and probe it on a GPU machine.

ggml-cuda (``ggml/src/ggml-cuda`` of the llama.cpp vendored in the **llama-cpp-python 0.3.36** sdist, upstream
ggml 0.25.3) is what mlaref's CUDA kernels are timed against, and its answers for #253's ops on quantized rows are
facts of their own: which of ``cpy`` / ``concat`` / ``repeat`` it accepts for f16, bf16 and q8_0 rows, and whether
the bytes it writes are the specification's.

Three steps, because the GPU machine has no network and no pip:

``mlaref peer-cuda bundle --out DIR``  (here) writes ``DIR/ggml-0.25.3-cuda.tar.gz``: the sdist's ``ggml/``
    trimmed to what a CUDA build needs (CMake files, headers, the base library, ggml-cpu, ggml-cuda) and the probe
    ``ggml_cuda_bench.c``. A few MiB: it travels with the working tree.
``mlaref peer-cuda run --bundle FILE --out DIR``  (on the GPU machine) builds ``ggml-base`` and ``ggml-cuda`` for
    the GPU's architecture with CMake and nvcc (FlashAttention for the default quant pairs only:
    ``GGML_CUDA_FA_ALL_QUANTS=OFF``, whose list includes f16-f16 and q8_0-q8_0), links the probe, runs the cases of
    :func:`default_cases` and writes ``DIR/ggml-cuda.json``: per case whether ggml-cuda supports it, seconds per
    compute (median and min of ``reps`` after one warm-up, each compute synchronised), and for the byte-copy checks
    whether the output bytes equal :mod:`mlaref.reference`'s (``cpy``, ``concat`` along dim 0, ``repeat``).
``--quick`` runs small shapes (a smoke test of the whole path).

Nothing here needs cffi, so the command runs on a machine without it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

from mlaref.codegen.peers import build as _peers
from mlaref.reference.ops.concat import concat
from mlaref.reference.ops.cpy import cpy
from mlaref.reference.ops.repeat import repeat
from mlaref.reference.tensor import Tensor

__all__ = ["PEER", "VERSION", "BUNDLE_NAME", "default_cases", "bundle", "build", "probe", "check_dump",
           "configure", "run"]

PEER = "llama-cpp-python"
VERSION = "0.3.36"
GGML = "0.25.3"
BUNDLE_NAME = f"ggml-{GGML}-cuda.tar.gz"
PROBE = Path(__file__).resolve().parent / "ggml_cuda_bench.c"
# what a CUDA build of ggml needs from vendor/llama.cpp/ggml (paths relative to it)
_KEEP_DIRS = ("cmake", "include", "src/ggml-cpu", "src/ggml-cuda")
_KEEP_SRC_SUFFIXES = (".c", ".cpp", ".h", ".in", ".txt")
CMAKE_ARGS = ("-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=ON", "-DGGML_CUDA=ON", "-DGGML_CUDA_NCCL=OFF",
              "-DGGML_CUDA_FA_ALL_QUANTS=OFF", "-DGGML_NATIVE=OFF", "-DGGML_BUILD_TESTS=OFF",
              "-DGGML_BUILD_EXAMPLES=OFF", "-DGGML_OPENMP=OFF", "-DGGML_CCACHE=OFF")
COPY_TYPES = ("f16", "bf16", "q8_0")
COPY_OPS = ("cpy", "concat", "repeat")


def default_cases(quick: bool = False) -> list[str]:
    """The probe's cases (see ggml_cuda_bench.c): the FlashMLA-2 shapes of ``bench peers`` plus the copy checks.

    mul_mat: weight [512, 4096] (f16, q8_0, iq4_nl) times src1 f32 [512, n_kv]; flash attention: 16 heads x 512
    queries, Dk 192 / Dv 128 (one K/V head per query head, #253's layout, which ggml-cuda 0.25.3 does not support,
    and 16 query heads on 2 K/V heads, which it does) and 576 / 512 (16 query heads on one K/V head), f16 and
    q8_0 K/V; copies: 256 MiB-scale f16 / q8_0 rows for bandwidth; dumps: small tensors whose bytes are checked."""
    n_kvs = (256,) if quick else (1024, 4096, 16384)
    reps = 3 if quick else 20
    m = 256 if quick else 4096
    cases = []
    for n in n_kvs:
        for t in ("f16", "q8_0", "iq4_nl"):
            cases.append(f"mm:{t}:{m}:512:{n}:{reps}")
    for n in n_kvs:
        for t in ("f16", "q8_0"):
            cases.append(f"fa:{t}:192:128:16:16:{64 if quick else 512}:{n}:{reps}")
            # ggml-cuda has 192/128 kernels only for GQA ratios that are multiples of 8 (upstream facts §10.4)
            cases.append(f"fa:{t}:192:128:16:2:{64 if quick else 512}:{n}:{reps}")
            cases.append(f"fa:{t}:576:512:16:1:{64 if quick else 512}:{n}:{reps}")
    rows = 64 if quick else 32768
    for op in COPY_OPS:
        for t in COPY_TYPES:
            cases.append(f"copy:{op}:{t}:4096:{rows}:{reps}")
    for op in COPY_OPS:
        for t in COPY_TYPES:
            cases.append(f"dump:{op}:{t}:512:7:DUMP")
    return cases


def _ggml_source() -> Path:
    work = _peers.build_dir("_dl", PEER)
    work.mkdir(parents=True, exist_ok=True)
    src = _peers.fetch_sdist(work, progress=True, peer=PEER)
    return src / _peers.peer_spec(PEER).source / "ggml"


def bundle(out: Path, source: Path | None = None) -> Path:
    """Write ``out/BUNDLE_NAME`` from the sdist's ggml (``source``: that ggml directory; default: fetch the sdist
    into the peer cache). Returns the file."""
    src = Path(source) if source is not None else _ggml_source()
    if not (src / "CMakeLists.txt").exists() or not (src / "src" / "ggml-cuda").is_dir():
        raise FileNotFoundError(f"{src} is not ggml's source directory with a ggml-cuda back-end")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dest = out / BUNDLE_NAME

    def keep(rel: str) -> bool:
        if "/" not in rel or any(rel == d or rel.startswith(d + "/") for d in _KEEP_DIRS):
            return True
        head, _, name = rel.rpartition("/")
        return head == "src" and name.endswith(_KEEP_SRC_SUFFIXES)

    with tarfile.open(dest, "w:gz") as tf:
        for path in sorted(src.rglob("*")):
            rel = path.relative_to(src).as_posix()
            if path.is_file() and keep(rel):
                tf.add(path, arcname=f"ggml/{rel}", recursive=False)
        tf.add(PROBE, arcname=f"ggml/{PROBE.name}", recursive=False)
        if not (src / "ggml.pc.in").exists():
            # a standalone configure needs the pkg-config template, which the sdist leaves out (llama.cpp's own
            # CMakeLists builds ggml as a subproject); nothing is installed here, so an empty one does
            info = tarfile.TarInfo("ggml/ggml.pc.in")
            info.size, info.mtime = 0, 0
            tf.addfile(info, io.BytesIO(b""))
    return dest


def _run(cmd, what: str, cwd=None, timeout=3600) -> str:
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        tail = "\n".join((res.stdout + res.stderr).strip().splitlines()[-25:])
        raise RuntimeError(f"{what} failed ({' '.join(map(str, cmd[:4]))} ...):\n{tail}")
    return res.stdout


def build(bundle_file: Path, work: Path, arch: str = "90", jobs: int | None = None) -> Path:
    """Unpack the bundle into ``work``, build ggml-base + ggml-cuda for ``arch`` and link the probe. Returns the
    probe's path. Needs cmake, nvcc and a C compiler (not a GPU)."""
    bundle_file, work = Path(bundle_file), Path(work)
    if not bundle_file.is_file():
        raise FileNotFoundError(f"no bundle at {bundle_file} (make one with `mlaref peer-cuda bundle`)")
    for tool in ("cmake", "cc"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} not found on PATH")
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None)
    if nvcc is None:
        raise RuntimeError("nvcc not found (PATH or /usr/local/cuda/bin)")
    work.mkdir(parents=True, exist_ok=True)
    with tarfile.open(bundle_file) as tf:
        tf.extractall(work, filter="data")
    src, bdir = work / "ggml", work / "build"
    jobs = jobs or os.cpu_count() or 1
    _run(["cmake", "-S", str(src), "-B", str(bdir), *CMAKE_ARGS, f"-DCMAKE_CUDA_ARCHITECTURES={arch}",
          f"-DCMAKE_CUDA_COMPILER={nvcc}"], "cmake configure")
    _run(["cmake", "--build", str(bdir), "-j", str(jobs), "--target", "ggml-base", "ggml-cuda"], "cmake build")
    libs = sorted({p.parent for p in bdir.rglob("libggml-cuda.so*")} | {p.parent for p in bdir.rglob("libggml-base.so*")})
    probe = work / "ggml_cuda_bench"
    cmd = ["cc", "-O2", "-std=c11", "-D_POSIX_C_SOURCE=200809L", f"-I{src / 'include'}", str(src / PROBE.name),
           "-o", str(probe)]
    for d in libs:
        cmd += [f"-L{d}", f"-Wl,-rpath,{d}"]
    _run(cmd + ["-lggml-cuda", "-lggml-base", "-lm"], "linking the probe")
    return probe


def probe(exe: Path, cases, dump_dir: Path, timeout: float = 1800) -> list[dict]:
    """Run the probe on ``cases`` (``DUMP`` in a case becomes ``dump_dir``); one dict per JSON line."""
    dump_dir.mkdir(parents=True, exist_ok=True)
    args = [c.replace("DUMP", str(dump_dir)) for c in cases]
    res = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout)
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    if res.returncode != 0:
        rows.append({"case": "exit", "returncode": res.returncode, "stderr": res.stderr[-4000:]})
    return rows


def check_dump(op: str, type: str, ne0: int, ne1: int, dump_dir: Path) -> dict:
    """Compare ggml-cuda's output bytes of one dump case with the reference's: equal bytes or not (and how many
    rows differ). The inputs are the bytes ggml-cuda was given."""
    def read(ext):
        return np.fromfile(dump_dir / f"{op}_{type}.{ext}", dtype=np.uint8)

    a = Tensor.from_bytes(read("in0"), type, (ne0, 1 if op == "repeat" else ne1))
    if op == "cpy":
        want = cpy(a, Tensor.zeros(type, (ne0, ne1)))
    elif op == "concat":
        want = concat(a, Tensor.from_bytes(read("in1"), type, (ne0, ne1)), 0)
    else:
        want = repeat(a, (ne0, ne1, 1, 1))
    got = read("out")
    exp = np.ascontiguousarray(want.storage()).reshape(-1)
    if got.size != exp.size:
        return {"bytes_equal": False, "why": f"{got.size} bytes written, the reference has {exp.size}"}
    rows = exp.size // want.ne[1] // want.ne[2] // want.ne[3]
    diff = (got.reshape(-1, rows) != exp.reshape(-1, rows)).any(axis=1)
    return {"bytes_equal": bool(not diff.any()), "rows_differing": int(diff.sum()), "rows": int(diff.size)}


def _summarise(rows: list[dict], dump_dir: Path) -> list[dict]:
    for r in rows:
        if r.get("case") == "dump" and r.get("supported"):
            r.update(check_dump(r["op"], r["type"], r["ne0"], r["ne1"], dump_dir))
        if r.get("median_s"):
            if "flop" in r:
                r["tflops"] = r["flop"] / r["median_s"] / 1e12
            if "bytes" in r:
                r["gb_per_s"] = r["bytes"] / r["median_s"] / 1e9
    return rows


def _print(rows: list[dict]) -> None:
    for r in rows:
        what = " ".join(f"{k}={r[k]}" for k in ("case", "op", "type", "M", "N", "Dk", "Dv", "Hkv", "n_kv", "ne1")
                        if k in r)
        if r.get("supported") is False:
            print(f"{what}: not supported by ggml-cuda")
        elif "median_s" in r:
            rate = f"{r['tflops']:.2f} TFLOP/s" if "tflops" in r else f"{r.get('gb_per_s', 0):.1f} GB/s"
            print(f"{what}: {r['median_s'] * 1e3:.3f} ms (min {r['min_s'] * 1e3:.3f}), {rate}")
        elif r.get("case") == "dump":
            print(f"{what}: bytes equal to the reference: {r.get('bytes_equal')} "
                  f"({r.get('rows_differing', '?')} of {r.get('rows', '?')} rows differ)")
        else:
            print(json.dumps(r))


def configure(parser) -> None:
    sub = parser.add_subparsers(dest="cuda_command", metavar="ACTION")
    b = sub.add_parser("bundle", help="write the trimmed ggml 0.25.3 source with the probe (here)")
    b.add_argument("--out", type=Path, required=True, help="folder for " + BUNDLE_NAME)
    r = sub.add_parser("run", help="build ggml-cuda from the bundle and run the probe (on a GPU machine)")
    r.add_argument("--bundle", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True, help="folder for ggml-cuda.json and the build log")
    r.add_argument("--work", type=Path, default=Path("/tmp/mlaref-ggml-cuda"))
    r.add_argument("--arch", default="90", help="CMAKE_CUDA_ARCHITECTURES (default 90: H100 / H200)")
    r.add_argument("--quick", action="store_true", help="small shapes: a smoke test of the whole path")
    r.add_argument("--build-only", action="store_true", help="build the library and the probe, run nothing")


def run(args: argparse.Namespace) -> int:
    try:
        if args.cuda_command == "bundle":
            print(bundle(args.out))
            return 0
        if args.cuda_command != "run":
            print("mlaref peer-cuda: give an action: bundle or run", file=sys.stderr)
            return 2
        t0 = time.time()
        exe = build(args.bundle, args.work, args.arch)
        built_s = time.time() - t0
        print(f"built ggml-cuda {GGML} for sm_{args.arch} in {built_s:.0f} s", flush=True)
        if args.build_only:
            return 0
        rows = _summarise(probe(exe, default_cases(args.quick), args.work / "dump"), args.work / "dump")
        _print(rows)
        args.out.mkdir(parents=True, exist_ok=True)
        doc = {"peer": f"{PEER} {VERSION} (upstream ggml {GGML}, ggml-cuda)", "cmake_args": list(CMAKE_ARGS),
               "arch": args.arch, "build_seconds": built_s, "quick": bool(args.quick), "rows": rows}
        (args.out / "ggml-cuda.json").write_text(json.dumps(doc, indent=1) + "\n")
        return 0
    except (OSError, RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
        print(f"mlaref peer-cuda: {exc}", file=sys.stderr)
        return 2

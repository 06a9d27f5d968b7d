"""mlaref's C harness: one stable ABI over every peer's ggml, compiled against that peer's own headers.

The three peers' ``ggml.h`` differ (type and op enums, struct layouts, where the CPU API lives), so no one set of
Python bindings fits them all. Instead ``codegen/peers/harness.c.j2`` is rendered per peer and compiled against the
peer's headers and libraries into ``libmlaref_harness.so`` (beside the build, keyed by the hash of its source and
the compiler). The template's parameters are read from the headers themselves (:func:`dialect`): whether the CPU
API is in ``ggml-cpu.h``, how the type traits are reached, whether ``ggml_cpu_init`` exists, which
``ggml_cpu_has_*`` are declared. The library's ABI is the same for every peer:

* ``mh_info()``: JSON of the build's ``ggml_cpu_has_*`` and its type table (``ggml_type_name``, block and type
  sizes, CPU ``vec_dot_type``, which converters exist), so types are matched by *name*, never by enum value;
* ``mh_from_float`` / ``mh_to_float`` / ``mh_vec_dot`` / ``mh_quantize_chunk``: the type traits (``mh_row_symbol``: an exported
  row routine by name, where the traits do not reach it);
* ``mh_graph_*``: nodes (:class:`Graph`) built with the peer's own API calls into one context, inputs as views
  of one base tensor per (buffer, type) with the given ``ne`` / ``nb`` / offset, computed by
  ``ggml_graph_compute_with_ctx``;
* ``mh_graph_new_reserve`` / ``mh_graph_reserve``: the same nodes built without data, as llama.cpp builds its
  graph before the reserve (weights in a CPU buffer of their own, inputs flagged with ``ggml_set_input``), and
  measured by the peer's own ggml-alloc (``ggml_gallocr_reserve`` with the CPU buffer type): the compute
  buffer's size, and each tensor's offset in it (:meth:`Graph.reserve`).

Loading two peers' ``libggml.so`` into one process would mix them: :func:`load` takes one harness per process,
and the conformance runner calls it from worker processes (a ggml assert aborts the worker, not the run).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import jinja2
import numpy as np

from mlaref.codegen import build as _build
from mlaref.codegen.peers import build as peer_build
from mlaref.reference.tensor import Tensor, row_size, type_geometry

__all__ = [
    "ABI",
    "FLAG_INPUT",
    "FLAG_OUTPUT",
    "OPS",
    "TEMPLATE",
    "UNARY",
    "Graph",
    "Harness",
    "Prepared",
    "Reserved",
    "HarnessError",
    "LayoutMismatch",
    "WrotePastTensor",
    "call",
    "call_many",
    "dialect",
    "ensure",
    "load",
    "loaded",
    "render",
]

TEMPLATE = Path(__file__).resolve().parent / "harness.c.j2"
ABI = 3
# enum mh_op of the template
OPS = {"input": 0, "new": 1, "mul_mat": 2, "concat": 3, "repeat": 4, "cpy": 5, "get_rows": 6, "soft_max_ext": 7,
       "rope_ext": 8, "flash_attn_ext": 9, "view": 10, "permute": 11, "cont": 12, "reshape": 13, "transpose": 14,
       "add": 15, "mul": 16, "scale": 17, "rms_norm": 18, "silu": 19, "gelu": 20, "fused_rms_norm": 21,
       "cast": 22, "weight": 23, "mul_mat_id": 24, "argsort": 25, "fused_mul_unary": 26, "multi_add": 27,
       "moe_up_gate": 28, "set_rows": 29}
# mh_node.flags (ggml_set_input / ggml_set_output)
FLAG_INPUT, FLAG_OUTPUT = 1, 2
# the unary ops of fused_mul_unary / moe_up_gate, as the template's mh_unary codes them
UNARY = {"SILU": 0, "GELU": 1, "RELU": 2}
_LIB = "libmlaref_harness.so"
_INT_BYTES = {"i8": 1, "i16": 2, "i32": 4, "i64": 8}


class HarnessError(RuntimeError):
    """The harness refused a request (its ``mh_error()`` text) or could not be built."""


class WrotePastTensor(HarnessError):
    """The library wrote into the guard bytes the harness places after every tensor of a graph."""


class LayoutMismatch(HarnessError):
    """The peer stores a type in another block layout than mlaref's: nothing of that type is passed to C."""


class _Node(ctypes.Structure):
    _fields_ = [("op", ctypes.c_int32), ("src", ctypes.c_int32 * 4), ("type", ctypes.c_int32),
                ("ne", ctypes.c_int64 * 4), ("nb", ctypes.c_int64 * 4), ("offset", ctypes.c_int64),
                ("buf", ctypes.c_int32), ("ip", ctypes.c_int32 * 8), ("fp", ctypes.c_float * 8),
                ("flags", ctypes.c_int32)]


# -- rendering ----------------------------------------------------------------------------------------------------

def dialect(include: Path, peer: str) -> dict:
    """The template's parameters for the headers in ``include`` (read from the headers, not from the peer's name)."""
    include = Path(include)
    texts = {p.name: p.read_text(errors="replace") for p in include.glob("ggml*.h")}
    if "ggml.h" not in texts:
        raise HarnessError(f"no ggml.h in {include}")
    cpu_h = texts.get("ggml-cpu.h", "")
    declared = "".join(texts.values())
    features = sorted(set(re.findall(r"\bggml_cpu_has_(\w+)\s*\(\s*void\s*\)", cpu_h or texts["ggml.h"])))
    return {
        "peer": peer,
        "cpu_header": bool(cpu_h),
        "traits": "split" if "ggml_get_type_traits_cpu" in declared else "internal",
        "cpu_init": "ggml_cpu_init" in declared,
        "features": features,
        "fused_rms_norm": "ggml_fused_rms_norm" in declared,
        "fused_mul_unary": "ggml_fused_mul_unary" in declared,
        "multi_add": "ggml_multi_add" in declared,
        "moe_up_gate": "ggml_moe_up_gate" in declared,
        "graph_add_node": "ggml_graph_add_node" in declared,
        "plan_threadpool": re.search(r"ggml_graph_plan\s*\([^;]*threadpool", declared) is not None,
    }


def render(params: dict) -> str:
    """The harness C source for ``params`` (see :func:`dialect`); the same parameters give the same bytes."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE.parent)), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    return env.get_template(TEMPLATE.name).render(**params)


def ensure(peer: str, level: str = "native", progress: bool | None = None) -> Path:
    """The path of ``peer``'s harness library at ``level`` (the peer and the harness built first if needed)."""
    out = peer_build.ensure(level, progress=progress, peer=peer)
    lib = out / "lib"
    include = peer_build.include_dir(peer)
    if not (include / "ggml.h").exists():  # the build came from elsewhere: fetch the headers again
        with tempfile.TemporaryDirectory(prefix="mlaref-peer-") as tmp:
            peer_build.fetch_sdist(Path(tmp), bool(progress), peer)
    src = render(dialect(include, peer))
    cc = _build.compiler()
    key = hashlib.sha256((src + "\0" + " ".join(cc) + "\0" + _build.compiler_version()).encode()).hexdigest()[:16]
    dst = out / "harness" / key / _LIB
    if dst.exists():
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    # every file under a name of this process until it is complete: two processes may build it at once
    c_tmp = dst.parent / f"mlaref_harness.{os.getpid()}.c"
    c_tmp.write_text(src)
    libs = [f"-l{n}" for n in ("ggml", "ggml-base", "ggml-cpu") if (lib / f"lib{n}.so").exists()]
    tmp = dst.with_suffix(f".{os.getpid()}.tmp")
    cmd = [*cc, "-std=c11", "-O2", "-fPIC", "-shared", "-Wall", "-Werror=implicit-function-declaration",
           "-Wno-deprecated-declarations", str(c_tmp), "-I", str(include),
           "-L", str(lib), *libs, f"-Wl,-rpath,{lib}", "-o", str(tmp)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        c_tmp.unlink(missing_ok=True)
        raise HarnessError(f"compiling the harness for {peer} failed:\n" + "\n".join(res.stderr.splitlines()[-20:]))
    os.replace(c_tmp, dst.parent / "mlaref_harness.c")
    os.replace(tmp, dst)
    return dst


_CHILD = r"""
import pickle, sys, importlib
from mlaref.codegen.peers import harness
harness.load(sys.argv[1])
calls = pickle.load(sys.stdin.buffer)
out = []
for target, args, kwargs in calls:
    mod, fn = target.split(":")
    try:
        out.append(("ok", getattr(importlib.import_module(mod), fn)(*args, **kwargs)))
    except Exception as exc:
        out.append(("raised", (type(exc).__name__, str(exc))))
sys.stdout.buffer.write(pickle.dumps(out))
"""


def call_many(peer: str, level: str, calls, timeout: float = 600) -> list:
    """``[(target, args, kwargs), ...]`` (``target = "module:function"``) run in order in one child process that
    has loaded ``peer``'s harness at ``level`` (built first if needed); their return values come back as a list,
    an exception as ``("raised", (name, text))`` in its place. A crash in the library raises HarnessError with
    the end of its stderr."""
    out = peer_build.run_calls(_CHILD, str(ensure(peer, level)), calls, timeout, f"{peer}@{level}", HarnessError)
    return [v if kind == "ok" else ("raised", v) for kind, v in out]


def call(peer: str, level: str, target: str, *args, timeout: float = 600, **kwargs):
    """:func:`call_many` with one call; an exception in the child is raised here as HarnessError."""
    out = call_many(peer, level, [(target, args, kwargs)], timeout=timeout)[0]
    if isinstance(out, tuple) and len(out) == 2 and out[0] == "raised":
        raise HarnessError(f"{target} raised {out[1][0]}: {out[1][1]}")
    return out


# -- the loaded harness ---------------------------------------------------------------------------------------------

_loaded: Harness | None = None


def load(path) -> Harness:
    """Load the harness at ``path`` into this process (only one per process: see the module docstring)."""
    global _loaded
    path = str(Path(path).resolve())
    if _loaded is not None:
        if _loaded.path != path:
            raise HarnessError(f"this process already loaded {_loaded.path}; one harness per process")
        return _loaded
    _loaded = Harness(path)
    return _loaded


def loaded() -> Harness:
    if _loaded is None:
        raise HarnessError("no harness is loaded in this process (mlaref.codegen.peers.harness.load)")
    return _loaded


class Harness:
    """One peer's harness library, loaded with ctypes."""

    def __init__(self, path: str):
        self.path = path
        lib = ctypes.CDLL(path)
        self._lib = lib
        vp, i32, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
        sig = {
            "mh_abi": ([], i32), "mh_error": ([], ctypes.c_char_p), "mh_info": ([], ctypes.c_char_p),
            "mh_from_float": ([i32, i32, vp, vp, i64, i64], i32), "mh_to_float": ([i32, vp, vp, i64, i64], i32),
            "mh_vec_dot": ([i32, i64, vp, vp, vp], i32), "mh_quantize_chunk": ([i32, vp, vp, i64, i64, vp], i32),
            "mh_row_symbol": ([ctypes.c_char_p, i32, vp, vp, i64, i64, i64, i64], i32),
            "mh_graph_new": ([i64, i32], vp), "mh_graph_free": ([vp], None),
            "mh_graph_build": ([vp, ctypes.POINTER(_Node), i32, ctypes.POINTER(vp), ctypes.POINTER(i64), i32,
                                ctypes.POINTER(ctypes.c_int32), i32], i32),
            "mh_graph_supports": ([vp, i32], i32), "mh_graph_compute": ([vp, i32], i32),
            "mh_graph_profile": ([vp, i32, ctypes.POINTER(ctypes.c_double), ctypes.POINTER(ctypes.c_int32), i32],
                                 i32),
            "mh_graph_output_desc": ([vp, i32, ctypes.POINTER(i64)], i32),
            "mh_graph_output_copy": ([vp, i32, vp, i64], i32),
            "mh_graph_new_reserve": ([i32], vp),
            "mh_graph_reserve": ([vp, ctypes.POINTER(i64), ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(i64)],
                                 i32),
        }
        for name, (args, res) in sig.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = args, res
        if lib.mh_abi() != ABI:
            raise HarnessError(f"{path}: harness ABI {lib.mh_abi()}, mlaref expects {ABI}")
        self.info = json.loads(lib.mh_info().decode())
        self.types = {}
        for t in self.info["types"]:  # removed types keep their slot under a placeholder name ("DEPRECATED")
            if t["name"] and t["name"] != "DEPRECATED" and t["name"] not in self.types:
                self.types[t["name"]] = t
        self.names = {t["id"]: t["name"] for t in self.info["types"]}

    def check(self, rc: int, what: str) -> int:
        if rc < 0:
            raise (WrotePastTensor if rc == -9 else HarnessError)(f"{what}: {self._lib.mh_error().decode()}")
        return rc

    def type_id(self, name: str) -> int:
        """The peer's enum value of type ``name``, after checking that the peer stores it as mlaref does (block
        size, block bytes, bytes of a 4096-value row): a pointer to mlaref's bytes must never reach C code that
        reads or writes another layout."""
        if name not in self.types:
            raise HarnessError(f"{self.info['peer']} has no type {name!r}")
        self.check_layout(name)
        return self.types[name]["id"]

    def check_layout(self, name: str) -> None:
        """Raise :class:`LayoutMismatch` if the peer's block of ``name`` is not mlaref's (e.g. ik_llama.cpp's
        2026 ``block_q8_K`` has a ``float sum`` after ``d``: 296 bytes, upstream's and mlaref's have 292)."""
        t = self.types[name]
        if name in _INT_BYTES:
            if (t["blck_size"], t["type_size"]) != (1, _INT_BYTES[name]):
                raise LayoutMismatch(f"{self.info['peer']} stores {name} in {t['type_size']} bytes, not "
                                     f"{_INT_BYTES[name]}")
            return
        try:
            bs, ts = type_geometry(name)
        except (KeyError, ValueError):
            raise LayoutMismatch(f"mlaref has no layout for {self.info['peer']}'s type {name!r}") from None
        row = row_size(name, 4096) if 4096 % bs == 0 else -1
        if (t["blck_size"], t["type_size"], t["row_4096"]) != (bs, ts, row):
            raise LayoutMismatch(
                f"{self.info['peer']} stores {name} as blocks of {t['blck_size']} values in {t['type_size']} bytes "
                f"({t['row_4096']} bytes per 4096 values); mlaref's {name} is {bs} values in {ts} bytes ({row})")

    def has(self, name: str, field: str = "to_float") -> bool:
        return name in self.types and bool(self.types[name][field])

    def vec_dot_type(self, name: str) -> str:
        return self.names[self.types[name]["vec_dot_type"]]

    # -- the type traits --
    def from_float(self, type_name: str, x: np.ndarray, ref: bool = False) -> np.ndarray:
        x = np.ascontiguousarray(np.atleast_2d(x), dtype=np.float32)
        rows, n = x.shape
        _check_row(type_name, n)
        out = np.zeros((rows, row_size(type_name, n)), np.uint8)
        self.check(self._lib.mh_from_float(self.type_id(type_name), int(ref), x.ctypes.data, out.ctypes.data, rows,
                                           n), f"from_float({type_name})")
        return out

    def to_float(self, type_name: str, data: np.ndarray, n: int) -> np.ndarray:
        _check_row(type_name, n)
        data = np.ascontiguousarray(data, dtype=np.uint8).reshape(-1, row_size(type_name, n))
        out = np.zeros((data.shape[0], n), np.float32)
        self.check(self._lib.mh_to_float(self.type_id(type_name), data.ctypes.data, out.ctypes.data, data.shape[0], n),
                   f"to_float({type_name})")
        return out

    def vec_dot(self, type_name: str, x: np.ndarray, y: np.ndarray, n: int) -> float:
        _check_row(type_name, n)
        self.check_layout(self.vec_dot_type(type_name))
        x = np.ascontiguousarray(x, dtype=np.uint8)
        y = np.ascontiguousarray(y, dtype=np.uint8)
        if x.size != row_size(type_name, n) or y.size != row_size(self.vec_dot_type(type_name), n):
            raise ValueError(f"vec_dot({type_name}, n={n}): rows of {x.size} and {y.size} bytes do not fit")
        s = np.zeros(1, np.float32)
        self.check(self._lib.mh_vec_dot(self.type_id(type_name), n, x.ctypes.data, y.ctypes.data, s.ctypes.data),
                   f"vec_dot({type_name})")
        return float(s[0])

    def quantize_chunk(self, type_name: str, x: np.ndarray, imatrix=None) -> np.ndarray:
        x = np.ascontiguousarray(np.atleast_2d(x), dtype=np.float32)
        rows, n = x.shape
        _check_row(type_name, n)
        im = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)
        if im is not None and im.size != n:
            raise ValueError(f"quantize_chunk: imatrix has {im.size} values, rows have {n}")
        out = np.zeros((rows, row_size(type_name, n)), np.uint8)
        self.check(self._lib.mh_quantize_chunk(self.type_id(type_name), x.ctypes.data, out.ctypes.data, rows, n,
                                               None if im is None else im.ctypes.data), f"quantize_chunk({type_name})")
        return out

    def quantize_row_symbol(self, func: str, type_name: str, x: np.ndarray) -> np.ndarray:
        """An exported ``quantize_row_*`` routine by name, row by row; NotImplementedError if none is exported."""
        x = np.ascontiguousarray(np.atleast_2d(x), dtype=np.float32)
        rows, n = x.shape
        _check_row(type_name, n)
        if type_name in self.types:
            self.check_layout(type_name)
        out = np.zeros((rows, row_size(type_name, n)), np.uint8)
        self._symbol(func, 0, x, out, rows, n, 4 * n, out.shape[1])
        return out

    def dequantize_row_symbol(self, func: str, data: np.ndarray, n: int) -> np.ndarray:
        """An exported ``dequantize_row_<type>`` routine by name on uint8 rows ``(rows, row_bytes)``; the type's
        layout is checked first (the name says which type)."""
        type_name = func.removeprefix("dequantize_row_")
        if type_name in self.types:
            self.check_layout(type_name)
        data = np.ascontiguousarray(np.atleast_2d(data), dtype=np.uint8)
        if data.shape[1] != row_size(type_name, n):
            raise ValueError(f"{func}: rows of {data.shape[1]} bytes do not hold {n} {type_name} values")
        out = np.zeros((data.shape[0], n), np.float32)
        self._symbol(func, 1, data, out, data.shape[0], n, data.shape[1], 4 * n)
        return out

    def _symbol(self, func, kind, x, y, rows, n, x_row, y_row):
        rc = self._lib.mh_row_symbol(func.encode(), kind, x.ctypes.data, y.ctypes.data, rows, n, x_row, y_row)
        if rc == -7:
            raise NotImplementedError(self._lib.mh_error().decode())
        self.check(rc, func)

    def graph(self) -> Graph:
        return Graph(self)


def _ne(ne) -> tuple:
    ne = tuple(int(v) for v in ne)
    if not 1 <= len(ne) <= 4 or any(v <= 0 for v in ne):
        raise ValueError(f"ne must be 1 to 4 positive sizes, got {list(ne)}")
    return ne + (1,) * (4 - len(ne))


def _check_flags(flags: int) -> None:
    if int(flags) & ~(FLAG_INPUT | FLAG_OUTPUT):
        raise ValueError(f"flags must combine FLAG_INPUT ({FLAG_INPUT}) and FLAG_OUTPUT ({FLAG_OUTPUT}), got {flags}")


def _check_row(type_name: str, n: int) -> None:
    bs, _ = type_geometry(type_name)
    if n <= 0 or n % bs:
        raise ValueError(f"{type_name}: a row of {n} values is not a positive multiple of the block size {bs}")


class Graph:
    """Nodes for one ggml graph of the loaded peer; each method adds a node and returns its index.

    ``g.input(t)`` adds an mlaref Tensor (a view of its buffer with its own ``ne``/``nb``/offset; two Tensors over
    one NumPy buffer become two views of one ggml tensor); the op methods take node indices. ``g.run(outs,
    n_threads)`` computes the graph and returns the outputs as contiguous mlaref Tensors; ``g.supports(node)``
    asks the CPU back-end's ``supports_op`` without computing.

    A graph for :meth:`reserve` holds no data: its weights are ``g.weight(type, ne)``, its inputs
    ``g.new(type, ne, flags=FLAG_INPUT)``, and ``g.input`` is refused there (as ``g.weight`` is by ``run``)."""

    def __init__(self, harness: Harness):
        self.h = harness
        self.nodes: list[_Node] = []
        self.bufs: list[np.ndarray] = []
        self._buf_ids: dict[int, int] = {}

    def _add(self, op: str, src=(), type_name=None, ne=(1, 1, 1, 1), nb=(0, 0, 0, 0), offset=0, buf=0, ip=(),
             fp=(), flags=0) -> int:
        n = _Node()
        n.op = OPS[op]
        srcs = list(src) + [-1] * (4 - len(src))
        for k in range(4):
            if srcs[k] is not None and srcs[k] >= len(self.nodes):
                raise ValueError(f"{op}: source {srcs[k]} is not an earlier node")
            n.src[k] = -1 if srcs[k] is None else srcs[k]
        n.type = -1 if type_name is None else self.h.type_id(type_name)
        for k in range(4):
            n.ne[k], n.nb[k] = ne[k], nb[k]
        n.offset, n.buf = offset, buf
        for k, v in enumerate(ip):
            n.ip[k] = int(v)
        for k, v in enumerate(fp):
            n.fp[k] = float(v)
        n.flags = int(flags)
        self.nodes.append(n)
        return len(self.nodes) - 1

    def input(self, t: Tensor) -> int:
        if not isinstance(t, Tensor):
            raise TypeError(f"Graph.input takes an mlaref Tensor, got {type(t).__name__}")
        key = id(t.data)
        if key not in self._buf_ids:
            self._buf_ids[key] = len(self.bufs)
            self.bufs.append(t.data)
        return self._add("input", type_name=t.type, ne=t.ne, nb=t.nb, offset=t.offset, buf=self._buf_ids[key])

    def new(self, type_name: str, ne, flags: int = 0) -> int:
        """A new tensor (zeros when computed; no data in a reserve graph); ``flags``: FLAG_INPUT / FLAG_OUTPUT."""
        ne = _ne(ne)
        _check_flags(flags)
        return self._add("new", type_name=type_name, ne=ne, flags=flags)

    def weight(self, type_name: str, ne) -> int:
        """A model tensor of a reserve graph: contiguous, in a CPU buffer of its own, never placed by ggml-alloc."""
        return self._add("weight", type_name=type_name, ne=_ne(ne))

    def cast(self, a: int, type_name: str) -> int:
        """``ggml_cast(a, type)``: a new tensor whose CPY reads ``a`` (its ``src[1]`` is itself, as in ggml)."""
        if not 0 <= a < len(self.nodes):
            raise ValueError(f"cast: source {a} is not an earlier node")
        return self._add("cast", src=(a,), type_name=type_name)

    def op(self, name: str, *src, ip=(), fp=()) -> int:
        """Add op ``name`` over earlier nodes ``src`` with integer / float parameters ``ip`` / ``fp`` (see the
        template's mh_graph_build). Parameters ggml would assert on are refused here, before C sees them."""
        if name not in OPS or name in ("input", "new", "view", "reshape", "weight", "cast"):
            raise ValueError(f"Graph.op: unknown op {name!r}")
        if name == "argsort" and (len(ip) != 1 or int(ip[0]) not in (0, 1)):
            raise ValueError(f"argsort: the order must be 0 (ascending) or 1 (descending), got {list(ip)}")
        if name in ("fused_mul_unary", "moe_up_gate") and (len(ip) != 1 or int(ip[0]) not in UNARY.values()):
            raise ValueError(f"{name}: the unary op must be one of {UNARY} by code, got {list(ip)}")
        if name == "multi_add" and (len(ip) != 1 or int(ip[0]) < 1):
            raise ValueError(f"multi_add: n_experts must be >= 1, got {list(ip)}")
        if name == "concat" and (len(ip) != 1 or not 0 <= int(ip[0]) < 4):
            raise ValueError(f"concat: dim must be one of 0..3, got {list(ip)}")
        if name == "permute" and sorted(int(v) for v in ip) != [0, 1, 2, 3]:
            raise ValueError(f"permute: axes must be a permutation of 0..3, got {list(ip)}")
        if len(ip) > 8 or len(fp) > 8:
            raise ValueError(f"{name}: at most 8 integer and 8 float parameters")
        return self._add(name, src=src, ip=ip, fp=fp)

    def view(self, a: int, ne, nb, offset: int) -> int:
        """``ggml_view_4d(a, ne, nb1..3, offset)``; ``nb`` of 4 strides sets ``nb[0]`` too (a permuted view)."""
        if offset < 0:
            raise ValueError(f"view: the offset must be >= 0, got {offset}")
        ne = tuple(ne) + (1,) * (4 - len(ne))
        nb = tuple(nb)
        nb = nb if len(nb) == 4 else (0, *nb) + (0,) * (3 - len(nb))
        return self._add("view", src=(a,), type_name="f32", ne=ne, nb=nb, offset=offset)

    def reshape(self, a: int, ne) -> int:
        ne = tuple(ne) + (1,) * (4 - len(ne))
        return self._add("reshape", src=(a,), type_name="f32", ne=ne)

    def _build(self, outputs, mem_bytes, reserve: bool = False):
        h = self.h
        kind = OPS["input"] if reserve else OPS["weight"]
        bad = [i for i, n in enumerate(self.nodes) if n.op == kind]
        if bad:
            raise ValueError(f"node {bad[0]}: a {'reserve' if reserve else 'computed'} graph takes no "
                             f"{'input() (its inputs are new(..., flags=FLAG_INPUT))' if reserve else 'weight()'}")
        total = sum(b.size for b in self.bufs)
        mem = mem_bytes or (4 * total + (64 << 20))
        handle = h._lib.mh_graph_new_reserve(len(self.nodes)) if reserve else h._lib.mh_graph_new(mem, len(self.nodes))
        if not handle:
            raise HarnessError(h._lib.mh_error().decode())
        keep = [np.ascontiguousarray(b) for b in self.bufs]
        ptrs = (ctypes.c_void_p * max(1, len(keep)))(*[b.ctypes.data for b in keep])
        sizes = (ctypes.c_int64 * max(1, len(keep)))(*[b.size for b in keep])
        nodes = (_Node * max(1, len(self.nodes)))(*self.nodes)
        outs = (ctypes.c_int32 * max(1, len(outputs)))(*outputs)
        try:
            h.check(h._lib.mh_graph_build(handle, nodes, len(self.nodes), ptrs, sizes, len(keep), outs, len(outputs)),
                    "graph build")
        except HarnessError:
            h._lib.mh_graph_free(handle)
            raise
        return handle

    def supports(self, node: int) -> bool:
        """The CPU back-end's ``supports_op`` for ``node`` (nothing is computed)."""
        handle = self._build([node], 1 << 24 if not self.bufs else None)
        try:
            return bool(self.h.check(self.h._lib.mh_graph_supports(handle, node), "supports_op"))
        finally:
            self.h._lib.mh_graph_free(handle)

    def prepare(self, outputs, mem_bytes: int | None = None) -> Prepared:
        """The graph built once in the peer, to compute as often as wanted (:class:`Prepared`; free it)."""
        outputs = [outputs] if isinstance(outputs, int) else list(outputs)
        return Prepared(self.h, self._build(outputs, mem_bytes), len(outputs))

    def reserve(self, offsets: bool = True) -> Reserved:
        """Measure the graph with the peer's ggml-alloc as llama.cpp's reserve does (see the template's
        ``mh_graph_reserve``): the compute buffer's bytes, each node's index among the ggml graph's nodes and, with
        ``offsets``, each node's offset in the compute buffer (``ggml_gallocr_alloc_graph`` then runs too)."""
        n = len(self.nodes)
        handle = self._build([], None, reserve=True)
        try:
            info = (ctypes.c_int64 * 2)()
            order = (ctypes.c_int32 * max(1, n))()
            offs = (ctypes.c_int64 * max(1, n))() if offsets else None
            self.h.check(self.h._lib.mh_graph_reserve(handle, info, order, offs), "graph reserve")
            return Reserved(int(info[0]), int(info[1]), tuple(order[:n]),
                            tuple(offs[:n]) if offs is not None else None)
        finally:
            self.h._lib.mh_graph_free(handle)

    def run(self, outputs, n_threads: int = 1, mem_bytes: int | None = None) -> list[Tensor]:
        """Build, compute once, return the outputs as contiguous mlaref Tensors, free."""
        prepared = self.prepare(outputs, mem_bytes)
        try:
            prepared.compute(n_threads)
            return prepared.outputs()
        finally:
            prepared.free()


@dataclass(frozen=True)
class Reserved:
    """What :meth:`Graph.reserve` measured: ``buffer_size`` (``ggml_gallocr_get_buffer_size``), ``n_nodes`` of
    the ggml graph, per harness node its index among those nodes (``order``, -1 for a leaf) and its offset in the
    compute buffer (``offsets``, -1 where ggml-alloc placed nothing; None if not asked for)."""

    buffer_size: int
    n_nodes: int
    order: tuple
    offsets: tuple | None


class Prepared:
    """A graph built in the peer's context: ``compute(n_threads)`` runs ``ggml_graph_compute_with_ctx`` on it
    (the part a benchmark times), ``outputs()`` copies the outputs out, ``free()`` releases the context."""

    def __init__(self, h: Harness, handle, n_out: int):
        self.h, self.handle, self.n_out = h, handle, n_out

    def compute(self, n_threads: int = 1) -> None:
        if self.handle is None:
            raise HarnessError("compute after free")
        self.h.check(self.h._lib.mh_graph_compute(self.handle, int(n_threads)), "graph compute")

    def profile(self, n_threads: int = 1) -> list[tuple[int, float]]:
        """Every node of the ggml graph computed alone, in order (the template's ``mh_graph_profile``):
        ``[(harness node index or -1, seconds), ...]``."""
        if self.handle is None:
            raise HarnessError("profile after free")
        secs, order = (ctypes.c_double * 16384)(), (ctypes.c_int32 * 16384)()
        n = self.h.check(self.h._lib.mh_graph_profile(self.handle, int(n_threads), secs, order, 16384), "graph profile")
        return [(int(order[k]), float(secs[k])) for k in range(n)]

    def outputs(self) -> list[Tensor]:
        h, res = self.h, []
        for k in range(self.n_out):
            desc = (ctypes.c_int64 * 10)()
            h.check(h._lib.mh_graph_output_desc(self.handle, k, desc), "output")
            buf = np.zeros(max(1, int(desc[9])), np.uint8)
            h.check(h._lib.mh_graph_output_copy(self.handle, k, buf.ctypes.data, buf.size), "output copy")
            res.append(Tensor(h.names[int(desc[0])], tuple(desc[1:5]), tuple(desc[5:9]), buf, 0).copy())
        return res

    def free(self) -> None:
        if self.handle is not None:
            self.h._lib.mh_graph_free(self.handle)
            self.handle = None


"""``mlaref inspect FILE.gguf``: a GGUF file's hyper-parameters, tensor table, memory plan and kernels, printed.

``mlaref inspect FILE.gguf [--ctx N] [--cache-type f16|q8_0]`` prints what :func:`mlaref.reference.gguf.open_gguf`
read (the header, the metadata keys, the hyper-parameters with llama.cpp's names, the tensor table and the attention
layout), the MLA KV-cache plan (upstream facts §2, :func:`mlaref.reference.graphs.alloc.kv_cache_plan`), the
worst-case compute buffer from the allocator model and which generated mul_mat kernel dispatch would pick for each
weight type.

The file is opened leniently: a structurally sound file is shown whatever it holds, and the model-level problems
(a required key or tensor absent, a shape the hyper-parameters contradict) follow as a "problems" list, one line
each naming the key or tensor; the exit code is then 1. A structurally broken file (bad magic, truncated, a tensor
outside the file) gets one error line on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from mlaref.codegen import catalog, dispatch
from mlaref.reference import get_type
from mlaref.reference.gguf import GGUFError, Model, open_gguf
from mlaref.reference.graphs.alloc import compute_buffer, kv_cache_plan, mib

__all__ = ["configure", "run"]

_LAYOUTS = {"ik": "attn_kv_b", "both": "attn_kv_b and its 2-D halves attn_k_b / attn_v_b",
            "mainline": "3-D attn_k_b / attn_v_b, no attn_kv_b"}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="a GGUF file")
    parser.add_argument("--ctx", type=int, default=2048, help="context length for the KV-cache plan (default 2048)")
    parser.add_argument("--cache-type", default="f16", choices=("f16", "q8_0"), help="KV cache type (-ctk)")


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def _compute_plan(model: Model, kv_size: int, cache_type: str) -> str:
    """The compute buffer of the worst-case reserve from the allocator model, as text."""
    if model.hp is None:
        return f"not planned: {model.hp_error}"
    parts = []
    for variant, label in (("direct", "PR #253"), ("f32", "before")):
        try:
            res = compute_buffer(model.hp, kv_size, variant=variant, cache_type=cache_type)
        except Exception as exc:  # noqa: BLE001  (a planner failure must not hide the rest of the report)
            return f"not planned: {type(exc).__name__}: {exc}"
        parts.append(f"{label} {res.buffer_size} B = {mib(res.buffer_size)} MiB")
    return "; ".join(parts)


def _kernels_for(type_name: str | None) -> str:
    """The generated mul_mat kernel dispatch would pick for this weight type times f32 activations (no build)."""
    if type_name is None:
        return "not implemented in mlaref"
    if type_name == "i32":
        return "no mul_mat (integer tensor)"
    vdt = get_type(type_name).vec_dot_type
    have = catalog.by_key().get(("mul_mat", type_name, "f32", "l16a1"), {})
    for isa in dispatch.candidates(None):
        if isa in have:
            return f"{have[isa].name} (src1 rows converted to {vdt} per thread)"
    return f"no generated mul_mat kernel for {type_name} on this CPU: the reference mul_mat runs it"


def _value_text(model: Model, key: str, limit: int = 60) -> str:
    """A metadata value as one short line: arrays as their element type and length, long strings cut."""
    _vtype, etype, length = model.kv_types[key]
    if etype is not None:
        return f"[{etype.name} x {length}]"
    v = model.metadata[key]
    text = str(np.float32(v)) if isinstance(v, float) else repr(v) if isinstance(v, str) else str(v)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _print_metadata(model: Model) -> None:
    print("metadata:")
    for key in model.kv_types:
        print(f"  {key:48s} {model.kv_types[key][0].name:8s} {_value_text(model, key)}")


def run(args) -> int:
    try:
        model = open_gguf(args.file, lenient=True)
    except GGUFError as exc:
        print(f"mlaref inspect: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if args.ctx <= 0:
        print(f"mlaref inspect: --ctx must be positive, got {args.ctx}", file=sys.stderr)
        return 2
    print(f"file: {model.path}")
    print(f"GGUF v{model.version}, {len(model.infos)} tensors, {len(model.kv_types)} keys, "
          f"alignment {model.alignment}, data at byte {model.data_offset}")
    print(f"architecture: {model.arch}")
    _print_metadata(model)
    hp = model.hparams
    if hp is not None:
        print("hyper-parameters (llama.cpp names):")
        for k, v in hp.items():
            if k in ("n_ff_arr", "n_head_arr", "n_head_kv_arr") and len(set(v)) == 1:
                continue
            if isinstance(v, float):
                v = str(np.float32(v))  # the file holds float32: print its shortest repr
            print(f"  {k:24s} {v}")
        if model.hp is None:
            print(f"  (mlaref.reference.hparams.HParams refused these values: {model.hp_error})")
    print("tensors:")
    print(f"  {'name':36s} {'type':8s} {'ne':28s} {'bytes':>12s}")
    total = 0
    for ti in model.infos:
        shape = "[" + ", ".join(str(v) for v in ti.ne[: max(ti.n_dims, 1)]) + "]"
        print(f"  {ti.name:36s} {ti.ggml_type.lower() if ti.type is None else ti.type:8s} {shape:28s} {ti.nbytes:12d}")
        total += ti.nbytes
    print(f"  total {total} bytes = {_mib(total)}")
    if model.attn_layout is not None:
        print(f"attention layout: {model.attn_layout} ({_LAYOUTS[model.attn_layout]})")
    if model.unsupported:
        print("unsupported tensor types (listed, not loaded): " +
              ", ".join(f"{ti.name} ({ti.ggml_type})" for ti in model.unsupported))
    if model.problems:
        print(f"problems ({len(model.problems)}; llama.cpp would not load this model):")
        for where, what in model.problems:
            print(f"  {where}: {what}")
        return 1
    if hp is not None:
        try:
            plan = kv_cache_plan(hp, args.ctx, args.cache_type)
        except ValueError as exc:
            print(f"KV cache: not planned: {exc}")
            return 0
        print(f"KV cache (-mla 2 -fa, type {plan['type']}): n_ctx {plan['n_ctx']} -> kv_size {plan['kv_size']}; "
              f"per layer [{plan['ne'][0]}, {plan['ne'][1]}] x {plan['row_bytes']} B/row = "
              f"{plan['bytes_per_layer']} B; {plan['n_layer']} layers = {plan['bytes']} B = {_mib(plan['bytes'])}")
        print(f"compute buffer (ubatch 512): {_compute_plan(model, plan['kv_size'], args.cache_type)}")
    print("mul_mat kernel per weight type (f32 activations, plan l16a1, best ISA on this CPU):")
    by_type: dict = {}
    for ti in model.infos:
        by_type.setdefault(ti.type or ti.ggml_type, []).append(ti)
    for t, tis in sorted(by_type.items()):
        print(f"  {t:8s} x{len(tis):4d}: {_kernels_for(tis[0].type)}")
    return 0

"""Fixtures for the GGUF tests: small synthetic files and tools to locate and corrupt their header fields.

Field positions come from ``gguf.GGUFReader`` on the clean file (each part it returns is a view into the
memory map, so its address minus the map's address is its byte offset), never from mlaref's own scan.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
from gguf import GGUFReader, GGUFWriter
from gguf.constants import GGUFValueType
from gguf.quants import quant_shape_to_byte_shape

from mlaref.reference.gguf import open_gguf, write_synthetic


def field_offsets(path) -> dict:
    """Byte offsets of the header fields of a clean GGUF file, as located by gguf-py.

    Keys: ``"n_tensors"``, ``"n_kv"``, ``("key_len", key)``, ``("kv_type", key)``, ``("value", key)`` (scalars),
    ``("str_len", key)``, ``("arr_len", key)``, ``("arr_type", key)``, ``("name_len", t)``, ``("n_dims", t)``,
    ``("ne", t, j)``, ``("type", t)``, ``("offset", t)``; plus ``"data_offset"`` and ``"size"``.
    """
    r = GGUFReader(path)
    base = r.data.ctypes.data

    def off(a):
        return a.ctypes.data - base

    out = {"data_offset": r.data_offset, "size": r.data.size}
    out["n_tensors"] = off(r.fields["GGUF.tensor_count"].parts[0])
    out["n_kv"] = off(r.fields["GGUF.kv_count"].parts[0])
    for key, f in r.fields.items():
        if key.startswith("GGUF."):
            continue
        out[("key_len", key)] = off(f.parts[0])
        out[("kv_type", key)] = off(f.parts[2])
        t = f.types[0]
        if t == GGUFValueType.STRING:
            out[("str_len", key)] = off(f.parts[3])
        elif t == GGUFValueType.ARRAY:
            out[("arr_type", key)] = off(f.parts[3])
            out[("arr_len", key)] = off(f.parts[4])
        else:
            out[("value", key)] = off(f.parts[3])
    for t in r.tensors:
        name_len, _name, n_dims, dims, ttype, toff = t.field.parts
        out[("name_len", t.name)] = off(name_len)
        out[("n_dims", t.name)] = off(n_dims)
        for j in range(len(dims)):
            out[("ne", t.name, j)] = off(dims) + 8 * j
        out[("type", t.name)] = off(ttype)
        out[("offset", t.name)] = off(toff)
    del r
    return out


def u64_fields(offsets: dict) -> list:
    """Offsets of every 8-byte count, length, dimension and data offset."""
    kinds = {"key_len", "str_len", "arr_len", "name_len", "ne", "offset"}
    out = [offsets["n_tensors"], offsets["n_kv"]]
    out += [v for k, v in offsets.items() if isinstance(k, tuple) and k[0] in kinds]
    return sorted(out)


def u32_fields(offsets: dict) -> list:
    kinds = {"kv_type", "arr_type", "n_dims", "type"}
    return sorted(v for k, v in offsets.items() if isinstance(k, tuple) and k[0] in kinds)


def patched(src, dst, edits) -> str:
    """Copy ``src`` to ``dst`` with ``edits`` = [(offset, bytes)] applied; return ``dst`` as str."""
    data = bytearray(open(src, "rb").read())
    for off, b in edits:
        data[off : off + len(b)] = b
    with open(dst, "wb") as f:
        f.write(data)
    return str(dst)


def rewrite(src, dst, *, drop=(), change=None, tensor_shape=None, extra=None, drop_tensors=()) -> str:
    """Re-emit a valid GGUF through gguf-py with keys dropped, keys changed to ``(value, GGUFValueType)``,
    extra keys added, tensors dropped, or one tensor declared with another shape (``(name, numpy shape)``)."""
    r = GGUFReader(src)
    arch = r.fields["general.architecture"]
    w = GGUFWriter(str(dst), bytes(arch.parts[-1]).decode())
    change = dict(change or {})
    for key, f in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture" or key in drop:
            continue
        if key in change:
            val, vt = change.pop(key)
            w.add_key_value(key, val, vt)
            continue
        t = f.types[0]
        if t == GGUFValueType.ARRAY:
            w.add_key_value(key, list(f.contents()), t, sub_type=f.types[1])
        else:
            w.add_key_value(key, f.contents(), t)
    for key, (val, vt) in list(change.items()) + list((extra or {}).items()):
        w.add_key_value(key, val, vt)
    for t in r.tensors:
        if t.name in drop_tensors:
            continue
        raw = np.array(r.data[t.data_offset : t.data_offset + t.n_bytes])
        shape = tuple(int(v) for v in reversed(t.shape.tolist()))
        if tensor_shape and tensor_shape[0] == t.name:
            shape = tensor_shape[1]
        w.add_tensor(t.name, raw.reshape(quant_shape_to_byte_shape(shape, t.tensor_type)), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    del r
    return str(dst)


def mutations(data: bytes, offs: dict, rng: np.random.Generator):
    """Yield (kind, mutated bytes) forever: bit flips (85 % in the header), truncations, inflated 8-byte
    counts/lengths/dims/offsets, odd 4-byte type fields, random byte splices in the header, and pairs of these."""
    size, header = len(data), offs["data_offset"]
    u64s, u32s = u64_fields(offs), u32_fields(offs)
    inflate = [2**64 - 1, 2**63, 2**63 - 1, 2**62, 2**40, 2**32, 2**32 + 1, size, size + 1, 8 * size, 1, 0]

    def bitflip(b):
        for _ in range(int(rng.integers(1, 5))):
            pos = int(rng.integers(0, header if rng.random() < 0.85 else size))
            b[pos] ^= 1 << int(rng.integers(0, 8))

    def u64(b):
        pos = int(u64s[rng.integers(len(u64s))])
        old = int.from_bytes(b[pos : pos + 8], "little")
        choices = inflate + [old + 1, max(old - 1, 0), old * 2 + 1, old + 32]
        b[pos : pos + 8] = (choices[rng.integers(len(choices))] % 2**64).to_bytes(8, "little")

    def u32(b):
        pos = int(u32s[rng.integers(len(u32s))])
        v = [int(rng.integers(0, 2**32)), 13, 9, 8, 5, 0, 2**32 - 1, 200, 39, 41][rng.integers(10)]
        b[pos : pos + 4] = v.to_bytes(4, "little")

    def splice(b):
        n = int(rng.integers(1, 17))
        pos = int(rng.integers(0, header - n))
        b[pos : pos + n] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()

    ops = {"bitflip": bitflip, "u64": u64, "u32": u32, "splice": splice}
    names = list(ops)
    while True:
        r = rng.random()
        if r < 0.12:
            yield "truncate", data[: int(rng.integers(0, size))]
            continue
        b = bytearray(data)
        kinds = [names[i] for i in rng.integers(0, len(names), 2)] if r < 0.25 else [names[rng.integers(len(names))]]
        for k in kinds:
            ops[k](b)
        yield "+".join(kinds), bytes(b)


@pytest.fixture(scope="session")
def tools():
    return types.SimpleNamespace(field_offsets=field_offsets, u64_fields=u64_fields, u32_fields=u32_fields,
                                 patched=patched, rewrite=rewrite, mutations=mutations)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A tiny synthetic deepseek2 file (q8_0 weights, f32 norms) and what the writer says it wrote."""
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    info = write_synthetic(path, "tiny", seed=7)
    return str(path), info


# a ~20 KB deepseek2 file for fuzzing: one MoE layer, tiny dims, f16/f32/q8_0 tensors, tokenizer-like arrays
MICRO = dict(n_layer=1, n_layer_dense_lead=0, n_embd=32, n_head=1, n_lora_kv=32, n_rot=32, n_embd_head_k=64,
             n_embd_head_v=32, n_ff=32, n_ff_exp=32, n_expert=2, n_expert_used=1, n_vocab=32)


@pytest.fixture(scope="session")
def fuzz_seed(tmp_path_factory):
    """(path, field offsets) of the valid file the fuzz campaigns mutate."""
    d = tmp_path_factory.mktemp("fuzz")
    base = d / "base.gguf"
    write_synthetic(base, "tiny", seed=1, types=dict(embd="f16", attn_q="f32"), **MICRO)
    path = rewrite(base, d / "seed.gguf", extra={
        "tokenizer.ggml.tokens": ([f"tok{i}" for i in range(32)], GGUFValueType.ARRAY),
        "tokenizer.ggml.scores": ([float(i) for i in range(32)], GGUFValueType.ARRAY),
        "tokenizer.ggml.token_type": ([1] * 32, GGUFValueType.ARRAY),
    })
    open_gguf(path)  # the seed itself is valid
    return path, field_offsets(path)

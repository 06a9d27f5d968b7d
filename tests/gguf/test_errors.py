"""Each GGUFError subclass on a file constructed to break exactly one rule, with a message naming it."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from gguf import GGUFWriter
from gguf.constants import GGUFValueType

from mlaref.reference import gguf as g

U32 = GGUFValueType.UINT32


def _u32(v):
    return struct.pack("<I", v)


def _u64(v):
    return struct.pack("<Q", v)


def _raises(path, cls, *needles):
    with pytest.raises(cls) as ei:
        g.open_gguf(path)
    assert type(ei.value) is cls, f"expected exactly {cls.__name__}, got {type(ei.value).__name__}: {ei.value}"
    msg = str(ei.value)
    assert str(path) in msg, msg
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"
    assert isinstance(ei.value, g.GGUFError) and isinstance(ei.value, ValueError)
    return msg


@pytest.fixture
def t(tiny, tools, tmp_path):
    """(clean path, header field offsets, function making a patched copy)."""
    path, _ = tiny
    offs = tools.field_offsets(path)
    counter = iter(range(10**6))

    def patch(*edits):
        return tools.patched(path, tmp_path / f"p{next(counter)}.gguf", edits)

    return path, offs, patch


def test_clean_file_opens(t):
    path, offs, _ = t
    m = g.open_gguf(path)
    assert m.data_offset == offs["data_offset"]


def test_bad_magic(t):
    _, _, patch = t
    _raises(patch((0, b"GGML")), g.BadMagic, "b'GGML'", "expected b'GGUF'")


@pytest.mark.parametrize("version, needle", [(1, "version 1"), (4, "version 4"),
                                             (0x03000000, "big-endian"), (0, "version 0")])
def test_unsupported_version(t, version, needle):
    _, _, patch = t
    _raises(patch((4, _u32(version))), g.UnsupportedVersion, needle)


def test_truncated(t, tools, tmp_path):
    path, offs, patch = t
    data = open(path, "rb").read()
    for n, needle in [(0, "empty file"), (3, "3 bytes"), (10, "the tensor count"),
                      (offs[("str_len", "general.architecture")] + 10, "key-value pairs"),
                      (offs[("offset", "blk.1.ffn_up_shexp.weight")] + 4, "data offset of tensor"),
                      (offs["data_offset"] + 100, "past the end of the file")]:
        p = tmp_path / f"cut{n}.gguf"
        p.write_bytes(data[:n])
        _raises(p, g.TensorOutOfBounds if n > offs["data_offset"] else g.Truncated, needle)
    # inflated counts and lengths: the file size bounds each of them
    _raises(patch((offs["n_kv"], _u64(2**40))), g.Truncated, "1099511627776 key-value pairs")
    _raises(patch((offs["n_tensors"], _u64(2**63))), g.Truncated, "tensors")
    _raises(patch((offs[("str_len", "general.architecture")], _u64(2**62))), g.Truncated, "general.architecture")
    _raises(patch((offs[("key_len", "deepseek2.block_count")], _u64(2**64 - 1))), g.Truncated, "key")
    _raises(patch((offs[("name_len", "output.weight")], _u64(10**12))), g.Truncated, "tensor")


def test_truncated_arrays(tools, tmp_path):
    path = tmp_path / "arr.gguf"
    w = GGUFWriter(str(path), "llama")
    w.add_array("a.u8", [1, 2, 3])
    w.add_array("a.str", ["x", "yy"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    offs = tools.field_offsets(path)
    # 2^63 one-byte elements: gguf-py's reader would iterate 2^63 times over an empty tail
    _raises(tools.patched(path, tmp_path / "a1.gguf", [(offs[("arr_len", "a.u8")], _u64(2**63))]),
            g.Truncated, "a.u8")
    _raises(tools.patched(path, tmp_path / "a2.gguf", [(offs[("arr_len", "a.str")], _u64(2**40))]),
            g.Truncated, "a.str")


def test_bad_header(t, tools, tmp_path):
    path, offs, patch = t
    _raises(patch((offs[("kv_type", "deepseek2.block_count")], _u32(13))), g.BadHeader, "unknown GGUF value type 13")
    _raises(patch((offs[("n_dims", "output.weight")], _u32(5))), g.BadHeader, "5 dims")
    key_at = offs[("key_len", "general.architecture")] + 8
    _raises(patch((key_at, b"\xff\xfe")), g.BadHeader, "not valid UTF-8")
    # duplicate key / tensor name: rename one to another of the same length
    w_path = tmp_path / "dup.gguf"
    w = GGUFWriter(str(w_path), "llama")
    w.add_uint32("k.a", 1)
    w.add_uint32("k.b", 2)
    w.add_tensor("t.a", np.zeros(8, np.float32))
    w.add_tensor("t.b", np.zeros(8, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    d = tools.field_offsets(w_path)
    _raises(tools.patched(w_path, tmp_path / "d1.gguf", [(d[("key_len", "k.b")] + 8, b"k.a")]),
            g.BadHeader, "duplicate key 'k.a'")
    _raises(tools.patched(w_path, tmp_path / "d2.gguf", [(d[("name_len", "t.b")] + 8, b"t.a")]),
            g.BadHeader, "duplicate tensor name 't.a'")
    _raises(_reserved(tmp_path), g.BadHeader, "reserved")
    # nested array
    a_path = tmp_path / "nest.gguf"
    w = GGUFWriter(str(a_path), "llama")
    w.add_array("a.u8", [1, 2, 3])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    a = tools.field_offsets(a_path)
    _raises(tools.patched(a_path, tmp_path / "n1.gguf", [(a[("arr_type", "a.u8")], _u32(9))]),
            g.BadHeader, "nested arrays")
    # alignment not a power of two; a tensor name of 64 bytes
    _raises(tools.rewrite(path, tmp_path / "al.gguf", extra={"general.alignment": (48, U32)}),
            g.BadHeader, "general.alignment = 48")
    long_path = tmp_path / "long.gguf"
    w = GGUFWriter(str(long_path), "llama")
    w.add_tensor("x" * 64, np.zeros(8, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    _raises(long_path, g.BadHeader, "64 bytes")


def _reserved(tmp_path):
    """A key named like one of gguf-py's header fields (its reader would raise KeyError)."""
    p = tmp_path / "reserved.gguf"
    w = GGUFWriter(str(p), "llama")
    w.add_uint32("GGUF.version", 3)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return p


def test_key_type_mismatch(t, tools, tmp_path):
    path, _, _ = t
    _raises(tools.rewrite(path, tmp_path / "k1.gguf", change={"deepseek2.block_count": (2, GGUFValueType.INT32)}),
            g.KeyTypeMismatch, "'deepseek2.block_count' has type INT32, expected UINT32")
    _raises(tools.rewrite(path, tmp_path / "k2.gguf",
                          change={"deepseek2.attention.layer_norm_rms_epsilon": (1e-6, GGUFValueType.FLOAT64)}),
            g.KeyTypeMismatch, "FLOAT64, expected FLOAT32")
    _raises(tools.rewrite(path, tmp_path / "k3.gguf", extra={"general.alignment": (32, GGUFValueType.UINT64)}),
            g.KeyTypeMismatch, "general.alignment")
    _raises(tools.rewrite(path, tmp_path / "k4.gguf",
                          change={"deepseek2.feed_forward_length": ([1.0, 2.0], GGUFValueType.ARRAY)}),
            g.KeyTypeMismatch, "holds FLOAT32, expected INT32")


def test_missing_key(t, tools, tmp_path):
    path, _, _ = t
    for key in ["deepseek2.attention.kv_lora_rank", "deepseek2.block_count",
                "deepseek2.rope.scaling.yarn_log_multiplier", "deepseek2.expert_shared_count",
                "deepseek2.attention.layer_norm_rms_epsilon"]:
        _raises(tools.rewrite(path, tmp_path / f"{key}.gguf", drop=[key]), g.MissingKey, key)


def test_bad_value(t, tools, tmp_path):
    path, _, _ = t
    _raises(tools.rewrite(path, tmp_path / "v1.gguf", change={"deepseek2.expert_used_count": (5, U32)}),
            g.BadValue, "n_expert_used = 5 exceeds n_expert = 4")
    _raises(tools.rewrite(path, tmp_path / "v2.gguf",
                          change={"deepseek2.rope.scaling.type": ("cubic", GGUFValueType.STRING)}),
            g.BadValue, "'cubic'")
    _raises(tools.rewrite(path, tmp_path / "v3.gguf", change={"deepseek2.block_count": (513, U32)}),
            g.BadValue, "LLAMA_MAX_LAYERS")
    _raises(tools.rewrite(path, tmp_path / "v4.gguf",
                          change={"deepseek2.feed_forward_length": ([64, 64, 64], GGUFValueType.ARRAY)}),
            g.BadValue, "wrong array length; expected 2")


def test_tensor_out_of_bounds(t):
    _, offs, patch = t
    _raises(patch((offs[("offset", "blk.1.ffn_up_shexp.weight")], _u64(2**40))), g.TensorOutOfBounds,
            "blk.1.ffn_up_shexp.weight", "past the end of the file")


def test_overlapping_tensors(t):
    _, offs, patch = t
    _raises(patch((offs[("offset", "output.weight")], _u64(0))), g.OverlappingTensors, "output.weight")


def test_misaligned_tensor(t):
    path, offs, patch = t
    m = g.open_gguf(path)
    rel = m.info("output.weight").offset - m.data_offset
    _raises(patch((offs[("offset", "output.weight")], _u64(rel + 4))), g.MisalignedTensor, "output.weight",
            "alignment 32")


def test_shape_overflow(t):
    _, offs, patch = t
    name = "blk.1.ffn_gate_inp.weight"  # f32 [64, 4]
    _raises(patch((offs[("ne", name, 0)], _u64(2**63))), g.ShapeOverflow, "negative as int64")
    _raises(patch((offs[("ne", name, 0)], _u64(2**32)), (offs[("ne", name, 1)], _u64(2**31))), g.ShapeOverflow,
            "INT64_MAX")


def test_unknown_tensor_type(t):
    _, offs, patch = t
    _raises(patch((offs[("type", "output.weight")], _u32(200))), g.UnknownTensorType, "unknown ggml type id 200")


def test_shape_mismatch(t, tools, tmp_path):
    path, offs, patch = t
    # q8_0 row of 33 values: not a whole number of 32-value blocks
    _raises(patch((offs[("ne", "output.weight", 0)], _u64(33))), g.ShapeMismatch, "not a multiple of its block")
    # same bytes, other shape: [32, 128] declared as [64, 64] (numpy (64, 64))
    _raises(tools.rewrite(path, tmp_path / "s.gguf", tensor_shape=("blk.0.attn_kv_b.weight", (64, 64))),
            g.ShapeMismatch, "blk.0.attn_kv_b.weight", "(64, 64, 1, 1)", "(32, 128, 1, 1)")


def test_missing_tensor(t, tools, tmp_path):
    path, _, _ = t
    _raises(tools.rewrite(path, tmp_path / "m.gguf", drop_tensors=["blk.1.attn_kv_a_mqa.weight"]),
            g.MissingTensor, "blk.1.attn_kv_a_mqa.weight")
    # attn_k_b / attn_v_b are optional in the loader (MLA is then disabled)
    m = g.open_gguf(tools.rewrite(path, tmp_path / "kb.gguf", drop_tensors=["blk.0.attn_k_b.weight"]))
    assert "blk.0.attn_k_b.weight" not in m.tensors


def test_every_subclass_is_exercised():
    """The hierarchy this file covers (a new subclass must get a constructed case here)."""
    subclasses = {c.__name__ for c in g.GGUFError.__subclasses__()}
    assert subclasses == {"BadMagic", "UnsupportedVersion", "Truncated", "BadHeader", "KeyTypeMismatch",
                          "MissingKey", "BadValue", "TensorOutOfBounds", "OverlappingTensors", "MisalignedTensor",
                          "ShapeOverflow", "UnknownTensorType", "ShapeMismatch", "MissingTensor"}


def test_missing_file_or_directory_is_a_gguf_error(tmp_path):
    with pytest.raises(g.GGUFError, match="cannot open"):
        g.open_gguf(tmp_path / "nope.gguf")
    with pytest.raises(g.GGUFError, match="cannot read"):
        g.open_gguf(tmp_path)

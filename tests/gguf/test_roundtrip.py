"""Synthetic deepseek2 GGUF files read back exactly: bytes, shapes, types, hyper-parameters, loader defaults."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from gguf import GGUFReader, GGUFWriter
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from gguf.constants import GGMLQuantizationType, GGUFValueType
from gguf.quants import dequantize as gguf_dequantize

from mlaref.codegen.cli import main as cli_main
from mlaref.reference import registry
from mlaref.reference.gguf import (
    BadValue,
    ShapeMismatch,
    gguf_type,
    mlaref_type_name,
    open_gguf,
    synthetic_hparams,
    write_synthetic,
)
from mlaref.reference.hparams import preset


def _quantizable(block: int) -> list[str]:
    """Registered types with a quantizer, a GGUF id and the given block size (collected when the test runs)."""
    out = []
    for name, fmt in sorted(registry().items()):
        if fmt.block_size != block:
            continue
        try:
            gguf_type(name)
            from mlaref.reference import quantize

            quantize(np.zeros((1, fmt.block_size), np.float32), name)
        except (ValueError, NotImplementedError):
            continue
        out.append(name)
    return out


# shapes in which every row (ne0) is a multiple of 256, so QK_K types need no fallback
WIDE = dict(n_embd=256, n_head=1, n_lora_kv=256, n_rot=32, n_embd_head_k=288, n_embd_head_v=256, n_ff=256,
            n_ff_exp=256, n_expert=2, n_expert_used=1, n_vocab=32)
CLASSES = ("embd", "output", "attn_q", "attn_kv_a", "attn_kv_b", "attn_k_b", "attn_v_b", "attn_out", "ffn", "exps",
           "shexp")


def _check_round_trip(path, info, params):
    m = open_gguf(path)
    hp = m.hparams
    # every tensor: same name set, type, shape, bytes; Tensors are views of the file map (no copy)
    assert [ti.name for ti in m.infos] == list(info["tensors"])
    for name, (t, ne, data) in info["tensors"].items():
        ti = m.info(name)
        assert ti.type == t and ti.ne == ne
        assert np.array_equal(np.asarray(m.raw(name)), data)
        tensor = m.tensors[name]
        assert tensor.data is m.reader.data, "the tensor must share the file's memory map"
        assert tensor.ne == ne and tensor.type == t
        assert np.array_equal(np.asarray(tensor.data[tensor.offset : tensor.offset + data.size]), data)
    # hyper-parameters, against the writer's inputs (float keys are float32 in the file)
    for field, key in [("n_layer", "n_layer"), ("n_embd", "n_embd"), ("n_head", "n_head"),
                       ("n_head_kv", "n_head"), ("n_lora_kv", "n_lora_kv"), ("n_rot", "n_rot"),
                       ("n_embd_head_k", "n_embd_head_k"), ("n_embd_head_v", "n_embd_head_v"),
                       ("n_lora_q", "n_lora_q"), ("n_ff", "n_ff"), ("n_ff_exp", "n_ff_exp"),
                       ("n_expert", "n_expert"), ("n_expert_used", "n_expert_used"),
                       ("n_expert_shared", "n_expert_shared"), ("n_layer_dense_lead", "n_layer_dense_lead"),
                       ("n_vocab", "n_vocab"), ("n_ctx_train", "n_ctx_train"), ("n_ctx_orig_yarn", "n_ctx_orig_yarn")]:
        assert hp[field] == params[key], field
    assert hp["n_embd_head_qk_nope"] == params["n_embd_head_k"] - params["n_rot"]
    assert hp["f_norm_rms_eps"] == float(np.float32(params["f_norm_rms_eps"]))
    assert hp["rope_freq_base_train"] == float(np.float32(params["rope_freq_base"]))
    assert hp["rope_freq_scale_train"] == float(np.float32(1) / np.float32(params["rope_scaling_factor"]))
    assert hp["rope_yarn_log_mul"] == float(np.float32(params["rope_yarn_log_mul"]))
    assert hp["rope_scaling_type_train"] == "yarn"
    assert hp["expert_weights_scale"] == 1.0 and hp["expert_weights_norm"] is False
    assert hp["expert_gating_func"] == "softmax"
    assert hp["rope_attn_factor"] == 1.0
    return m


def test_round_trip_tiny_q8_0(tiny):
    path, info = tiny
    m = _check_round_trip(path, info, synthetic_hparams("tiny"))
    assert m.arch == "deepseek2" and m.version == 3 and m.alignment == 32
    assert not m.unsupported
    assert {t for t, _, _ in info["tensors"].values()} == {"f32", "q8_0"}


@pytest.mark.parametrize("qtype", _quantizable(32) + _quantizable(1))
def test_round_trip_every_small_block_type(tmp_path, qtype):
    path = tmp_path / f"{qtype}.gguf"
    info = write_synthetic(path, "tiny", seed=3, types={c: qtype for c in CLASSES})
    _check_round_trip(path, info, synthetic_hparams("tiny"))
    assert {t for t, _, _ in info["tensors"].values()} == {"f32", qtype}


@pytest.mark.parametrize("qtype", _quantizable(256))
def test_round_trip_every_qk_k_type(tmp_path, qtype):
    path = tmp_path / f"{qtype}.gguf"
    info = write_synthetic(path, "tiny", seed=4, types={c: qtype for c in CLASSES}, **WIDE)
    _check_round_trip(path, info, synthetic_hparams("tiny", **WIDE))
    assert {t for t, _, _ in info["tensors"].values()} == {"f32", qtype}


def test_tensors_decode_like_gguf_py(tmp_path):
    """Tensor.to_numpy on the mapped file equals gguf-py's own dequantizer (an independent decoder)."""
    path = tmp_path / "mix.gguf"
    info = write_synthetic(path, "tiny", seed=5, types=dict(embd="f16", attn_q="bf16", attn_kv_b="f32"))
    m = open_gguf(path)
    r = GGUFReader(path)
    checked = 0
    for rt in r.tensors:
        t = m.tensors[rt.name]
        ref = gguf_dequantize(np.asarray(rt.data), rt.tensor_type).astype(np.float32)
        got = t.to_numpy().reshape(ref.shape)
        assert np.array_equal(got.view(np.uint32), ref.view(np.uint32)), rt.name
        checked += 1
    assert checked == len(info["tensors"])
    assert {m.info(n).type for n in ("token_embd.weight", "blk.0.attn_q.weight", "blk.0.attn_kv_b.weight")} == {
        "f16", "bf16", "f32"}


def test_qk_k_fallback_like_llama_quantize(tmp_path):
    """Rows that are not a multiple of 256 fall back q4_K -> q5_0 / q6_K -> q8_0 (or raise without fallback)."""
    path = tmp_path / "fb.gguf"
    if "q6_K" not in registry():
        pytest.skip("q6_K is not registered in this tree")
    info = write_synthetic(path, "tiny", seed=1, types=dict(exps="q6_K"))
    assert info["tensors"]["blk.1.ffn_gate_exps.weight"][0] == "q8_0"  # ne0 = 64 (n_embd)
    with pytest.raises(ValueError, match="not a multiple of q6_K's block 256"):
        write_synthetic(path, "tiny", seed=1, types=dict(exps="q6_K"), fallback=False)


def test_k_b_and_v_b_are_split_from_kv_b(tmp_path):
    """attn_k_b / attn_v_b hold the k_nope / v rows of attn_kv_b per head (convert_hf_to_gguf.py's split)."""
    path = tmp_path / "f32.gguf"
    write_synthetic(path, "tiny", seed=9, types={c: "f32" for c in CLASSES})
    m = open_gguf(path)
    H, kv, nope, hv = 2, 32, 32, 32  # tiny: n_head, kv_lora_rank, qk_nope, v_head_dim
    kv_b = m.tensors["blk.0.attn_kv_b.weight"].to_numpy()[0, 0]  # (H*(nope+hv), kv): row r, column c
    k_b = m.tensors["blk.0.attn_k_b.weight"].to_numpy()[0, 0]  # (H*kv, nope)
    v_b = m.tensors["blk.0.attn_v_b.weight"].to_numpy()[0, 0]  # (H*hv, kv)
    assert kv_b.shape == (H * (nope + hv), kv) and k_b.shape == (H * kv, nope) and v_b.shape == (H * hv, kv)
    for h in range(H):
        for j in range(nope):
            for c in range(kv):
                assert k_b[h * kv + c, j] == kv_b[h * (nope + hv) + j, c]
        for j in range(hv):
            assert np.array_equal(v_b[h * hv + j], kv_b[h * (nope + hv) + nope + j])


def test_writer_is_deterministic(tmp_path):
    a, b, c = tmp_path / "a.gguf", tmp_path / "b.gguf", tmp_path / "c.gguf"
    write_synthetic(a, "tiny", seed=11)
    write_synthetic(b, "tiny", seed=11)
    write_synthetic(c, "tiny", seed=12)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    assert len(a.read_bytes()) == len(c.read_bytes())


def test_q_lora_path(tmp_path):
    """With attention.q_lora_rank the file has attn_q_a / attn_q_a_norm / attn_q_b instead of attn_q."""
    path = tmp_path / "qlora.gguf"
    info = write_synthetic(path, "tiny", seed=2, n_lora_q=32)
    names = set(info["tensors"])
    assert "blk.0.attn_q_a.weight" in names and "blk.0.attn_q_b.weight" in names
    assert "blk.0.attn_q_a_norm.weight" in names and "blk.0.attn_q.weight" not in names
    m = open_gguf(path)
    assert m.hparams["n_lora_q"] == 32 and m.hparams["loader_note"] == ""
    assert m.info("blk.1.attn_q_b.weight").ne == (32, 2 * 64, 1, 1)  # [q_lora_rank, n_head * n_embd_head_k]
    assert m.hp is not None and m.hp.n_lora_q == 32  # mlaref.reference.hparams accepts a non-Lite model


def test_loader_defaults_for_absent_optional_keys(tiny, tools, tmp_path):
    """Upstream facts §1.1 / llm_load_hparams: absent optional keys take the loader's defaults."""
    path, _ = tiny
    a = "deepseek2."
    dropped = tools.rewrite(path, tmp_path / "d.gguf", drop=[
        a + "attention.head_count_kv", a + "rope.freq_base", a + "rope.scaling.type", a + "rope.scaling.factor",
        a + "rope.scaling.original_context_length", a + "expert_weights_norm", a + "expert_gating_func",
        a + "attention.key_length", a + "attention.value_length", a + "rope.dimension_count", a + "vocab_size",
    ], extra={"tokenizer.ggml.tokens": ([f"t{i}" for i in range(64)], GGUFValueType.ARRAY)})
    m = open_gguf(dropped, check_tensors=False)
    hp = m.hparams
    assert hp["n_head_kv"] == hp["n_head"] == 2
    assert hp["rope_freq_base_train"] == 10000.0
    assert hp["rope_scaling_type_train"] == "linear"
    assert hp["rope_freq_scale_train"] == 1.0
    assert hp["n_ctx_orig_yarn"] == hp["n_ctx_train"] == 4096
    assert hp["expert_weights_norm"] is False and hp["expert_gating_func"] == "softmax"
    assert hp["n_embd_head_k"] == hp["n_embd_head_v"] == 64 // 2  # n_embd / n_head
    assert hp["n_rot"] == hp["n_embd_head_k"]
    assert hp["n_vocab"] == 64  # from the tokenizer's token list
    assert hp["rope_attn_factor"] == 1.0
    assert m.metadata["tokenizer.ggml.tokens"][:3] == ["t0", "t1", "t2"]
    assert m.metadata["general.architecture"] == "deepseek2" and m.metadata.get("no.such.key") is None
    assert m.kv_types["tokenizer.ggml.tokens"] == (GGUFValueType.ARRAY, GGUFValueType.STRING, 64)
    # with key_length gone, the tensors no longer match the hyper-parameters
    with pytest.raises(ShapeMismatch):
        open_gguf(dropped)


def test_gating_func_zero_means_softmax_and_two_sigmoid(tiny, tools, tmp_path):
    path, _ = tiny
    key = "deepseek2.expert_gating_func"
    m0 = open_gguf(tools.rewrite(path, tmp_path / "g0.gguf", change={key: (0, GGUFValueType.UINT32)}))
    m2 = open_gguf(tools.rewrite(path, tmp_path / "g2.gguf", change={key: (2, GGUFValueType.UINT32)}))
    assert m0.hparams["expert_gating_func"] == "softmax"
    assert m2.hparams["expert_gating_func"] == "sigmoid"


def test_unsupported_types_are_listed_not_fatal(tmp_path, capsys):
    """A tensor of a type mlaref does not implement is listed (with its bytes reachable), not loaded."""
    path = tmp_path / "u.gguf"
    w = GGUFWriter(str(path), "llama")
    w.add_tensor("a", np.arange(64, dtype=np.float32))
    w.add_tensor("b", np.zeros((2, 66), np.uint8), raw_dtype=GGMLQuantizationType.IQ2_XXS)  # 2 rows of 256
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    m = open_gguf(path)
    assert m.hparams is None  # not deepseek2: no hyper-parameters, no tensor checks
    assert "iq2_xxs" not in registry()
    assert [ti.name for ti in m.unsupported] == ["b"] and m.info("b").ne == (256, 2, 1, 1)
    assert set(m.tensors) == {"a"} and m.raw("b").size == 132
    assert np.array_equal(m.tensors["a"].to_numpy().reshape(-1), np.arange(64, dtype=np.float32))
    assert cli_main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "unsupported tensor types (listed, not loaded): b (IQ2_XXS)" in out


def test_writer_presets_are_the_hparams_presets(tiny):
    """The writer's presets are entries of the one presets table (mlaref.reference.hparams.PRESETS): a file written
    from one reads back as that preset's HParams (floats as the file's float32)."""
    path, _ = tiny
    hp = open_gguf(path).hp
    want = preset("tiny")
    for f in dataclasses.fields(want):
        got, exp = getattr(hp, f.name), getattr(want, f.name)
        if f.name == "name":
            assert got == "mlaref-synthetic-tiny"
        elif isinstance(exp, float):
            assert got == float(np.float32(exp)), f.name
        else:
            assert got == exp, f.name
    lite = synthetic_hparams("lite-attn")
    assert {k: lite[k] for k in ("n_embd", "n_head", "n_lora_kv", "n_rot", "n_embd_head_k", "n_embd_head_v")} == dict(
        n_embd=2048, n_head=16, n_lora_kv=512, n_rot=64, n_embd_head_k=192, n_embd_head_v=128)  # upstream facts §1.1


def test_writer_rejects_bad_arguments(tmp_path):
    p = tmp_path / "x.gguf"
    with pytest.raises(ValueError, match="preset must be one of tiny, lite-attn"):
        write_synthetic(p, "huge")
    with pytest.raises(ValueError, match=r"unknown synthetic parameters \['n_heads'\]"):
        write_synthetic(p, "tiny", n_heads=2)
    with pytest.raises(ValueError, match="n_embd must be an int >= 1"):
        write_synthetic(p, "tiny", n_embd=0)
    with pytest.raises(ValueError, match="n_rot .* must be smaller than n_embd_head_k"):
        write_synthetic(p, "tiny", n_rot=64)
    with pytest.raises(ValueError, match=r"unknown tensor classes \['attn'\]"):
        write_synthetic(p, "tiny", types=dict(attn="q8_0"))
    with pytest.raises(ValueError, match="unknown tensor type 'q9_9'"):
        write_synthetic(p, "tiny", types=dict(exps="q9_9"))
    with pytest.raises(ValueError, match="seed must be an int >= 0"):
        write_synthetic(p, "tiny", seed=-1)
    assert not p.exists()


def test_writer_refuses_types_gguf_py_sizes_differently(tmp_path):
    """gguf 0.19.0 sizes Q8_1 blocks at 40 bytes; ggml's block_q8_1 (two f16 + 32 int8) is 36."""
    from gguf.constants import GGML_QUANT_SIZES

    assert GGML_QUANT_SIZES[GGMLQuantizationType.Q8_1] == (32, 40)
    if "q8_1" not in registry():
        pytest.skip("q8_1 is not registered in this tree")
    assert registry()["q8_1"].type_size == 36
    with pytest.raises(ValueError, match="GGML_QUANT_SIZES gives"):
        write_synthetic(tmp_path / "q81.gguf", "tiny", types=dict(exps="q8_1"))
    assert mlaref_type_name(GGMLQuantizationType.Q8_1) is None
    assert mlaref_type_name(GGMLQuantizationType.Q8_0) == "q8_0"
    assert mlaref_type_name(GGMLQuantizationType.Q4_K) == "q4_K"


def test_per_layer_arrays_and_the_old_rope_key(tiny, tools, tmp_path):
    """get_key_or_arr takes an INT32 array of n_layer values; rope.scale_linear is read when scaling.factor is
    absent (llm_load_hparams)."""
    path, _ = tiny
    a = "deepseek2."
    p = tools.rewrite(path, tmp_path / "arr.gguf", change={
        a + "feed_forward_length": ([64, 64], GGUFValueType.ARRAY),
        a + "attention.head_count": ([2, 2], GGUFValueType.ARRAY),
    }, drop=[a + "rope.scaling.factor"], extra={a + "rope.scale_linear": (4.0, GGUFValueType.FLOAT32)})
    m = open_gguf(p)
    assert m.kv_types[a + "feed_forward_length"] == (GGUFValueType.ARRAY, GGUFValueType.INT32, 2)
    assert m.hparams["n_ff_arr"] == [64, 64] and m.hparams["n_head_arr"] == [2, 2]
    assert m.hparams["n_head_kv_arr"] == [2, 2]  # the key is present as a scalar 2
    assert m.hparams["rope_freq_scale_train"] == 0.25
    bad = tools.rewrite(path, tmp_path / "neg.gguf",
                        change={a + "attention.head_count": ([2, -1], GGUFValueType.ARRAY)})
    with pytest.raises(BadValue, match="negative count"):
        open_gguf(bad)


_SMALL_TYPES = _quantizable(32) + ["f16", "f32"]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_round_trip_random_shapes(tmp_path, data):
    """Any small consistent shape set and any per-class type mix reads back byte-exact with its parameters."""
    b = st.sampled_from([32, 64, 96])
    rot = data.draw(st.sampled_from([16, 32]))
    nope = data.draw(b)
    params = dict(n_layer=data.draw(st.integers(1, 3)), n_embd=data.draw(b), n_head=data.draw(st.integers(1, 3)),
                  n_lora_kv=data.draw(b), n_rot=rot, n_embd_head_k=nope + rot, n_embd_head_v=data.draw(b),
                  n_lora_q=data.draw(st.sampled_from([0, 32])), n_ff=data.draw(b), n_ff_exp=data.draw(b),
                  n_expert=data.draw(st.integers(1, 4)), n_expert_shared=data.draw(st.integers(1, 2)),
                  n_vocab=data.draw(b))
    params["n_expert_used"] = data.draw(st.integers(1, params["n_expert"]))
    params["n_layer_dense_lead"] = data.draw(st.integers(0, params["n_layer"]))
    types = {c: data.draw(st.sampled_from(_SMALL_TYPES)) for c in CLASSES}
    seed = data.draw(st.integers(0, 2**32))
    path = tmp_path / f"h{seed}.gguf"
    info = write_synthetic(path, "tiny", seed=seed, types=types, **params)
    m = _check_round_trip(path, info, synthetic_hparams("tiny", **params))
    assert m.hparams["n_layer_dense_lead"] == params["n_layer_dense_lead"]
    path.unlink()

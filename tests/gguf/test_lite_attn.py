"""The "lite-attn" synthetic file: DeepSeek-V2-Lite's real attention shapes, read, planned and inspected.

Expected values are upstream facts §1.1 (shapes from llm_load_tensors) and §2 (KV cache) and the seed's table
(60.75 MiB of f16 cache for 27 layers at 2048 context), typed in here, not computed by the code under test.
"""

from __future__ import annotations

import pytest

from mlaref.codegen.cli import main as cli_main
from mlaref.reference.gguf import open_gguf, write_synthetic
from mlaref.reference.graphs.alloc import compute_buffer, kv_cache_plan

# Upstream facts §1.1: (ne0, ne1) of the attention weights of DeepSeek-V2-Lite
LITE_ATTN_SHAPES = {
    "attn_q": (2048, 3072),
    "attn_kv_a_mqa": (2048, 576),
    "attn_kv_a_norm": (512,),
    "attn_kv_b": (512, 4096),
    "attn_k_b": (128, 8192),
    "attn_v_b": (512, 2048),
    "attn_output": (2048, 2048),
}


@pytest.fixture(scope="module")
def lite(tmp_path_factory):
    path = tmp_path_factory.mktemp("lite") / "lite-attn.gguf"
    info = write_synthetic(path, "lite-attn", seed=253)
    return str(path), info, open_gguf(path)


def test_lite_attn_hyper_parameters(lite):
    _, _, m = lite
    hp = m.hparams
    assert m.arch == "deepseek2"
    assert (hp["n_embd"], hp["n_head"], hp["n_head_kv"]) == (2048, 16, 16)
    assert (hp["n_lora_kv"], hp["n_rot"], hp["n_embd_head_k"], hp["n_embd_head_v"]) == (512, 64, 192, 128)
    assert hp["n_embd_head_qk_nope"] == 128 and hp["kv_row"] == 576
    assert (hp["n_embd_k_gqa"], hp["n_embd_v_gqa"]) == (3072, 2048)
    assert hp["n_lora_q"] == 0 and hp["n_layer"] == 2
    assert hp["rope_freq_scale_train"] == pytest.approx(0.025, rel=1e-7)
    assert hp["n_ctx_orig_yarn"] == 4096 and hp["n_ctx_train"] == 163840
    assert hp["rope_yarn_log_mul"] == pytest.approx(0.0707, rel=1e-7)
    # llama.cpp@676f0e71b calls only 27-layer files Lite; the note says so for this 2-layer one
    assert hp["is_lite"] is False and "q_lora_rank" in hp["loader_note"]


def test_lite_attn_tensor_names_and_shapes(lite):
    _, info, m = lite
    for layer in range(2):
        for short, ne in LITE_ATTN_SHAPES.items():
            ti = m.info(f"blk.{layer}.{short}.weight")
            assert ti.ne[: len(ne)] == ne and all(v == 1 for v in ti.ne[len(ne) :]), ti.name
            assert ti.name in m.tensors
    assert m.info("blk.0.attn_kv_b.weight").type == "q8_0"  # "attn_k" names go to q8_0 with >= 8 experts
    assert m.info("blk.0.attn_output.weight").type == "iq4_nl"
    assert m.info("output.weight").type == "q6_K"
    assert m.info("blk.0.attn_norm.weight").type == "f32"
    assert m.info("blk.0.ffn_gate.weight").ne == (2048, 512, 1, 1)  # dense lead layer
    assert m.info("blk.1.ffn_gate_exps.weight").ne == (2048, 256, 4, 1)  # reduced experts
    assert m.info("token_embd.weight").ne == (2048, 256, 1, 1)  # small vocab
    assert not m.unsupported
    assert len(m.infos) == len(info["tensors"]) == 3 + 12 + 16  # global; dense layer 0; MoE layer 1


def test_lite_attn_kv_cache_matches_the_seed(lite):
    _, _, m = lite
    plan = kv_cache_plan(m.hparams, 2048, "f16")
    assert plan["ne"] == (576, 2048) and plan["row_bytes"] == 1152
    assert plan["bytes_per_layer"] == 2359296
    assert 27 * plan["bytes_per_layer"] == 63700992 == int(60.75 * 2**20)  # the seed: 60.75 MiB, 27 layers
    assert plan["bytes"] == 2 * 2359296
    q8 = kv_cache_plan(m.hparams, 2048, "q8_0")
    assert q8["row_bytes"] == 612 and q8["bytes_per_layer"] == 2048 * 612
    # n_ctx is padded to 256 with flash attention
    assert kv_cache_plan(m.hparams, 2049, "f16")["kv_size"] == 2304
    for n_ctx, mib in [(4096, 121.50), (131072, 3888.00)]:
        assert 27 * kv_cache_plan(m.hparams, n_ctx)["bytes_per_layer"] == int(mib * 2**20)


def test_inspect_prints_the_plan(lite, capsys):
    path, _, _ = lite
    assert cli_main(["inspect", path, "--ctx", "2048"]) == 0
    out = capsys.readouterr().out
    for line in ["architecture: deepseek2", "n_embd                   2048", "n_head                   16",
                 "n_lora_kv                512", "n_rot                    64", "n_embd_head_k            192",
                 "n_embd_head_v            128", "n_embd_head_qk_nope      128", "kv_row                   576",
                 "rope_freq_scale_train    0.025", "f_norm_rms_eps           1e-06"]:
        assert line in out, line
    assert "per layer [576, 2048] x 1152 B/row = 2359296 B; 2 layers = 4718592 B = 4.50 MiB" in out
    assert "blk.0.attn_kv_b.weight" in out and "[512, 4096]" in out
    # the kernel line names a catalog kernel of that weight type whose ISA this CPU has
    from mlaref.codegen import catalog, dispatch

    best = next(isa for isa in dispatch.candidates(None)
                if isa in catalog.by_key()[("mul_mat", "q8_0", "f32", "l16a1")])
    assert f"mlaref_mul_mat_q8_0_f32__{best}_l16a1 (src1 rows converted to q8_0 per thread)" in out
    assert cli_main(["inspect", path, "--ctx", "2048", "--cache-type", "q8_0"]) == 0
    out = capsys.readouterr().out
    assert f"x 612 B/row = {2048 * 612} B" in out


def test_inspect_reports_a_bad_file(tmp_path, capsys):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGML" + bytes(40))
    assert cli_main(["inspect", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "BadMagic" in err and "b'GGML'" in err


def test_inspect_plans_the_compute_buffer_through_alloc(tmp_path, capsys):
    """For a model mlaref.reference.hparams accepts, inspect prints alloc's worst-case compute buffer."""
    path = tmp_path / "q.gguf"
    write_synthetic(path, "tiny", seed=1, n_lora_q=32)
    m = open_gguf(path)
    assert m.hp is not None and m.hp.n_lora_q == 32
    expect = compute_buffer(m.hp, 512, variant="direct", cache_type="f16").buffer_size
    assert cli_main(["inspect", str(path), "--ctx", "300"]) == 0  # 300 -> kv_size 512
    out = capsys.readouterr().out
    assert f"compute buffer (ubatch 512): PR #253 {expect} B" in out
    # 2 layers without q_lora: llama.cpp's loader (n_layer == 27 rule) would refuse it, HParams keeps the Lite
    # structure (is_lite keys on n_lora_q == 0), so it is planned
    lite = tmp_path / "l.gguf"
    write_synthetic(lite, "tiny", seed=1)
    ml = open_gguf(lite)
    assert ml.hp is not None and ml.hp.is_lite and not ml.hp.loader_is_lite
    assert cli_main(["inspect", str(lite), "--ctx", "2048"]) == 0
    out = capsys.readouterr().out
    expect = compute_buffer(ml.hp, 2048, variant="direct", cache_type="f16").buffer_size
    assert f"compute buffer (ubatch 512): PR #253 {expect} B" in out

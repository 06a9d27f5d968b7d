"""The two DeepSeek-V2 attention layouts (ik's wkv_b, mainline's 3-D attn_k_b / attn_v_b, and the file with both),
written by the synthetic writer and read back; and ``mlaref inspect`` on files that are sound but not loadable.

The expected bytes of every half are computed here from wkv_b's bytes alone: for q8_0 the halves are whole rows of
wkv_b re-quantized, and re-quantizing a q8_0 row's exact values gives the same bytes, so K_hᵀ (a transpose) is
checked through dequantized values and V_h (whole rows) byte for byte.
"""

import numpy as np
import pytest
from gguf import GGUFReader

from mlaref.codegen.cli.main import main as cli_main
from mlaref.reference import dequantize, quantize
from mlaref.reference.gguf import MissingKey, MissingTensor, open_gguf, write_synthetic
from mlaref.reference.gguf.loader import attn_layout, expected_tensors

H, NOPE, V, RANK = 2, 32, 32, 32  # the tiny preset: n_head 2, head_k 64 = nope 32 + rope 32, head_v 32, rank 32


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("layouts")
    out = {}
    for layout in ("ik", "both", "mainline"):
        path = d / f"{layout}.gguf"
        out[layout] = (str(path), write_synthetic(path, "tiny", seed=3, layout=layout))
    return out


def _names(path):
    return {t.name for t in GGUFReader(path).tensors}


def test_each_layout_has_its_tensors_and_shapes(files):
    for layout, (path, info) in files.items():
        names = _names(path)
        m = open_gguf(path)
        assert m.attn_layout == layout == attn_layout(names)
        for il in range(2):
            kv_b, k_b, v_b = (f"blk.{il}.attn_{t}.weight" for t in ("kv_b", "k_b", "v_b"))
            assert (kv_b in names) == (layout != "mainline"), (layout, kv_b)
            assert (k_b in names) == (v_b in names) == (layout != "ik"), (layout, k_b)
            if layout != "mainline":
                assert m.tensors[kv_b].ne == (RANK, H * (NOPE + V), 1, 1) and m.tensors[kv_b].type == "q8_0"
            if layout == "both":  # convert_hf_to_gguf.py@676f0e71b: 2-D halves
                assert m.tensors[k_b].ne == (NOPE, H * RANK, 1, 1) and m.tensors[v_b].ne == (RANK, H * V, 1, 1)
            if layout == "mainline":  # mainline's converter: [nope, rank, H] and [rank, v, H]
                assert m.tensors[k_b].ne == (NOPE, RANK, H, 1) and m.tensors[v_b].ne == (RANK, V, H, 1)
                assert m.tensors[k_b].type == m.tensors[v_b].type == "q8_0"
        for name, (t, ne, data) in info["tensors"].items():  # what was written is what is read
            assert m.tensors[name].type == t and m.tensors[name].ne == ne, name
            assert np.array_equal(np.asarray(m.raw(name)), data), name


def test_the_halves_are_wkv_b_split_per_head(files, tmp_path):
    # wkv_b stored as f32 gives the float values the halves are quantized from (the writer draws wkv_b's values
    # whatever the layout); each half must be q8_0 of K_h transposed / V_h, per head
    f32 = tmp_path / "f32.gguf"
    write_synthetic(f32, "tiny", seed=3, layout="ik", types={"attn_kv_b": "f32"})
    w = open_gguf(f32).tensors["blk.1.attn_kv_b.weight"].to_numpy().reshape(H, NOPE + V, RANK)
    want_k = quantize(np.ascontiguousarray(w[:, :NOPE, :].transpose(0, 2, 1)).reshape(H * RANK, NOPE), "q8_0")
    want_v = quantize(np.ascontiguousarray(w[:, NOPE:, :]).reshape(H * V, RANK), "q8_0")
    assert np.array_equal(files["ik"][1]["tensors"]["blk.1.attn_kv_b.weight"][2],
                          quantize(w.reshape(H * (NOPE + V), RANK), "q8_0").reshape(-1))
    for layout in ("both", "mainline"):
        t = files[layout][1]["tensors"]
        assert np.array_equal(t["blk.1.attn_k_b.weight"][2], want_k.reshape(-1)), layout
        assert np.array_equal(t["blk.1.attn_v_b.weight"][2], want_v.reshape(-1)), layout
    # the dequantized halves are wkv_b's values within q8_0's half step (not a tautology: a wrong transpose fails)
    k_b = dequantize(want_k, "q8_0").reshape(H, RANK, NOPE)
    assert np.abs(k_b - w[:, :NOPE, :].transpose(0, 2, 1)).max() <= np.abs(w).max() / 127


def test_mainline_keys_are_mqa_and_read_back_per_head(files):
    path, _ = files["mainline"]
    r = GGUFReader(path)

    def key(k):
        return int(r.fields[f"deepseek2.{k}"].contents())

    # conversion/deepseek.py:343-353 (mainline): MLA written as MQA over the latent
    assert (key("attention.head_count_kv"), key("attention.key_length"), key("attention.value_length")) == (1, 64, 32)
    assert (key("attention.key_length_mla"), key("attention.value_length_mla")) == (64, 32)
    hp = open_gguf(path).hparams
    assert (hp["n_head_kv"], hp["n_embd_head_k"], hp["n_embd_head_v"]) == (H, NOPE + 32, V)
    assert hp["mla_keys"].startswith("mainline")
    ik = open_gguf(files["ik"][0]).hparams
    assert ik["mla_keys"] == "per-head" and all(ik[k] == hp[k] for k in ("n_head_kv", "n_embd_head_k", "kv_row"))


def test_expected_tensors_per_layout():
    hd = dict(n_embd=64, n_vocab=64, n_rot=32, n_layer=1, n_embd_head_qk_nope=NOPE, n_embd_head_v=V, n_lora_kv=RANK,
              n_lora_q=0, n_ff_exp=32, n_expert=4, n_expert_shared=1, n_head_arr=[H], n_ff_arr=[64],
              n_layer_dense_lead=1, n_embd_head_k=64)
    mine = {lay: {n: v for n, v in expected_tensors(hd, lay).items() if n.endswith(("attn_kv_b.weight", "attn_k_b.weight", "attn_v_b.weight"))}
            for lay in ("ik", "both", "mainline")}
    assert mine["ik"] == {"blk.0.attn_kv_b.weight": ((RANK, H * (NOPE + V), 1, 1), True, "attn_kv_b")}
    assert mine["both"]["blk.0.attn_k_b.weight"] == ((NOPE, H * RANK, 1, 1), False, "attn_k_b")
    assert mine["mainline"] == {"blk.0.attn_k_b.weight": ((NOPE, RANK, H, 1), True, "attn_k_b"),
                                "blk.0.attn_v_b.weight": ((RANK, V, H, 1), True, "attn_v_b")}
    with pytest.raises(ValueError, match="layout must be one of ik, both, mainline"):
        expected_tensors(hd, "llama")


def test_gguf_model_reports_the_layout_and_names_it_when_a_weight_is_absent(files):
    from mlaref.reference.graphs.from_gguf import GGUFModel

    assert GGUFModel(files["both"][0]).layout == "both"
    m = GGUFModel(files["mainline"][0])
    assert m.layout == "mainline"
    with pytest.raises(ValueError, match=r"attn_kv_b.weight'.*attention layout is 'mainline'"):
        m.build(256, variant="direct", n_tokens=4)


# -- mlaref inspect on sound files that are not loadable models ---------------------------------------------------

def test_inspect_shows_a_file_without_vocab_size_then_the_problem(files, tmp_path, tools, capsys):
    src, _ = files["ik"]
    path = tools.rewrite(src, tmp_path / "novocab.gguf", drop={"deepseek2.vocab_size"})
    with pytest.raises(MissingKey):
        open_gguf(path)  # the strict reader still refuses it
    m = open_gguf(path, lenient=True)
    assert m.hparams is None and m.problems[0][0] == "deepseek2.vocab_size" and len(m.problems) == 1
    assert cli_main(["inspect", path]) == 1
    out = capsys.readouterr().out
    # header, metadata and the tensor table first ...
    assert "GGUF v3, 27 tensors, 26 keys" in out  # the ik file: 27 keys, less vocab_size
    assert "deepseek2.kv_lora_rank" not in out and "deepseek2.attention.kv_lora_rank" in out
    assert "deepseek2.block_count                            UINT32   2" in out
    assert "blk.0.attn_kv_b.weight" in out and "[32, 128]" in out and "attention layout: ik (attn_kv_b)" in out
    # ... then the problems, naming the key
    tail = out[out.index("problems (1; llama.cpp would not load this model):"):]
    assert "  deepseek2.vocab_size: absent, and no array 'tokenizer.ggml.tokens' gives n_vocab" in tail
    assert out.index("tensors:") < out.index("problems") and "KV cache" not in out


def test_inspect_lists_every_missing_tensor(files, tmp_path, tools, capsys):
    src, _ = files["both"]
    gone = ("blk.1.attn_output.weight", "blk.0.attn_kv_b.weight")
    path = tools.rewrite(src, tmp_path / "notensor.gguf", drop_tensors=gone)
    with pytest.raises(MissingTensor, match="'blk.0.attn_kv_b.weight' is required for deepseek2 and absent"):
        open_gguf(path)
    assert cli_main(["inspect", path]) == 1
    out = capsys.readouterr().out
    assert "problems (2; llama.cpp would not load this model):" in out
    assert "  blk.0.attn_kv_b.weight: required for deepseek2, absent" in out
    assert "  blk.1.attn_output.weight: required for deepseek2, absent" in out
    assert "hyper-parameters (llama.cpp names):" in out and "blk.1.attn_kv_b.weight" in out


def test_inspect_of_a_truncated_file_is_one_line(files, tmp_path, capsys):
    src, _ = files["ik"]
    cut = tmp_path / "cut.gguf"
    with open(src, "rb") as fh:
        cut.write_bytes(fh.read(100))
    assert cli_main(["inspect", str(cut)]) == 1
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err.count("\n") == 1 and cap.err.startswith("mlaref inspect: Truncated: ")


def test_inspect_of_a_sound_file_has_no_problems(files, capsys):
    assert cli_main(["inspect", files["mainline"][0]]) == 0
    out = capsys.readouterr().out
    assert "attention layout: mainline (3-D attn_k_b / attn_v_b, no attn_kv_b)" in out and "problems" not in out
    assert "blk.0.attn_k_b.weight" in out and "[32, 32, 2]" in out

"""ggml's own C GGUF loader (``gguf_init_from_file`` through ggml-python) as an independent judge.

1. Synthetic files: ggml reads the same version, counts, alignment, data offset, tensor names, types, offsets
   and sizes, and the same key values.
2. Differential fuzzing: whatever ggml refuses, ``open_gguf`` refuses too. The one rule ggml has that mlaref
   deliberately does not: upstream ggml (``gguf.cpp``) wants every tensor exactly where the previous one ends,
   padded to the alignment; ik_llama.cpp@676f0e71b (``gguf_init_from_file`` in ggml.c) and llama.cpp's loader
   only need offsets inside the file, and so does mlaref. Files refused by ggml only for that are checked to
   be unpacked with gguf-py. ggml runs in a subprocess so that an abort inside it cannot end the test run.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from gguf import GGUFReader
from gguf.constants import GGMLQuantizationType

from mlaref.reference.gguf import GGUFError, open_gguf, write_synthetic

pytestmark = pytest.mark.ggml

N_DIFF = 800

_RUNNER = r"""
import sys
from ggml import ggml as g
params = g.gguf_init_params(no_alloc=True, ctx=None)
paths = open(sys.argv[1]).read().split("\n")
for i in range(int(sys.argv[2]), len(paths)):
    ctx = g.gguf_init_from_file(paths[i].encode(), params)
    print(i, 0 if ctx is None else 1, flush=True)
    if ctx is not None:
        g.gguf_free(ctx)
"""


def _ggml_verdicts(paths: list, tmp_path) -> dict:
    """index -> True (ggml loads it), False (ggml refuses it) or None (ggml crashed on it)."""
    listing = tmp_path / "paths.txt"
    listing.write_text("\n".join(str(p) for p in paths))
    verdicts: dict = {}
    start = 0
    while start < len(paths):
        proc = subprocess.run([sys.executable, "-c", _RUNNER, str(listing), str(start)], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, timeout=120)
        for line in proc.stdout.split("\n"):
            if line:
                i, ok = line.split()
                verdicts[int(i)] = ok == "1"
        if proc.returncode == 0:
            break
        crashed = max(verdicts, default=start - 1) + 1
        verdicts[crashed] = None
        start = crashed + 1
    return verdicts


def _packed(path) -> bool:
    """Are the tensors back to back, each padded to the alignment, as upstream ggml requires (gguf-py's view)?"""
    r = GGUFReader(path)
    expect = 0
    for t in r.tensors:
        if t.data_offset - r.data_offset != expect:
            return False
        expect += -(-int(t.n_bytes) // r.alignment) * r.alignment
    return True


def test_synthetic_files_agree_with_ggml(ggml, tiny, tmp_path):
    from ggml import ggml as g

    mix = tmp_path / "mix.gguf"
    write_synthetic(mix, "tiny", seed=2, n_lora_q=32,
                            types=dict(embd="f16", attn_q="bf16", attn_kv_b="iq4_nl", exps="q4_0"))
    for path in (tiny[0], str(mix)):
        m = open_gguf(path)
        ctx = g.gguf_init_from_file(path.encode(), g.gguf_init_params(no_alloc=True, ctx=None))
        assert ctx is not None
        try:
            assert g.gguf_get_version(ctx) == m.version
            assert g.gguf_get_n_kv(ctx) == len(m.kv_types)
            assert g.gguf_get_alignment(ctx) == m.alignment
            assert g.gguf_get_data_offset(ctx) == m.data_offset
            assert g.gguf_get_n_tensors(ctx) == len(m.infos)
            for i, ti in enumerate(m.infos):
                assert g.gguf_get_tensor_name(ctx, i).decode() == ti.name
                assert g.gguf_get_tensor_type(ctx, i) == getattr(GGMLQuantizationType, ti.ggml_type)
                assert g.gguf_get_data_offset(ctx) + g.gguf_get_tensor_offset(ctx, i) == ti.offset
                assert g.gguf_get_tensor_size(ctx, i) == ti.nbytes
            for key, field in [("deepseek2.block_count", "n_layer"), ("deepseek2.attention.kv_lora_rank", "n_lora_kv"),
                               ("deepseek2.rope.dimension_count", "n_rot"), ("deepseek2.expert_count", "n_expert")]:
                assert g.gguf_get_val_u32(ctx, g.gguf_find_key(ctx, key.encode())) == m.hparams[field]
            eps = g.gguf_get_val_f32(ctx, g.gguf_find_key(ctx, b"deepseek2.attention.layer_norm_rms_epsilon"))
            assert np.float32(eps) == np.float32(m.hparams["f_norm_rms_eps"])
            scaling = g.gguf_get_val_str(ctx, g.gguf_find_key(ctx, b"deepseek2.rope.scaling.type"))
            assert scaling.decode() == m.hparams["rope_scaling_type_train"] == "yarn"
        finally:
            g.gguf_free(ctx)


def test_ggml_refuses_nothing_that_open_gguf_accepts(ggml, fuzz_seed, tools, tmp_path):
    path, offs = fuzz_seed
    data = open(path, "rb").read()
    gen = tools.mutations(data, offs, np.random.default_rng(676))
    paths, ours = [], []
    for i in range(N_DIFF):
        _, blob = next(gen)
        p = tmp_path / f"d{i}.gguf"
        p.write_bytes(blob)
        paths.append(p)
        try:
            open_gguf(p)
            ours.append(None)
        except GGUFError as exc:
            ours.append(type(exc).__name__)
    verdicts = _ggml_verdicts(paths, tmp_path)
    assert len(verdicts) == N_DIFF
    lenient, unpacked, stricter = [], 0, {}
    for i, ok in verdicts.items():
        if ok is False and ours[i] is None:
            if _packed(paths[i]):
                lenient.append(i)
            else:
                unpacked += 1
        if ok and ours[i] is not None:
            stricter[ours[i]] = stricter.get(ours[i], 0) + 1
    crashed = [i for i, ok in verdicts.items() if ok is None]
    summary = (f"{N_DIFF} files: ggml loads {sum(1 for v in verdicts.values() if v)}, refuses "
               f"{sum(1 for v in verdicts.values() if v is False)}, crashes on {len(crashed)}; mlaref accepts "
               f"{ours.count(None)}; ggml-only refusals of unpacked files {unpacked}; mlaref-only refusals {stricter}")
    print(summary)
    assert not lenient, f"ggml refuses, mlaref accepts: cases {lenient[:10]}\n{summary}"
    # where mlaref alone refuses, it is for DeepSeek-V2 semantics (keys, values, shapes), for tensor data past the
    # end of the file (ggml with no_alloc reads no data; llama.cpp's loader checks the bounds) or for what gguf-py
    # cannot read (invalid UTF-8 names: BadHeader)
    assert set(stricter) <= {"MissingKey", "KeyTypeMismatch", "BadValue", "ShapeMismatch", "MissingTensor",
                             "TensorOutOfBounds", "UnknownTensorType", "BadHeader"}, summary

"""bench_mla: the causal mask, the pp-N estimate, argument checks, and the ggml graphs of the three variants."""

from __future__ import annotations

import numpy as np
import pytest

from mlaref.codegen.bench import method as M
from mlaref.codegen.bench import mla as B
from mlaref.codegen.bench import mla_arena as L_ARENA
from mlaref.codegen.bench import mla_layers as L


def test_mask_of_the_last_micro_batch():
    m = L.mask(768, 512)  # n_kv 768, T 512: token t sees cells 0 .. 256 + t
    assert m.dtype == np.float16 and m.shape == (512, 768)
    assert m[0, 256] == 0 and np.isneginf(m[0, 257])
    assert m[511, 767] == 0
    assert int((m == 0).sum()) == sum(257 + t for t in range(512))


def _rows(f32, direct):
    return [{"n_kv": n, "f32": {"median": f32(n)}, "direct": {"median": direct(n)}} for n in (512, 1024, 2048)]


def test_pp_estimate_sums_micro_batches():
    # t_f32 = n + 1000, t_direct = n (linear, so interpolation is exact).
    est = {e["N"]: e for e in B.pp_estimate(_rows(lambda n: n + 1000.0, lambda n: float(n)))}
    assert sorted(est) == [512, 1024, 2048]  # 4096.. lie outside the measured n_kv
    assert est[512]["speedup_direct_over_f32"]["value"] == pytest.approx(1512 / 512)
    assert est[1024]["speedup_direct_over_f32"]["value"] == pytest.approx((1512 + 2024) / (512 + 1024))
    # N = 2048: micro-batches at 512, 1024, 1536 (interpolated), 2048
    assert est[2048]["speedup_direct_over_f32"]["value"] == pytest.approx(
        (1512 + 2024 + 2536 + 3048) / (512 + 1024 + 1536 + 2048))
    assert est[2048]["seed_speedup"] == 1.054


def test_pp_estimate_of_a_constant_ratio_is_that_ratio():
    est = B.pp_estimate(_rows(lambda n: 1.25 * n, lambda n: float(n)))
    assert all(e["speedup_direct_over_f32"]["value"] == pytest.approx(1.25) for e in est)


@pytest.mark.parametrize("kw, what", [
    ({"n_kv": (256,)}, "n_kv"),          # fewer cells than the 512 queries
    ({"n_kv": (600,)}, "n_kv"),          # not a multiple of 256
    ({"backend": "cuda"}, "backend"),
    ({"repeats": 0}, "repeats"),
    ({"kv_chunk": 100}, "kv_chunk"),
])
def test_run_mla_rejects_bad_arguments(kw, what):
    with pytest.raises(ValueError, match=what):
        B.run_mla(**{"n_kv": (512,), **kw})


def test_seed_table_matches_the_published_ratios():
    # the printed speed-up is t/s PR / t/s main rounded to 3 places (seed README)
    for n, (main, pr, speedup) in B.SEED_PP.items():
        assert round(pr / main, 3) == pytest.approx(speedup, abs=1e-3), n


@pytest.mark.ggml
def test_ggml_variants_compute_the_same_attention(ggml):
    """2 heads, 64 queries, n_kv 1024 in chunks of 512: the f32 and direct graphs give equal bytes (an f16 wkv_b feeds
    both the same f16 K and V); the chunked graph yields one finite attention output per chunk."""
    from mlaref.reference.hparams import preset

    s = L.shapes(preset("deepseek-v2-lite"), 64, 2)
    layer = L.GgmlLayer(s, 1024, 512, 2, seed=3)
    try:
        for v in B.VARIANTS:
            layer.compute(v)
        f32 = np.frombuffer(layer.output_bytes("f32"), dtype=np.float32)
        direct = np.frombuffer(layer.output_bytes("direct"), dtype=np.float32)
        chunked = np.frombuffer(layer.output_bytes("chunked"), dtype=np.float32)
        assert layer.n_chunks["chunked"] == 2
    finally:
        layer.free()
    assert f32.size == 128 * 2 * 64 and np.all(np.isfinite(f32))
    assert np.array_equal(f32.view(np.uint32), direct.view(np.uint32))
    assert chunked.size == 2 * f32.size and np.all(np.isfinite(chunked))


def test_kernel_variants_compute_the_same_attention():
    """mlaref's kernels, IQ4_NL wkv_b, 2 heads, 64 queries, n_kv 512 in chunks of 256: the f32 and direct sequences
    give equal bits (the f16 cache values are exact in f32, so both feed the same q8_0 rows to the weight's vec_dot);
    the chunked sequence yields one attention output per chunk."""
    reason = B.kernels_available()
    if reason is not None:
        pytest.skip(f"the mul_mat / flash_attn_ext kernels cannot run here: {reason}")
    from mlaref.reference.hparams import preset

    s = L.shapes(preset("deepseek-v2-lite"), 64, 2)
    layer = L.kernel_layer(s, 512, 256, 2, seed=5, weight_type="iq4_nl")
    f32, direct, chunked = layer["f32"](), layer["direct"](), layer["chunked"]()
    a, b = f32.to_numpy(), direct.to_numpy()
    assert a.size == 128 * 2 * 64 and np.all(np.isfinite(a))
    assert np.array_equal(a.view(np.uint32), b.view(np.uint32))
    assert len(chunked) == 2 and all(np.all(np.isfinite(c.to_numpy())) for c in chunked)
    k, v = layer["direct/kv"]()
    assert (k.type, k.ne, v.type, v.ne) == ("f16", (192, 512, 2, 1), "f16", (128, 512, 2, 1))


def test_cli_reports_bad_arguments(capsys):
    import argparse

    p = argparse.ArgumentParser()
    B.configure(p)
    assert B.run(p.parse_args(["--n-kv", "600", "--backend", "reference"])) == 2
    assert "n_kv values must be multiples of 256" in capsys.readouterr().err
    assert B.run(p.parse_args(["--n-kv", "512", "--threads", "0"])) == 2
    assert "n_threads must be an int >= 1" in capsys.readouterr().err


def test_bench_subcommands_are_wired(capsys):
    from mlaref.codegen import cli

    assert cli.main(["bench", "mla", "--n-kv", "600"]) == 2
    assert "multiples of 256" in capsys.readouterr().err
    assert cli.main(["bench", "ops", "--repeats", "0"]) == 2
    assert cli.main(["bench", "ops", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    for op in ("cast f32 -> f16", "repeat f16", "concat f16 dim 0", "mul_mat f16 x f32", "flash_attn_ext f16 K/V"):
        assert op in out


def test_arena_backend_rows():
    """backend="arena" at toy shapes: every variant timed (with ggml's when ggml-python is here), spreads and the
    share outside mul_mat / flash_attn_ext in [0, 1]; chunked with two chunks, partial attention and the merge
    in the timed graph. The peers' graphs:
    test_bench_mla_peers.py."""
    from mlaref.codegen.peers import ggml as ggml_peer

    res = B.run_mla(n_kv=(512,), T=32, n_head=2, repeats=1, n_threads=2, kv_chunk=256, backend="arena", peers=())
    assert res["backend"] == "arena" and len(res["rows"]) == 1
    row = res["rows"][0]
    for v in L.VARIANTS:
        assert row[f"arena/{v}"]["median"] > 0 and row[f"arena/{v}"]["spread"] >= 0
        assert 0 < row[f"outside_mm_fa_{v}"]["value"] < 1
        ops = row[f"profile_{v}"]["ops"]["arena"]
        attention = {"FLASH_ATTN_EXT_PARTIAL", "FA_MERGE"} if v == "chunked" else {"FLASH_ATTN_EXT"}
        assert {"inputs", "MUL_MAT", "CPY"} | attention <= set(ops) and all(x > 0 for x in ops.values())
        assert (v != "chunked") == ("FLASH_ATTN_EXT" in ops)  # the chunked layer merges: no unmerged chunk left
        assert row[f"outside_mm_fa_{v}"]["total"] == pytest.approx(sum(ops.values()))
        busy = row[f"profile_{v}"]["arena_busy"]
        assert set(busy) == set(ops) and all(0 < b <= 1 + 1e-6 for b in busy.values()), busy
        a = row[f"arena/{v}"]
        assert a["iqr"] >= 0 and 0 < a["min_over_median"] <= 1 and len(a["steal"]) == len(a["all"]) == 1
        assert (f"ratio_{v}" in row) == ggml_peer.available()
        assert not any(k.startswith(("ik/", "ggml025/")) for k in row)
    noise = row[L_ARENA.NOISE]
    assert noise["median"] > 0 and len(noise["all"]) == 1
    assert res["peers"] == [] and res["skipped_peers"] == {}
    assert "ggml/arena" in B.format_table(res)


def test_ratios_of_medians_minima_and_rounds():
    """The arena's ratios: per round the other contender took 2x, 2x, 3x, 2x the arena's time while both drifted
    (a slow spell in round 2), so the paired ratio is 2 with no IQR from the drift, the medians' ratio is not."""
    arena = M.Timing((1.0, 1.1, 3.0, 1.2), 1)
    other = M.Timing((2.0, 2.2, 9.0, 2.4), 1)
    r = L_ARENA._ratio(other, arena, "x")
    assert r["paired"] == pytest.approx(2.0) and r["of_mins"] == pytest.approx(2.0)
    assert r["value"] == pytest.approx(np.median(other.seconds) / np.median(arena.seconds))
    assert r["paired_iqr"] == pytest.approx((np.percentile([2, 2, 3, 2], 75) - 2) / 2)
    assert M.Timing((1.0, 2.0, 3.0, 4.0, 5.0), 0).iqr == pytest.approx(2.0 / 3.0)

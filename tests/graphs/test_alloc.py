"""The ggml-alloc model against the seed's table, what ik_llama.cpp prints, and the peak tables of upstream facts §6.

Expected values are literals copied from the seed README / upstream facts §6 (independent of the code under test).
"""

import json

import pytest

from mlaref.reference.graphs import alloc, ir
from mlaref.reference.graphs.alloc import DynAllocator, allocate_graph, compute_buffer, kv_cache_bytes, mib
from mlaref.reference.hparams import preset

LITE = preset("deepseek-v2-lite")
MiB = 1 << 20

# The seed's KV-cache column (f16 cache).
SEED_KV = {2048: "60.75", 4096: "121.50", 8192: "243.00", 16384: "486.00", 32768: "972.00", 65536: "1944.00",
           131072: "3888.00"}

# What ik_llama.cpp@676f0e71b (PR) and @fc6a65dda (main) print as "CPU compute buffer size" (upstream facts §6.6).
PRINTED = {
    ("direct", 2048): "204.00", ("direct", 4096): "204.00", ("direct", 8192): "220.01",
    ("direct", 16384): "452.01", ("direct", 32768): "884.01", ("direct", 65536): "1748.01",
    ("direct", 131072): "3476.01",
    ("f32", 2048): "204.00", ("f32", 4096): "204.00", ("f32", 8192): "358.01", ("f32", 16384): "712.01",
    ("f32", 32768): "1404.01", ("f32", 65536): "2788.01", ("f32", 131072): "5556.01",
}

# The seed's own cells where they differ from the program (upstream facts §6.6: the seed reads .02 there).
SEED_02 = {("f32", 32768): "1404.02", ("f32", 65536): "2788.02", ("f32", 131072): "5556.02",
           ("direct", 131072): "3476.02"}


@pytest.fixture(scope="module")
def buffers():
    """compute_buffer for both upstream variants at the seed's contexts, built once for the module."""
    return {(v, n): compute_buffer(LITE, n, variant=v) for v in ("direct", "f32") for n in SEED_KV}


# -- KV cache ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_ctx", sorted(SEED_KV))
def test_kv_cache_matches_seed_column(n_ctx):
    assert mib(kv_cache_bytes(LITE, n_ctx, "f16")) == SEED_KV[n_ctx]


def test_kv_cache_other_types():
    # Upstream facts §2: q8_0 rows are 18 blocks x 34 B = 612 B, 27 x 612 = 16524 B per cell; bf16 rows are 1152 B
    # like f16.
    assert kv_cache_bytes(LITE, 2048, "q8_0") == 27 * 2048 * 612
    assert mib(kv_cache_bytes(LITE, 2048, "q8_0")) == "32.27"
    assert kv_cache_bytes(LITE, 131072, "bf16") == 4_076_863_488
    with pytest.raises(ValueError, match="cache_type must be one of f16, q8_0, bf16, q8_KV"):
        kv_cache_bytes(LITE, 2048, "q4_0")


# -- compute buffer: 14 cells as ik_llama.cpp prints them ---------------------------------------------------
@pytest.mark.parametrize("variant,n_ctx", sorted(PRINTED))
def test_compute_buffer_as_printed(buffers, variant, n_ctx):
    assert buffers[variant, n_ctx].buffer_mib == PRINTED[variant, n_ctx]


def test_seed_02_cells_are_the_only_differences(buffers):
    # The seed agrees with the program everywhere except four cells, each exactly 0.01 higher (upstream facts §6.6).
    seed_pr = {2048: "204.00", 4096: "204.00", 8192: "220.01", 16384: "452.01", 32768: "884.01",
               65536: "1748.01", 131072: "3476.02"}
    seed_main = {2048: "204.00", 4096: "204.00", 8192: "358.01", 16384: "712.01", 32768: "1404.02",
                 65536: "2788.02", 131072: "5556.02"}
    diffs = {}
    for v, seed in (("direct", seed_pr), ("f32", seed_main)):
        for n, s in seed.items():
            got = buffers[v, n].buffer_mib
            if got != s:
                diffs[v, n] = s
                assert round(float(s) - float(got), 2) == 0.01
    assert diffs == SEED_02


def test_large_context_formula(buffers):
    # Upstream facts §6.4: max_size = 27648 n + 20 MiB + 6144 B (PR) and 44288 n + 20 MiB + 6144 B (main), n >= 16384,
    # and the CPU buffer adds 32 B.
    for n in (16384, 32768, 65536, 131072):
        assert buffers["direct", n].max_size == 27648 * n + 20 * MiB + 6144
        assert buffers["f32", n].max_size == 44288 * n + 20 * MiB + 6144
        assert buffers["direct", n].buffer_size == buffers["direct", n].max_size + 32


def test_fmoe_changes_nothing():
    # Upstream facts §6.6: -fmoe still prints 3476.01 / 5556.01 at 131072.
    assert compute_buffer(LITE, 131072, variant="direct", fmoe=True).buffer_mib == "3476.01"
    assert compute_buffer(LITE, 131072, variant="f32", fmoe=True).buffer_mib == "5556.01"


# -- what is alive at the peak (upstream facts §6.5) -------------------------------------------------------------------
def _live(r):
    return {lt.name: round(lt.offset / MiB, 3) for lt in r.peak_live()}


@pytest.mark.parametrize("variant", ["direct", "f32"])
@pytest.mark.parametrize("n_ctx", [2048, 4096])
def test_small_context_peak_is_the_logits(buffers, variant, n_ctx):
    r = buffers[variant, n_ctx]
    assert [(lt.name, lt.offset, lt.size) for lt in r.peak_live()] == [
        ("result_norm", 0, 4 * MiB), ("result_output", 4 * MiB, 200 * MiB)]


def test_peak_pr_16384(buffers):
    r = buffers["direct", 16384]
    assert r.peak_tensor.name == "v-1"
    live = _live(r)
    expected = {"inp_out_ids": 32.004, "l_out-0": 32.006, "KQ_mask (copy)": 52.006, "kv_f32-1": 68.006,
                "k_nope-1": 324.006, "v-1": 388.006}
    assert {k: live.get(k) for k in expected} == expected
    sizes = {lt.name: lt.size for lt in r.peak_live()}
    # bytes per context token: f16 mask 1024, kv_f32 16384, k_nope 4096, v 4096 (upstream facts §6.5 table)
    assert [sizes[k] // 16384 for k in ("KQ_mask (copy)", "kv_f32-1", "k_nope-1", "v-1")] == [1024, 16384, 4096, 4096]
    assert round(max(lt.end for lt in r.peak_live()) / MiB, 3) == 452.006
    # the f32 mask's hole at 4096 B: 2048 B per token
    assert (4096, 2048 * 16384) in r.peak_gaps()
    assert "KQ_mask" not in live


def test_peak_main_16384(buffers):
    r = buffers["f32", 16384]
    assert r.peak_tensor.name == "k-1"
    live = _live(r)
    expected = {"inp_out_ids": 32.004, "l_out-0": 32.006, "kv_f32-1": 72.006, "KQ_mask (copy)": 408.006,
                "k_f32-1": 424.006, "k-1": 616.006}
    assert {k: live.get(k) for k in expected} == expected
    sizes = {lt.name: lt.size for lt in r.peak_live()}
    assert [sizes[k] // 16384 for k in ("kv_f32-1", "KQ_mask (copy)", "k_f32-1", "k-1")] == [16384, 1024, 12288, 6144]
    gaps = {round(o / MiB, 3): s for o, s in r.peak_gaps()}
    assert gaps[36.006] == 2304 * 16384  # kv_cache_view_f32-1's slot, freed after the repeat
    assert gaps[328.006] == 4096 * 16384 + 16 * MiB  # the f32 repeat slot + the 16 MiB gap left from layer 0
    assert round(max(lt.end for lt in r.peak_live()) / MiB, 3) == 712.006


def test_peak_8192(buffers):
    # Upstream facts §6.5: PR 220.01 peaks in layer 1 (only l_out-0 below the f16 mask, 4 MiB); main 358.01 is a
    # layer-0 peak at k-0 with the f32 mask still alive and no f16 mask yet: 43264 n + 20 MiB.
    pr = buffers["direct", 8192]
    assert pr.peak_tensor.name == "v-1"
    assert pr.max_size == 27648 * 8192 + 4 * MiB + 6144
    main = buffers["f32", 8192]
    assert main.peak_tensor.name == "k-0"
    names = _live(main)
    assert "KQ_mask" in names and "KQ_mask (copy)" not in names
    assert main.max_size == 43264 * 8192 + 20 * MiB + 6144


# -- the chunked variant -----------------------------------------------------------------------------------------
def test_chunked_fits_350_mib_at_128k():
    r = compute_buffer(LITE, 131072, variant="chunked")
    assert r.buffer_size <= 350 * MiB
    assert r.buffer_mib == "260.26"


def test_chunked_never_exceeds_the_logits_floor_before_128k():
    # Up to 65536 the chunked graph's peak is the final logits (204 MiB); it only grows with the f16 mask.
    for n in (2048, 8192, 32768, 65536):
        r = compute_buffer(LITE, n, variant="chunked")
        assert r.buffer_mib == "204.00", n


def test_chunk_length_trades_memory():
    sizes = [compute_buffer(LITE, 131072, variant="chunked", kv_chunk=c).buffer_size for c in (2048, 4096, 8192)]
    assert sizes[0] < sizes[1] < sizes[2]


# -- the dynamic allocator's rules (upstream facts §6.1), on hand-made sequences ---------------------------------------
def test_dyn_alloc_alignment_and_tail():
    d = DynAllocator(32)
    assert d.alloc(1) == 0
    assert d.alloc(33) == 32
    assert d.alloc(32) == 96
    assert d.max_size == 128


def test_dyn_alloc_best_fit_prefers_later_block_on_ties():
    d = DynAllocator(32)
    offs = [d.alloc(64) for _ in range(5)]  # 0, 64, 128, 192, 256
    d.free(offs[1], 64)  # hole [64, 128)
    d.free(offs[3], 64)  # hole [192, 256)
    assert d.blocks[:2] == [[64, 64], [192, 64]]
    assert d.alloc(64) == 192  # equal sizes: the later block wins (`<=`)
    assert d.alloc(64) == 64
    assert d.alloc(64) == 320  # no hole left: the tail


def test_dyn_alloc_best_fit_takes_the_smallest_hole_and_never_the_tail_first():
    d = DynAllocator(32)
    a, b, c, e = d.alloc(128), d.alloc(32), d.alloc(64), d.alloc(32)
    d.free(a, 128)
    d.free(c, 64)
    assert d.alloc(64) == c  # the 64-B hole fits exactly, the 128-B hole is bigger
    assert d.alloc(160) == 256  # fits no hole: from the tail
    assert d.max_size == 416


def test_dyn_free_merges_both_ways():
    d = DynAllocator(32)
    offs = [d.alloc(32) for _ in range(4)]
    d.free(offs[0], 32)
    d.free(offs[2], 32)
    assert d.blocks[:2] == [[0, 32], [64, 32]]
    d.free(offs[1], 32)  # ends block 0, then touches block [64, 96): one block
    assert d.blocks[0] == [0, 96]
    d.free(offs[3], 32)  # merges into the tail
    assert len(d.blocks) == 1 and d.blocks[0][0] == 0


def test_dyn_alloc_rejects_bad_alignment():
    with pytest.raises(ValueError, match="alignment must be a power of 2"):
        DynAllocator(24)


# -- graph-level rules on small graphs ------------------------------------------------------------------------
def test_in_place_reuse_and_its_conditions():
    x = ir.input_tensor("x", "f32", (8, 4))
    w = ir.weight("w", "f32", (8, 8))
    a = ir.mul_mat(w, x).set_name("a")  # [8, 4] f32, 128 B
    b = ir.add(a, a).set_name("b")  # a has two child slots in b -> n_children 2 -> no reuse
    c = ir.scale(b, 2.0).set_name("c")  # b's only child: reused in place
    d = ir.cast(c, "f16").set_name("d")  # CPY is never in place
    g = ir.Graph()
    g.expand(d)
    r = allocate_graph(g)
    kinds = [(k, t.name) for k, _, t, _, _ in r.events]
    assert ("reuse", "c") in kinds and ("alloc", "b") in kinds and ("alloc", "d") in kinds
    assert r.offsets[c] == r.offsets[b]
    assert r.offsets[b] != r.offsets[a]


def test_cast_self_source_is_counted_and_freed():
    # ggml_cast's src[1] is itself: with no consumer the cast result is freed right after it is made.
    x = ir.input_tensor("x", "f32", (64,))
    y = ir.cast(x, "f16").set_name("y")
    assert y.src[1] is y
    z = ir.cast(x, "f16").set_name("z")
    g = ir.Graph()
    g.expand(y)
    g.expand(z)
    r = allocate_graph(g)
    events = [(k, t.name) for k, _, t, _, _ in r.events]
    assert events == [("alloc", "x"), ("alloc", "y"), ("free", "y"), ("alloc", "z"), ("free", "x"), ("free", "z")]


def test_views_keep_their_base_alive():
    x = ir.input_tensor("x", "f32", (16, 4))
    w = ir.weight("w", "f32", (16, 16))
    a = ir.mul_mat(w, x).set_name("a")
    v = ir.view_2d(a, 8, 4, a.nb[1], 32).set_name("v")
    p = ir.cont(ir.transpose(v)).set_name("p")
    g = ir.Graph()
    g.expand(p)
    r = allocate_graph(g)
    order = [(k, t.name) for k, _, t, _, _ in r.events]
    # a is freed only when the last view chain (v -> transpose) has been consumed by p
    assert order.index(("free", "a")) > order.index(("alloc", "p"))


# -- CLI ------------------------------------------------------------------------------------------------------
def test_plan_cli_prints_and_writes_json(tmp_path, capsys):
    from mlaref.codegen.cli import main

    out = tmp_path / "plan.json"
    rc = main(["plan", "--ctx", "2048", "131072", "--variant", "direct", "--variant", "f32", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "3888.00" in text and "3476.01" in text and "5556.01" in text and "5556.02" in text
    data = json.loads(out.read_text())
    rows = {r["n_ctx"]: r for r in data["rows"]}
    assert rows[131072]["buffer_bytes"]["direct"] == 27648 * 131072 + 20 * MiB + 6144 + 32


def test_plan_cli_rejects_bad_context(capsys):
    from mlaref.codegen.cli import main

    assert main(["plan", "--ctx", "1000", "--variant", "direct"]) == 2
    assert "multiple of 256" in capsys.readouterr().err


def test_plan_cli_plot(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (needed only for --plot)")
    from mlaref.codegen.cli import main

    png = tmp_path / "plan.png"
    assert main(["plan", "--ctx", "2048", "8192", "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tables_in_module_match_facts():
    # The module's tables (used by the CLI) must say what the seed and upstream facts §6.6 say.
    for n, kv in SEED_KV.items():
        assert alloc.SEED_TABLE[n][0] == kv
        assert alloc.PRINTED_TABLE[n] == (PRINTED["direct", n], PRINTED["f32", n])
    for (v, n), s in SEED_02.items():
        assert alloc.SEED_TABLE[n][1 if v == "direct" else 2] == s


def test_the_old_import_path_gives_the_same_objects():
    """``mlaref.reference.alloc`` (before the model moved beside the graphs) re-exports the same objects."""
    import mlaref.reference.alloc as old

    assert old.__all__ and set(old.__all__) <= set(alloc.__all__)
    for name in old.__all__:
        assert getattr(old, name) is getattr(alloc, name), name
    assert not hasattr(old, "run") and not hasattr(old, "configure")  # `mlaref plan` is mlaref.codegen.cli.plan

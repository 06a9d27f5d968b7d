"""The arena executor: the MLA layer's bytes against the reference executor and the buffer-per-tensor kernel run,
thread counts, and the allocator check (poisoned freed memory, live tensors untouched, a wrong plan caught)."""

import numpy as np
import pytest

from mlaref.codegen import arena
from mlaref.codegen.arena import plan as arena_plan
from mlaref.codegen.kernels.impls import KernelImpls
from mlaref.reference.graphs import ir
from mlaref.reference.graphs.executor import run_graph
from mlaref.reference.hparams import preset

# DeepSeek-V2-Lite's rows (cache row 576 = 512 + 64, K head 192, V head 128) with 2 heads and 32 queries
HP = preset("deepseek-v2-lite").replace(n_head=2, n_head_kv=2)
T, N_KV = 32, 256
# the plans the kernels implement, for the reference executor
OPTIONS = {"MUL_MAT": dict(arena.DEFAULT_OPTIONS["MUL_MAT"]),
           "FLASH_ATTN_EXT": {"algorithm": "blocked", **arena.DEFAULT_OPTIONS["FLASH_ATTN_EXT"]},
           "FLASH_ATTN_EXT_PARTIAL": dict(arena.DEFAULT_OPTIONS["FLASH_ATTN_EXT_PARTIAL"])}
CASES = [("f32", "f16", N_KV, 4096), ("direct", "f16", N_KV, 4096), ("f32", "q8_0", N_KV, 4096),
         ("direct", "q8_0", N_KV, 4096), ("chunked", "f16", 2 * N_KV, N_KV), ("chunked", "q8_0", 2 * N_KV, N_KV)]
_REF: dict = {}


def _layer(variant, cache_type, n_kv, kv_chunk):
    g = arena.layer_graph(HP, n_kv, variant=variant, cache_type=cache_type, n_tokens=T, kv_chunk=kv_chunk)
    return g, arena.layer_values(g, seed=7)


def _outputs(g) -> list[str]:
    """The attention result kqv-0 (chunked: the last fa_merge, final), and every flash_attn_ext result (the
    unmerged chunked graph's kqv_c{i}-0)."""
    return list(dict.fromkeys([g.output.name] + [n.name for n in g.graph.nodes if n.op == "FLASH_ATTN_EXT"]))


def _reference(case):
    """The NumPy reference executor's bytes of every attention result (computed once per case)."""
    if case not in _REF:
        g, vals = _layer(*case)
        out = run_graph(g, **vals, keep=_outputs(g), options=OPTIONS)
        _REF[case] = {name: out[name].raw().tobytes() for name in _outputs(g)}
    return _REF[case]


@pytest.mark.parametrize("case", CASES, ids=[f"{v}-{c}-{n}" for v, c, n, _ in CASES])
def test_arena_bytes_equal_reference_and_buffer_per_tensor_run(case):
    """Every node on a generated kernel, every tensor in one buffer: the reference executor's bytes and the
    buffer-per-tensor kernel run's (run_graph with the kernel adapters), at 1 and 2 threads, run twice (the
    inputs are set again before each compute), and again in the checking run (poisoned frees, live tensors
    checked)."""
    g, vals = _layer(*case)
    want = _reference(case)
    for n_threads in (1, 2):
        a = arena.Arena(g, **vals, n_threads=n_threads)
        assert {k for _, op, k in a.kernels} <= {"mul_mat", "flash_attn_ext", "flash_attn_ext_partial", "fa_merge",
                                                "cast_rows", "copy_rows", "concat_rows"}
        assert all(k for _, _, k in a.kernels), a.kernels
        for run in (a.run, a.run, a.run_checked):
            run()
            for name, b in want.items():
                assert a.tensor(name).raw().tobytes() == b, (case, n_threads, run.__name__, name)
    ki = KernelImpls(n_threads=2)
    per_tensor = run_graph(g, **vals, keep=_outputs(g), impl=ki.impl, options=OPTIONS)
    assert ki.fallbacks() == []
    for name, b in want.items():
        assert per_tensor[name].raw().tobytes() == b, name


@pytest.mark.parametrize("cache_type", ["f16", "q8_0"])
def test_arena_chunked_layer_is_merged_and_equals_direct_with_kv_chunks(cache_type):
    """The chunked layer (2 chunks) runs partial attention and the merge on their kernels, and its output, the
    final fa_merge, has the bytes of the direct layer whose flash_attn_ext merges 2 equal KV chunks internally
    (another kernel's merge), at 1 and 2 threads; the checking run passes (poisoned frees, live tensors kept)."""
    g, vals = _layer("chunked", cache_type, 2 * N_KV, N_KV)
    assert g.output.op == "FA_MERGE" and g.output.op_params["final"] and g.output.name == "kqv-0"
    ops = [n.op for n in g.graph.nodes]
    assert ops.count("FLASH_ATTN_EXT_PARTIAL") == 2 and ops.count("FA_MERGE") == 1 and "FLASH_ATTN_EXT" not in ops
    gd, vd = _layer("direct", cache_type, 2 * N_KV, 4096)
    fa2 = {**arena.DEFAULT_OPTIONS, "FLASH_ATTN_EXT": {"plan": arena.DEFAULT_OPTIONS["FLASH_ATTN_EXT"]["plan"]
                                                      .replace(name="fa_l16a1_c2", kv_chunks=2)}}
    want = arena.Arena(gd, **vd, options=fa2)
    want.run()
    for n_threads in (1, 2):
        a = arena.Arena(g, **vals, n_threads=n_threads)
        assert {"flash_attn_ext_partial", "fa_merge"} <= {k for _, _, k in a.kernels}
        for run in (a.run, a.run_checked):
            run()
            assert a.tensor("kqv-0").raw().tobytes() == want.tensor("kqv-0").raw().tobytes(), (n_threads, run)


def test_arena_uses_the_allocator_models_buffer():
    """One compute buffer of the model's size; tensors at its offsets; views at base + view_offs; the weights and
    the cache in buffers of their own."""
    g, vals = _layer("direct", "f16", N_KV, 4096)
    a = arena.Arena(g, **vals)
    res = arena_plan.placement(g.graph)
    assert a.compute.size == res.size and a.compute.ctypes.data % 64 == 0
    kv = g.graph.find("kv_f32-0")
    assert a.tensor("kv_f32-0").offset == res.offset[id(kv)]
    v_f32 = g.graph.find("v_f32-0")
    assert a.tensor("v_f32-0").data is a.compute
    assert a.tensor("v_f32-0").offset == res.offset[id(kv)] + v_f32.view_offs
    assert a.external[id(g.kv_cache[0])].data is a.buffers["kv_cache"]
    assert a.tensor("kqv-0").data is a.compute
    # the buffer is smaller than the sum of the tensors: the allocator reuses freed bytes
    owned = sum(arena_plan.aligned(t.nbytes) for t in res.tensors.values())
    assert res.size < owned


def _live_pair(g):
    """Two placed tensors where the second is written while the first is still alive (k_nope-0 is read by the
    concat building K; v-0 is written before that)."""
    names = [n.name for n in g.graph.nodes]
    assert names.index("k_nope-0") < names.index("v-0") < names.index("k-0")
    return "k_nope-0", "v-0"


def test_wrong_plan_is_caught_statically_and_by_the_checking_run():
    """A plan placing v-0 over the live k_nope-0: check_placement names both; without that check the checking run
    sees k_nope-0's bytes change when v-0 is written and names the node and the victim."""
    g, vals = _layer("direct", "f16", N_KV, 4096)
    p = arena_plan.placement(g.graph)
    victim, culprit = _live_pair(g)
    bad = p.moved(culprit, p.offset[id(g.graph.find(victim))])
    with pytest.raises(arena.PlanError, match=f"'{culprit}'.*'{victim}'|'{victim}'.*'{culprit}'"):
        arena.check_placement(bad)
    with pytest.raises(arena.PlanError, match=f"'{culprit}'.*'{victim}'|'{victim}'.*'{culprit}'"):
        arena.Arena(g, **vals, placement=bad)
    a = arena.Arena(g, **vals, placement=bad, validate=False)
    with pytest.raises(arena.PlanError, match=f"node '{culprit}' \\(CPY\\) changed the bytes of '{victim}'"):
        a.run_checked()
    a.run()  # the plain run cannot tell: it computes from the overwritten bytes
    assert a.output().raw().tobytes() != _reference(("direct", "f16", N_KV, 4096))["kqv-0"]


def test_freed_memory_is_poisoned_and_the_correct_plan_survives_it():
    """After the checking run every tensor freed along the way holds the poison byte; the output is intact."""
    g, vals = _layer("f32", "f16", N_KV, 4096)
    a = arena.Arena(g, **vals)
    a.run_checked(poison=0xFF)
    p = a.plan
    freed = {id(t) for ts in p.frees.values() for t in ts}
    out = p.offset[id(g.output)], p.offset[id(g.output)] + g.output.nbytes
    for k in freed:
        lo, hi = p.offset[k], p.offset[k] + p.tensors[k].nbytes
        live_over = [t for t in p.tensors.values() if id(t) not in freed and p.offset[id(t)] < hi
                     and lo < p.offset[id(t)] + t.nbytes]
        if not live_over:
            assert np.all(a.compute[lo:hi] == 0xFF), p.tensors[k].name
    assert a.output().raw().tobytes() == _reference(("f32", "f16", N_KV, 4096))["kqv-0"]
    assert out[1] <= a.compute.size


def test_a_plan_that_reads_freed_memory_is_caught_by_poison():
    """Freeing kv_f32-0 before its last reader (a plan that forgets a reader) poisons it: the output differs
    from the reference (NaN from the poison)."""
    g, vals = _layer("direct", "f16", N_KV, 4096)
    p = arena_plan.placement(g.graph)
    kv = g.graph.find("kv_f32-0")
    first_reader = next(i for i, n in enumerate(g.graph.nodes) if n.op == "CPY")
    frees = {i: [t for t in ts if t is not kv] for i, ts in p.frees.items()}
    frees.setdefault(first_reader, []).append(kv)
    early = arena_plan.Placement(p.graph, p.offset, p.tensors, frees, p.size, p.in_place)
    a = arena.Arena(g, **vals, placement=early, validate=False)
    a.run_checked()
    assert np.isnan(a.output().to_numpy()).any()


def test_a_node_without_a_kernel_is_refused_by_name():
    g, vals = _layer("direct", "f16", N_KV, 4096)
    q = g.graph.find("q_concat-0")
    bad = ir.concat(q, q, 1)
    bad.name = "q_twice"
    g.graph.expand(bad)
    with pytest.raises(arena.NoKernel, match="node 'q_twice' \\(CONCAT\\): concat along dim 1"):
        arena.Arena(g, **vals)


def test_bad_arguments():
    g, vals = _layer("direct", "f16", N_KV, 4096)
    with pytest.raises(ValueError, match="n_threads"):
        arena.Arena(g, **vals, n_threads=0)
    a = arena.Arena(g, **vals)
    with pytest.raises(ValueError, match="poison"):
        a.run_checked(poison=256)
    with pytest.raises(ValueError, match="inputs: missing 'q'"):
        arena.Arena(g, weights=vals["weights"], kv_cache=vals["kv_cache"], inputs={})


def test_the_profile_times_every_step_of_the_same_computation():
    """profile_steps runs the same steps as run() through the timed C loop: the bytes of the reference after it
    (on a poisoned buffer), one positive time per step and repeat; each step belongs to 'inputs' or a node with a
    kernel; profile and profile_ops are its medians summed per node and per op kind."""
    case = ("chunked", "f16", 2 * N_KV, N_KV)
    g, vals = _layer(*case)
    want = _reference(case)
    for n_threads in (1, 2):
        a = arena.Arena(g, **vals, n_threads=n_threads)
        a.compute[...] = arena.POISON
        steps = a.profile_steps(repeats=2)
        for name, b in want.items():
            assert a.tensor(name).raw().tobytes() == b, (n_threads, name)
        assert steps.shape == (2, a.n_per_step.size) and np.all(steps > 0)
        owners = a.step_owners()
        kernel_nodes = {name for name, _, k in a.kernels if k}
        assert len(owners) == a.n_per_step.size and owners[: a.n_input_steps] == ["inputs"] * a.n_input_steps
        assert set(owners[a.n_input_steps:]) == kernel_nodes
        prof, ops = a.profile(repeats=2), a.profile_ops(repeats=2)
        assert set(prof) == {"inputs"} | kernel_nodes and all(v > 0 for v in prof.values())
        assert set(ops) == {"inputs", "MUL_MAT", "CPY", "REPEAT", "CONCAT", "FLASH_ATTN_EXT_PARTIAL", "FA_MERGE"}
        assert 0 < a.step_overhead(calls=5) < 0.1
        steps, jobs = a._profile_runs(2)
        first = np.concatenate([[0], np.cumsum(a.n_per_step)[:-1]])
        for k in range(2):  # every job ran within its step: its own time is positive and at most the step's
            assert np.all(jobs[k] > 0) and np.all(jobs[k] <= np.repeat(steps[k], a.n_per_step) + 1e-6)
            assert np.all(jobs[k][first] > 0)
        busy = a.profile_busy(repeats=2)
        assert set(busy) == set(ops) and all(0 < b <= 1 + 1e-6 for b in busy.values()), busy
    a.jobs[:, -2] = 0
    a.run()  # the untimed path writes no job times
    assert not np.any(a.jobs[:, -2])


def test_the_timed_steps_runner_checks_its_clock_vector():
    from mlaref.codegen.kernels import pool

    src = np.zeros(64, np.uint8)
    jobs = pool.jobs_array([pool.job("memcpy", 0, pool.address(src) + 32, pool.address(src), 8)])
    steps = np.array([1], np.int32)
    for bad in (np.zeros(2, np.int64), np.zeros(1, np.int32), [0]):
        with pytest.raises(ValueError, match="ns must be"):
            pool.steps_runner(jobs, steps, bad)
    ns = np.full(1, -1, np.int64)
    assert pool.steps_runner(jobs, steps, ns)() == 0 and ns[0] > 0

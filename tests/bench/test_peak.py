"""The FMA peak microbenchmark: its flop count and its bounds, never a speed target."""

import pytest

from mlaref.codegen.bench import peak

pytestmark = pytest.mark.skipif(peak.peak_isa() is None, reason="needs an x86 CPU with avx2 and fma")

# No core issues more than 2 FMAs per cycle per pipe pair, nor runs above 6 GHz: anything beyond is a miscount.
MAX_GFLOPS_PER_THREAD = {"avx2": 2 * 8 * 2 * 6.0, "avx512": 2 * 16 * 2 * 6.0}


@pytest.mark.parametrize("n_threads", [1, 2])
def test_the_peak_counts_two_flops_per_lane_and_fits_a_real_core(n_threads):
    p = peak.fma_peak(n_threads, seconds=0.01, rounds=2)
    assert p["isa"] == peak.peak_isa() and p["lanes"] == peak.LANES[p["isa"]]
    assert p["threads"] == n_threads
    assert p["gflops"] == pytest.approx(p["gflops_per_thread"] * n_threads)
    # 1 GFLOP/s is below any FMA core; above the bound the flop count would be wrong
    assert 1.0 < p["gflops_per_thread"] < MAX_GFLOPS_PER_THREAD[p["isa"]]


@pytest.mark.parametrize("n_threads", [1, 2])
def test_the_yardstick_times_a_fixed_work_and_counts_it_as_the_peak_does(n_threads):
    run, gflops = peak.fma_yardstick(n_threads, seconds=0.01)
    s = run()
    assert 0.0 < s < 5.0
    # a fixed flop count: the rate is inversely proportional to the seconds
    assert gflops(2 * s) == pytest.approx(gflops(s) / 2)
    assert 1.0 < gflops(s) / n_threads < MAX_GFLOPS_PER_THREAD[peak.peak_isa()]


def test_bad_thread_counts_are_refused():
    with pytest.raises(ValueError, match="n_threads"):
        peak.fma_peak(0)
    with pytest.raises(ValueError, match="n_threads"):
        peak.fma_yardstick(0)


def test_info_states_the_peak():
    line = peak.describe((1,))
    assert line.startswith("FMA peak") and "GFLOP/s at 1 thread" in line and peak.peak_isa() in line

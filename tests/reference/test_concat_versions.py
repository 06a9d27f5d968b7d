"""concat in its four versions (reference/ops/concat.py): before #253, #253 (ik_llama.cpp), upstream ggml 0.15.3 and
0.25.3. Expectations are NumPy concatenations of the sources' values or bytes, computed here."""

import numpy as np
import pytest

from mlaref.reference.ops.concat import Concat_253, Concat_ggml015, Concat_ggml025, Concat_pre253
from mlaref.reference.tensor import Tensor


def _t(rng, shape, type_name):
    return Tensor.from_numpy(rng.standard_normal(shape).astype(np.float32), type_name)


@pytest.mark.parametrize("type_name", ["f16", "bf16", "f32"])
@pytest.mark.parametrize("dim", [0, 1, 2, 3])
def test_upstream_element_paths_take_any_dim(rng, type_name, dim):
    shape_a, shape_b = [2, 3, 4, 64], [2, 3, 4, 64]
    shape_b[3 - dim] = 5 if dim else 32
    a, b = _t(rng, shape_a, type_name), _t(rng, shape_b, type_name)
    expect = np.concatenate([a.to_numpy(), b.to_numpy()], axis=3 - dim)
    for cls in (Concat_ggml015, Concat_ggml025):
        out = cls.eval(a, b, dim)
        assert out.type == type_name and np.array_equal(out.to_numpy(), expect)


def test_upstream_element_paths_read_through_strides(rng):
    """A transposed f16 view (nb[0] != 2): upstream reads every element through its strides; ik asserts packed
    4-byte rows for f32 only and copies rows of bytes for f16 (dim 0), so refuses the view."""
    a = _t(rng, (64, 8), "f16").transpose()  # ne = [64, 8] with nb[0] = 128
    b = _t(rng, (8, 32), "f16")
    out = Concat_ggml025.eval(a, b, 0)
    assert np.array_equal(out.to_numpy(), np.concatenate([a.to_numpy(), b.to_numpy()], axis=-1))
    with pytest.raises(ValueError, match="contiguous"):
        Concat_253.eval(a, b, 0)


@pytest.mark.parametrize("dim", [0, 1, 2])
def test_0_25_3_copies_block_rows_along_any_dim(rng, dim):
    shape_a, shape_b = [3, 4, 64], [3, 4, 64]
    shape_b[2 - dim] = 32 if dim == 0 else 2
    a, b = _t(rng, shape_a, "q8_0"), _t(rng, shape_b, "q8_0")
    out = Concat_ggml025.eval(a, b, dim)
    ra, rb = a.raw(), b.raw()  # (ne3, ne2, ne1, row bytes)
    expect = np.concatenate([ra, rb], axis=3 - dim)
    assert out.raw().tobytes() == expect.tobytes()
    if dim == 0:
        assert out.raw().tobytes() == Concat_253.eval(a, b, 0).raw().tobytes()  # one semantics where both define it


def test_versions_refuse_what_their_ggml_does_not_define(rng):
    a, b = _t(rng, (2, 64), "q8_0"), _t(rng, (2, 64), "q8_0")
    with pytest.raises(TypeError, match="F1"):
        Concat_ggml015.eval(a, b, 0)
    with pytest.raises(TypeError, match="before PR #253"):
        Concat_pre253.eval(a, b, 0)
    with pytest.raises(ValueError, match="dim 0 only"):
        Concat_253.eval(a, b, 1)
    f = _t(rng, (2, 64), "f16")
    with pytest.raises(ValueError, match="dim 0 only"):
        Concat_253.eval(f, f, 1)
    with pytest.raises(ValueError, match="dim must be"):
        Concat_ggml025.eval(f, f, 4)

"""All ISAs of one (op, types, plan) give identical bytes; forcing each ISA picks that ISA; threads do not matter."""

import collections

import numpy as np
import pytest

from mlaref import reference as R
from mlaref.codegen import catalog, cpu, dispatch, isa
from mlaref.codegen import kernels as K


def _groups():
    g = collections.defaultdict(list)
    for s in catalog.catalog():
        if s.family in ("dequantize_row", "quantize_row", "convert_rows", "vec_dot") and not isa.get(s.isa).cross:
            g[(s.family, s.type_x, s.type_y, s.plan)].append(s.name)
    return {k: v for k, v in g.items() if len(v) > 1}


GROUPS = _groups()


def _run(key, name, x_f32, rng_bytes):
    family, tx, ty, plan = key
    if family == "dequantize_row":
        return K.dequantize(rng_bytes[tx], tx, kernel=name)
    if family == "quantize_row":
        fmt = R.get_type(tx)
        v = next(v for v, impl in fmt.variants.items() if impl == plan)
        return K.quantize(x_f32, tx, variant=v, kernel=name)
    if family == "vec_dot":
        n = x_f32.shape[1]
        if tx in ("f32", "f16", "bf16"):
            enc = (lambda a: a.view(np.uint8)) if tx == "f32" else (lambda a: R.quantize(a, tx))
            xb, yb = enc(x_f32[:4]), enc(x_f32[4:])
        else:
            xb = R.quantize(x_f32[:4], tx)
            yb = R.quantize(x_f32[4:], ty, variant="iqk" if ty.endswith("_x4") else "x86")
        return K.vec_dot(xb, tx, yb, ty, n, plan=catalog.VEC_DOT_PLANS[plan], kernel=name)
    fmt = R.get_type(ty)
    v = next(v for v, impl in fmt.variants.items() if impl == plan)
    return K.convert(R.quantize(x_f32, tx), tx, ty, variant=v, kernel=name)


@pytest.mark.parametrize("key", sorted(GROUPS, key=str), ids=lambda k: "-".join(p for p in k if p))
def test_all_isas_identical(key, kt):
    """A stress row set (2048 values per row: 8 K-blocks, 64 32-blocks) through every native ISA of the group."""
    rng = np.random.default_rng(7)
    x = kt.quant_inputs(rng, 8, 2048)
    blocks = {}
    for t in {key[1]}:
        fmt = kt.require_reference(t)
        if key[0] == "dequantize_row":
            nb = 2048 // fmt.block_size
            blocks[t] = fmt.random_blocks(rng, 8 * nb).view(np.uint8).reshape(8, -1)
    outs = {}
    for name in GROUPS[key]:
        tok = catalog.by_name()[name].isa
        if not cpu.supported(tok):
            continue
        outs[name] = _run(key, name, x, blocks).view(np.uint8)
    if len(outs) < 2:
        pytest.skip("fewer than two ISAs of this group run here: " + ", ".join(
            f"{n}: {cpu.missing(catalog.by_name()[n].isa)}" for n in GROUPS[key]))
    names = sorted(outs)
    for n in names[1:]:
        kt.assert_same_bytes(outs[n], outs[names[0]], 32, f"{n} vs {names[0]}")


@pytest.mark.parametrize("token", [t for t in isa.tokens() if not isa.get(t).cross])
def test_forcing_each_isa(token):
    """With an ISA forced, dispatch picks the best kernel among it and the ISAs it implies."""
    if not cpu.supported(token):
        with pytest.raises(dispatch.DispatchError, match="lacks"):
            with dispatch.forced(token):
                dispatch.candidates()
        pytest.skip(f"this CPU lacks {', '.join(cpu.missing(token))}")
    allowed = {token, *isa.get(token).implies}
    with dispatch.forced(token):
        spec, _ = dispatch.choose("dequantize_row", "q8_0", None, "ref")
        want = max((t for t in ("scalar", "avx2", "avx512") if t in allowed), key=lambda t: isa.get(t).priority)
        assert spec.isa == want
        spec, _ = dispatch.choose("quantize_row", "q4_0", None, "ref")
        assert spec.isa == want
        spec, _ = dispatch.choose("copy_rows", "bytes", None, "ref")
        assert spec.isa == want  # the x86 copies add streaming stores
        spec, _ = dispatch.choose("dequantize_row", "f32", None, "ref")
        assert spec.isa == want  # the f32 row copy: wider moves per ISA
        spec, _ = dispatch.choose("vec_dot", "q8_0", "q8_0", "ggml_generic")
        assert spec.isa == "scalar"  # a serial order: only a scalar kernel exists


def test_disable_and_env_force(monkeypatch):
    best = dispatch.choose("dequantize_row", "q8_0", None, "ref")[0].isa
    monkeypatch.setenv("MLAREF_DISABLE_ISA", best)
    assert dispatch.choose("dequantize_row", "q8_0", None, "ref")[0].isa != best
    monkeypatch.setenv("MLAREF_DISABLE_ISA", "")
    monkeypatch.setenv("MLAREF_ISA", "scalar")
    assert dispatch.choose("dequantize_row", "q8_0", None, "ref")[0].isa == "scalar"
    monkeypatch.setenv("MLAREF_ISA", "sse9")
    with pytest.raises(ValueError, match="unknown ISA"):
        dispatch.candidates()
    monkeypatch.setenv("MLAREF_ISA", "neon" if isa.host_arch() == "x86_64" else "avx2")
    with pytest.raises(dispatch.DispatchError, match="lacks"):
        dispatch.candidates()


@pytest.mark.parametrize("op", ["dequantize", "quantize", "convert"])
def test_thread_count_does_not_change_bytes(op, kt):
    rng = np.random.default_rng(3)
    x = kt.quant_inputs(rng, 37, 576)
    if op == "dequantize":
        data = R.quantize(x, "q8_0")
        f = lambda n: K.dequantize(data, "q8_0", n_threads=n)  # noqa: E731
    elif op == "quantize":
        f = lambda n: K.quantize(x, "q8_0", variant="x86", n_threads=n)  # noqa: E731
    else:
        data = R.quantize(x, "f16")
        f = lambda n: K.convert(data, "f16", "q8_1", variant="x86", n_threads=n)  # noqa: E731
    base = f(1).view(np.uint8)
    for n in (2, 3, 5, 8, 64):
        assert np.array_equal(f(n).view(np.uint8), base), n

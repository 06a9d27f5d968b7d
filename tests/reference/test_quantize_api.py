"""The public face of the formats: ``quantize`` / ``dequantize`` / ``get_type``, shapes, and clear errors.

Every registered format of this helper's set must go through the API with any leading shape, and bad input
must raise ``TypeError`` / ``ValueError`` naming the argument and the rule.
"""

import numpy as np
import pytest

from mlaref.reference import VARIANTS, dequantize, get_type, quantize, registry

FORMATS = ["f32", "f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q8_1", "iq4_nl", "q8_0_x4", "q8_1_x4"]

# (name, ggml_type, block_size, type_size, vec_dot_type) from ggml.h / ggml-common.h / upstream facts §4a and §5
GEOMETRY = [
    ("f32", 0, 1, 4, "f32"),
    ("f16", 1, 1, 2, "f16"),
    ("bf16", 30, 1, 2, "bf16"),
    ("q4_0", 2, 32, 18, "q8_0"),
    ("q4_1", 3, 32, 20, "q8_1"),
    ("q5_0", 6, 32, 22, "q8_0"),
    ("q5_1", 7, 32, 24, "q8_1"),
    ("q8_0", 8, 32, 34, "q8_0"),
    ("q8_1", 9, 32, 36, "q8_1"),
    ("iq4_nl", 20, 32, 18, "q8_0"),
    ("q8_0_x4", 98, 32, 34, None),
    ("q8_1_x4", 99, 32, 36, None),
]


@pytest.mark.parametrize("name,ggml_type,block_size,type_size,vec_dot_type", GEOMETRY)
def test_format_attributes(name, ggml_type, block_size, type_size, vec_dot_type):
    fmt = get_type(name)
    assert (fmt.name, fmt.ggml_type, fmt.block_size, fmt.type_size) == (name, ggml_type, block_size, type_size)
    assert fmt.vec_dot_type == vec_dot_type
    assert fmt.dtype.itemsize == type_size
    assert set(fmt.variants) <= set(VARIANTS) and set(fmt.variants.values()) <= set(VARIANTS)
    assert isinstance(fmt.domain, str) and fmt.domain
    assert fmt.row_size(576) == 576 // block_size * type_size


@pytest.mark.ggml
@pytest.mark.parametrize("name", [g[0] for g in GEOMETRY if g[1] < 98])
def test_geometry_matches_ggml(ggml, name):
    fmt = get_type(name)
    assert ggml.ggml_type(name) == fmt.ggml_type
    assert ggml.lib().ggml_row_size(fmt.ggml_type, 576) == fmt.row_size(576)
    assert ggml.vec_dot_type(name) == ggml.ggml_type(fmt.vec_dot_type)


def test_gguf_type_is_gguf_pys_id():
    """A GGUF file stores a tensor's upstream enum ggml_type (gguf-py's GGMLQuantizationType); the ik-only x4
    layouts have no GGUF id."""
    gguf = pytest.importorskip("gguf")
    for name, fmt in registry().items():
        member = gguf.GGMLQuantizationType.__members__.get(name.upper())
        assert fmt.upstream == (member is not None), name
        assert fmt.gguf_type == (None if member is None else int(member)), name
        assert fmt.gguf_type in (None, fmt.ggml_type), name


def test_struct_field_names_follow_ggml():
    """Field names and offsets of ggml-common.h's block structs."""
    expect = {
        "q4_0": [("d", 0), ("qs", 2)],
        "q4_1": [("d", 0), ("m", 2), ("qs", 4)],
        "q5_0": [("d", 0), ("qh", 2), ("qs", 6)],
        "q5_1": [("d", 0), ("m", 2), ("qh", 4), ("qs", 8)],
        "q8_0": [("d", 0), ("qs", 2)],
        "q8_1": [("d", 0), ("s", 2), ("qs", 4)],
        "iq4_nl": [("d", 0), ("qs", 2)],
    }
    for name, fields in expect.items():
        dt = get_type(name).dtype
        assert [(f, dt.fields[f][1]) for f in dt.names] == fields, name


def test_variants_as_documented():
    v = {name: get_type(name).variants for name in FORMATS}
    assert v["q8_0"] == {"ref": "ref", "model": "ref", "x86": "x86"}
    assert v["q8_1"] == {"ref": "ref", "x86": "x86"}
    assert v["f16"] == {"ref": "ref", "model": "ref", "x86": "x86"}
    for name in ("q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl"):
        assert v[name] == {"ref": "ref", "model": "model", "x86": "ref"} and get_type(name).takes_imatrix
    assert v["q8_0_x4"] == v["q8_1_x4"] == {"iqk": "iqk"}
    assert v["f32"] == v["bf16"] == {"ref": "ref", "model": "ref", "x86": "ref"}


def test_registry_holds_every_format_once():
    formats = registry()
    for name in FORMATS:
        assert formats[name] is get_type(name)
        assert get_type(formats[name]) is formats[name]


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("shape", [(64,), (3, 64), (2, 3, 192)])
def test_round_trip_shapes(rng, name, shape):
    fmt = get_type(name)
    variant = next(iter(fmt.variants))
    x = rng.standard_normal(shape).astype(np.float32)
    q = quantize(x, name, variant=variant)
    assert q.dtype == np.uint8 and q.shape == shape[:-1] + (fmt.row_size(shape[-1]),)
    y = dequantize(q, name)
    assert y.dtype == np.float32 and y.shape == shape
    # an error bound that every format meets (f32 exact; 4-bit formats about 1/8 of the block maximum)
    err = np.abs(y - x).max() / np.abs(x).max()
    assert err <= {"f32": 0, "f16": 1e-3, "bf16": 4e-3}.get(name, 0.2), err


def test_quantize_accepts_a_non_contiguous_input(rng):
    x = rng.standard_normal((64, 8)).astype(np.float32).T
    assert np.array_equal(quantize(x, "q8_0"), quantize(np.ascontiguousarray(x), "q8_0"))


# -- bad input ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(registry()))
@pytest.mark.parametrize("n_rows, n_blocks", [(1, 1), (1, 2), (3, 1), (2, 5)])
def test_quantize_and_dequantize_leave_their_input_alone(rng, name, n_rows, n_blocks):
    """The quantizers work on transposed copies in place; one block once made that copy a view of x."""
    fmt = get_type(name)
    x = rng.standard_normal((n_rows, fmt.block_size * n_blocks)).astype(np.float32)
    x0 = x.copy()
    im = rng.random(x.shape[1]).astype(np.float32)
    for variant in fmt.variants:
        data = quantize(x, name, variant=variant)
        if variant == "model" and fmt.takes_imatrix:
            quantize(x, name, variant=variant, imatrix=im)
        assert np.array_equal(x.view(np.uint32), x0.view(np.uint32)), (name, variant)
        d0 = data.copy()
        dequantize(data, name)
        assert np.array_equal(data, d0), (name, variant)


def test_wrong_x_dtype_raises():
    with pytest.raises(TypeError, match=r"x must be float32, got float64"):
        quantize(np.zeros(32), "q8_0")
    with pytest.raises(TypeError, match=r"x must be float32, got int32"):
        quantize(np.zeros(32, dtype=np.int32), "q4_0")


def test_last_dim_not_a_block_multiple_raises():
    with pytest.raises(ValueError, match=r"last dim of x \(48\) must be a positive multiple of q4_0's block size 32"):
        quantize(np.zeros((2, 48), dtype=np.float32), "q4_0")
    with pytest.raises(ValueError, match=r"last dim of x \(0\)"):
        quantize(np.zeros((2, 0), dtype=np.float32), "f16")
    with pytest.raises(ValueError, match=r"at least one dimension"):
        quantize(np.float32(1.0), "f32")


def test_unknown_type_raises():
    with pytest.raises(ValueError, match=r"unknown tensor type 'q3_0'; known: .*q8_0"):
        quantize(np.zeros(32, dtype=np.float32), "q3_0")
    with pytest.raises(ValueError, match=r"unknown tensor type"):
        dequantize(np.zeros(34, dtype=np.uint8), "Q8_0")
    with pytest.raises(ValueError, match=r"unknown tensor type 8"):
        get_type(8)


def test_bad_variant_raises():
    x = np.zeros(32, dtype=np.float32)
    with pytest.raises(ValueError, match=r"unknown variant 'avx2'; known: ref, model, x86, iqk"):
        quantize(x, "q8_0", variant="avx2")
    with pytest.raises(ValueError, match=r"q8_1 has no variant 'model'; it has ref, x86"):
        quantize(x, "q8_1", variant="model")
    with pytest.raises(ValueError, match=r"q8_0_x4 has no variant 'ref'; it has iqk"):
        quantize(x, "q8_0_x4")


def test_bad_imatrix_raises():
    x = np.zeros((2, 64), dtype=np.float32)
    with pytest.raises(ValueError, match=r"imatrix must be float32 of shape \(64,\).*got float32 \(32,\)"):
        quantize(x, "q4_0", variant="model", imatrix=np.ones(32, dtype=np.float32))
    with pytest.raises(ValueError, match=r"imatrix must be float32 of shape \(64,\).*got float64 \(64,\)"):
        quantize(x, "iq4_nl", variant="model", imatrix=np.ones(64))
    with pytest.raises(ValueError, match=r"imatrix goes with variant='model', not 'ref'"):
        quantize(x, "q4_0", imatrix=np.ones(64, dtype=np.float32))


def test_bad_data_raises():
    msg = r"last dim of data \(35 bytes\) must be a positive multiple of q8_0's block bytes 34"
    with pytest.raises(ValueError, match=msg):
        dequantize(np.zeros((2, 35), dtype=np.uint8), "q8_0")
    with pytest.raises(ValueError, match=r"last dim of data \(0 bytes\)"):
        dequantize(np.zeros((2, 0), dtype=np.uint8), "q4_0")
    with pytest.raises(TypeError, match=r"data must be uint8 bytes, got float32"):
        dequantize(np.zeros(34, dtype=np.float32), "q8_0")
    with pytest.raises(ValueError, match=r"at least one dimension"):
        dequantize(np.uint8(3), "f16")


def test_row_size_rejects_partial_blocks():
    with pytest.raises(ValueError, match=r"q5_1: row length 40 is not a multiple of the block size 32"):
        get_type("q5_1").row_size(40)

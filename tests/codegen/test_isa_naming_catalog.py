"""The ISA table, the kernel-name grammar and the catalog's couplings."""

import json
import pathlib

import pytest

from mlaref.codegen import catalog, isa, naming, render
from mlaref.codegen.catalog import KernelSpec

MANIFEST = pathlib.Path(__file__).resolve().parents[2] / "generated" / "manifest.json"
KERNELS = json.loads(MANIFEST.read_text())["kernels"]


def test_isa_table():
    t = isa.ISAS
    assert list(t) == ["scalar", "avx2", "avx512", "avx512vnni", "neon", "neondot"]
    assert set(t["avx2"].features) == {"avx2", "fma", "f16c"}
    assert set(t["avx512"].features) >= {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl", "avx2"}
    assert "avx512_vnni" in t["avx512vnni"].features and "asimddp" in t["neondot"].features
    assert "-mavx512vnni" in t["avx512vnni"].cflags and t["scalar"].cflags == ()
    for i in t.values():
        for imp in i.implies:  # implied bundles: lower priority, features a subset, same architecture family
            j = t[imp]
            assert j.priority < i.priority and set(j.features) <= set(i.features) and j.arch in ("any", i.arch)
            assert set(j.implies) <= set(i.implies)
    assert [i.token for i in isa.for_arch("x86_64")] == ["avx512vnni", "avx512", "avx2", "scalar"]
    assert [i.token for i in isa.for_arch("aarch64")] == ["neondot", "neon", "scalar"]
    with pytest.raises(ValueError, match="unknown ISA"):
        isa.get("sse2")


@pytest.mark.parametrize("name", sorted(KERNELS), ids=sorted(KERNELS))
def test_every_manifest_name_parses_back(name):
    k = KERNELS[name]
    parts = naming.parse(name)
    assert (parts.op, parts.type_x, parts.type_y, parts.isa, parts.plan) == (
        k["family"], k["type_x"], k["type_y"], k["isa"], k["plan"])
    assert naming.format(*[getattr(parts, f) for f in ("op", "type_x", "type_y", "isa", "plan")]) == name
    assert k["file"] == f"{k['family']}/{name}.c"


@pytest.mark.parametrize("name,want", [
    ("mlaref_vec_dot_iq4_nl_q8_0__avx512vnni_l16a1", ("vec_dot", "iq4_nl", "q8_0", "avx512vnni", "l16a1")),
    ("mlaref_vec_dot_q8_0_q8_0_x4__avx2_ggml_x86_avx2", ("vec_dot", "q8_0", "q8_0_x4", "avx2", "ggml_x86_avx2")),
    ("mlaref_convert_rows_q8_0_q8_1_x4__neon_iqk", ("convert_rows", "q8_0", "q8_1_x4", "neon", "iqk")),
    ("mlaref_dequantize_row_q8_K__scalar_ref", ("dequantize_row", "q8_K", None, "scalar", "ref")),
])
def test_parse_examples(name, want):
    p = naming.parse(name)
    assert (p.op, p.type_x, p.type_y, p.isa, p.plan) == want


@pytest.mark.parametrize("bad", [
    "mlaref_vec_dot_q8_0_q8_0_avx2_l8a2",        # single underscore before the ISA
    "mlaref_vec_dot_q8_0_q8_0__sse4_l8a2",       # unknown ISA
    "mlaref_vec_dot_q9_0__avx2_l8a2",            # unknown type
    "mlaref_matmul_q8_0__avx2_l8a2",             # unknown op
    "mlaref_vec_dot_q8_0__avx2_L8A2",            # upper-case plan
    "mlaref_vec_dot_q8_0__avx2_",                # empty plan
    "mla_vec_dot_q8_0__avx2_l8a2",               # prefix
    "mlaref_vec_dot_q8_0_q8_0_q8_0__avx2_l8a2",  # three types
])
def test_parse_rejects(bad):
    with pytest.raises(ValueError, match="not a kernel name"):
        naming.parse(bad)


def test_format_rejects_bad_parts():
    with pytest.raises(ValueError, match="op"):
        naming.format("matmul", "q8_0", None, "avx2", "ref")
    with pytest.raises(ValueError, match="plan"):
        naming.format("vec_dot", "q8_0", None, "avx2", "a__b")
    assert "plan" in naming.grammar() and "avx512vnni" in naming.grammar()


@pytest.mark.parametrize("spec,match", [
    (KernelSpec("dequantize_row", "q8_0", None, "avx512vnni", "ref"), "vec_dot only"),
    (KernelSpec("dequantize_row", "q8_0", "q8_0", "scalar", "ref"), "type_y"),
    (KernelSpec("dequantize_row", "q8_0", None, "scalar", "x86"), "plan is 'ref'"),
    (KernelSpec("copy_rows", "bytes", None, "neon", "ref"), "streaming stores"),
    (KernelSpec("quantize_row", "q8_0", None, "scalar", "iqk"), "variants"),
    (KernelSpec("quantize_row", "q6_K", None, "scalar", "ref"), "no C quantizer"),
    (KernelSpec("convert_rows", "f16", "f16", "scalar", "ref"), "different from the target"),
    (KernelSpec("convert_rows", "q4_0", "q8_0", "scalar", "ref"), "source"),
    (KernelSpec("copy_rows", "q8_0", None, "scalar", "ref"), "type-agnostic"),
    (KernelSpec("gemm", "q8_0", None, "scalar", "ref"), "family"),
    (KernelSpec("vec_dot", "q8_0", "q8_1", "scalar", "l8a1"), "not a vec_dot pair"),
    (KernelSpec("vec_dot", "q8_0", None, "scalar", "l8a1"), "type_y"),
    (KernelSpec("vec_dot", "q8_0", "q8_0", "scalar", "l4a1"), "plans"),
    (KernelSpec("vec_dot", "f16", "f16", "avx512vnni", "l8a1"), "element pairs"),
    (KernelSpec("vec_dot", "q8_0", "q8_0_x4", "scalar", "ggml_generic"), "plain vec_dot types"),
    (KernelSpec("vec_dot", "q8_0", "q8_0", "avx2", "ggml_generic"), "serial"),
    (KernelSpec("vec_dot", "q8_0", "q8_0", "neon", "ggml_x86_avx2"), "scalar and the x86 ISAs"),
    (KernelSpec("vec_dot", "f16", "f16", "avx512", "ggml_x86_avx2"), "scalar and the x86 ISAs"),
    (KernelSpec("mul_mat", "f16", "f32", "neondot", "l16a1"), "neondot changes only int8"),
    (KernelSpec("mul_mat", "q4_K", "f16", "neondot", "l16a1"), "32-block weights"),
    (KernelSpec("flash_attn_ext", "f16", "f16", "neondot", "l16a1"), "others use neon"),
])
def test_validate_couplings(spec, match):
    with pytest.raises(ValueError, match=match):
        spec.validate()


def test_catalog_is_sorted_unique_and_valid():
    specs = catalog.catalog()
    names = [s.name for s in specs]
    assert names == sorted(names) and len(set(names)) == len(names)
    assert set(names) == set(KERNELS)
    for s in specs:
        assert s.validate() is s


def test_templates_have_headers_and_render_checks_params():
    for path in sorted(render.TEMPLATE_DIR.rglob("*.j2")):
        doc = render.header(path.read_text(), path.name)
        assert doc["template"]["summary"] and doc["plan"]["text"]
    spec = catalog.catalog()[0]
    allowed = render.header((render.TEMPLATE_DIR / spec.template).read_text())["params"]
    render.check_params(spec, allowed, spec.template)
    with pytest.raises(ValueError, match="missing"):
        render.check_params(spec, dict(allowed, extra_param=["x"]), spec.template)
    with pytest.raises(ValueError, match="extra"):
        render.check_params(spec, {k: v for k, v in allowed.items() if k != "plan"}, spec.template)
    with pytest.raises(ValueError, match="not allowed"):
        render.check_params(spec, dict(allowed, isa=["neon"]), spec.template)
    with pytest.raises(ValueError, match="TOML header"):
        render.header("/* no header */\n")


def test_banner_is_fixed_text():
    spec = catalog.by_name()["mlaref_quantize_row_q8_0__avx2_x86"]
    text = render.render(spec)
    assert text.splitlines()[0] == ("/* Generated by mlaref.codegen from codegen/templates/quantize_row.c.j2; do not "
                                    "edit. params: isa=avx2 plan=x86 type_x=q8_0 */")
    assert "{#" not in text and "[params]" not in text
    assert f"void {spec.name}(" in text


def test_strict_undefined(tmp_path):
    import shutil

    import jinja2

    tdir = tmp_path / "templates"
    shutil.copytree(render.TEMPLATE_DIR, tdir)
    p = tdir / "copy_rows.c.j2"
    p.write_text(p.read_text().replace("{{ name }}", "{{ nmae }}"))
    spec = catalog.by_name()["mlaref_copy_rows_bytes__scalar_ref"]
    with pytest.raises(jinja2.UndefinedError):
        render.render(spec, str(tdir))

"""`mlaref bench kernels --mm` runs FlashMLA-2's two heavy ops against ggml and prints both tables."""

import json

from mlaref.codegen.cli import main


def test_bench_kernels_mm_prints_and_writes_both_ops(ggml, capsys, tmp_path):
    out = tmp_path / "mm.json"
    assert main(["bench", "kernels", "--mm", "--n-kv", "256", "--threads", "1", "--repeats", "1",
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    for case in ("f16 x f16", "q8_0 x f32", "q8_0 x f16", "iq4_nl x f16", "fa f16"):
        assert case in text, case
    data = json.loads(out.read_text())
    assert set(data) == {"mul_mat", "flash_attn_ext"}
    # every result agrees with ggml within the op reference's bound (5e-4 for mul_mat and flash_attn_ext)
    rows = [r for result in data.values() for r in result["rows"]]
    assert rows and all(r["nmse_vs_ggml"] < 5e-4 for r in rows)


def test_bench_kernels_rejects_bad_counts(capsys):
    assert main(["bench", "kernels", "--mm", "--repeats", "0"]) == 2
    assert "--repeats and --threads must be >= 1" in capsys.readouterr().err

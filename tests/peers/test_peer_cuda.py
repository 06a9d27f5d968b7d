"""ggml-cuda as a peer (codegen/peers/cuda.py): the source bundle, the probe's C against ggml 0.25.3's headers, and
the check of the bytes ggml-cuda writes. Building ggml-cuda needs cuBLAS and running it a GPU: that part runs on a
lent GPU machine (`mlaref peer-cuda run`), never here."""

from __future__ import annotations

import shutil
import subprocess
import tarfile

import numpy as np
import pytest

from mlaref.codegen.peers import build as peer_build
from mlaref.codegen.peers import cuda


@pytest.fixture(scope="module")
def ggml_source():
    try:
        src = peer_build.fetch_sdist(peer_build.build_dir("_dl", cuda.PEER), progress=False, peer=cuda.PEER)
    except peer_build.PeerBuildError as exc:
        pytest.skip(f"the {cuda.PEER} {cuda.VERSION} sdist cannot be fetched here: {exc}")
    return src / peer_build.peer_spec(cuda.PEER).source / "ggml"


def test_bundle_holds_what_a_cuda_build_needs(ggml_source, tmp_path):
    path = cuda.bundle(tmp_path, ggml_source)
    assert path.name == cuda.BUNDLE_NAME
    with tarfile.open(path) as tf:
        names = set(tf.getnames())
    for need in ("ggml/CMakeLists.txt", "ggml/ggml.pc.in", "ggml/include/ggml-cuda.h", "ggml/src/ggml.c",
                 "ggml/src/CMakeLists.txt", "ggml/src/ggml-cuda/CMakeLists.txt", "ggml/src/ggml-cuda/fattn.cu",
                 "ggml/src/ggml-cpu/CMakeLists.txt", "ggml/ggml_cuda_bench.c"):
        assert need in names, need
    assert not any(n.startswith(("ggml/src/ggml-vulkan", "ggml/src/ggml-metal")) for n in names)
    assert path.stat().st_size < 4 << 20  # it travels with the working tree to the GPU machine


def test_probe_compiles_against_the_bundled_headers(ggml_source, tmp_path):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    with tarfile.open(cuda.bundle(tmp_path, ggml_source)) as tf:
        tf.extractall(tmp_path, filter="data")
    res = subprocess.run([cc, "-std=c11", "-Wall", "-Werror", "-fsyntax-only", "-D_POSIX_C_SOURCE=200809L",
                          f"-I{tmp_path / 'ggml' / 'include'}", str(tmp_path / "ggml" / "ggml_cuda_bench.c")],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_default_cases_cover_the_flashmla2_shapes():
    cases = cuda.default_cases()
    assert "mm:q8_0:4096:512:4096:20" in cases and "mm:iq4_nl:4096:512:1024:20" in cases
    assert "fa:q8_0:576:512:16:1:512:16384:20" in cases and "fa:f16:192:128:16:16:512:1024:20" in cases
    assert {c.split(":")[1] + ":" + c.split(":")[2] for c in cases if c.startswith("dump:")} == {
        f"{op}:{t}" for op in cuda.COPY_OPS for t in cuda.COPY_TYPES}


def _q8_0_rows(rng, n_rows, n):
    """Well-formed q8_0 rows (f16 scale then 32 int8 per block), built by hand."""
    rows = np.zeros((n_rows, n // 32, 34), np.uint8)
    rows[:, :, :2] = np.frombuffer(np.float16(0.25).tobytes(), np.uint8)
    rows[:, :, 2:] = rng.integers(-127, 128, size=(n_rows, n // 32, 32)).astype(np.int8).view(np.uint8)
    return rows.reshape(n_rows, -1)


@pytest.mark.parametrize("op", cuda.COPY_OPS)
def test_check_dump_against_hand_built_bytes(op, tmp_path):
    rng = np.random.default_rng(7)
    ne0, ne1 = 64, 5
    a = _q8_0_rows(rng, 1 if op == "repeat" else ne1, ne0)
    b = _q8_0_rows(rng, ne1, ne0)
    want = np.hstack([a, b]) if op == "concat" else np.repeat(a, ne1 // a.shape[0], axis=0)
    a.tofile(tmp_path / f"{op}_q8_0.in0")
    b.tofile(tmp_path / f"{op}_q8_0.in1")
    want.tofile(tmp_path / f"{op}_q8_0.out")
    assert cuda.check_dump(op, "q8_0", ne0, ne1, tmp_path) == {"bytes_equal": True, "rows_differing": 0, "rows": ne1}
    bad = want.copy()
    bad[3, 1] ^= 1  # one scale byte of row 3
    bad.tofile(tmp_path / f"{op}_q8_0.out")
    assert cuda.check_dump(op, "q8_0", ne0, ne1, tmp_path) == {"bytes_equal": False, "rows_differing": 1,
                                                                "rows": ne1}
    want[:-1].tofile(tmp_path / f"{op}_q8_0.out")
    res = cuda.check_dump(op, "q8_0", ne0, ne1, tmp_path)
    assert res["bytes_equal"] is False and "bytes written" in res["why"]


def test_run_without_a_bundle_says_so(tmp_path, capsys):
    parser = __import__("argparse").ArgumentParser()
    cuda.configure(parser)
    args = parser.parse_args(["run", "--bundle", str(tmp_path / "none.tar.gz"), "--out", str(tmp_path)])
    assert cuda.run(args) == 2
    assert "no bundle at" in capsys.readouterr().err

"""``mlaref cuda-check`` as the GPU machine runs it (no cffi, gguf or platformdirs there): here it builds every
CUDA kernel and, without a GPU, says so and exits 0; its JSON records the build and the reason."""

import json
import os
import pathlib
import subprocess
import sys

from mlaref.codegen import catalog
from mlaref.codegen.cuda import build as cuda_build

ROOT = pathlib.Path(__file__).resolve().parents[2]
BLOCKER = '''
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("cffi", "gguf", "platformdirs", "filelock"):
            raise ImportError("not on the GPU machine: " + name)
sys.meta_path.insert(0, _Block())
'''


def test_cuda_check_runs_without_the_optional_packages(nvcc, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    (site / "mlaref").symlink_to(ROOT)  # the device's layout: the checkout as package ``mlaref``
    env = dict(os.environ, PYTHONPATH=str(site))
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "mlaref", "cuda-check", "--out", str(out), "--no-timing"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    doc = json.loads((out / "cuda-check.json").read_text())
    log = (out / "cuda-check.log").read_text()
    assert doc["build"]["ok"] and set(doc["build"]["libraries"]) == {"runtime", *cuda_build.families()}
    assert doc["kernels"] == [s.name for s in catalog.cuda_catalog()]
    if cuda_build.gpu_present():
        assert r.returncode == 0, log
        assert doc["correctness"]["passed"] == doc["correctness"]["total"]
    else:
        assert r.returncode == 0, r.stderr
        assert doc["gpu_status"].startswith("no CUDA GPU") and "correctness" not in doc
        assert "runs and timings skipped" in log

"""Render the kernel catalog into generated/ and write generated/manifest.json; ``--check`` verifies it.

``python -m mlaref.codegen.generate`` (or ``mlaref generate``) writes only the files whose bytes changed, deletes
kernel files the catalog no longer produces, and writes a sorted ``manifest.json`` holding, per kernel, its
family, types, ISA, plan, template, file and the sha256 of the file (CPU kernels under ``kernels``, the CUDA
kernels of ``catalog.cuda_catalog`` under ``cuda_kernels``, their files in ``generated/cuda/``). ``--check`` renders everything in memory,
compares with the tree, prints a unified diff and the command that fixes it, and exits 1 on any difference
(the golden-file pattern of SymForce's ``compare_or_update_directory``).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import pathlib
import sys

from mlaref.codegen import catalog as _catalog
from mlaref.codegen import render as _render

__all__ = ["GENERATED_DIR", "render_all", "write", "check", "manifest", "configure", "run", "main"]

GENERATED_DIR = pathlib.Path(__file__).resolve().parent.parent / "generated"
FIX_COMMAND = "python -m mlaref.codegen.generate"
_KEEP = {"__init__.py"}


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def render_all(template_dir: str | None = None) -> dict[str, str]:
    """Relative path -> file text for every file under generated/ that codegen owns (manifest included)."""
    specs = _catalog.catalog() + _catalog.cuda_catalog()  # the CUDA kernels: generated/cuda/<family>/*.cu
    files = {spec.path: _render.render(spec, template_dir) for spec in specs}
    files["manifest.json"] = manifest(files)
    return files


def manifest(files: dict[str, str]) -> str:
    """The manifest text: kernels sorted by name, one sha256 per file, fixed key order."""
    def table(specs):
        return {spec.name: {
            "family": spec.family, "type_x": spec.type_x, "type_y": spec.type_y, "isa": spec.isa,
            "plan": spec.plan, "template": f"codegen/templates/{spec.template}", "file": spec.path,
            "sha256": _sha(files[spec.path]),
        } for spec in specs}

    # "kernels": the CPU kernels (cffi, dispatch); "cuda_kernels": the GPU ones (nvcc, codegen/cuda)
    doc = {"generator": "mlaref.codegen.generate", "kernels": table(_catalog.catalog()),
           "cuda_kernels": table(_catalog.cuda_catalog())}
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"


def _existing(out: pathlib.Path) -> dict[str, str]:
    found = {}
    if out.is_dir():
        for p in sorted(out.rglob("*")):
            rel = p.relative_to(out).as_posix()
            if p.is_file() and p.name not in _KEEP and "__pycache__" not in rel:
                found[rel] = p.read_text()
    return found


def write(out_dir: str | pathlib.Path | None = None, template_dir: str | None = None) -> tuple[list, list]:
    """Bring ``out_dir`` (default generated/) up to date; return (written, deleted) relative paths."""
    out = pathlib.Path(out_dir or GENERATED_DIR)
    want = render_all(template_dir)
    have = _existing(out)
    written, deleted = [], []
    for rel, text in want.items():
        if have.get(rel) != text:
            path = out / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_text(text)
            tmp.replace(path)
            written.append(rel)
    for rel in sorted(set(have) - set(want)):
        (out / rel).unlink()
        deleted.append(rel)
    for d in sorted(out.glob("*/"), reverse=True):
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()
    return written, deleted


def check(out_dir: str | pathlib.Path | None = None, template_dir: str | None = None, stream=None) -> bool:
    """True when ``out_dir`` equals what the catalog renders; otherwise print a diff and the fix, return False."""
    stream = stream or sys.stdout
    out = pathlib.Path(out_dir or GENERATED_DIR)
    want = render_all(template_dir)
    have = _existing(out)
    ok = True
    for rel in sorted(set(want) | set(have)):
        a, b = have.get(rel), want.get(rel)
        if a == b:
            continue
        ok = False
        diff = difflib.unified_diff(
            (a or "").splitlines(keepends=True), (b or "").splitlines(keepends=True),
            fromfile=f"generated/{rel}" if a is not None else "/dev/null",
            tofile=f"generated/{rel} (rendered)" if b is not None else "/dev/null",
        )
        stream.writelines(diff)
        if a is not None and b is None:
            stream.write(f"generated/{rel}: not produced by the catalog\n")
    if not ok:
        stream.write(f"generated/ is out of date; run `{FIX_COMMAND}` and commit the result\n")
    return ok


def configure(parser) -> None:
    parser.add_argument("--check", action="store_true", help="verify generated/ instead of writing it")
    parser.add_argument("--out", default=None, help="output directory (default: the package's generated/)")


def run(args) -> int:
    if args.check:
        return 0 if check(args.out) else 1
    written, deleted = write(args.out)
    print(f"generate: {len(_catalog.catalog())} kernels + {len(_catalog.cuda_catalog())} CUDA kernels; "
          f"{len(written)} files written, {len(deleted)} deleted")
    return 0


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mlaref.codegen.generate", description=__doc__.splitlines()[0])
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

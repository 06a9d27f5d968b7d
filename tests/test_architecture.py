"""The architecture's rules, checked: import contracts (import-linter), one job per file, no reaching into privates.

The contracts themselves are in pyproject.toml (``[tool.importlinter]``): the specification imports nothing of
codegen and has no command line; codegen's layers (cli -> report -> conform / bench -> kernels / peers -> the
generator -> reference); no cycles between sibling modules.
"""

import ast
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 600
# The code of the package: the specification and everything that runs, checks or times what is generated.
SOURCE_DIRS = ("reference", "codegen")


def _python_files(dirs=None):
    out = []
    for d in dirs or (".",):
        for p in sorted((ROOT / d).rglob("*.py")):
            rel = p.relative_to(ROOT)
            if rel.parts[0] in ("generated", ".git", "build", "site", ".tox") or "__pycache__" in rel.parts:
                continue
            out.append(p)
    return out


def test_import_contracts_hold():
    exe = shutil.which("lint-imports")
    assert exe, "lint-imports (import-linter, in the test extra) is not on PATH"
    r = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout


def test_no_python_file_is_over_the_limit():
    long = {str(p.relative_to(ROOT)): n for p in _python_files() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"files over {MAX_LINES} lines: {long}"


def test_every_module_says_its_job_in_its_first_docstring_line():
    bad = []
    for p in _python_files(SOURCE_DIRS):
        doc = ast.get_docstring(ast.parse(p.read_text()))
        if p.name == "__init__.py" and not p.read_text().strip():
            continue  # an empty package marker
        if not doc or not doc.splitlines()[0].strip():
            bad.append(str(p.relative_to(ROOT)))
    assert bad == []


def test_no_module_level_getattr():
    bad = [str(p.relative_to(ROOT)) for p in _python_files(SOURCE_DIRS)
           if any(isinstance(n, ast.FunctionDef) and n.name == "__getattr__" for n in ast.parse(p.read_text()).body)]
    assert bad == []


def _module_aliases(tree) -> dict[str, str]:
    """Local name -> the mlaref module it is bound to, for the module imports of a file."""
    import importlib.util

    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mlaref"):
            for a in node.names:
                full = f"{node.module}.{a.name}"
                try:
                    if importlib.util.find_spec(full) is not None:
                        out[a.asname or a.name] = full
                except (ImportError, ValueError):
                    pass
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("mlaref") and a.asname:
                    out[a.asname] = a.name
    return out


def test_no_module_reaches_into_another_modules_private_names():
    bad = []
    for p in _python_files(SOURCE_DIRS):
        tree = ast.parse(p.read_text())
        aliases = _module_aliases(tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                bad.append(f"{p.relative_to(ROOT)}:{node.lineno} {node.value.id}.{node.attr}")
    assert bad == []


# Deferred imports are for optional dependencies only; an mlaref module is imported at the top of a file.
@pytest.mark.parametrize("top", SOURCE_DIRS)
def test_mlaref_modules_are_imported_at_the_top(top):
    bad = []
    for p in _python_files((top,)):
        tree = ast.parse(p.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mlaref"):
                    bad.append(f"{p.relative_to(ROOT)}:{node.lineno} from {node.module}")
                elif isinstance(node, ast.Import) and any(a.name.startswith("mlaref") for a in node.names):
                    bad.append(f"{p.relative_to(ROOT)}:{node.lineno} import")
    assert bad == []


def test_every_package_and_its_data_ship():
    """pyproject lists every package directory (a non-editable install would miss the others), and every C or
    template source a package reads at run time is package data."""
    import fnmatch
    import pathlib
    import tomllib

    root = pathlib.Path(__file__).resolve().parents[1]
    st = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(st["packages"])
    skip = {"tests", "docs", ".git", "build"}
    found = {".".join(("mlaref", *p.parent.relative_to(root).parts)) for p in root.rglob("__init__.py")
             if not skip & set(p.relative_to(root).parts)}
    assert found == listed
    for pkg in sorted(listed - {"mlaref"}):
        d = root.joinpath(*pkg.split(".")[1:])
        globs = st["package-data"].get(pkg, [])
        for f in sorted(d.glob("*")):
            if f.suffix in (".c", ".h", ".j2"):
                assert any(fnmatch.fnmatch(f.name, g) for g in globs), f"{f.relative_to(root)} is not package data"

"""MkDocs hook: the pages and tables that are generated from the code when the site is built.

* one page per block format registered in :mod:`mlaref.reference` (``formats/<name>.md``): geometry, the byte
  layout read from the format's NumPy dtype, its docstring, and a worked example quantized and dequantized by
  the reference during the build;
* one page per op module of :mod:`mlaref.reference.ops` (``ops/<name>.md``): its docstring and API;
* ``reference/cli.md``: the ``--help`` of every ``mlaref`` command, run during the build;
* ``reference/api.md``: signatures and docstrings of the public Python functions;
* the seed's two tables (``data/seed_pr253.yml``) and a figure drawn from them, wherever a page holds the
  markers ``<!-- mlaref:seed-table pp -->``, ``<!-- mlaref:seed-table memory -->``,
  ``<!-- mlaref:seed-figure -->``; ``<!-- mlaref:format-table -->`` lists the registered formats;
* ``<!-- mlaref:isa-table -->`` (from ``codegen/isa.py``), ``<!-- mlaref:kernel-table -->`` (from
  ``generated/manifest.json``) and ``<!-- mlaref:memory-table -->`` (from the allocator model,
  ``reference/graphs/alloc.py``, run during the build).

* figures and tables from ``docs/_gen/`` (one module per page): ``<!-- mlaref:graph-figure VARIANT -->`` and
  ``<!-- mlaref:graph-table VARIANT -->`` (the real DeepSeek-V2 builders), ``<!-- mlaref:memory-... -->`` (the
  allocator model: plot, variant table, peak tables, timeline, slopes), ``<!-- mlaref:kernel-... -->`` (name
  grammar, dispatch rules, a plan's fields and lane map, checked against the reference during the build) and
  ``<!-- mlaref:report SECTION -->`` (the last ``mlaref report`` run, when its ``report.json`` exists),
  ``<!-- mlaref:bench-snapshot NAME -->`` (a benchmark's ``--json`` kept in ``docs/data/bench/``).

* on every page, a citation of the project's upstream facts (``upstream facts §4a``, ``§6.1 to §6.3``) that is
  not a link yet becomes one, to the ``{#facts-...}`` anchor of the page under ``facts/`` that defines it; a
  citation of a section that no facts page defines stops the build.

Nothing here is written into ``docs/``: generated pages and figures live only in the built site.
"""

from __future__ import annotations

import inspect
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from mkdocs.structure.files import File

DOCS = Path(__file__).resolve().parent
SEED = DOCS / "data" / "seed_pr253.yml"
# MkDocs puts docs/ on sys.path only while it imports this file, so the page generators are imported now.
if str(DOCS) not in sys.path:
    sys.path.insert(0, str(DOCS))
import _gen.graphs  # noqa: E402, F401
import _gen.kernels  # noqa: E402, F401
import _gen.memory  # noqa: E402, F401
import _gen.report  # noqa: E402, F401

# generated figure path in the site -> (module in docs/_gen, function, args); drawn once per build
FIGURES = {
    "img/graph_f32.png": ("graphs", "figure_png", ("f32",)),
    "img/graph_direct.png": ("graphs", "figure_png", ("direct",)),
    "img/graph_chunked.png": ("graphs", "figure_png", ("chunked",)),
    "img/memory_vs_context.png": ("memory", "plan_plot_png", ()),
    "img/memory_timeline.png": ("memory", "timeline_png", ()),
    "img/lane_map_l8a2.png": ("kernels", "lane_map_png", ()),
}
_CACHE: dict = {}


# ----------------------------------------------------------------------------------------------------------
# MkDocs events
# ----------------------------------------------------------------------------------------------------------
def on_config(config):
    """Put one nav entry per registered format under "Block formats"; forget the figures of a previous build."""
    _CACHE.clear()  # `mkdocs serve` rebuilds in the same process: redraw from the current code
    _gen("graphs").subgraph.cache_clear()
    sections = {"Block formats": ("formats", sorted(_formats())), "Ops": ("ops", sorted(_op_modules()))}
    for i, item in enumerate(config.nav or []):
        if not isinstance(item, dict):
            continue
        for title, (folder, names) in sections.items():
            overview = item.get(title)
            if isinstance(overview, str):  # (a list means already expanded: mkdocs serve rebuilds)
                config.nav[i] = {title: [{"Overview": overview}] + [{n: f"{folder}/{n}.md"} for n in names]}
    return config


def on_files(files, config):
    for name, fmt in sorted(_formats().items()):
        files.append(File.generated(config, f"formats/{name}.md", content=format_page(fmt)))
    for name, mod in sorted(_op_modules().items()):
        files.append(File.generated(config, f"ops/{name}.md", content=op_page(name, mod)))
    files.append(File.generated(config, "reference/cli.md", content=cli_page()))
    files.append(File.generated(config, "reference/api.md", content=api_page()))
    figure = seed_figure_png()
    if figure is not None:
        files.append(File.generated(config, "img/seed_pr253.png", content=figure))
    if _have_matplotlib():
        for path in FIGURES:
            files.append(File.generated(config, path, content=_figure(path)))
    for name, data in report_images().items():
        files.append(File.generated(config, f"img/report/{name}", content=data))
    return files


def _gen(module: str):
    import importlib  # noqa: PLC0415

    return importlib.import_module(f"_gen.{module}")


def _figure(path: str) -> bytes:
    """The PNG bytes of a generated figure (``mlaref plan --plot`` also gives the rows; both are kept)."""
    if path not in _CACHE:
        module, fn, args = FIGURES[path]
        out = getattr(_gen(module), fn)(*args)
        if isinstance(out, tuple):
            out, _CACHE[path + ":data"] = out
        _CACHE[path] = out
    return _CACHE[path]


def _img(page, path: str, alt: str) -> str:
    if not _have_matplotlib():
        return f"*(figure skipped: matplotlib is not installed: {alt})*"
    link = "../" * page.file.src_uri.count("/") + path
    return f"[![{alt}]({link})]({link} \"Open the full-size figure\")"


_GRAPH_ALT = {
    "f32": "Layer 1 of the f32 variant (before PR #253): the cache is cast to f32, K is built in f32 and cast back",
    "direct": "Layer 1 of the direct variant (PR #253): K and V are built in the cache type",
    "chunked": "Layer 1 of the chunked variant (mlaref): K/V built and attended per chunk of 4096 cells, then merged",
}


def generated_markers(markdown: str, page) -> str:
    """Replace the ``docs/_gen`` markers (figures, tables, numbers) in one page."""

    def sub(pattern, fn):
        nonlocal markdown
        markdown = re.sub(pattern, lambda m: fn(*m.groups()), markdown)

    sub(r"<!-- mlaref:graph-figure (\w+) -->", lambda v: _img(page, f"img/graph_{v}.png", _GRAPH_ALT[v]))
    sub(r"<!-- mlaref:graph-table (\w+) -->", lambda v: _gen("graphs").node_table(v))
    sub(r"<!-- mlaref:memory-plot -->",
        lambda: _img(page, "img/memory_vs_context.png", "Compute buffer vs context for every graph variant"))
    sub(r"<!-- mlaref:memory-timeline -->",
        lambda: _img(page, "img/memory_timeline.png", "Live bytes during the first layers, f32 and direct"))
    sub(r"<!-- mlaref:memory-variants -->", lambda: _gen("memory").variants_table(_plan_rows()))
    sub(r"<!-- mlaref:memory-designs -->", lambda: _gen("memory").design_table())
    sub(r"<!-- mlaref:memory-peak (\w+) -->", lambda v: _gen("memory").peak_table(v))
    sub(r"<!-- mlaref:memory-slope ([\w-]+) -->", lambda v: str(_gen("memory").slope(_plan_rows(), v)))
    sub(r"<!-- mlaref:bench-snapshot ([\w-]+) -->", lambda v: _gen("report").bench_snapshot(v))
    sub(r"<!-- mlaref:kernel-grammar -->", lambda: _gen("kernels").grammar_block())
    sub(r"<!-- mlaref:kernel-name-examples -->", lambda: _gen("kernels").parsed_examples())
    sub(r"<!-- mlaref:kernel-dispatch -->", lambda: rst_to_md(_gen("kernels").dispatch_doc()))
    sub(r"<!-- mlaref:kernel-plan-fields -->", lambda: _gen("kernels").plan_fields())
    sub(r"<!-- mlaref:kernel-lane-map -->",
        lambda: _img(page, "img/lane_map_l8a2.png", "Lane map and fold of plan mlaref_l8a2 over six q8_0 blocks"))
    sub(r"<!-- mlaref:kernel-lane-map-check -->", _lane_map_check)
    sub(r"<!-- mlaref:report (\w+) -->", lambda section: report_section(section, page))
    sub(r"<!-- mlaref:conform-verdicts -->", lambda: _gen("conform").verdict_tables())
    return markdown


def report_images() -> dict[str, bytes]:
    return _gen("report").images()


def report_section(which: str, page) -> str:
    return _gen("report").section(which, "../" * page.file.src_uri.count("/"))


def _plan_rows():
    key = "img/memory_vs_context.png:data"
    if key not in _CACHE:
        _CACHE["img/memory_vs_context.png"], _CACHE[key] = _gen("memory").plan_plot_png()
    return _CACHE[key]


def _lane_map_check() -> str:
    n, same = _gen("kernels").replay_q8_0()
    if same != n:
        raise RuntimeError(f"the lane map drawn on the Kernels page disagrees with the reference vec_dot on "
                           f"{n - same} of {n} rows")
    return (f"During this build the order drawn above was replayed in NumPy on {n} random q8_0 rows of 576 "
            f"values (18 blocks) and gave the same bytes as `mlaref.reference.ops.vec_dot.vec_dot(..., "
            f"plan=\"mlaref_l8a2\")` for all {same} of them.")


def on_page_markdown(markdown, page, config, files):
    def table(m):
        return seed_table(m.group(1))

    markdown = re.sub(r"<!-- mlaref:seed-table (\w+) -->", table, markdown)
    if "<!-- mlaref:seed-figure -->" in markdown:
        depth = page.file.src_uri.count("/")
        link = "../" * depth + "img/seed_pr253.png"
        fig = (f"![Speed-up and compute buffer of PR #253, drawn from the published tables]({link})"
               if _have_matplotlib() else "*(figure skipped: matplotlib is not installed)*")
        markdown = markdown.replace("<!-- mlaref:seed-figure -->", fig)
    if "<!-- mlaref:format-table -->" in markdown:
        markdown = markdown.replace("<!-- mlaref:format-table -->", format_overview(page))
    if "<!-- mlaref:op-table -->" in markdown:
        markdown = markdown.replace("<!-- mlaref:op-table -->", op_overview(page))
    if "<!-- mlaref:isa-table -->" in markdown:
        markdown = markdown.replace("<!-- mlaref:isa-table -->", _gen("kernels").isa_table())
    if "<!-- mlaref:memory-table -->" in markdown:
        markdown = markdown.replace("<!-- mlaref:memory-table -->", memory_table())
    if "<!-- mlaref:kernel-table -->" in markdown:
        markdown = markdown.replace("<!-- mlaref:kernel-table -->", _gen("kernels").kernel_tables())
    return _gen("facts").link_fact_citations(generated_markers(markdown, page), page)


# ----------------------------------------------------------------------------------------------------------
# Block formats
# ----------------------------------------------------------------------------------------------------------
def _formats():
    from mlaref import reference  # noqa: PLC0415

    return reference.registry()


def _doc(fmt) -> str:
    cls = type(fmt)
    own = cls.__dict__.get("__doc__")
    return inspect.cleandoc(own) if own else inspect.cleandoc(sys.modules[cls.__module__].__doc__ or "")


def format_overview(page) -> str:
    depth = page.file.src_uri.count("/")
    prefix = "../" * depth + "formats/"
    rows = ["| format | ggml type | values per block | bytes per block | bits per value | vec_dot type | summary |",
            "|---|---:|---:|---:|---:|---|---|"]
    for name, fmt in sorted(_formats().items()):
        summary = _md_inline(_doc(fmt).split("\n", 1)[0].split(":", 1)[-1].strip())
        bpv = 8 * fmt.type_size / fmt.block_size
        rows.append(f"| [{name}]({prefix}{name}.md) | {fmt.ggml_type} | {fmt.block_size} | {fmt.type_size} | "
                    f"{bpv:g} | {fmt.vec_dot_type} | {summary} |")
    return "\n".join(rows)


def _dtype_layout(dtype: np.dtype) -> list[tuple[int, int, str, str]]:
    """(offset, bytes, field, element type) for every field of a structured dtype (a plain dtype is one field)."""
    if dtype.names is None:
        return [(0, dtype.itemsize, "(value)", _dtype_name(dtype))]
    out = []
    for name in dtype.names:
        sub, offset = dtype.fields[name][:2]
        base, shape = (sub.base, sub.shape) if sub.shape else (sub, ())
        kind = _dtype_name(base) + ("[" + "][".join(map(str, shape)) + "]" if shape else "")
        out.append((offset, sub.itemsize, name, kind))
    return out


def _dtype_name(dt: np.dtype) -> str:
    order = "" if dt.itemsize == 1 else " (little-endian)" if dt.byteorder in "<=|" else " (big-endian)"
    return {"u": "uint", "i": "int", "f": "float"}.get(dt.kind, dt.kind) + f"{8 * dt.itemsize}{order}"


def _example_input(n: int) -> np.ndarray:
    j = np.arange(n, dtype=np.float64)
    return (np.sin(0.37 * j + 0.5) * (1.0 + j / n) * np.where(j % 7 == 3, 4.0, 1.0)).astype(np.float32)


def format_page(fmt) -> str:
    from mlaref import reference  # noqa: PLC0415

    name = fmt.name
    out = [f"# {name}", "", "*Generated from `mlaref.reference` when the site was built.*", ""]
    out += [
        "| property | value |", "|---|---|",
        f"| ggml type id | {fmt.ggml_type} |",
        f"| values per block | {fmt.block_size} |",
        f"| bytes per block | {fmt.type_size} |",
        f"| bits per value | {8 * fmt.type_size / fmt.block_size:g} |",
        *([f"| row metadata (bytes at the start of every row) | {fmt.row_meta_size} |"] if fmt.row_meta_size else []),
        f"| vec_dot type (src1 rows are converted to it) | {fmt.vec_dot_type} |",
        f"| quantize variants | {', '.join(f'`{k}`' for k in fmt.variants)} |",
        f"| valid domain | {_md_inline(fmt.domain)} |",
        "",
        "## Byte layout (from the NumPy dtype)", "",
        "| offset | bytes | field | element type |", "|---:|---:|---|---|",
    ]
    out += [f"| {o} | {b} | `{f}` | {k} |" for o, b, f, k in _dtype_layout(_layout_dtype(fmt, fmt.block_size))]
    out += ["", "## Specification (the format's docstring)", "", rst_to_md(_doc(fmt)), ""]
    out += _worked_example(fmt, reference)
    return "\n".join(out) + "\n"


def _layout_dtype(fmt, n: int) -> np.dtype:
    """The dtype a row of ``n`` values is shown with: the block, or the whole row where rows carry metadata
    (q8_KV: its header, then the values)."""
    return fmt.row_dtype(n) if fmt.row_meta_size else fmt.dtype


def _worked_example(fmt, reference) -> list[str]:
    n = max(fmt.block_size, 8)
    x = _example_input(n)
    out = ["## Worked example (computed by the reference during the build)", ""]
    variant = "ref" if "ref" in fmt.variants else next(iter(fmt.variants), None)
    try:
        if variant is None:
            raise NotImplementedError("no quantize variant")
        data = reference.quantize(x[None, :], fmt.name, variant=variant)[0]
        how = f"`mlaref.reference.quantize(x, {fmt.name!r}, variant={variant!r})` of"
    except NotImplementedError as exc:
        return out + [f"This format has no quantizer in the reference ({_md_inline(str(exc))}).", ""]
    y = reference.dequantize(data[None, :], fmt.name)[0]
    out += [f"{how} the {n} values", "", "```text", _wrap_floats(x), "```", ""]
    blocks = data.view(_layout_dtype(fmt, n))
    shown, which = (data, "all of them") if data.size <= 64 else (data[: fmt.type_size], "the first block")
    out += [f"gives {data.size} bytes ({blocks.size} block{'s' if blocks.size > 1 else ''}); {which}:", "",
            "```text", _hexdump(shown), "```", ""]
    if blocks.dtype.names:
        out += ["decoded by field (raw integers; a 16-bit scalar field is also shown as the f16 it holds):", "",
                "```text"]
        for field in blocks.dtype.names:
            v = np.asarray(blocks[0][field])
            text = np.array2string(v, max_line_width=100, threshold=10**6)
            if v.shape == () and v.dtype == np.uint16:
                text += f" (0x{int(v):04x}; as f16: {float(v.view(np.float16)):.6g})"
            out.append(f"{field} = {text}")
        out += ["```", ""]
    err = np.abs(y.astype(np.float64) - x.astype(np.float64))
    out += ["`mlaref.reference.dequantize` gives back", "", "```text", _wrap_floats(y), "```", "",
            f"largest absolute error {err.max():.6g}, RMS error {np.sqrt(np.mean(err ** 2)):.6g}.", ""]
    return out


def _hexdump(b: np.ndarray) -> str:
    return "\n".join(f"{i:04x}  " + " ".join(f"{v:02x}" for v in b[i:i + 16]) for i in range(0, b.size, 16))


def _wrap_floats(v: np.ndarray, per_line: int = 8) -> str:
    items = [f"{float(t):>11.6g}" for t in v]
    return "\n".join(" ".join(items[i:i + per_line]) for i in range(0, len(items), per_line))


# ----------------------------------------------------------------------------------------------------------
# Ops
# ----------------------------------------------------------------------------------------------------------
def _op_modules() -> dict:
    """Every public module of ``mlaref.reference.ops`` (one op per file) by name."""
    import importlib  # noqa: PLC0415
    import pkgutil  # noqa: PLC0415

    import mlaref.reference.ops as ops  # noqa: PLC0415

    return {m.name: importlib.import_module(f"{ops.__name__}.{m.name}")
            for m in pkgutil.iter_modules(ops.__path__) if not m.name.startswith("_")}


def op_overview(page) -> str:
    prefix = "../" * page.file.src_uri.count("/") + "ops/"
    rows = ["| op | what it computes |", "|---|---|"]
    for name, mod in sorted(_op_modules().items()):
        first = inspect.cleandoc(mod.__doc__ or "").split("\n", 1)[0]
        rows.append(f"| [{name}]({prefix}{name}.md) | {_md_inline(first.split(':', 1)[-1].strip())} |")
    return "\n".join(rows)


def op_page(name: str, mod) -> str:
    out = [f"# {name}", "", f"*Generated from `{mod.__name__}` when the site was built.*", "",
           rst_to_md(inspect.cleandoc(mod.__doc__ or "(no module docstring)")), ""]
    members = [(n, o) for n, o in vars(mod).items()
               if not n.startswith("_") and getattr(o, "__module__", None) == mod.__name__
               and (inspect.isfunction(o) or inspect.isclass(o))]
    if members:
        out += ["## API", ""]
    for n, o in members:
        try:
            sig = str(inspect.signature(o))
        except (TypeError, ValueError):
            sig = ""
        kind = "class " if inspect.isclass(o) else ""
        out += [f"### `{kind}{n}{sig}`", "", rst_to_md(inspect.cleandoc(o.__doc__ or "(no docstring)")), ""]
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------------------------------------
# reStructuredText-flavoured docstrings -> Markdown
# ----------------------------------------------------------------------------------------------------------
_BORDER = re.compile(r"^\s*=+(\s+=+)+\s*$")


def _md_inline(s: str) -> str:
    s = re.sub(r":(?:mod|func|class|meth|attr|data):`~?\.?([^`]+)`", r"`\1`", s)
    return re.sub(r"``(.+?)``", r"`\1`", s, flags=re.S)


def _cells(line: str, spans) -> list[str]:
    cells = []
    for k, (a, b) in enumerate(spans):
        end = len(line) if k == len(spans) - 1 else spans[k + 1][0]
        cells.append(line[a:end].strip())
    return cells


def rst_to_md(text: str) -> str:
    """The subset of reStructuredText our docstrings use: ``code``, simple tables, ``::`` literal blocks."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if _BORDER.match(line):
            spans = [m.span() for m in re.finditer(r"=+", line)]
            j = i + 1
            rows: list[list[str]] = []
            borders = 1
            header_rows = 0
            while j < len(lines) and borders < 3:
                if _BORDER.match(lines[j]):
                    borders += 1
                    if borders == 2:
                        header_rows = len(rows)
                elif lines[j].strip():
                    cells = _cells(lines[j], spans)
                    if rows and not cells[0] and (borders == 2 or len(rows) > header_rows):
                        rows[-1] = [f"{a} {c}".strip() for a, c in zip(rows[-1], cells)]  # continuation line
                    else:
                        rows.append(cells)
                j += 1
            head, body = rows[:header_rows] or [rows[0]], rows[header_rows:] if header_rows else rows[1:]
            esc = [[_md_inline(c).replace("|", "\\|") for c in r] for r in [head[0], *body]]
            out.append("| " + " | ".join(esc[0]) + " |")
            out.append("|" + "---|" * len(spans))
            out += ["| " + " | ".join(r) + " |" for r in esc[1:]]
            out.append("")
            i = j
            continue
        if line.rstrip().endswith("::") and not line.strip().startswith(".."):
            out.append(_md_inline(line.rstrip()[:-1]))
            j = i + 1
            block = []
            while j < len(lines) and (not lines[j].strip() or lines[j].startswith((" ", "\t"))):
                block.append(lines[j])
                j += 1
            while block and not block[-1].strip():
                block.pop()
            out += ["", "```text", *inspect.cleandoc("\n".join(block)).splitlines(), "```", ""]
            i = j
            continue
        out.append(_md_inline(line))
        i += 1
    # ``code`` that a line break splits: join it outside fenced blocks.
    parts = "\n".join(out).split("```")
    return "```".join(_md_inline(p) if k % 2 == 0 else p for k, p in enumerate(parts))


# ----------------------------------------------------------------------------------------------------------
# CLI and API reference
# ----------------------------------------------------------------------------------------------------------
def _help(*args: str) -> str:
    env = dict(os.environ, COLUMNS="100")
    r = subprocess.run([sys.executable, "-m", "mlaref", *args, "--help"], capture_output=True, text=True,
                       env=env, timeout=120, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"mlaref {' '.join(args)} --help failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout.rstrip()


def cli_page() -> str:
    from mlaref.codegen import cli  # noqa: PLC0415

    out = ["# Command line", "", "*Generated by running `mlaref ... --help` when the site was built.* Commands",
           "whose module does not exist yet say so when run (exit code 2).", "", "## mlaref", "", "```text",
           _help(), "```", ""]
    for name in cli.COMMANDS:
        out += [f"## mlaref {name}", "", "```text", _help(name), "```", ""]
        if name == "bench":
            out += ["### mlaref bench types", "", "```text", _help("bench", "types"), "```", ""]
    return "\n".join(out)


_API = {
    "mlaref.reference": ["quantize", "dequantize", "get_type", "registry"],
    "mlaref.reference.fp": None,  # everything in __all__
    "mlaref.reference.libm": None,
    "mlaref.reference.builds": ["GgmlBuild", "level"],
    "mlaref.reference.compare": None,
    "mlaref.codegen.bench": ["measure", "measure_interleaved", "Timing", "bench_types", "format_table"],
}


def api_page() -> str:
    import importlib  # noqa: PLC0415

    out = ["# Python API", "", "*Generated from the docstrings when the site was built.*", ""]
    for modname, names in _API.items():
        mod = importlib.import_module(modname)
        out += [f"## `{modname}`", "", rst_to_md(inspect.cleandoc(mod.__doc__ or "")), ""]
        for name in names or mod.__all__:
            obj = getattr(mod, name)
            try:
                sig = str(inspect.signature(obj))
            except (TypeError, ValueError):
                sig = ""
            out += [f"### `{name}{sig}`", "", rst_to_md(inspect.cleandoc(obj.__doc__ or "(no docstring)")), ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------------------
# ISAs and generated kernels
# ----------------------------------------------------------------------------------------------------------
def memory_table() -> str:
    """KV cache and compute buffer per context from the allocator model, beside the seed's printed values."""
    try:
        from mlaref.reference.graphs import alloc  # noqa: PLC0415
        from mlaref.reference.hparams import preset  # noqa: PLC0415
    except ImportError as exc:
        return f"*The allocator model is not available in this build ({exc}).*"
    hp = preset("deepseek-v2-lite")
    printed = getattr(alloc, "PRINTED_TABLE", {})
    rows = ["| context | KV cache: model | seed | main: model | seed | ik prints | PR: model | seed | ik prints |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n_ctx, (kv_s, pr_s, main_s) in sorted(alloc.SEED_TABLE.items()):
        kv = alloc.mib(alloc.kv_cache_bytes(hp, n_ctx, "f16"))
        main = alloc.mib(alloc.compute_buffer(hp, n_ctx, variant="f32").buffer_size)
        pr = alloc.mib(alloc.compute_buffer(hp, n_ctx, variant="direct").buffer_size)
        pr_p, main_p = printed.get(n_ctx, ("-", "-"))

        def cell(model, seed):
            return model if model == seed else f"**{model}**"

        rows.append(f"| {n_ctx} | {cell(kv, kv_s)} | {kv_s} | {cell(main, main_s)} | {main_s} | {main_p} | "
                    f"{cell(pr, pr_s)} | {pr_s} | {pr_p} |")
    return "\n".join(rows)


# ----------------------------------------------------------------------------------------------------------
# The seed's tables and figure
# ----------------------------------------------------------------------------------------------------------
def _seed() -> dict:
    with open(SEED, encoding="utf-8") as f:
        return yaml.safe_load(f)


def seed_table(which: str) -> str:
    seed = _seed()
    if which not in seed:
        raise KeyError(f"docs/data/seed_pr253.yml has no table {which!r}")
    t = seed[which]
    align = {"left": ":---", "right": "---:", "center": ":---:"}
    rows = ["| " + " | ".join(t["columns"]) + " |", "|" + "|".join(align[a] for a in t["align"]) + "|"]
    rows += ["| " + " | ".join(map(str, r)) + " |" for r in t["rows"]]
    rows += ["", f"*{t['title']}. Source: [{seed['source']}]({seed['url']}), as published.*"]
    return "\n".join(rows)


def _have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


def seed_figure_png() -> bytes | None:
    if not _have_matplotlib():
        return None
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    seed = _seed()
    pp = seed["pp"]["rows"]
    mem = seed["memory"]["rows"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    tokens = [int(r[0][2:]) for r in pp]
    a.plot(tokens, [float(r[3]) for r in pp], "o-")
    a.set_xscale("log", base=2)
    a.set_xlabel("prompt tokens")
    a.set_ylabel("speed-up (PR / main)")
    a.set_title("prompt processing")
    ctx = [int(r[0]) for r in mem]
    b.plot(ctx, [float(r[3]) for r in mem], "o-", label="main")
    b.plot(ctx, [float(r[2]) for r in mem], "o-", label="PR #253")
    b.plot(ctx, [float(r[1]) for r in mem], "--", label="KV cache (f16)")
    b.set_xscale("log", base=2)
    b.set_yscale("log")
    b.set_xlabel("context")
    b.set_ylabel("MiB")
    b.set_title("compute buffer")
    b.legend()
    fig.suptitle("DeepSeek-Lite, Ryzen-7950X (data: ik_llama.cpp PR #253)", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()

"""``mlaref.reference.gguf_io`` (the module before it became the package ``mlaref.reference.gguf``) still works."""

from __future__ import annotations

from mlaref.reference import gguf, gguf_io
from mlaref.reference.graphs import alloc


def test_the_old_import_path_gives_the_same_objects():
    assert gguf_io.__all__
    for name in gguf_io.__all__:
        new = alloc if name == "kv_cache_plan" else gguf
        assert getattr(gguf_io, name) is getattr(new, name), name


def test_the_old_path_keeps_every_public_name_of_the_reader_and_writer():
    # the command line (configure / run) moved to mlaref.codegen.cli.inspect; everything else is still there
    assert set(gguf.__all__) - {"gguf_type"} <= set(gguf_io.__all__)

"""mlaref: the executable specification of FlashMLA-2's CPU ops over ggml block formats.

The package is laid out as three parts (see README.md):

* :mod:`mlaref.reference` -- readable NumPy: rounding, block formats, tensors, ops, graphs, allocator;
* :mod:`mlaref.codegen`   -- templates, the kernel catalog, the cffi build and run-time dispatch;
* :mod:`mlaref.generated` -- the C sources codegen writes (never edited by hand).
"""

__version__ = "0.1.0"

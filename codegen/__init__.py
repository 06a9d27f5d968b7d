"""Kernel generation: ISA table, catalog, naming, templates, cffi build and run-time dispatch."""

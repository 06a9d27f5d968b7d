"""Executable peers: real implementations the specification is checked against (upstream ggml through
ggml-python, :mod:`.ggml` and :mod:`.ggml_ops`; ggml built at each CPU level, :mod:`.build`; ggml cross-built for
aarch64 and run under qemu, :mod:`.cross`)."""

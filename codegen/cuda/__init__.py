"""The CUDA target: nvcc builds of the generated ``.cu`` kernels, their ctypes wrappers, and the device check.

* :mod:`.build`: one nvcc call per (family, ISA), one translation unit, a content-addressed cache; ctypes loading;
  :func:`.build.gpu_present`, a driver probe that never raises.
* :mod:`.kernels`: launch wrappers that check every argument in Python before a pointer reaches C.
* :mod:`.check`: ``mlaref cuda-check``: build, run every kernel against the reference, time, write JSON + log.

CPU dispatch never sees these kernels: they live in ``catalog.cuda_catalog()``, not in ``catalog.catalog()``.
"""

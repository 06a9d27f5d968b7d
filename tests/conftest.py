"""Shared fixtures: a seeded generator and the ggml peer (upstream ggml through ggml-python)."""

import numpy as np
import pytest

from mlaref.codegen.peers import ggml as ggml_peer


@pytest.fixture
def rng():
    return np.random.default_rng(20250313)


@pytest.fixture(scope="session")
def ggml():
    """The ggml peer module; tests that compare with upstream ggml skip, naming why, when it is absent."""
    if not ggml_peer.available():
        pytest.skip(ggml_peer.unavailable_reason())
    return ggml_peer


@pytest.fixture(scope="session")
def peer_build(ggml):
    """The :class:`mlaref.reference.builds.GgmlBuild` of the loaded ggml library: the features it was compiled with
    (read from the library, never from this CPU) and its tuning."""
    return ggml.build()


@pytest.fixture(scope="session")
def peer_plan(peer_build):
    """The reduction plan upstream ggml's vec_dot follows in the loaded build (``GgmlBuild.vec_dot_plan``)."""
    return peer_build.vec_dot_plan


@pytest.fixture(scope="session")
def ggml_lib(ggml):
    """The ctypes library of the loaded ggml (ggml-python's ``ggml.ggml``): ggml's own functions by name."""
    return ggml.lib()


@pytest.fixture(scope="session")
def ggml_ops(ggml):
    """Upstream ggml's ops on mlaref Tensors (``mlaref.codegen.peers.ggml_ops``), on the loaded library."""
    from mlaref.codegen.peers import ggml_ops

    return ggml_ops


@pytest.fixture(scope="session")
def ggml_level():
    """``need(level)``: the :class:`~mlaref.reference.builds.GgmlBuild` of ``level``, after skipping (with the
    reason) where this CPU cannot run that level or ggml-python, whose bindings every level build uses, is absent."""
    from mlaref.codegen.peers import build as peer_build
    from mlaref.codegen.peers import ggml as ggml_peer
    from mlaref.reference import builds

    def need(level: str):
        miss = peer_build.missing_for(level)
        if miss:
            pytest.skip(f"ggml level {level} needs {', '.join(miss)}, which this CPU lacks")
        if not ggml_peer.available():
            pytest.skip(ggml_peer.unavailable_reason())
        return builds.level(level)

    return need

"""Shared fixtures: a seeded generator and the ggml peer (upstream ggml through ggml-python)."""

import numpy as np
import pytest

from mlaref.codegen import ggml_peer


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
def peer_plan(ggml):
    """The reduction plan upstream ggml's vec_dot follows as ggml-python built it on this CPU
    (``ggml_peer.vec_dot_plan``); tests skip, naming the CPU's missing features, where no plan is modelled."""
    try:
        return ggml.vec_dot_plan()
    except LookupError as exc:
        pytest.skip(str(exc))

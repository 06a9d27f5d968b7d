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

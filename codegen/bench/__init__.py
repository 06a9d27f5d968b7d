"""`mlaref bench` (:mod:`.method`): this package re-exports its public API."""

from mlaref.codegen.bench.method import *  # noqa: F403

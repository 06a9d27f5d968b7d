"""`mlaref conform` (:mod:`.runner`): this package re-exports its public API."""

from mlaref.codegen.conform.runner import *  # noqa: F403

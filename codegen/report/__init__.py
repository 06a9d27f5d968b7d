"""`mlaref report` (:mod:`.builder`): this package re-exports its public API."""

from mlaref.codegen.report.builder import *  # noqa: F403

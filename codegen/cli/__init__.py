"""The `mlaref` command line (:mod:`.main`)."""

from mlaref.codegen.cli.main import COMMANDS, main

__all__ = ["COMMANDS", "main"]

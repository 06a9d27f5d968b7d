"""``python -m mlaref.codegen.conform``: a conformance run, or (``--worker``) the worker loop of one."""

import argparse
import sys

from mlaref.codegen.conform.runner import configure, run
from mlaref.codegen.conform.worker import worker_main

if sys.argv[1:2] == ["--worker"]:
    sys.exit(worker_main(sys.argv[2:]))
_parser = argparse.ArgumentParser(prog="python -m mlaref.codegen.conform", description="check a real libggml against "
                                  "the specification, op by op")
configure(_parser)
sys.exit(run(_parser.parse_args()))

"""The `mlaref` command line: a thin front; each command lives in the module that does the work."""

from __future__ import annotations

import argparse
import importlib
import sys

import mlaref

# command -> (module, help). The module defines ``configure(parser)`` and ``run(args) -> int``.
COMMANDS = {
    "info": ("mlaref.codegen.cli.info", "Python, NumPy, compiler, CPU features found / not found, kernels chosen"),
    "generate": ("mlaref.codegen.generate", "render the kernel catalog into generated/ (--check to verify)"),
    "bench": ("mlaref.codegen.cli.bench", "benchmarks: types, kernels, ops, mla"),
    "plan": ("mlaref.codegen.cli.plan", "KV cache and compute buffer per context (ggml-alloc model)"),
    "inspect": ("mlaref.codegen.cli.inspect", "hyper-parameters, tensors and memory plan of a GGUF file"),
    "report": ("mlaref.codegen.report.builder", "the main job: build, check, benchmark, reproduce the seed, write a report"),
    "conform": ("mlaref.codegen.conform.runner", "check a real libggml against the specification, op by op"),
    "peer": ("mlaref.codegen.peers.build", "list or build the peers (upstream ggml at each CPU level) from source"),
    "peer-cuda": ("mlaref.codegen.peers.cuda", "upstream ggml-cuda as a peer: bundle its source here, build and probe it on a GPU"),
    "cuda-check": ("mlaref.codegen.cuda.check", "build the CUDA kernels; on a GPU check them bit for bit and time them"),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="mlaref", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mlaref {mlaref.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = {}
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        try:
            module = importlib.import_module(module_name)
            configure = module.configure
        except (ImportError, AttributeError) as exc:
            p.set_defaults(_missing=f"mlaref {name}: not available in this build ({exc})")
            continue
        configure(p)
        modules[name] = module
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if getattr(args, "_missing", None):
        print(args._missing, file=sys.stderr)
        return 2
    return int(modules[args.command].run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

"""The `mlaref` command line: a thin front over the reference, codegen, planner and reports."""

import argparse
import sys

import mlaref


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="mlaref", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mlaref {mlaref.__version__}")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("info", help="Python, NumPy, compiler and CPU features found / not found")
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    print("info: not yet")
    return 0


if __name__ == "__main__":
    sys.exit(main())

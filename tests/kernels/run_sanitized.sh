#!/usr/bin/env bash
# The kernel tests with every cffi module built with -fsanitize=address,undefined (MLAREF_SANITIZE=1, read by
# codegen/build.py; sanitized modules get their own cache keys). The sanitizer runtimes are preloaded because
# the Python binary itself is not instrumented. Usage: tests/kernels/run_sanitized.sh [test files] [pytest args]
# (default: every kernel test of tests/kernels except the qemu ones).
set -euo pipefail
cd "$(dirname "$0")/../.."
export MLAREF_SANITIZE=1
export MLAREF_CACHE_DIR="${MLAREF_CACHE_DIR:-${TMPDIR:-/tmp}/mlaref-sanitize-cache}"
CC_BIN="${CC:-gcc}"
export LD_PRELOAD="$("$CC_BIN" -print-file-name=libasan.so):$("$CC_BIN" -print-file-name=libubsan.so)"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:allocator_may_return_null=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
# The qemu tests run cross-compiled executables (not sanitized here); everything else runs.
if [ $# -eq 0 ]; then
    set -- tests/kernels -k "not neon"
fi
exec python -m pytest -q -p no:cacheprovider "$@"

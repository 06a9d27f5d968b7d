"""``mlaref conform``: run the specification's case set against a real libggml, op by op, a verdict per case.

==============  ==================================================================================================
module          its one job
==============  ==================================================================================================
``inputs``      the input generators a case names (generator + seed, never raw data)
``ops``         per op, the spec's result and the loaded library's for the same input bytes
``case``        a replayable case and its JSON file form (``mlaref.conform.case/1``)
``caseset``     the specification's case set, its quick subset and the findings' reproducers (``cases/*.json``)
``verdict``     the spec's output against the library's, and the verdict record of a case
``worker``      the run: every case in a worker process, so a crash costs only that case
``runner``      the command line (``mlaref conform``, ``python -m mlaref.codegen.conform``)
==============  ==================================================================================================

This package re-exports their public names.
"""

from mlaref.codegen.conform.case import NMSE_BOUND, NMSE_DEFAULT, SCHEMA, Case, cases_text, load_cases, save_cases
from mlaref.codegen.conform.caseset import CASES_DIR, KQ_SCALE, YARN, default_cases, finding_cases, quick_cases, select
from mlaref.codegen.conform.inputs import GENERATORS, make_input, make_inputs
from mlaref.codegen.conform.ops import OPS, TEST_ONLY_OPS
from mlaref.codegen.conform.outputs import Output, Unsupported
from mlaref.codegen.conform.runner import configure, run, snapshot_name
from mlaref.codegen.conform.verdict import STATUSES, compare, verdict_for
from mlaref.codegen.conform.worker import DEFAULT_TIMEOUT, Worker, run_cases, worker_main
from mlaref.reference.compare import nmse, ulps

__all__ = [
    # case
    "SCHEMA", "NMSE_DEFAULT", "NMSE_BOUND", "Case", "cases_text", "save_cases", "load_cases",
    # inputs
    "GENERATORS", "make_input", "make_inputs",
    # ops
    "OPS", "TEST_ONLY_OPS", "Output", "Unsupported",
    # verdict (and the measures it uses)
    "STATUSES", "compare", "verdict_for", "nmse", "ulps",
    # worker
    "DEFAULT_TIMEOUT", "Worker", "worker_main", "run_cases",
    # caseset
    "CASES_DIR", "KQ_SCALE", "YARN", "default_cases", "quick_cases", "finding_cases", "select",
    # runner
    "configure", "run", "snapshot_name",
]

"""``python -m mlaref.codegen.cli``: the `mlaref` command line."""

import sys

from mlaref.codegen.cli.main import main

sys.exit(main())

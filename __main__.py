"""`python -m mlaref` runs the command line."""

import sys

from mlaref.codegen.cli import main

sys.exit(main())

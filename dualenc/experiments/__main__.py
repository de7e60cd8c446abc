"""`python -m dualenc.experiments`: see dualenc/experiments/main.py."""

import sys

from dualenc import cli
from dualenc.experiments import main

sys.exit(cli.report_bad_input(main.main))

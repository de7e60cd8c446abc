"""`python -m dualenc.export`: see dualenc/export/main.py."""

import sys

from dualenc import cli

cli.one_cpu_device_per_core()  # before JAX: encoding a corpus (--format=opensearch) uses them all

from dualenc.export import main  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

sys.exit(cli.report_bad_input(main.main))

r"""Experiment suites: the two papers' central comparisons as grids of ordinary training and
evaluation runs, resumable, with tables (mean +- std over seeds) and figures.

  python -m dualenc.experiments samtone --dry_run      # list the runs and their time
  python -m dualenc.experiments samtone                # run what is not finished, then report
  python -m dualenc.experiments sparse

See dualenc/experiments/main.py for the flags, grid.py for the layout of what is written.
"""

r"""`python -m dualenc.experiments SUITE`: run a suite's unfinished cells, then its report.

  python -m dualenc.experiments samtone --dry_run
  python -m dualenc.experiments samtone --seeds=0 --datasets=wikiqa
  python -m dualenc.experiments sparse --keep_checkpoints=false
  python -m dualenc.experiments samtone --scale=tiny --output_dir=/tmp/suites --report_dir=/tmp/report

Suites: `samtone` (dualenc/experiments/samtone_suite.py) and `sparse` (sparse_suite.py). Each
cell runs `python -m dualenc.train` with gin files and overrides, then `python -m
dualenc.evaluate --checkpoint=...`, as subprocesses from the repository root, under
OUTPUT_DIR/<suite>/<cell>/; finished cells are recorded in REPORT_DIR/<suite>/ledger.json and
skipped by later invocations (copy or commit REPORT_DIR to continue elsewhere). The report
(table.md, table.json, figures/) is rendered from the ledger after every invocation; --table_only
renders it without running anything. Data: $DUALENC_DATA_DIR, default ../shared/data. On a GPU
or TPU machine the same command runs unchanged (the programs use the accelerator JAX finds).
"""

from __future__ import annotations

if __name__ == "__main__":  # run as dualenc.X, not __main__: see dualenc/cli.py
  from dualenc import cli
  cli.run_program(__spec__.name)

import argparse
import pathlib
import sys
from typing import Optional, Sequence

from dualenc.experiments import grid
from dualenc.experiments import samtone_suite
from dualenc.experiments import sparse_suite

SUITES = {"samtone": samtone_suite, "sparse": sparse_suite}


def _bool(text: str) -> bool:
  if text.lower() not in ("true", "false", "1", "0"):
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
  return text.lower() in ("true", "1")


def _ints(text: str):
  try:
    return tuple(int(s) for s in text.split(","))
  except ValueError as e:
    raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m dualenc.experiments",
                                   description=__doc__.split("\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog=__doc__.split("\n", 2)[2])
  parser.add_argument("suite", choices=sorted(SUITES))
  parser.add_argument("--scale", choices=("cpu", "tiny"), default="cpu",
                      help="cpu: the suite as reported; tiny: two cells of a tiny model (tests)")
  parser.add_argument("--seeds", type=_ints, default=(0, 1, 2))
  parser.add_argument("--datasets", default=None,
                      help="comma-separated subset of the suite's datasets (default: all)")
  parser.add_argument("--train_steps", type=int, default=None,
                      help="training steps of every cell (default: the suite's)")
  parser.add_argument("--output_dir", default="runs/experiments",
                      help="checkpoints and evaluations, one folder per cell")
  parser.add_argument("--report_dir", default="docs/experiments",
                      help="ledger, tables and figures (small; commit it)")
  parser.add_argument("--keep_checkpoints", type=_bool, default=True,
                      help="false: delete a cell's checkpoints once its results are recorded")
  parser.add_argument("--dry_run", action="store_true", help="list the runs and their time")
  parser.add_argument("--table_only", action="store_true",
                      help="run nothing: render the report from the ledger")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  module = SUITES[args.suite]
  options = {"scale": args.scale, "seeds": args.seeds}
  if args.datasets:
    unknown = sorted(set(args.datasets.split(",")) - set(module.DATASETS))
    if unknown:
      parser.error(f"--datasets: unknown {unknown}; suite {args.suite} has "
                   f"{sorted(module.DATASETS)}")
    options["datasets"] = tuple(args.datasets.split(","))
  if args.train_steps is not None:
    if args.train_steps < 1:
      parser.error("--train_steps must be positive")
    options["train_steps"] = args.train_steps
  suite = module.build(**options)
  # The report covers every dataset and at least the default seeds, whatever slice runs now.
  report = module.build(**dict(options, datasets=tuple(module.DATASETS),
                               seeds=tuple(sorted({0, 1, 2} | set(args.seeds)))))
  try:
    grid.run_suite(suite, pathlib.Path(args.output_dir).resolve(),
                   pathlib.Path(args.report_dir).resolve(), dry_run=args.dry_run,
                   table_only=args.table_only, keep_checkpoints=args.keep_checkpoints,
                   report_cells=report.cells)
  except RuntimeError as e:  # a command of the suite failed: its log's tail, no traceback
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0

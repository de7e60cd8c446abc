"""What every `python -m dualenc.<program>` shares: the `__main__` guard and bad-input errors.

Every program module starts with

    if __name__ == "__main__":
      from dualenc import cli
      cli.run_program(__spec__.name)

Run as `python -m dualenc.evaluate`, a file is first executed as `__main__`; had it gone on to
register gin configurables, they would be registered a second time when a gin file imports
`dualenc.evaluate` ("A different configurable ... already exists"). The guard runs the module
under its own name instead, once, and turns bad input into one `error:` line and exit code 2.
"""

from __future__ import annotations

import importlib
import sys
from typing import Callable, NoReturn, Optional, Sequence


def one_cpu_device_per_core() -> None:
  """Before JAX starts: one CPU device per core, so sharded encoding keeps every core busy (see
  dualenc/evaluation/encode.py). An explicit device count in XLA_FLAGS wins; accelerators are
  unaffected; too late (no effect) once JAX is imported."""
  import os  # pylint: disable=g-import-not-at-top
  flags = os.environ.get("XLA_FLAGS", "")
  if "jax" not in sys.modules and "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = (f"{flags} --xla_force_host_platform_device_count="
                               f"{os.cpu_count() or 1}").strip()


def bad_input_errors() -> tuple:
  """Exceptions that mean "the input is wrong" (file, line, gin binding or flag named in the
  message), as opposed to a bug, whose traceback is kept."""
  from dualenc import checkpoints  # pylint: disable=g-import-not-at-top
  from dualenc import convert  # pylint: disable=g-import-not-at-top
  from dualenc import gin_utils  # pylint: disable=g-import-not-at-top
  from dualenc.data import records  # pylint: disable=g-import-not-at-top
  return (gin_utils.GinConfigError, records.DataFormatError, convert.CheckpointError,
          checkpoints.CheckpointError, FileNotFoundError, FileExistsError, ValueError)


def report_bad_input(main: Callable[[Optional[Sequence[str]]], int],
                     argv: Optional[Sequence[str]] = None) -> int:
  """Calls `main(argv)`; bad input becomes `error: <message>` on stderr and exit code 2."""
  try:
    return main(argv)
  except bad_input_errors() as e:
    from dualenc.data import records  # pylint: disable=g-import-not-at-top
    print(f"error: {e}", file=sys.stderr)
    if isinstance(e, records.DataFormatError):
      print("(--on_bad_record=warn skips and counts bad records instead)", file=sys.stderr)
    return 2


def run_program(module_name: str) -> NoReturn:
  """Runs `module_name.main()` from the module imported under its own name, then exits."""
  module = importlib.import_module(module_name)
  sys.exit(report_bad_input(module.main))

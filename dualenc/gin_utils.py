"""T5X-style gin command lines: repeatable `--gin_file`, `--gin_search_paths`, `--gin.X=Y`.

`--gin.MODEL_DIR="'runs/tiny'"` becomes the binding `MODEL_DIR = 'runs/tiny'` (string values
need their inner quotes, as in T5X). Unknown configurables or misspelled bindings fail at parse
time, before any compute, with gin's message naming the binding.
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
from typing import List, Optional, Sequence, Tuple

import gin

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_SEARCH_PATHS = (str(REPO_ROOT / "gin_configs"), ".", str(REPO_ROOT))


class _SearchMissFilter(logging.Filter):
  """gin logs 'Path not found' at ERROR for every search path that misses a file, even when
  a later one has it; a file found nowhere still raises, so those lines are noise."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Path not found")


logging.getLogger().addFilter(_SearchMissFilter())


class GinConfigError(ValueError):
  """A gin file or binding from the command line could not be applied."""


def add_gin_flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--gin_file", action="append", default=[],
                      help="gin file to parse; repeatable, later files override earlier ones")
  parser.add_argument("--gin_search_paths", default="",
                      help="comma-separated directories in which to look for --gin_file")
  parser.add_argument("--print_config", action="store_true",
                      help="print the resolved gin config and exit")


def split_gin_overrides(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
  """Separates `--gin.NAME=VALUE` (or `--gin.NAME VALUE`) flags from the rest of argv.

  Returns (bindings as 'NAME = VALUE' strings, remaining argv).
  """
  bindings, rest = [], []
  argv = list(argv)
  i = 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith("--gin."):
      name_value = arg[len("--gin."):]
      if "=" in name_value:
        name, value = name_value.split("=", 1)
      elif i + 1 < len(argv):
        name, value = name_value, argv[i + 1]
        i += 1
      else:
        raise GinConfigError(f"flag {arg} has no value (expected --gin.NAME=VALUE)")
      if not name:
        raise GinConfigError(f"flag {arg} names no binding (expected --gin.NAME=VALUE)")
      bindings.append(f"{name} = {value}")
    else:
      rest.append(arg)
    i += 1
  return bindings, rest


def parse(gin_files: Sequence[str], bindings: Sequence[str],
          search_paths: Sequence[str] = ()) -> None:
  """Parses gin files then bindings (bindings win); raises GinConfigError naming the culprit."""
  for path in list(search_paths) + list(DEFAULT_SEARCH_PATHS):
    if path:
      gin.add_config_file_search_path(os.path.abspath(path))
  for gin_file in gin_files:
    try:
      gin.parse_config_file(gin_file)
    except IOError as e:
      raise GinConfigError(f"gin file {gin_file!r} not found (searched "
                           f"{list(search_paths) + list(DEFAULT_SEARCH_PATHS)})") from e
    except Exception as e:  # gin raises ValueError/NameError/etc. with the location.
      raise GinConfigError(f"in gin file {gin_file}: {e}") from e
  for binding in bindings:
    try:
      gin.parse_config(binding)
    except Exception as e:
      raise GinConfigError(f"bad gin binding from the command line '--gin.{binding}': {e}") from e
  gin.finalize()


def parse_command_line(argv: Optional[Sequence[str]], description: str,
                       parser: Optional[argparse.ArgumentParser] = None) -> argparse.Namespace:
  """Parses a gin command line: flags into a Namespace, gin files and bindings into gin."""
  parser = parser or argparse.ArgumentParser(description=description)
  add_gin_flags(parser)
  bindings, rest = split_gin_overrides(argv if argv is not None else [])
  args = parser.parse_args(rest)
  search_paths = [p for p in args.gin_search_paths.split(",") if p]
  gin.clear_config()
  parse(args.gin_file, bindings, search_paths)
  return args

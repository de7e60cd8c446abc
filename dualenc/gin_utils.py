"""T5X-style gin command lines: repeatable `--gin_file`, `--gin_search_paths`, `--gin.X=Y`.

`--gin.MODEL_DIR="'runs/tiny'"` becomes the binding `MODEL_DIR = 'runs/tiny'` (string values
need their inner quotes, as in T5X). Unknown configurables or misspelled bindings fail at parse
time, before any compute, with gin's message naming the binding.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import pathlib
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import gin
import gin.resource_reader

from dualenc import fs

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_SEARCH_PATHS = (str(REPO_ROOT / "gin_configs"), ".", str(REPO_ROOT))


class _SearchMissFilter(logging.Filter):
  """gin logs 'Path not found' at ERROR for every search path that misses a file, even when
  a later one has it; a file found nowhere still raises, so those lines are noise."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Path not found")


logging.getLogger().addFilter(_SearchMissFilter())


# ---------------------------------------------------------------------------------------------
# Where gin finds files. gin tries each search prefix ('' = the working directory first, then
# the search paths) with each registered reader. Its package-resource reader treats
# 'runs/x.gin' as package `runs`, and an output folder named runs/ in the working directory
# is such a package (a namespace package, with no files of its own), on which that reader
# crashes before the search paths are tried. dualenc's readers: plain files, resources of
# regular packages only, and remote files (gs://...) through dualenc.fs.


def _package_resource(config_path: str) -> Optional[str]:
  """'pkg/sub/x.gin' -> the file x.gin inside the importable regular package pkg.sub."""
  head, filename = os.path.split(config_path)
  if not head or os.path.isabs(head) or fs.is_remote(config_path):
    return None
  try:
    spec = importlib.util.find_spec(head.replace("/", "."))
  except (ImportError, ValueError, AttributeError):
    return None
  if spec is None or not spec.has_location or not spec.origin:
    return None  # a namespace package: a plain directory, not a package's resources
  candidate = os.path.join(os.path.dirname(spec.origin), filename)
  return candidate if os.path.isfile(candidate) else None


def _open_package_resource(config_path: str):
  return open(_package_resource(config_path), encoding="utf-8")  # pylint: disable=consider-using-with


def _is_remote_file(config_path: str) -> bool:
  return fs.is_remote(config_path) and fs.path(config_path).is_file()


def _open_remote(config_path: str):
  return fs.path(config_path).open("r")


def _install_file_readers() -> None:
  readers = gin.config._FILE_READERS  # pylint: disable=protected-access
  readers[:] = [(reader, exists) for reader, exists in readers
                if reader is not gin.resource_reader.system_path_reader]
  for reader, exists in ((_open_package_resource, _package_resource),
                         (_open_remote, _is_remote_file)):
    gin.config.register_file_reader(reader, exists)


_install_file_readers()


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


def _add_search_paths(search_paths: Sequence[str]) -> List[str]:
  searched = [p for p in list(search_paths) + list(DEFAULT_SEARCH_PATHS) if p]
  prefixes = gin.config._LOCATION_PREFIXES  # pylint: disable=protected-access
  for path in searched:
    path = path if fs.is_remote(path) else os.path.abspath(path)
    if path not in prefixes:
      gin.add_config_file_search_path(path)
  return searched


def _bindings_snapshot() -> Dict[str, str]:
  """Every binding and macro gin holds now, as 'name' -> repr(value)."""
  snapshot = {}
  for (scope, selector), params in gin.config._CONFIG.items():  # pylint: disable=protected-access
    for param, value in params.items():
      if selector == "gin.macro":
        name = scope
      else:
        name = f"{scope + '/' if scope else ''}{'.'.join(selector.split('.')[-2:])}.{param}"
      snapshot[name] = repr(value)
  return snapshot


def _report_overrides(gin_file: str, before: Dict[str, str], set_by: Dict[str, str]) -> None:
  """Says on stderr which bindings `gin_file` changed that an earlier --gin_file had set: a
  later file silently resetting, say, TEMPERATURE is easy to miss."""
  after = _bindings_snapshot()
  for name, value in after.items():
    if name in before and before[name] != value:
      print(f"gin: --gin_file={gin_file} changes {name} from {before[name]} (set by "
            f"{set_by[name]}) to {value}", file=sys.stderr)
  for name, value in after.items():
    if before.get(name) != value:
      set_by[name] = gin_file


def _required_hint(error: Exception) -> str:
  message = str(error)
  if "%gin.REQUIRED" in message and "/" in message.split()[0]:
    name = message.split()[0].split("/")[0]
    return (f"{name} is required and not set: pass --gin.{name}=VALUE (strings in inner "
            f"quotes, e.g. --gin.MODEL_DIR=\"'runs/x'\")")
  return message


def parse(gin_files: Sequence[str], bindings: Sequence[str],
          search_paths: Sequence[str] = (), *, finalize: bool = True) -> None:
  """Parses gin files then bindings (bindings win); raises GinConfigError naming the culprit.

  finalize=False skips gin's final checks (REQUIRED values left unset), for --print_config.
  """
  searched = _add_search_paths(search_paths)
  set_by: Dict[str, str] = {}
  for gin_file in gin_files:
    before = _bindings_snapshot()
    try:
      gin.parse_config_file(gin_file)
    except IOError as e:
      raise GinConfigError(f"gin file {gin_file!r} not found (searched the working directory, "
                           f"then {searched})") from e
    except Exception as e:  # gin raises ValueError/NameError/etc. with the location.
      raise GinConfigError(f"in gin file {gin_file}: {e}") from e
    _report_overrides(gin_file, before, set_by)
  for binding in bindings:
    try:
      gin.parse_config(binding)
    except Exception as e:
      raise GinConfigError(f"bad gin binding from the command line '--gin.{binding}': {e}") from e
  if finalize:
    try:
      gin.finalize()
    except ValueError as e:
      raise GinConfigError(_required_hint(e)) from e


def parse_command_line(argv: Optional[Sequence[str]], description: str,
                       parser: Optional[argparse.ArgumentParser] = None) -> argparse.Namespace:
  """Parses a gin command line: flags into a Namespace, gin files and bindings into gin."""
  parser = parser or argparse.ArgumentParser(description=description)
  add_gin_flags(parser)
  bindings, rest = split_gin_overrides(argv if argv is not None else [])
  args = parser.parse_args(rest)
  search_paths = [p for p in args.gin_search_paths.split(",") if p]
  gin.clear_config()
  parse(args.gin_file, bindings, search_paths, finalize=not args.print_config)
  return args

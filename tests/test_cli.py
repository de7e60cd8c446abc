"""Command-line plumbing shared by every program: gin file lookup, overrides, the __main__
guard, bad-input errors."""

import ast
import os
import pathlib

import gin
import pytest

from dualenc import cli, gin_utils, train
from tests.conftest import REPO_ROOT
from tests.readme_commands import PROGRAMS


def test_an_output_folder_named_runs_in_the_working_directory_does_not_shadow_gin_files(
    tmp_path, monkeypatch):
  # What `make main` leaves behind: runs/main/... (a namespace package to Python's importer).
  (tmp_path / "runs" / "main" / "checkpoints").mkdir(parents=True)
  (tmp_path / "runs" / "main" / "config.gin").write_text("X = 1\n")
  monkeypatch.chdir(tmp_path)
  monkeypatch.syspath_prepend(str(tmp_path))  # as `python -m` puts the working directory first
  gin_utils.parse_command_line(["--gin_file=runs/tiny_cpu.gin", "--gin.MODEL_DIR='/m'"], "t")
  assert gin.query_parameter("%MODEL_DIR") == "/m"
  assert gin.query_parameter("%BATCH_SIZE") == 16  # from gin_configs/runs/
  gin.clear_config()
  with pytest.raises(gin_utils.GinConfigError, match=r"'runs/nothing.gin' not found \(searched"):
    gin_utils.parse_command_line(["--gin_file=runs/nothing.gin"], "t")


def test_a_file_in_the_working_directory_still_comes_first(tmp_path, monkeypatch):
  (tmp_path / "mine.gin").write_text("include 'runs/tiny_cpu.gin'\nBATCH_SIZE = 4\n")
  monkeypatch.chdir(tmp_path)
  gin_utils.parse_command_line(["--gin_file=mine.gin", "--gin.MODEL_DIR='/m'"], "t")
  assert gin.query_parameter("%BATCH_SIZE") == 4


def test_a_later_gin_file_does_not_reset_the_runs_temperature_and_overrides_are_announced(
    capsys):
  gin_utils.parse_command_line(["--gin_file=runs/finetune.gin", "--gin_file=losses/pair.gin",
                                "--gin.MODEL_DIR='/m'"], "t")
  assert gin.query_parameter("%TEMPERATURE") == 0.05  # finetune.gin's, kept
  err = capsys.readouterr().err
  assert ("gin: --gin_file=losses/pair.gin changes train.train.loss_fn from @samtone (set by "
          "runs/finetune.gin) to @pair") in err
  assert "TEMPERATURE" not in err


def test_print_config_needs_no_required_value_and_a_missing_one_is_one_clear_line(capsys):
  assert train.main(["--gin_file=runs/tiny_cpu.gin", "--print_config"]) == 0
  assert "MODEL_DIR = %gin.REQUIRED" in capsys.readouterr().out
  gin.clear_config()
  assert cli.report_bad_input(train.main, ["--gin_file=runs/tiny_cpu.gin"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: MODEL_DIR is required and not set: pass --gin.MODEL_DIR=")
  assert "Traceback" not in err


@pytest.mark.parametrize("program", PROGRAMS)
def test_every_program_runs_itself_through_the_one_main_guard(program):
  """The guard must come before anything that registers gin configurables (a second copy of
  the module under __main__ would register them twice)."""
  tree = ast.parse((REPO_ROOT / program).read_text())
  body = [node for node in tree.body
          if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))
          and not (isinstance(node, ast.ImportFrom) and node.module == "__future__")]
  guard = ast.unparse(body[0])
  assert guard == ("if __name__ == '__main__':\n    from dualenc import cli\n"
                   "    cli.run_program(__spec__.name)"), program
  assert any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body)


def test_gin_search_path_prefixes_are_not_added_twice():
  for _ in range(3):
    gin_utils.parse([], [], finalize=False)
  prefixes = gin.config._LOCATION_PREFIXES  # pylint: disable=protected-access
  assert len(prefixes) == len(set(prefixes))
  assert os.fspath(pathlib.Path(gin_utils.DEFAULT_SEARCH_PATHS[0])) in prefixes

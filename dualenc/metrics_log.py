"""Where training metrics go: `MODEL_DIR/metrics.jsonl`, TensorBoard events, a progress bar.

Only process 0 writes. `metrics.jsonl` holds one JSON object per logged step with at least
`step` and `loss`; it is appended to, so a resumed run continues the same file.
"""

from __future__ import annotations

import json
import pathlib
from typing import Mapping

import jax

_SHOWN = ("loss", "accuracy", "examples_per_second", "mfu")


class MetricsLog:
  """Writes scalar metrics for a step to every sink."""

  def __init__(self, model_dir, *, total_steps: int, progress_bar: bool = True,
               tensorboard: bool = True):
    self._active = jax.process_index() == 0
    self._jsonl = None
    self._writer = None
    self._bar = None
    if not self._active:
      return
    model_dir = pathlib.Path(model_dir)
    self._jsonl = open(model_dir / "metrics.jsonl", "a", encoding="utf-8")
    if tensorboard:
      from clu import metric_writers  # imports TensorFlow's summary writer: keep it lazy
      self._writer = metric_writers.SummaryWriter(str(model_dir / "tensorboard"))
    if progress_bar:
      import tqdm
      self._bar = tqdm.tqdm(total=total_steps, dynamic_ncols=True, desc="train")
    self._total = total_steps

  def write(self, step: int, metrics: Mapping[str, float], prefix: str = "") -> None:
    if not self._active:
      return
    record = {"step": int(step), **{prefix + k: float(v) for k, v in metrics.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    if self._writer is not None:
      self._writer.write_scalars(int(step), {prefix + k: v for k, v in metrics.items()})
    if self._bar is not None:
      self._bar.n = int(step)
      self._bar.set_postfix({k: f"{metrics[k]:.4g}" for k in _SHOWN if k in metrics},
                            refresh=False)
      self._bar.refresh()
    else:
      shown = " ".join(f"{k}={metrics[k]:.4g}" for k in _SHOWN if k in metrics)
      print(f"step {step}/{self._total} {shown}", flush=True)

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    if self._writer is not None:
      self._writer.flush()
      self._writer.close()
    if self._bar is not None:
      self._bar.close()

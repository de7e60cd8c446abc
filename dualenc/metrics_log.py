"""Where training metrics go: `MODEL_DIR/metrics.jsonl`, TensorBoard events, a progress bar.

Only process 0 writes. `metrics.jsonl` holds one JSON object per logged step with at least
`step` and `loss`; it is appended to, so a resumed run continues the same file. TensorBoard
scalars go to `MODEL_DIR/tensorboard/events.out.tfevents.<time>.<host>.<pid>` (a new file per
run, as TensorFlow's writer does). Both are written through dualenc.fs, so a gs:// MODEL_DIR
gets them too; on an object store they are uploaded at most every 10 s and at the end.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Mapping

import jax

from dualenc import fs

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
    model_dir = fs.path(model_dir)
    self._jsonl = fs.AppendFile(model_dir / "metrics.jsonl")
    if tensorboard:
      self._writer = EventFile(model_dir / "tensorboard")
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
      self._writer.flush()
    if self._bar is not None:
      self._bar.n = int(step)
      self._bar.set_postfix({k: f"{metrics[k]:.4g}" for k in _SHOWN if k in metrics},
                            refresh=False)
      self._bar.refresh()
    else:
      shown = " ".join(f"{k}={metrics[k]:.4g}" for k in _SHOWN if k in metrics)
      print(f"step {step}/{self._total} {shown}", flush=True)

  def sync(self) -> None:
    """Uploads what remote logs hold now (they are otherwise rewritten at most every 10 s),
    so the logs of a checkpointed step survive a killed run."""
    if self._jsonl is not None:
      self._jsonl.flush(force=True)
    if self._writer is not None:
      self._writer.flush(force=True)

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    if self._writer is not None:
      self._writer.close()
    if self._bar is not None:
      self._bar.close()


class EventFile:
  """TensorBoard scalars in the standard event-file format (TFRecord-framed `Event` protos),
  written through dualenc.fs: TensorFlow's own writer reaches object stores only through its
  GCS client, which cannot be pointed at an emulator or other endpoints."""

  def __init__(self, directory):
    from tensorboard.compat.proto import event_pb2  # pylint: disable=g-import-not-at-top
    from tensorboard.summary.writer import record_writer  # pylint: disable=g-import-not-at-top
    self._event_pb2 = event_pb2
    name = f"events.out.tfevents.{time.time():.0f}.{socket.gethostname()}.{os.getpid()}"
    self._file = fs.AppendFile(fs.path(directory) / name)
    self._records = record_writer.RecordWriter(self._file)
    self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

  def _write(self, event) -> None:
    self._records.write(event.SerializeToString())

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    from tensorboard.compat.proto import summary_pb2  # pylint: disable=g-import-not-at-top
    values = [summary_pb2.Summary.Value(tag=tag, simple_value=float(value))
              for tag, value in scalars.items()]
    self._write(self._event_pb2.Event(wall_time=time.time(), step=int(step),
                                      summary=summary_pb2.Summary(value=values)))

  def flush(self, force: bool = False) -> None:
    self._file.flush(force=force)

  def close(self) -> None:
    self._file.close()

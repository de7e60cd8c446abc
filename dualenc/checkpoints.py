"""Orbax checkpoints: periodic async saves, keep-N, resume with fallback past bad checkpoints.

Layout: `MODEL_DIR/checkpoints/<step>/{state,data_iterator}`. Orbax writes each step into a
temporary directory and renames it when complete, so a run killed mid-save leaves no step
that looks finished. A finished step that fails to restore (a truncated or corrupted file) is
reported, moved aside to `MODEL_DIR/checkpoints_corrupt/<step>` (never deleted) and the newest
good one is used instead. Steps are never overwritten: a run only saves steps after the one it
resumed from.
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Tuple

import jax
import orbax.checkpoint as ocp

from dualenc import fs

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
  """No usable checkpoint where one was required."""


class Checkpointer:
  """Saves and restores (train state, data-iterator state) pairs under `model_dir`."""

  def __init__(self, model_dir: str, *, keep: int = 3, save_interval_steps: int = 1000,
               async_save: bool = True):
    self.directory = fs.path(model_dir) / "checkpoints"
    self.corrupt_directory = fs.path(model_dir) / "checkpoints_corrupt"
    self.save_interval_steps = save_interval_steps
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        enable_async_checkpointing=async_save, create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self):
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, data_state: Any, *, force: bool = False) -> bool:
    """Saves when `step` is a multiple of the interval (or `force`); returns whether a save
    was started."""
    if not self.due(step, force=force):
      return False
    return self._manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      data_iterator=ocp.args.JsonSave(data_state)),
        force=True)

  def due(self, step: int, *, force: bool = False) -> bool:
    """Whether `save(step, force=force)` would save."""
    if step in self._manager.all_steps():
      return False  # never overwrite a finished step
    return force or step % self.save_interval_steps == 0

  def wait(self) -> None:
    """Blocks until pending async saves are committed to disk."""
    self._manager.wait_until_finished()

  def restore_latest(self, abstract_state: Any) -> Optional[Tuple[int, Any, Any]]:
    """Restores the newest restorable step onto `abstract_state`'s shapes and shardings.

    Returns (step, state, data_state) or None when there is no checkpoint. Steps that fail to
    restore are moved aside (never deleted) and the next older one is tried.
    """
    for step in reversed(self.all_steps()):
      try:
        restored = self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                          data_iterator=ocp.args.JsonRestore()))
        return step, restored.state, restored.data_iterator
      except Exception as e:  # orbax/tensorstore raise many types for damaged files
        log.error("checkpoint step %d under %s cannot be restored (%s: %s); moving it to %s and "
                  "trying an older one", step, self.directory, type(e).__name__, e,
                  self.corrupt_directory)
        print(f"WARNING: checkpoint {self.directory / str(step)} is unreadable "
              f"({type(e).__name__}); moved to {self.corrupt_directory}, using an older one",
              flush=True)
        self._quarantine(step)
    return None

  def _quarantine(self, step: int) -> None:
    fs.makedirs(self.corrupt_directory)
    target = self.corrupt_directory / str(step)
    suffix = 0
    while target.exists():
      suffix += 1
      target = self.corrupt_directory / f"{step}.{suffix}"
    (self.directory / str(step)).rename(target)
    self._manager.reload()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def step_directory(path) -> Any:
  """`MODEL_DIR/checkpoints/<step>` as given, or for a MODEL_DIR its newest finished step."""
  path = fs.path(path)
  if (path / "state").exists() or not (path / "checkpoints").exists():
    return path
  # Orbax renames a finished local step into place; on object stores it marks it committed.
  finished = lambda p: p.name.isdigit() and (
      (p / "commit_success.txt").exists() if fs.is_remote(p) else (p / "state").exists())
  steps = sorted(int(p.name) for p in (path / "checkpoints").iterdir() if finished(p))
  if not steps:
    raise CheckpointError(f"{path}/checkpoints holds no finished checkpoint")
  return path / "checkpoints" / str(steps[-1])


def _state_dir(checkpoint_dir) -> Any:
  path = fs.path(checkpoint_dir) / "state"
  if not path.exists():
    raise CheckpointError(f"{checkpoint_dir} is not a dualenc checkpoint step directory "
                          f"(expected {path}; pass MODEL_DIR/checkpoints/<step>)")
  return path


def params_metadata(checkpoint_dir) -> Any:
  """The saved params' tree of array metadata (shape, dtype; no data), or None when the
  checkpoint holds no 'params'. Read through the item's handler directly: the step-level
  checkpointers log a warning for every item directory they open."""
  handler = ocp.PyTreeCheckpointHandler()
  try:
    tree = handler.metadata(_state_dir(checkpoint_dir)).tree
  finally:
    handler.close()
  return tree.get("params") if hasattr(tree, "get") else None


def restore_params(checkpoint_dir, abstract_params: Any) -> Any:
  """Params alone from a dualenc checkpoint step directory (`.../checkpoints/<step>`), placed
  with `abstract_params`' shardings (ShapeDtypeStructs; default: one device). The optimizer
  state is not read."""
  default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = {"params": jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                     sharding=getattr(a, "sharding", None) or default),
      abstract_params)}
  handler = ocp.PyTreeCheckpointHandler()
  try:
    restored = handler.restore(_state_dir(checkpoint_dir), args=ocp.args.PyTreeRestore(
        item=target, restore_args=jax.tree.map(
            lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding, dtype=a.dtype), target),
        partial_restore=True))
  finally:
    handler.close()
  return restored["params"]

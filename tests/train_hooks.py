"""gin-configurable hooks that let trainer tests slow a run down or break it on purpose."""

import time

import gin
import jax.numpy as jnp


@gin.configurable
def slow_steps(step, metrics, seconds=0.5):
  """on_step_end hook: gives a test time to signal or kill the run between steps."""
  del step, metrics
  time.sleep(seconds)


@gin.configurable
def nan_after(step, after_step=5, learning_rate=1e-3):
  """A learning-rate schedule that turns NaN at `after_step`, poisoning that step's update."""
  return jnp.where(step >= after_step, jnp.nan, learning_rate)

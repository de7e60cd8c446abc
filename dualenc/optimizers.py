"""Optimizers and learning-rate schedules, configured by gin.

Adafactor follows T5X's defaults (factored second moments, decay rate 0.8, no momentum,
updates scaled by the parameter's RMS); AdamW is the usual alternative for BERT-family
towers. Parameters matching `frozen_patterns` (regexes over '/'-joined paths, e.g. the frozen
token embedder of `ade_fte`) get no update at all, weight decay included.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import gin
import jax
import jax.numpy as jnp
import optax

from dualenc import towers

SCHEDULES = ("constant", "linear_decay", "rsqrt", "cosine")


@gin.configurable
def learning_rate_schedule(name: str = "linear_decay", *, base_learning_rate: float = 1e-3,
                           total_steps: int = 20_000, warmup_steps: int = 0,
                           final_learning_rate: float = 0.0) -> optax.Schedule:
  """Step -> learning rate.

  `linear_decay`: the SamToNe recipe, base -> final linearly over `total_steps`;
  `rsqrt`: T5X's base / sqrt(max(step, warmup)); `cosine`: cosine decay to `final`;
  `constant`. Linear warm-up from 0 over `warmup_steps` precedes any of them except rsqrt,
  whose flat start already acts as one.
  """
  if name not in SCHEDULES:
    raise ValueError(f"learning_rate_schedule.name={name!r}; expected one of {SCHEDULES}")
  decay_steps = max(total_steps - warmup_steps, 1)
  if name == "rsqrt":
    return lambda step: base_learning_rate * jnp.sqrt(
        max(warmup_steps, 1)) / jnp.sqrt(jnp.maximum(step, max(warmup_steps, 1)))
  if name == "constant":
    main = optax.constant_schedule(base_learning_rate)
  elif name == "linear_decay":
    main = optax.linear_schedule(base_learning_rate, final_learning_rate, decay_steps)
  else:
    main = optax.cosine_decay_schedule(base_learning_rate, decay_steps,
                                       alpha=final_learning_rate / base_learning_rate)
  if warmup_steps <= 0:
    return main
  warmup = optax.linear_schedule(0.0, base_learning_rate, warmup_steps)
  return optax.join_schedules([warmup, main], [warmup_steps])


@gin.configurable
def make_optimizer(params: Any, *, name: str = "adafactor",
                   schedule: Optional[optax.Schedule] = None,
                   gradient_clip_norm: Optional[float] = None,
                   weight_decay: float = 0.0,
                   adafactor_decay_rate: float = 0.8,
                   frozen_patterns: Sequence[str] = ()) -> optax.GradientTransformation:
  """The optimizer for `params` (used only for the tree structure of the frozen mask)."""
  schedule = schedule or learning_rate_schedule()
  if name == "adafactor":
    core = optax.adafactor(learning_rate=schedule, decay_rate=adafactor_decay_rate,
                           multiply_by_parameter_scale=True, clipping_threshold=1.0,
                           momentum=None, factored=True,
                           weight_decay_rate=weight_decay or None)
  elif name == "adamw":
    core = optax.adamw(learning_rate=schedule, weight_decay=weight_decay)
  elif name == "sgd":
    core = optax.sgd(learning_rate=schedule)
  else:
    raise ValueError(f"make_optimizer.name={name!r}; expected adafactor, adamw or sgd")
  chain = [optax.clip_by_global_norm(gradient_clip_norm)] if gradient_clip_norm else []
  chain.append(core)
  optimizer = optax.chain(*chain)
  if frozen_patterns:
    mask = towers.frozen_parameter_mask(params, frozen_patterns)
    labels = jax.tree.map(lambda frozen: "frozen" if frozen else "train", mask)
    optimizer = optax.multi_transform({"train": optimizer, "frozen": optax.set_to_zero()},
                                      labels)
  return optimizer

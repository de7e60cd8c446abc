"""Optimizers and learning-rate schedules, configured by gin.

Adafactor follows T5X's defaults (factored second moments, decay rate 0.8, no momentum,
updates scaled by the parameter's RMS); AdamW is the usual alternative for BERT-family
towers. Parameters matching `frozen_patterns` (regexes over '/'-joined paths, e.g. the frozen
token embedder of `ade_fte`) get no update at all, weight decay included.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

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
                   frozen_patterns: Sequence[str] = (),
                   learning_rate_scales: Optional[Mapping[str, float]] = None
                   ) -> optax.GradientTransformation:
  """The optimizer for `params` (used only for the tree structure of the parameter groups).

  frozen_patterns: regexes of parameters that get no update at all, weight decay included.
  learning_rate_scales: {regex: scale}: parameters matching a regex form their own group,
    optimised alike but with `scale` x the schedule's learning rate (e.g. a sparse model's
    trainable IDF table, `{'^idf$': 100.0}`); the first matching regex wins, frozen ones first.
  """
  schedule = schedule or learning_rate_schedule()

  def build(schedule):
    if name == "adafactor":
      return optax.adafactor(learning_rate=schedule, decay_rate=adafactor_decay_rate,
                             multiply_by_parameter_scale=True, clipping_threshold=1.0,
                             momentum=None, factored=True,
                             weight_decay_rate=weight_decay or None)
    if name == "adamw":
      return optax.adamw(learning_rate=schedule, weight_decay=weight_decay)
    if name == "sgd":
      return optax.sgd(learning_rate=schedule)
    raise ValueError(f"make_optimizer.name={name!r}; expected adafactor, adamw or sgd")

  # Each group clips its own gradient (as the single-group optimizer always has).
  clip = [optax.clip_by_global_norm(gradient_clip_norm)] if gradient_clip_norm else []
  groups = {"train": optax.chain(*clip, build(schedule))}
  patterns = {}
  if frozen_patterns:
    groups["frozen"] = optax.set_to_zero()
    patterns.update({p: "frozen" for p in frozen_patterns})
  for i, (pattern, scale) in enumerate(sorted((learning_rate_scales or {}).items())):
    groups[f"scaled_{i}"] = optax.chain(
        *clip, build(lambda step, scale=scale: scale * schedule(step)))
    patterns.setdefault(pattern, f"scaled_{i}")
  if len(groups) == 1:
    return groups["train"]
  return optax.multi_transform(groups, towers.parameter_labels(params, patterns, "train"))

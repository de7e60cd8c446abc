"""Per-query latency of a whole query path (query string -> top-k ids), single-threaded.

    timing = measure(lambda text: index.search_text(text, 10), query_texts)
    # {'query_ms_p50': ..., 'query_ms_p99': ..., 'queries_per_second': ..., 'queries': n}

Each query is timed alone with time.perf_counter, after one untimed warm-up pass over the
first `warmup` queries (first calls load caches and, for JAX, compile), with Python's garbage
collector paused as timeit pauses it. p50/p99 are NumPy's
linear-interpolated percentiles of the per-query times; queries/s = queries / their total time.
"""

from __future__ import annotations

import gc
import time
from typing import Callable, Dict, Sequence

import numpy as np


def measure(answer: Callable[[str], object], queries: Sequence[str], *, warmup: int = 20,
            repeats: int = 1) -> Dict[str, float]:
  """Times `answer(query)` for every query (`repeats` passes); see the module docstring."""
  if not len(queries):
    raise ValueError("no queries to time")
  for text in queries[:warmup]:
    answer(text)
  times = []
  collecting = gc.isenabled()
  gc.disable()  # as timeit does: a collection is not the query's cost
  try:
    for _ in range(repeats):
      for text in queries:
        start = time.perf_counter()
        answer(text)
        times.append(time.perf_counter() - start)
  finally:
    if collecting:
      gc.enable()
  ms = np.asarray(times) * 1000.0
  return {"query_ms_p50": float(np.percentile(ms, 50)),
          "query_ms_p99": float(np.percentile(ms, 99)),
          "query_ms_mean": float(ms.mean()),
          "queries_per_second": float(len(ms) / (ms.sum() / 1000.0)),
          "queries_timed": int(len(ms))}

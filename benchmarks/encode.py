r"""Corpus encoding throughput: dualenc (JAX) vs sentence-transformers, same model, same texts.

  python benchmarks/encode.py [--num_docs=1000] [--repeats=2] [--batch_tokens=8192]

Both encode the first --num_docs SciFact documents (title + " " + text, the BEIR convention,
from $DUALENC_SHARED_DATA or ../shared/data) with all-MiniLM-L6-v2 (mean pooling, normalised,
256 tokens) on the CPU, in the same process, alternating, best of --repeats each. dualenc is
timed after one warm-up pass that compiles every bucket shape (the first pass's time is
reported separately); sentence-transformers after a warm-up batch. On CPU, dualenc shards
each batch over --cpu_devices JAX devices (default one per core, as torch uses one thread per
core). The embeddings are compared so both
sides really computed the same thing. Prints docs/s of each, the ratio, and CPU-seconds per
document (less sensitive to other processes on a shared machine than wall time).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def load_texts(num_docs: int):
  root = pathlib.Path(os.environ.get("DUALENC_SHARED_DATA", REPO.parent / "shared" / "data"))
  path = root / "scifact" / "corpus.jsonl"
  if not path.is_file():
    raise SystemExit(f"{path} not found (set DUALENC_SHARED_DATA)")
  texts = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      record = json.loads(line)
      texts.append(f"{record.get('title', '')} {record['text']}".strip())
      if len(texts) == num_docs:
        break
  return texts


def timed(fn):
  wall, cpu = time.perf_counter(), time.process_time()
  out = fn()
  return out, time.perf_counter() - wall, time.process_time() - cpu


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--num_docs", type=int, default=1000)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--batch_tokens", type=int, default=None,
                      help="dualenc rows x length per batch (default: EncodeOptions')")
  parser.add_argument("--st_batch_size", type=int, default=32,
                      help="sentence-transformers' encode batch size (its default is 32)")
  parser.add_argument("--cpu_devices", type=int, default=os.cpu_count(),
                      help="JAX CPU devices (XLA_FLAGS host platform device count; default one "
                           "per core): dualenc shards each batch over them")
  parser.add_argument("--json", help="also write the figures here")
  args = parser.parse_args(argv)
  if "jax" in sys.modules:
    raise SystemExit("set --cpu_devices before JAX is imported")
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={args.cpu_devices}")

  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from sentence_transformers import SentenceTransformer  # pylint: disable=g-import-not-at-top
  from dualenc import convert  # pylint: disable=g-import-not-at-top
  from dualenc.evaluation import encode, loading  # pylint: disable=g-import-not-at-top

  texts = load_texts(args.num_docs)
  model_dir = convert.minilm_path()
  retrieval_model = loading.from_hf_checkpoint(model_dir)
  tower = encode.TowerEncoder(retrieval_model.model, retrieval_model.params, "document")
  options = encode.EncodeOptions(batch_tokens=args.batch_tokens, progress=False)
  run_dualenc = lambda: encode.encode_texts(tower, retrieval_model.document_tokenizer, texts,
                                            options)
  reference = SentenceTransformer(str(model_dir), device="cpu")
  run_st = lambda: reference.encode(texts, batch_size=args.st_batch_size, convert_to_numpy=True,
                                    show_progress_bar=False)

  ours, first_wall, _ = timed(run_dualenc)  # compiles every bucket shape
  compiled = tower.num_compilations
  reference.encode(texts[:args.st_batch_size], batch_size=args.st_batch_size)
  best = {"dualenc": (float("inf"), 0.0), "sentence-transformers": (float("inf"), 0.0)}
  for _ in range(args.repeats):
    theirs, wall, cpu = timed(run_st)
    best["sentence-transformers"] = min(best["sentence-transformers"], (wall, cpu))
    ours, wall, cpu = timed(run_dualenc)
    best["dualenc"] = min(best["dualenc"], (wall, cpu))
  if tower.num_compilations != compiled:
    raise SystemExit(f"dualenc recompiled during timing ({compiled} -> "
                     f"{tower.num_compilations} executables)")
  max_diff = float(np.abs(ours - theirs).max())
  lengths = [len(t) for t in retrieval_model.document_tokenizer(texts)]
  figures = {
      "num_docs": len(texts), "mean_tokens": float(np.mean(lengths)),
      "devices": f"{len(jax.devices())} x {jax.devices()[0].platform}",
      "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
      "dualenc_docs_per_s": len(texts) / best["dualenc"][0],
      "st_docs_per_s": len(texts) / best["sentence-transformers"][0],
      "dualenc_cpu_ms_per_doc": 1e3 * best["dualenc"][1] / len(texts),
      "st_cpu_ms_per_doc": 1e3 * best["sentence-transformers"][1] / len(texts),
      "dualenc_first_pass_s": first_wall, "dualenc_shapes": compiled,
      "max_abs_embedding_diff": max_diff,
  }
  figures["ratio"] = figures["dualenc_docs_per_s"] / figures["st_docs_per_s"]
  print(f"{len(texts)} SciFact documents, {figures['mean_tokens']:.0f} tokens on average, "
        f"{figures['devices']}, torch threads {figures['torch_threads']}")
  print(f"sentence-transformers {figures['st_docs_per_s']:8.1f} docs/s  "
        f"({figures['st_cpu_ms_per_doc']:.1f} CPU-ms/doc)")
  print(f"dualenc               {figures['dualenc_docs_per_s']:8.1f} docs/s  "
        f"({figures['dualenc_cpu_ms_per_doc']:.1f} CPU-ms/doc; first pass incl. compiling "
        f"{compiled} shapes: {first_wall:.1f} s, excluded)")
  print(f"ratio dualenc / sentence-transformers: {figures['ratio']:.2f}x   "
        f"(max |embedding difference| {max_diff:.1e})")
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
  return 0 if max_diff < 1e-4 else 1


if __name__ == "__main__":
  sys.exit(main())

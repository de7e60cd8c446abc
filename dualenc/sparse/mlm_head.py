r"""Give a BERT encoder without an MLM head (all-MiniLM-L6-v2) one, fitted on a corpus.

  python -m dualenc.sparse.mlm_head --task=dualenc_default --output_dir=runs/minilm_mlm
  python -m dualenc.sparse.mlm_head --beir_dir=../shared/data/scifact --output_dir=runs/minilm_mlm_scifact

all-MiniLM-L6-v2 ships its encoder and tied word embeddings but no MLM transform (dense + GELU
+ layer norm) and no decoder bias, which a sparse document encoder needs to weigh vocabulary
terms. This fits exactly those on masked-token prediction over the corpus, with the encoder and
the word embeddings frozen: the encoder runs once over BERT-style masked texts (15% of tokens:
80% [MASK], 10% a random token, 10% kept), and the head (d^2 + 3d + V parameters) is fitted by
Adam on the hidden states of the masked positions, starting from an identity transform and the
corpus's log unigram frequencies as bias. Masked-token prediction is blind to a constant added
to every logit, SPLADE's relu is not (a term negative everywhere gets no gradient, so it can
never become an expansion term): the bias is then shifted so documents start with
`--target_doc_nnz` (200) non-zero weights on average. The result is a Hugging Face `BertForMaskedLM`
directory (safetensors, config.json, vocabulary) that `transformers` loads as is and that a
sparse run starts from (`INITIAL_CHECKPOINT_PATH`); `mlm_head.json` records the held-out MLM
loss and accuracy before and after.
"""

from __future__ import annotations

if __name__ == "__main__":  # run as dualenc.X, not __main__: see dualenc/cli.py
  from dualenc import cli
  cli.run_program(__spec__.name)

import argparse
import json
from typing import Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dualenc import convert
from dualenc import fs
from dualenc.sparse import corpus
from dualenc.encoders import bert
from dualenc.sparse import idf as idf_lib

MASK_RATE = 0.15


def masked_positions(token_lists, tokens, *, max_length: int, rng: np.random.Generator):
  """BERT masking. Returns (ids [B, L], mask [B, L], rows [M], columns [M], targets [M])."""
  index = {t: i for i, t in enumerate(tokens)}
  cls, sep, mask_id = index["[CLS]"], index["[SEP]"], index["[MASK]"]
  specials = set(idf_lib.special_token_ids(tokens))
  ids = np.zeros((len(token_lists), max_length), np.int32)
  rows, columns, targets = [], [], []
  for r, content in enumerate(token_lists):
    content = list(content[:max_length - 2])
    sequence = [cls] + content + [sep]
    for c in range(1, len(sequence) - 1):
      if sequence[c] in specials or rng.random() >= MASK_RATE:
        continue
      rows.append(r), columns.append(c), targets.append(sequence[c])
      roll = rng.random()
      if roll < 0.8:
        sequence[c] = mask_id
      elif roll < 0.9:
        sequence[c] = int(rng.integers(len(tokens)))
    ids[r, :len(sequence)] = sequence
  return (ids, (ids != 0).astype(np.int32), np.asarray(rows), np.asarray(columns),
          np.asarray(targets, np.int32))


def head_logits(head: Dict[str, jax.Array], states: jax.Array, embedding: jax.Array,
                config: bert.BertConfig) -> jax.Array:
  """[M, H] encoder states -> [M, V] logits through (transform, norm, tied decoder, bias)."""
  module = bert.BertMlmHead(config)
  transformed = module.apply({"params": head}, states, method=module.transformed)
  return transformed @ embedding.T + head["output_bias"]


def fit_head(states: np.ndarray, targets: np.ndarray, embedding: np.ndarray,
             unigram_log_prob: np.ndarray, config: bert.BertConfig, *, steps: int,
             batch_size: int = 512, learning_rate: float = 2e-3, seed: int = 0,
             held_out: float = 0.1):
  """Fits the head; returns (head params, report {before, after: loss, accuracy})."""
  d = config.d_model
  head = {"transform": {"kernel": jnp.eye(d, dtype=jnp.float32),
                        "bias": jnp.zeros(d, jnp.float32)},
          "transform_norm": {"scale": jnp.ones(d, jnp.float32), "bias": jnp.zeros(d, jnp.float32)},
          "output_bias": jnp.asarray(unigram_log_prob, jnp.float32)}
  rng = np.random.default_rng(seed)
  order = rng.permutation(len(targets))
  cut = max(1, int(len(order) * held_out))
  test, train = order[:cut], order[cut:]
  embedding = jnp.asarray(embedding, jnp.float32)

  def loss_and_accuracy(head, x, y):
    logits = head_logits(head, x, embedding, config)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, jnp.mean(jnp.argmax(logits, -1) == y)

  evaluate = jax.jit(lambda head: loss_and_accuracy(head, states[test], targets[test]))
  optimizer = optax.adam(learning_rate)
  opt_state = optimizer.init(head)

  @jax.jit
  def step(head, opt_state, x, y):
    (loss, _), grads = jax.value_and_grad(loss_and_accuracy, has_aux=True)(head, x, y)
    updates, opt_state = optimizer.update(grads, opt_state, head)
    return optax.apply_updates(head, updates), opt_state, loss

  before = [float(v) for v in evaluate(head)]
  for _ in range(steps):
    picked = train[rng.integers(0, len(train), batch_size)]
    head, opt_state, _ = step(head, opt_state, states[picked], targets[picked])
  after = [float(v) for v in evaluate(head)]
  report = {"held_out_positions": int(len(test)), "train_positions": int(len(train)),
            "steps": steps, "before": {"loss": before[0], "accuracy": before[1]},
            "after": {"loss": after[0], "accuracy": after[1]}}
  return jax.tree.map(np.asarray, head), report


def calibrate_bias(head: Dict[str, np.ndarray], states_per_text, embedding: np.ndarray,
                   config: bert.BertConfig, target_nnz: float) -> float:
  """The constant to add to the decoder bias so documents start with ~`target_nnz` non-zero
  SPLADE weights on average.

  Masked-token prediction is a softmax over the vocabulary, unchanged by adding one constant to
  every logit, so the fit leaves the logits' zero point arbitrary; SPLADE's relu is not. A term
  whose logit is negative at every position of every document gets no gradient through the relu,
  so it could never become an expansion term. states_per_text: [L_i, H] encoder states of each
  (unmasked) text's positions."""
  embedding = jnp.asarray(embedding)

  @jax.jit
  def text_maxima(states, valid):  # [T, L, H], [T, L] -> [T, V]: each text's max logits
    logits = head_logits(head, states.reshape(-1, states.shape[-1]), embedding, config)
    logits = logits.reshape(*states.shape[:2], -1)
    return jnp.max(jnp.where(valid[..., None], logits, -jnp.inf), axis=1)

  # Padded batches of 16 texts in one compiled call each ([16, L, V] logits: ~250 MB at L=128).
  width, batch = max(len(s) for s in states_per_text), 16
  maxima = []
  for start in range(0, len(states_per_text), batch):
    part = states_per_text[start:start + batch]
    padded = np.zeros((batch, width, part[0].shape[-1]), np.float32)
    valid = np.zeros((batch, width), bool)
    for row, states in enumerate(part):
      padded[row, :len(states)], valid[row, :len(states)] = states, True
    maxima.append(np.asarray(text_maxima(padded, valid))[:len(part)])
  maxima = np.concatenate(maxima)
  low, high = -float(np.max(maxima)) - 1.0, -float(np.min(maxima)) + 1.0
  for _ in range(60):  # bisection on the shift: mean non-zeros grows with it
    shift = (low + high) / 2
    if np.mean(np.sum(maxima + shift > 0, axis=1)) < target_nnz:
      low = shift
    else:
      high = shift
  return (low + high) / 2


def save_bert_for_masked_lm(source_dir, output_dir, head: Dict[str, np.ndarray],
                            report: Dict) -> None:
  """Writes a Hugging Face BertForMaskedLM directory: the source encoder's tensors (prefixed
  `bert.`), the fitted head as `cls.predictions.*`, config.json and the tokenizer files."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  source_dir = fs.path(source_dir)
  store, _ = convert.open_weights(source_dir)
  prefix = convert._bert_prefix(store)  # pylint: disable=protected-access
  tensors = {("bert." + name[len(prefix):]) if not name.startswith("bert.") else name:
             np.ascontiguousarray(store.get(name)) for name in store.names
             if not name.startswith(("cls.", "pooler.", "bert.pooler."))}
  tensors.update({
      "cls.predictions.transform.dense.weight": np.ascontiguousarray(head["transform"]["kernel"].T),
      "cls.predictions.transform.dense.bias": head["transform"]["bias"],
      "cls.predictions.transform.LayerNorm.weight": head["transform_norm"]["scale"],
      "cls.predictions.transform.LayerNorm.bias": head["transform_norm"]["bias"],
      "cls.predictions.bias": head["output_bias"]})
  config = json.loads((source_dir / "config.json").read_text())
  config["architectures"] = ["BertForMaskedLM"]
  with fs.staged_directory(output_dir) as staging:
    save_file({k: np.asarray(v, np.float32) for k, v in tensors.items()},
              str(staging / "model.safetensors"), metadata={"format": "pt"})
    (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json"):
      if (source_dir / name).exists():
        (staging / name).write_bytes((source_dir / name).read_bytes())
    (staging / "mlm_head.json").write_text(json.dumps(report, indent=2, sort_keys=True))


def encode_states(module, params, ids, mask, rows, columns, batch_size: int = 64) -> np.ndarray:
  """The frozen encoder's hidden states [M, H] at the masked positions (rows, columns).

  Texts run longest first in batches cut to their longest text (rounded up to 16 positions, so
  at most max_length / 16 compilations): trailing padding changes no state, and the corpus's
  median text is about half of max_length.
  """
  apply = jax.jit(lambda i, m: module.apply(params, i, m))
  states = np.zeros((len(rows), module.config.d_model), np.float32)
  lengths = mask.sum(axis=1)
  order = np.argsort(-lengths, kind="stable")
  for start in range(0, len(order), batch_size):
    members = order[start:start + batch_size]
    width = min(ids.shape[1], -(-max(int(lengths[members].max()), 1) // 16) * 16)
    batch_ids = np.zeros((batch_size, width), ids.dtype)
    batch_mask = np.zeros((batch_size, width), mask.dtype)
    batch_ids[:len(members)], batch_mask[:len(members)] = (ids[members, :width],
                                                           mask[members, :width])
    slot = np.full(len(ids), -1)
    slot[members] = np.arange(len(members))
    picked = slot[rows] >= 0
    if not picked.any():
      continue
    hidden = np.asarray(apply(batch_ids, batch_mask))
    states[picked] = hidden[slot[rows[picked]], columns[picked]]
  return states


def _unmask(ids, mask, rows, columns, targets) -> np.ndarray:
  """The token ids before masking."""
  original = ids.copy()
  original[rows, columns] = targets
  return original


def encode_all_states(module, params, ids, mask, batch_size: int = 64) -> np.ndarray:
  """The frozen encoder's states [B, L, H] of every position."""
  apply = jax.jit(lambda i, m: module.apply(params, i, m))
  return np.concatenate([np.asarray(apply(ids[i:i + batch_size], mask[i:i + batch_size]))
                         for i in range(0, len(ids), batch_size)])


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m dualenc.sparse.mlm_head", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  corpus.add_corpus_flags(parser, default_split="train")
  parser.add_argument("--hf_checkpoint", default=None,
                      help="BERT directory to give a head (default: all-MiniLM-L6-v2)")
  parser.add_argument("--output_dir", required=True)
  parser.add_argument("--max_texts", type=int, default=3000)
  parser.add_argument("--max_length", type=int, default=128)
  parser.add_argument("--steps", type=int, default=600)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--target_doc_nnz", type=float, default=200.0,
                      help="calibrate the bias so a document starts with this many non-zero "
                           "weights on average (healthy SPLADE documents: 150-250); 0: no shift")
  args = parser.parse_args(argv)
  source_dir = fs.path(args.hf_checkpoint or convert.minilm_path())
  texts = corpus.texts_from_flags(args)
  rng = np.random.default_rng(args.seed)
  texts = [texts[i] for i in sorted(rng.permutation(len(texts))[:args.max_texts])]
  with fs.local_copy(source_dir) as local:
    module, variables = convert.from_huggingface(local)
    tokens = idf_lib.vocab_tokens(local / "vocab.txt")
    tokenizer = idf_lib.wordpiece_tokenizer(local / "vocab.txt")
  token_lists = [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
  counts = np.bincount(np.concatenate([np.asarray(t, np.int64) for t in token_lists if t]),
                       minlength=len(tokens)).astype(np.float64)
  unigram = np.log((counts + 1.0) / (counts.sum() + len(tokens)))
  ids, mask, rows, columns, targets = masked_positions(token_lists, tokens,
                                                       max_length=args.max_length, rng=rng)
  print(f"{len(texts)} texts, {len(targets)} masked positions; encoding with the frozen encoder")
  states = encode_states(module, variables, ids, mask, rows, columns)
  embedding = np.asarray(variables["params"]["token_embedder"]["embedding"])
  head, report = fit_head(states, targets, embedding, unigram, module.config,
                          steps=args.steps, seed=args.seed)
  if args.target_doc_nnz:
    originals, sample_mask = _unmask(ids, mask, rows, columns, targets)[:256], mask[:256]
    hidden = encode_all_states(module, variables, originals, sample_mask)
    states = [h[m == 1] for h, m in zip(hidden, sample_mask)]
    shift = calibrate_bias(head, states, embedding, module.config, args.target_doc_nnz)
    head["output_bias"] = head["output_bias"] + np.float32(shift)
    report.update(bias_shift=shift, target_doc_nnz=args.target_doc_nnz)
  report.update(texts=len(texts), source=str(source_dir), max_length=args.max_length)
  save_bert_for_masked_lm(source_dir, args.output_dir, head, report)
  print(json.dumps(report, indent=2))
  print(f"wrote {args.output_dir} (a Hugging Face BertForMaskedLM directory)")
  return 0


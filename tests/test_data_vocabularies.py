"""Vocabularies against code no one here wrote: HF `tokenizers` (Rust) for all-MiniLM-L6-v2's
WordPiece, the `sentencepiece` library for SentencePiece models."""

import json
import unicodedata

import gin
import numpy as np
import pytest
import seqio
import sentencepiece
import tokenizers

from dualenc.data import vocabularies
from dualenc.data.tf_cpu import tf


@pytest.fixture(scope="module")
def hf_tokenizer(minilm_dir):
  tokenizer = tokenizers.Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
  tokenizer.no_truncation()
  tokenizer.no_padding()
  return tokenizer


@pytest.fixture(scope="module")
def wordpiece(minilm_dir):
  return vocabularies.WordPieceVocabulary(str(minilm_dir / "vocab.txt"))


@pytest.fixture(scope="module")
def scifact_texts(shared_data_dir):
  texts = []
  with open(shared_data_dir / "scifact" / "corpus.jsonl", encoding="utf-8") as f:
    for line in f:
      doc = json.loads(line)
      texts.append((doc["title"] + " " + doc["text"]).strip())
  with open(shared_data_dir / "scifact" / "queries.jsonl", encoding="utf-8") as f:
    texts.extend(json.loads(line)["text"] for line in f)
  return texts


HARD_STRINGS = [
    "Héllo wörld! Ünïcödé café naïve résumé Ångström",
    "中文字符测试 日本語のテキスト 한국어 mixed中文english",
    "tab\there\nnewline\r\x00nul\u200bzero-width\x0bvt\x85nel\ufffdrepl",
    "emoji 😀 and ™ ½ ² ﬁ µ Å Ω ϵ CD3ϵ",
    "a" * 150 + " " + "é" * 80 + " " + "b" * 100 + " " + "ü" * 101,
    "don't stop—now… “quotes” «guillemets» ‘single’",
    "$100.50 is 3.14% of ~x^2 @ #tag |pipe| <angle> `tick` {brace}",
    "İstanbul ß ẞ Σίσυφος ΣΑΣ σας ς",
    "\u0301 combining alone e\u0301 precomposed é",
    "Ⅻ ① ＡＢＣ full-width ｆｕｌｌ",
    "non\u00a0breaking\u2003em\u3000ideographic\u2028line",
    "",
    "   ",
    "IL-23–responsive 5-hmC Huntington's H₂O₂ km² 10⁻³ β-catenin",
]


def test_wordpiece_ids_equal_hf_on_all_scifact_text(wordpiece, hf_tokenizer, scifact_texts):
  assert len(scifact_texts) == 5183 + 1109
  assert sum(any(ord(c) > 127 for c in t) for t in scifact_texts) > 500  # accents, symbols
  expected = [e.ids[1:-1] for e in hf_tokenizer.encode_batch(scifact_texts)]
  got = wordpiece.encode_tf(tf.constant(scifact_texts)).to_list()
  mismatches = [i for i, (a, b) in enumerate(zip(expected, got)) if a != b]
  assert not mismatches, [scifact_texts[i][:80] for i in mismatches[:5]]


def test_wordpiece_ids_equal_hf_on_hard_strings(wordpiece, hf_tokenizer):
  for text in HARD_STRINGS:
    expected = hf_tokenizer.encode(text).ids[1:-1]
    assert wordpiece.encode(text) == expected, text
  assert wordpiece.encode_tf(tf.constant(HARD_STRINGS[0])).shape.rank == 1


def test_wordpiece_ids_equal_hf_on_every_stable_code_point(wordpiece, hf_tokenizer):
  # Unicode tables differ between the Rust crates and TF's ICU/RE2; code points that existed
  # in Unicode 3.2 with the same category as in Python's tables must agree exactly.
  code_points = [c for c in range(1, 0x30000) if not 0xD800 <= c <= 0xDFFF
                 and unicodedata.ucd_3_2_0.category(chr(c)) != "Cn"
                 and unicodedata.ucd_3_2_0.category(chr(c)) == unicodedata.category(chr(c))]
  assert len(code_points) > 90_000
  texts = [f"a{chr(c)}b {chr(c)}" for c in code_points]
  expected = [e.ids[1:-1] for e in hf_tokenizer.encode_batch(texts)]
  got = wordpiece.encode_tf(tf.constant(texts)).to_list()
  bad = [hex(code_points[i]) for i, (a, b) in enumerate(zip(expected, got)) if a != b]
  assert not bad, bad[:20]


def test_framing_equals_hf_truncation_and_padding(wordpiece, hf_tokenizer, scifact_texts):
  texts = scifact_texts[:200] + HARD_STRINGS
  length = 24
  reference = tokenizers.Tokenizer.from_str(hf_tokenizer.to_str())
  reference.enable_truncation(max_length=length)
  reference.enable_padding(length=length, pad_id=0)
  encodings = reference.encode_batch(texts)
  tokens = vocabularies.encode_batch(wordpiece, texts, length, chunk_size=64)
  np.testing.assert_array_equal(tokens, np.array([e.ids for e in encodings]))
  np.testing.assert_array_equal(tokens != 0, np.array([e.attention_mask for e in encodings]))
  assert tokens.dtype == np.int32 and (tokens[:, 0] == wordpiece.cls_id).all()


def test_decode_equals_hf_decoder(wordpiece, hf_tokenizer, scifact_texts):
  candidates = scifact_texts[:300] + HARD_STRINGS[:2] + HARD_STRINGS[5:7]
  pieces = wordpiece.encode_tf(tf.constant(candidates)).to_list()
  texts = [t for t, ids in zip(candidates, pieces) if wordpiece.unk_id not in ids]
  framed = vocabularies.encode_batch(wordpiece, texts, 64)
  decoded_tf = wordpiece.decode_tf(tf.constant(framed)).numpy()
  for row, tf_text in zip(framed, decoded_tf):
    expected = hf_tokenizer.decode(row.tolist(), skip_special_tokens=True)
    assert wordpiece.decode(row.tolist()) == expected
    assert tf_text.decode("utf-8") == expected


def test_sentencepiece_equals_sentencepiece_library(shared_data_dir, scifact_texts):
  for name in ("seqio_test_sentencepiece.model", "albert_v2_spiece.model"):
    path = str(shared_data_dir / "vocab" / name)
    vocabulary = vocabularies.sentencepiece_vocabulary(path)
    processor = sentencepiece.SentencePieceProcessor(model_file=path)
    texts = scifact_texts[:100]
    got = vocabulary.encode_tf(tf.constant(texts)).to_list()
    assert got == [processor.encode(t) for t in texts]
  t5_style = vocabularies.sentencepiece_vocabulary(
      str(shared_data_dir / "vocab" / "seqio_test_sentencepiece.model"))
  assert (t5_style.pad_id, t5_style.eos_id, t5_style.unk_id) == (0, 1, 2)
  processor = sentencepiece.SentencePieceProcessor(
      model_file=str(shared_data_dir / "vocab" / "seqio_test_sentencepiece.model"))
  tokens = vocabularies.encode_batch(t5_style, scifact_texts[:50], 12)
  for text, row in zip(scifact_texts[:50], tokens):
    pieces = processor.encode(text)[:11] + [1]
    assert row.tolist() == pieces + [0] * (12 - len(pieces))


def test_vocabulary_selected_by_gin(shared_data_dir, minilm_dir):
  path = str(shared_data_dir / "vocab" / "seqio_test_sentencepiece.model")
  with gin.unlock_config():
    gin.parse_config([f"dualenc.data.vocabularies.get_vocabulary.kind = 'sentencepiece'",
                      f"dualenc.data.vocabularies.get_vocabulary.path = '{path}'"])
  try:
    assert isinstance(vocabularies.get_vocabulary(), seqio.SentencePieceVocabulary)
  finally:
    gin.clear_config()
  default = vocabularies.get_vocabulary()
  assert isinstance(default, vocabularies.WordPieceVocabulary)
  assert default.vocab_path == str(minilm_dir / "vocab.txt") and default.vocab_size == 30522


def test_vocabulary_errors_name_the_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere.txt"):
    vocabularies.WordPieceVocabulary(str(tmp_path / "nowhere.txt")).encode("x")
  bad = tmp_path / "vocab.txt"
  bad.write_text("[UNK]\n[PAD]\n[CLS]\n[SEP]\nhello\n")
  with pytest.raises(ValueError, match=r"vocab.txt: line 1 must be \[PAD\]"):
    vocabularies.WordPieceVocabulary(str(bad)).encode("hello")
  with pytest.raises(FileNotFoundError, match="missing.model"):
    vocabularies.sentencepiece_vocabulary(str(tmp_path / "missing.model"))
  with pytest.raises(ValueError, match="get_vocabulary.kind='bpe'"):
    vocabularies.get_vocabulary(kind="bpe")

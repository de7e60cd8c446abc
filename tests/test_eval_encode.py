"""Encoding: bucketed, sharded batches give the embeddings of one-text-at-a-time encoding; the
MiniLM path equals sentence-transformers; one compilation per shape; the cache is keyed."""

import jax
import numpy as np
import pytest
import tokenizers
from flax import linen as nn

from dualenc import encoders, towers
from dualenc.evaluation import encode, loading

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + [f"w{i}" for i in range(60)]
BERT_TINY = encoders.BertConfig(vocab_size=len(WORDS), d_model=32, num_heads=2, num_layers=2,
                                d_ff=64, max_position_embeddings=64, dropout_rate=0.0,
                                attention_dropout_rate=0.0)


def word_tokenizer():
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(WORDS)},
                                                         unk_token="[UNK]"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  tok.post_processor = tokenizers.processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2))
  return tok


@pytest.fixture(scope="module")
def tiny():
  model = towers.DualEncoder(BERT_TINY, architecture="ade_spl", embedding_dim=16)
  ids = np.ones((2, 8), np.int32)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), ids, ids, ids, ids)["params"])
  return model, params


def random_texts(n, seed=0, max_words=70):
  rng = np.random.default_rng(seed)
  return [" ".join(f"w{j}" for j in rng.integers(0, 60, rng.integers(0, max_words)))
          for _ in range(n)]


def test_bucketed_batches_equal_one_text_at_a_time(tiny):
  model, params = tiny
  tokenizer = encode.HfTokenizer(word_tokenizer(), max_length=48)  # some texts get truncated
  texts = random_texts(150)
  tower = encode.TowerEncoder(model, params, "document")
  options = encode.EncodeOptions(batch_tokens=512, progress=False)
  got = encode.encode_texts(tower, tokenizer, texts, options)
  assert got.shape == (150, 16) and got.dtype == np.float32
  for i in (0, 1, 7, 77, 149):
    ids = tokenizer([texts[i]])[0][None]
    want = model.apply({"params": params}, ids, np.ones_like(ids), method="encode_documents")
    np.testing.assert_allclose(got[i], np.asarray(want)[0], atol=2e-5)
  # Every shape compiled once: rows a multiple of the 8 data shards, length a bucket.
  assert 1 < tower.num_compilations == len(tower.shapes_seen) <= len(encode.length_buckets(48))
  assert all(b % tower.data_shards == 0 and l in encode.length_buckets(48)
             for b, l in tower.shapes_seen)
  compiled = tower.num_compilations
  np.testing.assert_array_equal(encode.encode_texts(tower, tokenizer, texts, options), got)
  again = encode.encode_texts(tower, tokenizer, list(reversed(texts)), options)
  np.testing.assert_allclose(again, got[::-1], atol=1e-6)  # other batches, same embeddings
  assert tower.num_compilations == compiled  # no recompilation
  # A new encoder of the same model (the next periodic evaluation) reuses the executables.
  fresh = encode.TowerEncoder(model, params, "document")
  np.testing.assert_array_equal(encode.encode_texts(fresh, tokenizer, texts, options), got)
  assert fresh.num_compilations == 0


def test_query_tower_differs_from_document_tower_for_asymmetric_models(tiny):
  model, params = tiny
  tokenizer = encode.HfTokenizer(word_tokenizer(), max_length=16)
  texts = random_texts(8, seed=1, max_words=10)
  options = encode.EncodeOptions(progress=False)
  q = encode.encode_texts(encode.TowerEncoder(model, params, "query"), tokenizer, texts, options)
  d = encode.encode_texts(encode.TowerEncoder(model, params, "document"), tokenizer, texts,
                          options)
  assert np.abs(q - d).max() > 1e-3
  np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)


def test_params_of_another_architecture_are_refused(tiny):
  _, params = tiny
  sde = towers.DualEncoder(BERT_TINY, architecture="sde", embedding_dim=16)
  with pytest.raises(ValueError, match=r"missing from params: encoder/\* \(\d+\); unexpected "
                     r"in params: document_encoder/\* \(\d+\), query_encoder/\*"):
    encode.TowerEncoder(sde, params, "query")


def test_cache_is_reused_only_for_the_same_model_and_texts(tmp_path):
  calls = []

  def fake_encode():
    calls.append(1)
    return np.full((2, 3), len(calls), np.float32)

  fingerprint = {"model": "a"}
  first = encode.cached_encode(tmp_path, "x", fingerprint, ["1", "2"], ["a", "b"], fake_encode)
  second = encode.cached_encode(tmp_path, "x", fingerprint, ["1", "2"], ["a", "b"], fake_encode)
  np.testing.assert_array_equal(first, second)
  assert len(calls) == 1
  encode.cached_encode(tmp_path, "x", fingerprint, ["1", "2"], ["a", "c"], fake_encode)
  assert len(calls) == 2  # a text changed
  encode.cached_encode(tmp_path, "x", {"model": "b"}, ["1", "2"], ["a", "c"], fake_encode)
  assert len(calls) == 3  # the model changed
  encode.cached_encode(tmp_path, "x", None, ["1", "2"], ["a", "c"], fake_encode)
  assert len(calls) == 4  # no fingerprint: never cached


def test_minilm_embeddings_equal_sentence_transformers(minilm_dir):
  sentence_transformers = pytest.importorskip("sentence_transformers")
  texts = ["The cat sat on the mat.", "", "Déjà vu: ÉCOLE naïve café!",
           "Microstructural development of human newborn cerebral white matter. " * 40,
           "short", "BRCA1 mutations increase breast cancer risk in carriers."]
  retrieval_model = loading.from_hf_checkpoint(minilm_dir)
  assert retrieval_model.model.pooling == "mean" and retrieval_model.model.normalize
  assert retrieval_model.document_tokenizer.max_length == 256
  tower = encode.TowerEncoder(retrieval_model.model, retrieval_model.params, "document")
  ours = encode.encode_texts(tower, retrieval_model.document_tokenizer, texts,
                             encode.EncodeOptions(progress=False))
  reference = sentence_transformers.SentenceTransformer(str(minilm_dir), device="cpu")
  theirs = reference.encode(texts, batch_size=4, convert_to_numpy=True)
  assert reference.max_seq_length == 256
  np.testing.assert_allclose(ours, theirs, atol=2e-5)


def test_bfloat16_compute_stays_close_to_float32(tiny):
  model, params = tiny
  tokenizer = encode.HfTokenizer(word_tokenizer(), max_length=32)
  texts = random_texts(16, seed=2, max_words=30)
  options = encode.EncodeOptions(progress=False)
  f32 = encode.encode_texts(encode.TowerEncoder(model, params, "query"), tokenizer, texts,
                            options)
  bf16_model = loading.with_compute_dtype(model, "bfloat16")
  bf16 = encode.encode_texts(encode.TowerEncoder(bf16_model, params, "query"), tokenizer, texts,
                             options)
  assert bf16.dtype == np.float32
  cosine = np.sum(f32 * bf16, axis=1)
  assert cosine.min() > 0.99 and np.abs(f32 - bf16).max() > 0  # close, but really bf16

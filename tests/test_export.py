"""dualenc.export and dualenc.sparse.pretrained against the real clients: sentence-transformers'
SentenceTransformer / SparseEncoder and transformers load what dualenc writes, and dualenc
loads what sentence-transformers writes, with the same numbers on real text."""

import json
import pathlib
import subprocess
import sys

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from dualenc import checkpoints
from dualenc import convert
from dualenc import evaluate
from dualenc import gin_utils
from dualenc.evaluation import loading
from dualenc.evaluation import retrieval
from dualenc.export import hf
from dualenc.export import main as export_main
from dualenc.export import opensearch
from dualenc.sparse import pretrained

from tests.conftest import REPO_ROOT, beir_slice

SEQIO_SPM = (pathlib.Path(__import__("seqio").__file__).parent / "test_data" / "sentencepiece" /
             "sentencepiece.model")


@pytest.fixture(scope="module")
def texts(shared_data_dir):
  """Real queries and documents (SciFact), one document long enough to be truncated."""
  scifact = shared_data_dir / "scifact"
  queries = [json.loads(l)["text"] for l in (scifact / "queries.jsonl").read_text().splitlines()[:5]]
  docs = [json.loads(l) for l in (scifact / "corpus.jsonl").read_text().splitlines()[:5]]
  return queries + [(d["title"] + " " + d["text"]).strip() for d in docs]


def _write_checkpoint(tmp_path, name: str, gin_lines, seed: int = 0,
                      start=None) -> pathlib.Path:
  """MODEL_DIR/config.gin and a step-1 checkpoint of the model it builds, with random weights
  (every parameter perturbed, so no bias or norm is trivially 0 or 1); `start(model, params)`
  gives the weights to perturb instead of the initialisation."""
  model_dir = tmp_path / name
  model_dir.mkdir()
  (model_dir / "config.gin").write_text("\n".join(
      list(gin_lines) + [f"MODEL_DIR = '{model_dir}'"]) + "\n")
  model, _ = _parse(model_dir / "config.gin")
  ids = np.ones((1, 8), np.int32)
  params = nn.unbox(model.init(jax.random.PRNGKey(seed), ids, ids, ids, ids))["params"]
  if start is not None:
    params = start(model, params)
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
  scale = 0.05 if start is None else 0.002
  params = jax.tree.unflatten(tree, [x + scale * jax.random.normal(k, x.shape, x.dtype)
                                     for x, k in zip(leaves, keys)])
  if "idf" in params:  # an IDF table with negative entries too (the query side is relu(idf))
    params["idf"] = jax.random.uniform(jax.random.PRNGKey(seed + 2), params["idf"].shape,
                                       minval=-1.0, maxval=8.0)
  saver = checkpoints.Checkpointer(str(model_dir), async_save=False)
  saver.save(1, {"params": params}, {}, force=True)
  saver.close()
  gin.clear_config()
  return model_dir / "checkpoints" / "1"


def _parse(config_path):
  gin.clear_config()
  evaluate._import_task_modules()  # pylint: disable=protected-access
  gin_utils.parse([str(config_path)], [])
  model, task_names, lengths, _ = evaluate.eval_task()
  return model, lengths


def _dualenc_encoders(step_dir):
  """dualenc's own towers of a checkpoint (the evaluator's path)."""
  model, lengths = _parse(step_dir.parent.parent / "config.gin")
  vocabulary = export_main._training_vocabulary("dualenc_default")  # pylint: disable=protected-access
  encoders = retrieval.ModelEncoders(loading.from_dualenc_checkpoint(model, step_dir, vocabulary,
                                                                     lengths))
  gin.clear_config()
  return encoders


def _export(step_dir, output_dir, fmt="sentence-transformers", *extra):
  return export_main.main([f"--checkpoint={step_dir}", f"--output_dir={output_dir}",
                           f"--format={fmt}", *extra])


def _ours(encoders, side, texts):
  out = encoders.encode(side, [str(i) for i in range(len(texts))], texts)
  return out.toarray() if hasattr(out, "toarray") else np.asarray(out)


BERT_DENSE = ["include 'runs/tiny_cpu.gin'"]
T5_DENSE = ["include 'runs/tiny_cpu.gin'", "include 'encoders/t5_1_1_tiny.gin'",
            "include 'data/vocab_t5.gin'",
            f"dualenc.data.vocabularies.get_vocabulary.path = '{SEQIO_SPM}'"]


@pytest.mark.parametrize("encoder,architecture,embedding_dim,normalize", [
    ("bert", "sde", 16, True), ("bert", "ade", None, False), ("bert", "ade_spl", 16, True),
    ("bert", "ade_ste", 16, True), ("bert", "ade_fte", None, True),
    ("t5", "sde", None, True), ("t5", "ade_spl", 16, True)])
def test_dense_export_loads_in_sentence_transformers_with_equal_embeddings(
    tmp_path, texts, encoder, architecture, embedding_dim, normalize):
  from sentence_transformers import SentenceTransformer
  lengths = "{'inputs': 48, 'targets': 48}" if architecture == "sde" else \
      "{'inputs': 24, 'targets': 48}"
  step_dir = _write_checkpoint(tmp_path, "run", (BERT_DENSE if encoder == "bert" else T5_DENSE) + [
      f"towers.DualEncoder.architecture = '{architecture}'",
      f"towers.DualEncoder.embedding_dim = {embedding_dim}",
      f"towers.DualEncoder.normalize = {normalize}", f"TASK_FEATURE_LENGTHS = {lengths}"])
  _export(step_dir, tmp_path / "st")
  modules = json.loads((tmp_path / "st" / "modules.json").read_text())
  kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
  if architecture == "sde":
    assert kinds == ["Transformer", "Pooling"] + ["Dense"] * bool(embedding_dim) + \
        ["Normalize"] * normalize
  else:
    # A shared projection (ade_spl) is one module after the Router, not one per route.
    assert kinds == ["Router"] + ["Dense"] * (architecture == "ade_spl") + ["Normalize"] * normalize
  encoders = _dualenc_encoders(step_dir)
  model = SentenceTransformer(str(tmp_path / "st"), device="cpu")
  for side, encode in (("query", model.encode_query), ("document", model.encode_document)):
    theirs = encode(texts, convert_to_numpy=True)
    np.testing.assert_allclose(theirs, _ours(encoders, side, texts), atol=1e-5, rtol=0,
                               err_msg=side)
  if architecture != "sde":  # the towers differ, so the routes must too
    assert not np.allclose(model.encode_query(texts[:2]), model.encode_document(texts[:2]))


def test_the_main_jobs_model_kind_exports_with_all_minilm_l6_v2_weights(tmp_path, texts,
                                                                        minilm_dir):
  """ADE-SPL towers started from all-MiniLM-L6-v2 (runs/finetune.gin, what `make main` trains),
  its 384-d BERT and 30,522-token vocabulary, against sentence-transformers."""
  from sentence_transformers import SentenceTransformer
  _, minilm = convert.from_huggingface(minilm_dir)
  step_dir = _write_checkpoint(
      tmp_path, "run", ["include 'runs/finetune.gin'",
                        "TASK_FEATURE_LENGTHS = {'inputs': 32, 'targets': 128}"],
      start=lambda model, params: model.load_pretrained(params, minilm["params"]))
  _export(step_dir, tmp_path / "st")
  model = SentenceTransformer(str(tmp_path / "st"), device="cpu")
  encoders = _dualenc_encoders(step_dir)
  assert model.get_max_seq_length() == 128
  for side, encode in (("query", model.encode_query), ("document", model.encode_document)):
    np.testing.assert_allclose(encode(texts, convert_to_numpy=True), _ours(encoders, side, texts),
                               atol=1e-5, rtol=0, err_msg=side)


def test_t5_tokenizer_export_gives_seqio_ids_through_transformers(tmp_path, texts):
  import transformers
  from dualenc.data import vocabularies
  vocabulary = vocabularies.sentencepiece_vocabulary(str(SEQIO_SPM))
  hf.write_tokenizer(tmp_path, vocabulary, 16)
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  expected = vocabularies.encode_batch(vocabulary, texts, 16)
  for text, row in zip(texts, expected):
    assert tokenizer(text, truncation=True)["input_ids"] == [int(i) for i in row if i], text


@pytest.mark.parametrize("encoder", ["bert", "t5"])
def test_exported_tensors_import_back_bit_for_bit(tmp_path, encoder):
  """Export inverts `convert`'s import rules exactly: import(export(params)) == params."""
  if encoder == "bert":
    config = convert.encoders.BertConfig(vocab_size=120, d_model=32, num_heads=4, num_layers=2,
                                         d_ff=64, max_position_embeddings=64)
    module = convert.encoders.BertEncoder(config)
  else:
    config = convert.encoders.T5Config(vocab_size=120, d_model=32, num_heads=4, head_dim=8,
                                       num_layers=2, d_ff=64, feed_forward_proj="gated-gelu")
    module = convert.encoders.T5Encoder(config)
  ids = jnp.ones((1, 8), jnp.int32)
  params = nn.unbox(module.init(jax.random.PRNGKey(3), ids, ids))["params"]
  tmp_path.joinpath("config.json").write_text(json.dumps(hf.hf_config(config)))
  hf.write_weights(tmp_path / "model.safetensors", hf.encoder_tensors(config, params))
  _, variables = convert.from_huggingface(tmp_path)
  for (path, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(params),
                               jax.tree_util.tree_leaves_with_path(variables["params"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))


SPARSE = ["include 'runs/sparse_tiny_cpu.gin'", "TASK_FEATURE_LENGTHS = {'inputs': 16, 'targets': 48}"]


def _assert_sparse_close(ours, theirs, what):
  """Weights within 1e-4 of each row's largest weight, and the same terms above that noise."""
  scale = np.maximum(np.abs(ours).max(axis=1, keepdims=True), 1e-6)
  assert np.all(np.abs(ours - theirs) <= 1e-4 * scale), what


@pytest.mark.parametrize("query_encoder,activation", [
    ("idf", "log1p_relu"), ("ones", "log1p_log1p_relu"), ("mlm", "log1p_relu")])
def test_sparse_export_loads_in_sparse_encoder_with_equal_weights_and_scores(
    tmp_path, texts, query_encoder, activation):
  from sentence_transformers import SparseEncoder
  # A siamese model is one sentence-transformers pipeline: queries are cut where documents are.
  lengths = ["TASK_FEATURE_LENGTHS = {'inputs': 48, 'targets': 48}"] * (query_encoder == "mlm")
  step_dir = _write_checkpoint(tmp_path, "run", SPARSE + lengths + [
      f"dualenc.sparse.SparseEncoder.query_encoder = '{query_encoder}'",
      f"dualenc.sparse.SparseEncoder.activation = '{activation}'"])
  _export(step_dir, tmp_path / "st")
  model = SparseEncoder(str(tmp_path / "st"), device="cpu")
  encoders = _dualenc_encoders(step_dir)
  ours, theirs = {}, {}
  for side, encode in (("query", model.encode_query), ("document", model.encode_document)):
    theirs[side] = encode(texts, convert_to_tensor=True).to_dense().numpy()
    ours[side] = _ours(encoders, side, texts)
    _assert_sparse_close(ours[side], theirs[side], side)
  # Special tokens carry no weight in dualenc; the export keeps it so ([CLS]=101, [SEP]=102).
  assert np.all(theirs["document"][:, [0, 100, 101, 102, 103]] == 0)
  if query_encoder != "mlm":  # inference-free: a query's terms are its own word pieces
    assert (theirs["query"] > 0).sum(axis=1).max() <= 14
  our_scores = ours["query"] @ ours["document"].T
  np.testing.assert_allclose(theirs["query"] @ theirs["document"].T, our_scores,
                             rtol=1e-4, atol=1e-4 * np.abs(our_scores).max())


def _st_inference_free(tmp_path, bert_dir, weight=None, activation="relu"):
  """An inference-free SparseEncoder built from sentence-transformers' own modules."""
  import torch
  from sentence_transformers import SparseEncoder
  from sentence_transformers.base.modules import Router, Transformer
  from sentence_transformers.sparse_encoder.modules import SparseStaticEmbedding, SpladePooling
  document = Transformer(str(bert_dir), transformer_task="fill-mask", max_seq_length=40)
  if weight is not None:
    weight = torch.tensor(weight)
  router = Router.for_query_document(
      query_modules=[SparseStaticEmbedding(tokenizer=document.tokenizer, weight=weight,
                                           frozen=True)],
      document_modules=[document, SpladePooling("max", activation_function=activation)])
  model = SparseEncoder(modules=[router], similarity_fn_name="dot", device="cpu")
  model.save_pretrained(str(tmp_path / "st_model"))
  return SparseEncoder(str(tmp_path / "st_model"), device="cpu"), tmp_path / "st_model"


@pytest.fixture(scope="module")
def random_bert_mlm(tmp_path_factory, minilm_dir):
  """A random-weight BertForMaskedLM (transformers) with all-MiniLM-L6-v2's tokenizer."""
  import torch
  import transformers
  torch.manual_seed(0)
  directory = tmp_path_factory.mktemp("bert_mlm")
  config = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=4, intermediate_size=64)
  model = transformers.BertForMaskedLM(config)
  with torch.no_grad():  # a nonzero output bias, so its import is checked too
    model.cls.predictions.bias.normal_(0.0, 0.5)
  model.save_pretrained(str(directory))
  transformers.AutoTokenizer.from_pretrained(str(minilm_dir)).save_pretrained(str(directory))
  return directory


@pytest.mark.parametrize("activation", ["relu", "log1p_relu"])
def test_a_sentence_transformers_sparse_model_imports_and_scores_the_same(
    tmp_path, texts, random_bert_mlm, activation):
  rng = np.random.default_rng(0)
  weight = rng.uniform(0.0, 6.0, 30522).astype(np.float32)
  reference, directory = _st_inference_free(tmp_path, random_bert_mlm, weight, activation)
  model = loading.from_hf_checkpoint(directory)
  assert model.model.query_encoder == "idf"
  assert model.document_tokenizer.max_length == 40
  encoders = retrieval.ModelEncoders(model)
  queries = retrieval.model_free_query_encoder(model).encode_batch(texts).toarray()
  documents = _ours(encoders, "document", texts)
  theirs_q = reference.encode_query(texts, convert_to_tensor=True).to_dense().numpy()
  theirs_d = reference.encode_document(texts, convert_to_tensor=True).to_dense().numpy()
  _assert_sparse_close(queries, theirs_q, "query")
  _assert_sparse_close(documents, theirs_d, "document")
  np.testing.assert_allclose(queries @ documents.T, theirs_q @ theirs_d.T, rtol=1e-4)


def test_sentence_transformers_5_layouts_and_an_idf_json_query_side_import(tmp_path,
                                                                         random_bert_mlm):
  """sentence-transformers 5.x module paths (models.Router, MLMTransformer), max_seq_length in
  sentence_bert_config.json, and a SparseStaticEmbedding whose config names an idf.json."""
  weight = np.random.default_rng(2).uniform(0.5, 6.0, 30522).astype(np.float32)
  _, directory = _st_inference_free(tmp_path, random_bert_mlm, weight)
  current = pretrained.load(directory)
  router = json.loads((directory / "router_config.json").read_text())
  router["types"] = {name: {"SparseStaticEmbedding":
                            "sentence_transformers.sparse_encoder.models.SparseStaticEmbedding",
                            "Transformer": "sentence_transformers.sparse_encoder.models.MLMTransformer",
                            "SpladePooling": "sentence_transformers.sparse_encoder.models.SpladePooling"
                            }[name.split("_", 2)[2]] for name in router["types"]}
  (directory / "router_config.json").write_text(json.dumps(router))
  (directory / "modules.json").write_text(json.dumps(
      [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Router"}]))
  (directory / "document_0_Transformer" / "sentence_bert_config.json").write_text(
      json.dumps({"max_seq_length": 24, "do_lower_case": False}))
  query_dir = directory / "query_0_SparseStaticEmbedding"
  (query_dir / "model.safetensors").unlink()
  (query_dir / "config.json").write_text(json.dumps({"frozen": True, "path": "idf.json"}))
  (query_dir / "idf.json").write_text(json.dumps({"protein": 5.0}))
  for missing in (0.0, 1.0):
    old = pretrained.load(directory, missing_idf=missing)
    assert old.settings["layout"] == "inference-free" and old.lengths["document"] == 24
    idf = np.asarray(old.params["idf"])
    assert idf[_vocab_tokens(old).index("protein")] == 5.0 and np.sum(idf != missing) == 1
    np.testing.assert_array_equal(np.asarray(old.params["mlm_head"]["output_bias"]),
                                  np.asarray(current.params["mlm_head"]["output_bias"]))


def _vocab_tokens(loaded):
  from dualenc.sparse import idf as idf_lib
  return idf_lib.vocab_tokens(loaded.vocab_path)


def test_siamese_splade_and_bert_mlm_with_idf_json_import(tmp_path, texts, random_bert_mlm):
  from sentence_transformers import SparseEncoder
  from sentence_transformers.sparse_encoder.modules import SpladePooling
  from sentence_transformers.base.modules import Transformer
  splade = SparseEncoder(modules=[Transformer(str(random_bert_mlm), transformer_task="fill-mask",
                                              max_seq_length=40), SpladePooling("max")],
                         device="cpu")
  # A bare BertForMaskedLM is read as siamese SPLADE only when asked (it could be anything).
  with pytest.raises(convert.CheckpointError, match="hf_sparse=splade"):
    pretrained.load(random_bert_mlm)
  model = loading.from_hf_checkpoint(random_bert_mlm, sparse="splade", max_length=40)
  assert model.model.query_encoder == "mlm"
  ours = _ours(retrieval.ModelEncoders(model), "query", texts)
  _assert_sparse_close(ours, splade.encode_query(texts, convert_to_tensor=True).to_dense().numpy(),
                       "siamese query")
  # OpenSearch's model layout: a BertForMaskedLM with idf.json beside it; the missing-token
  # convention is an option (0 as sentence-transformers reads it, 1.0 as OpenSearch trains).
  with_idf = tmp_path / "with_idf"
  with_idf.mkdir()
  for f in random_bert_mlm.iterdir():
    (with_idf / f.name).write_bytes(f.read_bytes())
  (with_idf / "idf.json").write_text(json.dumps({"protein": 5.0, "cell": 3.0}))
  zero = loading.from_hf_checkpoint(with_idf, missing_idf=0.0)
  one = loading.from_hf_checkpoint(with_idf, missing_idf=1.0)
  encode = lambda m: retrieval.model_free_query_encoder(m).encode("protein in the cell")
  assert dict(zip(*map(list, encode(zero)))) == {
      zero.query_tokenizer.vocabulary.tokens.index("protein"): 5.0,
      zero.query_tokenizer.vocabulary.tokens.index("cell"): 3.0}
  assert len(encode(one)[0]) == 4 and sorted(encode(one)[1]) == [1.0, 1.0, 3.0, 5.0]


def test_training_starts_from_a_sparse_encoder_directory(tmp_path, random_bert_mlm):
  """INITIAL_CHECKPOINT_PATH = a SparseEncoder directory: encoder, MLM head and IDF table."""
  from dualenc import train
  from dualenc.sparse import model as model_lib
  weight = np.random.default_rng(1).uniform(0.0, 6.0, 30522).astype(np.float32)
  _, directory = _st_inference_free(tmp_path, random_bert_mlm, weight)
  loaded = pretrained.load(directory)
  model = model_lib.SparseEncoder(encoder_config=loaded.model.encoder_config)
  ids = np.ones((1, 8), np.int32)
  fresh = nn.unbox(model.init(jax.random.PRNGKey(0), ids, ids, ids, ids))["params"]
  params = model.load_pretrained(fresh, train._load_pretrained_encoder(str(directory), model))  # pylint: disable=protected-access
  np.testing.assert_array_equal(np.asarray(params["idf"]), weight)
  np.testing.assert_array_equal(np.asarray(params["mlm_head"]["output_bias"]),
                                np.asarray(loaded.params["mlm_head"]["output_bias"]))
  assert not np.array_equal(np.asarray(params["token_embedder"]["embedding"]),
                            np.asarray(fresh["token_embedder"]["embedding"]))


def test_opensearch_files_have_the_documented_shapes_and_the_model_weights(
    tmp_path, shared_data_dir):
  beir = beir_slice(shared_data_dir / "scifact", tmp_path / "beir", 40)
  step_dir = _write_checkpoint(tmp_path, "run", SPARSE)
  out = tmp_path / "os"
  _export(step_dir, out, "opensearch", f"--beir_dir={beir}", "--query=protein folding in cells",
          "--prune_top_k=30")
  mapping = json.loads((out / "mapping.json").read_text())
  field = opensearch.FIELD
  assert mapping["mappings"]["properties"][field] == {"type": "rank_features"}
  lines = (out / "documents.jsonl").read_text().splitlines()
  assert len(lines) == 2 * 40
  action, document = json.loads(lines[0]), json.loads(lines[1])
  first = json.loads((beir / "corpus.jsonl").read_text().splitlines()[0])
  assert action == {"index": {"_index": "dualenc", "_id": first["_id"]}}
  assert document["id"] == first["_id"] and set(document) == {"id", "text", field}
  weights = document[field]
  assert 0 < len(weights) <= 30 and all(isinstance(t, str) and w > 0 for t, w in weights.items())
  # The document's exported weights are the model's (its 30 largest).
  encoders = _dualenc_encoders(step_dir)
  vocabulary = encoders.retrieval_model.document_tokenizer.vocabulary
  row = _ours(encoders, "document", [document["text"]])[0]
  top = np.argsort(-row, kind="stable")[:30]
  expected = {vocabulary.tokens[i]: float(row[i]) for i in top if row[i] > 0}
  assert weights.keys() == expected.keys()
  np.testing.assert_allclose([weights[t] for t in expected], list(expected.values()), rtol=1e-5)
  query = json.loads((out / "query.json").read_text())
  tokens = query["query"]["neural_sparse"][field]["query_tokens"]
  idf = json.loads((out / "idf.json").read_text())
  assert set(tokens) <= {"protein", "folding", "in", "cells"} and tokens
  assert all(tokens[t] == pytest.approx(idf[t]) for t in tokens)
  assert len(idf) == 30522 and idf["[CLS]"] == 0.0 and idf["[UNK]"] == 0.0


def _files(directory):
  return {p.relative_to(directory): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


def test_bad_exports_are_refused_and_nothing_is_overwritten(tmp_path):
  step_dir = _write_checkpoint(tmp_path, "run", BERT_DENSE + [
      "towers.DualEncoder.embedding_dim = 16"])
  out = tmp_path / "st"
  _export(step_dir, out)
  before = _files(out)
  # The same export again is recognised and leaves the files alone.
  _export(step_dir, out)
  assert _files(out) == before
  with pytest.raises(FileExistsError, match="holds another export"):
    _export(step_dir, out, "sentence-transformers", "--document_max_length=40")
  foreign = tmp_path / "foreign"
  foreign.mkdir()
  (foreign / "notes.txt").write_text("mine")
  with pytest.raises(FileExistsError, match="holds no dualenc export"):
    _export(step_dir, foreign)
  with pytest.raises(ValueError, match="projects its embeddings"):
    _export(step_dir, tmp_path / "hf", "huggingface")
  with pytest.raises(ValueError, match="inference-free"):
    _export(step_dir, tmp_path / "os", "opensearch")
  assert _files(out) == before and (foreign / "notes.txt").read_text() == "mine"
  assert not (tmp_path / "hf").exists() and not (tmp_path / "os").exists()
  assert not list(tmp_path.glob(".*staging*"))
  # As a user meets them: one `error:` line naming the culprit, exit code 2.
  (step_dir.parent.parent / "config.gin").rename(tmp_path / "config.gin.bak")
  for flags, message in (
      ([f"--checkpoint={step_dir}", f"--output_dir={tmp_path / 'x'}"], "config.gin not found"),
      ([f"--checkpoint={step_dir}", f"--output_dir={tmp_path / 'x'}", "--format=onnx"],
       "unknown format")):
    result = subprocess.run([sys.executable, "-m", "dualenc.export", *flags], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and message in result.stderr, result.stderr
  assert not (tmp_path / "x").exists()


def test_huggingface_format_loads_in_transformers(tmp_path, texts):
  import torch
  import transformers
  step_dir = _write_checkpoint(tmp_path, "run", SPARSE)
  _export(step_dir, tmp_path / "hf", "huggingface")
  model = transformers.AutoModelForMaskedLM.from_pretrained(str(tmp_path / "hf"))
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
  batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
  with torch.no_grad():
    logits = model(**batch).logits
  mask = batch["attention_mask"][..., None].float()
  theirs = torch.log1p(torch.relu(logits * mask)).amax(dim=1).numpy()
  ours = _ours(_dualenc_encoders(step_dir), "document", texts)
  _assert_sparse_close(ours, theirs, "BertForMaskedLM + SPLADE max pooling")
  idf = json.loads((tmp_path / "hf" / "idf.json").read_text())
  assert len(idf) == 30522

"""Sparse retrievers end to end: IDF tables, the model against sentence-transformers'
SparseEncoder, BM25 against bm25s, the MLM head export against transformers, distillation
losses, training and evaluation through the one trainer and evaluator, bad input."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from dualenc import cli, convert, evaluate, gin_utils, train
from dualenc.encoders import bert
from dualenc.sparse import corpus, functions, idf as idf_lib, losses, mlm_head, model, teachers
from tests.conftest import beir_slice

TINY = bert.BertConfig(vocab_size=30522, d_model=32, num_heads=2, num_layers=2, d_ff=64,
                       max_position_embeddings=128, dropout_rate=0.0,
                       attention_dropout_rate=0.0)


def _init(module, q, d):
  mask = lambda x: (x != 0).astype(np.int32)
  return nn.unbox(module.init(jax.random.PRNGKey(0), q, mask(q), d, mask(d))["params"])


# -- IDF -----------------------------------------------------------------------------------------


def test_scifact_idf_equals_an_independent_count_and_round_trips(shared_data_dir, minilm_dir,
                                                                  tmp_path):
  import transformers  # pylint: disable=g-import-not-at-top
  texts = corpus.beir_corpus_texts(shared_data_dir / "scifact")
  got = idf_lib.corpus_idf(texts)
  # Independently: transformers' tokenizer, Python sets, float64.
  tokenizer = transformers.BertTokenizerFast.from_pretrained(str(minilm_dir))
  special = set(tokenizer.all_special_ids)
  df, n = np.zeros(tokenizer.vocab_size), 0
  for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
    terms = set(ids) - special
    n += bool(terms)
    for t in terms:
      df[t] += 1
  assert n == 5183 and df.sum() > 300_000
  expected = np.log(1 + (n - df + 0.5) / (df + 0.5))
  expected[list(special)] = 0
  unused = [i for i, t in enumerate(idf_lib.vocab_tokens(minilm_dir / "vocab.txt"))
            if t.startswith("[unused")]
  expected[unused] = 0
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  the = tokenizer.convert_tokens_to_ids("the")
  assert 0 < got[the] < 0.1  # in nearly every abstract
  assert got.max() == pytest.approx(np.log(1 + (n + 0.5) / 0.5))  # tokens never seen: df = 0
  tokens = idf_lib.vocab_tokens(minilm_dir / "vocab.txt")
  idf_lib.save_idf(tmp_path / "idf.json", got, tokens)
  np.testing.assert_array_equal(idf_lib.load_idf(tmp_path / "idf.json", tokens), got)
  table = json.loads((tmp_path / "idf.json").read_text())
  assert len(table) == 30522 and table["[CLS]"] == 0.0


def test_idf_formula_edge_cases_and_an_idf_json_of_another_vocabulary(tmp_path, shared_data_dir):
  idf = idf_lib.compute_idf([[5, 5, 6], [6], [1], []], vocab_size=8, special_ids=(1,))
  n = 2  # the document holding only a special token and the empty one do not count
  formula = lambda df: np.log(1 + (n - df + 0.5) / (df + 0.5))
  np.testing.assert_allclose(idf, [formula(0), 0, formula(0), formula(0), formula(0),
                                   formula(1), formula(2), formula(0)], rtol=1e-6)
  small = idf_lib.vocab_tokens(shared_data_dir / "vocab" / "bert_wordpiece_small_vocab.txt")
  idf_lib.save_idf(tmp_path / "small.json", np.ones(len(small)), small)
  minilm = idf_lib.vocab_tokens(idf_lib.default_vocab_path())
  with pytest.raises(ValueError, match=r"small\.json: .* made for another vocabulary"):
    idf_lib.load_idf(tmp_path / "small.json", minilm[:200])


# -- the model -----------------------------------------------------------------------------------


def test_document_vectors_equal_sentence_transformers_splade_and_queries_are_idf(tmp_path):
  """A random BertForMaskedLM saved by transformers, read by sentence-transformers' SparseEncoder
  (MLMTransformer + SpladePooling max) and by dualenc. sentence-transformers names SPLADE's
  log1p(relu(x)) 'relu' and the l0-style log1p(log1p(relu(x))) 'log1p_relu'."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from sentence_transformers import SparseEncoder  # pylint: disable=g-import-not-at-top
  from sentence_transformers.sparse_encoder.modules import MLMTransformer, SpladePooling  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  config = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=2, intermediate_size=64)
  transformers.BertForMaskedLM(config).eval().save_pretrained(tmp_path / "mlm")
  transformers.BertTokenizerFast.from_pretrained(str(convert.minilm_path())).save_pretrained(
      tmp_path / "mlm")
  texts = ["sparse retrieval with an inverted index", "a much longer document about the "
           "vocabulary weights a masked language model head assigns to each term", "short"]
  _, variables = convert.from_huggingface(tmp_path / "mlm", mlm_head=True)
  config = convert.encoder_config(tmp_path / "mlm" / "config.json")
  for ours, theirs in (("log1p_relu", "relu"), ("log1p_log1p_relu", "log1p_relu")):
    reference = SparseEncoder(modules=[MLMTransformer(str(tmp_path / "mlm")),
                                       SpladePooling("max", activation_function=theirs)]).eval()
    expected = reference.encode_document(texts, convert_to_tensor=True).to_dense().numpy()
    sparse = model.SparseEncoder(config, zero_special_tokens=False, chunk_size=4,
                                 activation=ours)
    batch = reference.tokenizer(texts, padding=True, return_tensors="np")
    ids, mask = batch["input_ids"].astype(np.int32), batch["attention_mask"].astype(np.int32)
    params = sparse.load_pretrained(_init(sparse, ids, ids), variables["params"])
    got = sparse.apply({"params": params}, ids, mask, method="encode_documents")
    np.testing.assert_allclose(got, expected, atol=2e-6, rtol=1e-5, err_msg=ours)
  # Queries: no model, 1 per distinct token times the idf.
  idf = np.arange(30522, dtype=np.float32) / 30522
  queries = np.asarray(sparse.apply({"params": model.with_idf(params, idf)}, ids, mask,
                                    method="encode_queries"))
  for row in range(len(texts)):
    present = set(ids[row][mask[row] == 1]) - set(model.BERT_SPECIAL_IDS)
    assert set(np.flatnonzero(queries[row])) == present
    np.testing.assert_allclose(queries[row][list(present)], idf[list(present)])


def test_special_tokens_carry_no_weight_and_siamese_queries_use_the_encoder():
  rng = np.random.default_rng(0)
  ids = rng.integers(1000, 30000, (3, 12)).astype(np.int32)
  ids[:, 0], ids[:, -1] = 101, 102
  mask = np.ones_like(ids)
  for query_encoder in ("idf", "ones", "mlm"):
    sparse = model.SparseEncoder(TINY, query_encoder=query_encoder)
    params = _init(sparse, ids, ids)
    q, d = sparse.apply({"params": params}, ids, mask, ids, mask)
    assert q.shape == d.shape == (3, 30522)
    assert np.all(np.asarray(d)[:, list(model.BERT_SPECIAL_IDS)] == 0)
    assert np.all(np.asarray(q)[:, list(model.BERT_SPECIAL_IDS)] == 0)
    if query_encoder == "mlm":
      np.testing.assert_allclose(q, d, rtol=1e-6)  # one encoder for both sides
    else:
      assert "idf" in params if query_encoder == "idf" else "idf" not in params
      assert np.all(np.sum(np.asarray(q) > 0, axis=1) <= 10)


def test_inference_pruning_keeps_the_largest_weights_and_training_never_prunes():
  rng = np.random.default_rng(3)
  ids = rng.integers(1000, 30000, (2, 16)).astype(np.int32)
  mask = np.ones_like(ids)
  full = model.SparseEncoder(TINY)
  params = _init(full, ids, ids)
  dense = np.asarray(full.apply({"params": params}, ids, mask, method="encode_documents"))
  for k, ratio in ((5, None), (None, 0.5)):
    pruned = np.asarray(model.SparseEncoder(TINY, prune_top_k=k, prune_ratio=ratio).apply(
        {"params": params}, ids, mask, method="encode_documents"))
    for row in range(2):
      kept = np.flatnonzero(pruned[row])
      if k:
        np.testing.assert_array_equal(np.sort(kept), np.sort(np.argsort(-dense[row])[:k]))
      else:
        np.testing.assert_array_equal(kept, np.flatnonzero(dense[row] >= 0.5 * dense[row].max()))
      np.testing.assert_array_equal(pruned[row][kept], dense[row][kept])
  training = model.SparseEncoder(TINY, prune_top_k=5).apply(
      {"params": params}, ids, mask, method="encode_documents", deterministic=False)
  assert np.count_nonzero(np.asarray(training)[0]) > 5


def test_chunked_max_pool_cuts_the_compiled_memory_of_a_document_train_step():
  """The step differentiates through the max-pool: without chunks XLA keeps [B, L, V] logits."""
  batch, length = 8, 128
  ids = jax.ShapeDtypeStruct((batch, length), jnp.int32)
  peaks = {}
  for chunk in (length, 16):
    sparse = model.SparseEncoder(TINY, chunk_size=chunk)
    params = jax.eval_shape(lambda: _init(sparse, np.ones((1, 8), np.int32),
                                          np.ones((1, 8), np.int32)))

    def loss(p, ids):
      d = sparse.apply({"params": p}, ids, jnp.ones_like(ids), method="encode_documents")
      return functions.flops(d)

    compiled = jax.jit(jax.grad(loss)).lower(params, ids).compile()
    peaks[chunk] = compiled.memory_analysis().temp_size_in_bytes
  logits_bytes = batch * length * 30522 * 4
  assert peaks[length] > logits_bytes  # the full logits are held
  assert peaks[16] < peaks[length] / 4  # chunks of 16 positions hold an eighth


# -- teachers and losses ---------------------------------------------------------------------------


def test_bm25_teacher_equals_bm25s_lucene(shared_data_dir):
  import bm25s  # pylint: disable=g-import-not-at-top
  texts = corpus.beir_corpus_texts(shared_data_dir / "scifact")[:300]
  tokenizer = idf_lib.wordpiece_tokenizer()
  docs = [e.ids[:126] for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
  stats = teachers.bm25_statistics(docs, 30522, model.BERT_SPECIAL_IDS)
  retriever = bm25s.BM25(k1=1.2, b=0.75, method="lucene")
  # Special tokens ([UNK]) are no terms: neither for the teacher nor for bm25s.
  retriever.index([[str(t) for t in d if t not in model.BERT_SPECIAL_IDS] for d in docs],
                  show_progress=False)
  queries = [e.ids for e in tokenizer.encode_batch(
      ["protein folding in cells", "vitamin d deficiency and bone loss"],
      add_special_tokens=False)]
  width = max(len(q) for q in queries) + 2
  query_ids = np.zeros((len(queries), width), np.int32)
  for row, q in enumerate(queries):
    query_ids[row, :len(q) + 2] = [101] + q + [102]
  candidate_ids = np.zeros((len(docs), 128), np.int32)
  for row, d in enumerate(docs):
    candidate_ids[row, :len(d) + 2] = [101] + d + [102]
  got = teachers.bm25_scores(query_ids, candidate_ids, stats["idf"], stats["avgdl"],
                             model.BERT_SPECIAL_IDS)
  for row, q in enumerate(queries):
    terms = [str(t) for t in dict.fromkeys(q) if str(t) in retriever.vocab_dict]
    np.testing.assert_allclose(got[row], retriever.get_scores(terms), rtol=2e-5, atol=2e-5)


def _batch(rng, b=4, n=2, lq=6, ld=10):
  make = lambda *shape: rng.integers(1000, 30000, shape).astype(np.int32)
  q, d, neg = make(b, lq), make(b, ld), make(b, n, ld)
  neg[1, 1] = 0  # an absent hard negative
  return {"left_encoder_input_tokens": q, "right_encoder_input_tokens": d,
          "right_negative_encoder_input_tokens": neg}


def test_kd_loss_over_own_candidates_equals_a_numpy_reference():
  rng = np.random.default_rng(1)
  batch = _batch(rng)
  b, n = 4, 2
  q = rng.random((b, 50)).astype(np.float32)
  d = rng.random((b, 50)).astype(np.float32)
  hard = rng.random((b, n, 50)).astype(np.float32)
  given = rng.normal(size=(b, 1, 1 + n)).astype(np.float32)
  batch["teacher_scores"] = given
  mask = np.array([[1, 1], [1, 0], [1, 1], [1, 1]], bool)
  loss = losses.SparseLoss(ranking="kl", candidates="own",
                           teachers=[teachers.PrecomputedTeacher()], flops_lambda_documents=0.0)
  total, metrics = loss(q, d, hard_negatives=hard, hard_negative_mask=mask, step=0, batch=batch,
                        frozen={"0": {}})
  student = np.concatenate([np.sum(q * d, -1)[:, None], np.einsum("bv,bnv->bn", q, hard)], 1)
  teacher = given[:, 0].astype(np.float64).copy()
  valid = np.concatenate([np.ones((b, 1), bool), mask], 1)
  kl = []
  for row in range(b):
    s, t = student[row][valid[row]], teacher[row][valid[row]]
    t = (t - t.min()) / (t.max() - t.min() + 1e-6) * 30
    p, log_q = np.exp(t - np.logaddexp.reduce(t)), s - np.logaddexp.reduce(s)
    kl.append(np.sum(p * (np.log(p) - log_q)))
  assert float(total) == pytest.approx(np.mean(kl), rel=1e-4)
  assert float(metrics["document_nnz"]) == 50.0


def test_teacher_scores_of_the_wrong_shape_and_bad_teachers_are_clear_errors(tmp_path):
  rng = np.random.default_rng(2)
  batch = _batch(rng)
  batch["teacher_scores"] = np.zeros((4, 1, 5), np.float32)  # 5 scores for 1 + 2 candidates
  loss = losses.SparseLoss(ranking="kl", candidates="own",
                           teachers=[teachers.PrecomputedTeacher()])
  v = np.ones((4, 8), np.float32)
  with pytest.raises(ValueError, match=r"teacher_scores have shape \(4, 1, 5\), expected .* 3\]"):
    loss(v, v, hard_negatives=np.ones((4, 2, 8), np.float32), step=0, batch=batch,
         frozen={"0": {}})
  with pytest.raises(ValueError, match="set SparseLoss.candidates = 'own'"):
    losses.SparseLoss(teachers=[teachers.PrecomputedTeacher()])
  with pytest.raises(ValueError, match="bind SparseLoss.teachers"):
    losses.SparseLoss(ranking="kl")
  # A dense teacher checkpoint of another architecture, named by its gin binding.
  from dualenc import checkpoints, towers  # pylint: disable=g-import-not-at-top
  from dualenc import train_state as ts  # pylint: disable=g-import-not-at-top
  ids = np.ones((1, 8), np.int32)
  sde = towers.DualEncoder(TINY, architecture="sde")
  checkpointer = checkpoints.Checkpointer(str(tmp_path / "dense"), async_save=False)
  checkpointer.save(1, ts.TrainState(step=jnp.asarray(1), params=_init(sde, ids, ids),
                                     opt_state={}), {"step": 1}, force=True)
  checkpointer.close()
  teacher = teachers.ModelTeacher(model=towers.DualEncoder(TINY, architecture="ade"),
                                  checkpoint=str(tmp_path / "dense" / "checkpoints" / "1"))
  from dualenc.data import vocabularies  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match=r"ModelTeacher 'model' \(gin binding "
                     r"ModelTeacher.checkpoint=.*unexpected in checkpoint: encoder/\*"):
    teacher.prepare(mixture_or_task_name=None, feature_lengths=None,
                    vocabulary=vocabularies.get_vocabulary())


# -- the MLM head of all-MiniLM-L6-v2 ------------------------------------------------------------


def test_fitted_head_lowers_mlm_loss_and_transformers_reads_the_export(tmp_path, minilm_dir):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  code = cli.report_bad_input(mlm_head.main, [
      "--task=dualenc_default", f"--output_dir={tmp_path / 'mlm'}", "--max_texts=200",
      "--steps=60", "--max_length=64"])
  assert code == 0
  report = json.loads((tmp_path / "mlm" / "mlm_head.json").read_text())
  assert report["after"]["loss"] < report["before"]["loss"] - 1.0
  assert report["after"]["accuracy"] > report["before"]["accuracy"]
  hf = transformers.BertForMaskedLM.from_pretrained(str(tmp_path / "mlm")).eval()
  tokenizer = transformers.BertTokenizerFast.from_pretrained(str(tmp_path / "mlm"))
  batch = tokenizer(["the [MASK] returns a sorted list", "open a [MASK] for reading"],
                    padding=True, return_tensors="pt")
  with torch.no_grad():
    expected = hf(**batch).logits.numpy()
  module, variables = convert.from_huggingface(tmp_path / "mlm", mlm_head=True)
  got = module.apply(variables, batch["input_ids"].numpy().astype(np.int32),
                     batch["attention_mask"].numpy().astype(np.int32))
  np.testing.assert_allclose(got, expected, atol=2e-4, rtol=1e-4)
  # The encoder is all-MiniLM-L6-v2's, unchanged.
  _, minilm = convert.from_huggingface(minilm_dir)
  np.testing.assert_array_equal(variables["params"]["encoder"]["layers_0"]["wi"]["kernel"],
                                minilm["params"]["layers_0"]["wi"]["kernel"])
  # The bias was shifted so documents start near the target density (200 non-zeros).
  assert report["target_doc_nnz"] == 200 and report["bias_shift"] != 0
  texts = corpus.corpus_texts("dualenc_default", "train")[:64]
  ids = np.zeros((len(texts), 64), np.int32)
  for row, e in enumerate(idf_lib.wordpiece_tokenizer().encode_batch(texts,
                                                                    add_special_tokens=False)):
    content = [101] + e.ids[:62] + [102]
    ids[row, :len(content)] = content
  sparse = model.SparseEncoder(module.config)
  params = sparse.load_pretrained(_init(sparse, ids[:1], ids[:1]), variables["params"])
  vectors = sparse.apply({"params": params}, ids, (ids != 0).astype(np.int32),
                         method="encode_documents")
  assert 120 < float(np.mean(np.sum(np.asarray(vectors) > 0, axis=1))) < 300


# -- training and evaluation through the one trainer -------------------------------------------


def test_a_sparse_run_trains_logs_and_evaluates_through_the_common_tools(tmp_path, capsys,
                                                                        shared_data_dir):
  idf_path = tmp_path / "idf.json"
  assert cli.report_bad_input(idf_lib.main, ["--task=dualenc_default", "--split=train",
                                             f"--output={idf_path}"]) == 0
  gin_utils.parse_command_line([
      "--gin_file=runs/sparse_tiny_cpu.gin", f"--gin.MODEL_DIR='{tmp_path / 'run'}'",
      "--gin.TRAIN_STEPS=4", f"--gin.IDF_PATH='{idf_path}'", "--gin.train.progress_bar=False",
      "--gin.dualenc.sparse.SparseLoss.teachers=[@dualenc.sparse.BM25Teacher()]",
      "--gin.optimizers.make_optimizer.learning_rate_scales={'^idf$': 0.0}"], "test")
  state = train.train()
  import gin  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  assert int(state.step) == 4
  # The table came from idf.json and a zero learning-rate scale kept it there.
  tokens = idf_lib.vocab_tokens(idf_lib.default_vocab_path())
  np.testing.assert_allclose(state.params["idf"], idf_lib.load_idf(idf_path, tokens))
  record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
  for key in ("ranking_loss", "flops_documents", "flops_lambda", "document_nnz", "query_nnz"):
    assert np.isfinite(record[key]), key
  assert record["flops_lambda"] == pytest.approx(0.002 * (4 / 10) ** 2)
  wiki = beir_slice(shared_data_dir / "wikiqa" / "test", tmp_path / "wiki", 120)
  code = cli.report_bad_input(evaluate.main, [
      f"--checkpoint={tmp_path / 'run'}", f"--beir_dir={wiki}", "--no_progress",
      f"--save_index={tmp_path / 'index'}"])
  assert code == 0, capsys.readouterr().err
  # The task is beir_wiki, suffixed when another test of this process registered that name.
  (task,) = json.loads((tmp_path / "run" / "eval" / "4" / "metrics.json").read_text())["tasks"]
  assert task.startswith("beir_wiki")
  metrics = json.loads((tmp_path / "run" / "eval" / "4" / task / "metrics.json").read_text())
  assert metrics["settings"]["searcher"] == "exact" and 0 <= metrics["ndcg@10"] <= 1
  assert 0 < metrics["query_nnz"] < 30 and metrics["doc_nnz"] > 0 and metrics["flops"] > 0
  assert metrics["settings"]["query_path"].startswith("model-free")
  assert 0 < metrics["query_ms_p50"] <= metrics["query_ms_p99"]
  assert metrics["queries_timed"] == metrics["num_queries"]
  saved = tmp_path / "index"
  assert metrics["index_bytes"] == sum(p.stat().st_size for p in (saved / "inverted").iterdir())
  assert (saved / "query_encoder" / "idf.json").is_file()


# -- BM25 baseline and mining ----------------------------------------------------------------------


def test_bm25_evaluation_reproduces_scifact_and_mining_writes_the_jsonl_format(
    shared_data_dir, tmp_path, capsys):
  code = cli.report_bad_input(evaluate.main, [
      "--bm25", f"--beir_dir={shared_data_dir / 'scifact'}", "--split=test",
      f"--output_dir={tmp_path / 'bm25'}"])
  assert code == 0, capsys.readouterr().err
  metrics = json.loads((tmp_path / "bm25" / "metrics.json").read_text())
  assert metrics["ndcg@10"] == pytest.approx(0.686, abs=0.002)  # REFERENCES.md, measured
  assert metrics["settings"]["searcher_settings"]["stemmer"] == "snowball-english"
  from dualenc.data import readers  # pylint: disable=g-import-not-at-top
  from dualenc.sparse import bm25, mine  # pylint: disable=g-import-not-at-top
  data = readers.open_dataset(shared_data_dir / "scifact", "beir").eval_data("test")
  records = mine.mine(data, negatives=2, miner="bm25")
  assert len(records) == sum(len([d for d, g in j.items() if g > 0]) for j in data.qrels.values())
  searcher = bm25.BM25Searcher(list(data.corpus_texts))
  row_of = {d: i for i, d in enumerate(data.corpus_ids)}
  text_of = dict(zip(data.corpus_ids, data.corpus_texts))
  for record in records[:20]:
    relevant = {text_of[d] for d, g in data.qrels[record["query_id"]].items() if g > 0}
    assert len(record["negatives"]) == 2 and not set(record["negatives"]) & relevant
    scores = searcher.query_scores(record["query"])
    assert record["teacher_scores"]["bm25"][0] == pytest.approx(
        float(scores[row_of[record["positive_id"]]]))
    assert min(record["teacher_scores"]["bm25"][1:]) >= np.sort(scores)[-10]  # top-ranked
  (tmp_path / "mined").mkdir()
  (tmp_path / "mined" / "train.jsonl").write_text(
      "".join(json.dumps(r) + "\n" for r in records))
  examples = readers.open_dataset(tmp_path / "mined", "jsonl").training_examples("train")
  assert examples.teacher_names == ("bm25",)
  assert np.asarray(examples.teacher_scores[0]).shape == (1, 3)


def test_a_model_dir_as_checkpoint_means_its_newest_finished_step(tmp_path):
  from dualenc import checkpoints  # pylint: disable=g-import-not-at-top
  for step in (3, 10):
    (tmp_path / "run" / "checkpoints" / str(step) / "state").mkdir(parents=True)
  (tmp_path / "run" / "checkpoints" / "12.orbax-checkpoint-tmp-1").mkdir()  # unfinished
  assert str(checkpoints.step_directory(tmp_path / "run")).endswith("checkpoints/10")
  step = tmp_path / "run" / "checkpoints" / "3"
  assert checkpoints.step_directory(step) == checkpoints.step_directory(str(step))
  (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
  with pytest.raises(checkpoints.CheckpointError, match="no finished checkpoint"):
    checkpoints.step_directory(tmp_path / "empty")

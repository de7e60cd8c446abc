"""Data for dualenc: seqio tasks and mixtures, vocabularies, the dual-encoder feature converter
and a deterministic, sharded, exactly resumable batch pipeline.

Public interface (import the submodule you need; nothing heavy is imported here):
  pipeline.make_batch_iterator(name, *, split, batch_size, feature_lengths, seed,
                               shard_index, num_shards, vocabulary, shuffle, num_epochs)
      -> BatchIterator: next() gives per-host numpy batches; get_state()/set_state(state)
         (JSON) resume exactly; feature_shapes() gives shapes without reading data.
  registry.eval_data(task_name, split) -> records.EvalData (corpus ids/texts, query
      ids/texts, qrels {qid: {docid: int}}) for the evaluator.
  registry.register_dataset(name, directory, format, ...)   gin-configurable, returns name
  registry.register_mixture(name, tasks)                    gin-configurable, returns name
  vocabularies.get_vocabulary(kind, path)                    gin-configurable
  vocabularies.encode_batch(vocabulary, texts, length) -> int32 [n, length] (training framing)
  feature_converter.DualEncoderFeatureConverter               seqio FeatureConverter
  default_dataset.build() -> directory of the embedded default dataset (BEIR layout)
  readers.open_dataset(directory, format, **options)          the file readers
Built-in task registrations live in the top-level `tasks` package (`import tasks`).
"""

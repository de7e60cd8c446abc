"""Registering datasets as seqio tasks, from Python or from gin bindings alone.

From the shell (no Python): a gin binding whose value is `@register_dataset()` registers the
task when the binding is used, and evaluates to the task name:

    --gin.MIXTURE_OR_TASK_NAME=@dualenc.data.registry.register_dataset()
    --gin.dualenc.data.registry.register_dataset.name="'my_data'"
    --gin.dualenc.data.registry.register_dataset.directory="'/data/my_beir_dir'"
    --gin.dualenc.data.registry.register_dataset.format="'beir'"

Several datasets: scope them (`a/register_dataset.directory = ...`) and list
`[@a/register_dataset(), @b/register_dataset()]` in `register_mixture.tasks`.
From Python: `register_dataset("my_data", "/data/my_beir_dir", "beir")`.

Each task yields the raw features of `sources.py` through `preprocessors.DEFAULT_PREPROCESSORS`
with `preprocessors.output_features(vocabulary)`; the vocabulary registered is only a
default: the pipeline swaps in the model's. `eval_data(task, split)` gives the evaluator the
task's corpus, queries and qrels.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import gin
import seqio

from dualenc import fs
from dualenc.data import preprocessors, readers, vocabularies
from dualenc.data.records import EvalData
from dualenc.data.sources import ExamplesSource

ReaderFactory = Callable[[], readers.RetrievalDataset]


@dataclasses.dataclass
class _Entry:
  spec: Tuple
  make_reader: ReaderFactory
  reader: Optional[readers.RetrievalDataset] = None

  def get_reader(self) -> readers.RetrievalDataset:
    if self.reader is None:
      self.reader = self.make_reader()
    return self.reader


_ENTRIES: Dict[str, _Entry] = {}


def add_task(name: str, make_reader: ReaderFactory, spec: Tuple = (),
             vocabulary: Optional[seqio.Vocabulary] = None, description: str = "") -> str:
  """Registers seqio task `name` over the reader `make_reader()` builds on first use.

  Re-registering the same name with an equal `spec` is a no-op (gin may evaluate a binding
  more than once); a different spec is an error.
  """
  if name in _ENTRIES:
    if _ENTRIES[name].spec != spec:
      raise ValueError(f"task {name!r} is already registered with {_ENTRIES[name].spec}; "
                       f"cannot re-register it with {spec}")
    return name
  if name in seqio.TaskRegistry.names() or name in seqio.MixtureRegistry.names():
    raise ValueError(f"seqio already has a task or mixture named {name!r}")
  entry = _Entry(spec, make_reader)
  source = ExamplesSource(lambda split: entry.get_reader().training_examples(split),
                          lambda: entry.get_reader().splits(), description=description or name)
  seqio.TaskRegistry.add(
      name, source=source, preprocessors=list(preprocessors.DEFAULT_PREPROCESSORS),
      output_features=preprocessors.output_features(
          vocabulary or vocabularies.get_vocabulary()),
      metric_fns=[])
  _ENTRIES[name] = entry
  return name


def _reader_options(format_name: str, options: Mapping[str, object]) -> Dict[str, object]:
  """Drops unset options; rejects options the format's reader does not take."""
  if format_name not in readers.FORMATS:
    raise ValueError(f"register_dataset.format={format_name!r}: unknown dataset format; known "
                     f"formats: {sorted(readers.FORMATS)}")
  accepted = inspect.signature(readers.FORMATS[format_name].__init__).parameters
  given = {k: v for k, v in options.items() if v is not None}
  unknown = sorted(set(given) - set(accepted))
  if unknown:
    raise ValueError(f"register_dataset: format {format_name!r} takes no option(s) {unknown}")
  return given


def _freeze(value):
  if isinstance(value, Mapping):
    return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
  if isinstance(value, (list, tuple)):
    return tuple(_freeze(v) for v in value)
  return value


@gin.configurable
def register_dataset(name: str = gin.REQUIRED, directory: str = gin.REQUIRED,
                     format: str = gin.REQUIRED, *, on_bad_record: str = "error",  # pylint: disable=redefined-builtin
                     fields: Optional[Mapping[str, str]] = None,
                     splits: Optional[Mapping[str, str]] = None,
                     include_context: Optional[bool] = None,
                     vocabulary: Optional[seqio.Vocabulary] = None) -> str:
  """Registers `directory` (a `readers` format) as seqio task `name`; returns `name`.

  The directory and options are checked now; files are parsed on first use. Options:
  on_bad_record ('error' | 'warn'), fields / splits (JSONL formats), include_context
  (multireqa). Idempotent for identical arguments.
  """
  directory = str(fs.path(directory))
  options = _reader_options(format, {"on_bad_record": on_bad_record, "fields": fields,
                                     "splits": splits, "include_context": include_context})
  reader = readers.open_dataset(directory, format, **options)
  spec = (directory, format, _freeze(options))
  return add_task(name, lambda: reader, spec=spec, vocabulary=vocabulary,
                  description=f"{name} ({format} at {directory})")


def register_lazy_dataset(name: str, directory: Callable[[], str], format: str,  # pylint: disable=redefined-builtin
                          **options) -> str:
  """Like register_dataset, but the directory is resolved (and checked) on first use, so
  built-in tasks can be registered before their data is downloaded."""
  options = _reader_options(format, options)
  make_reader = lambda: readers.open_dataset(directory(), format, **options)
  return add_task(name, make_reader, spec=("lazy", name, format, _freeze(options)),
                  description=f"{name} ({format})")


@gin.configurable
def register_mixture(name: str = gin.REQUIRED,
                     tasks: Sequence[Union[str, Tuple[str, float]]] = gin.REQUIRED,
                     default_rate: Optional[float] = None) -> str:
  """Registers a seqio mixture of registered tasks; returns `name`.

  tasks: names with rates [("a", 2.0), ("b", 1.0)], or bare names with `default_rate`
  (a number; rates are relative). Idempotent for identical arguments.
  """
  tasks = [tuple(t) if isinstance(t, (list, tuple)) else t for t in tasks]
  if name in seqio.MixtureRegistry.names():
    existing = seqio.get_mixture_or_task(name)
    wanted = {(t[0] if isinstance(t, tuple) else t) for t in tasks}
    if {t.name for t in existing.tasks} != wanted:
      raise ValueError(f"mixture {name!r} is already registered with other tasks")
    return name
  for t in tasks:
    task_name = t[0] if isinstance(t, tuple) else t
    if task_name not in seqio.TaskRegistry.names() and task_name not in (
        seqio.MixtureRegistry.names()):
      raise ValueError(f"register_mixture({name!r}): no task or mixture named {task_name!r}")
  seqio.MixtureRegistry.add(name, tasks, default_rate=default_rate)
  return name


def reader(task_name: str) -> readers.RetrievalDataset:
  """The reader behind a task registered here."""
  if task_name not in _ENTRIES:
    raise ValueError(f"{task_name!r} was not registered through dualenc.data.registry; "
                     f"known: {sorted(_ENTRIES)}")
  return _ENTRIES[task_name].get_reader()


def eval_data(task_name: str, split: str) -> EvalData:
  """Corpus (ids, texts), judged queries (ids, texts) and qrels of a task's split.

  Texts are raw strings (documents as (title + " " + text).strip()); tokenize them with
  `vocabularies.encode_batch(vocabulary, texts, length)` to match training exactly.
  """
  return reader(task_name).eval_data(split)


def registered_tasks() -> Sequence[str]:
  return sorted(_ENTRIES)

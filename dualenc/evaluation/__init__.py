"""Retrieval evaluation: encode (jitted, sharded, cached), search (exact / ScaNN), trec_eval.

Periodic evaluation during training calls

    results = evaluation.evaluate_tasks(model, params, "my_mixture",
                                        feature_lengths={"inputs": 64, "targets": 256},
                                        split="test", mesh=mesh,
                                        output_dir=f"{model_dir}/eval/{step}")
    # {"task_a": {"ndcg@10": ..., "mrr@10": ..., ...}, ..., "macro_average": {...}}
    writer.write(step, evaluation.flatten_for_logging(results))   # 'eval/<task>/<metric>'

Modules: `metrics` (pytrec_eval), `search` (exact, ScaNN, saved indexes), `encode` (towers,
tokenizers, length-bucketed batching, embedding cache), `loading` (Hugging Face and dualenc
checkpoints), `retrieval` (one task / a mixture end to end).
"""

from dualenc.evaluation.encode import EncodeOptions, TowerEncoder, encode_texts
from dualenc.evaluation.loading import (RetrievalModel, from_dualenc_checkpoint,
                                        from_hf_checkpoint)
from dualenc.evaluation.metrics import METRIC_NAMES, evaluate_run, macro_average
from dualenc.evaluation.retrieval import (MACRO_AVERAGE, ModelEncoders, RetrievalOptions,
                                          TaskResult, evaluate_retrieval, evaluate_tasks,
                                          flatten_for_logging)
from dualenc.evaluation.search import ExactSearcher, Index, ScannConfig, ScannSearcher

__all__ = [
    "EncodeOptions", "ExactSearcher", "Index", "MACRO_AVERAGE", "METRIC_NAMES",
    "ModelEncoders", "RetrievalModel", "RetrievalOptions", "ScannConfig", "ScannSearcher",
    "TaskResult", "TowerEncoder", "encode_texts", "evaluate_retrieval", "evaluate_run",
    "evaluate_tasks", "flatten_for_logging", "from_dualenc_checkpoint", "from_hf_checkpoint",
    "macro_average",
]

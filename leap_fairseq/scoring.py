"""Score a SimulEval instance log: sacreBLEU, and latency both plain and computation-aware.

SimulEval 1.1.4 writes one JSON object per utterance to ``instances.log``. Each object contains
the detokenized ``prediction``, the ``reference`` and the ``source_length`` in milliseconds. Per
output word it lists ``delays``, the milliseconds of source read when the word was written, and
``elapsed`` times, the delay plus the wall-clock time since the utterance started. Computation
time therefore counts as lag in the elapsed times only.

SimulEval's own command line builds every latency scorer from ``--computation-aware``, so with
that flag its plain AL, LAAL, AP and DAL silently equal the computation-aware ones (see
``LatencyScorer.from_args`` and ``SentenceLevelEvaluator.from_args`` in SimulEval 1.1.4). This
module scores the same log twice with SimulEval's registered scorers, once with
``computation_aware=False`` and once with ``computation_aware=True``, so both values are right.
"""

import json
import logging
import math
import os
import statistics
import tempfile
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from sacrebleu.metrics import BLEU
from simuleval.evaluator.instance import LogInstance
from simuleval.evaluator.scorers import get_scorer_class

logger = logging.getLogger(__name__)

LATENCY_METRICS: Tuple[str, ...] = ("AL", "LAAL", "AP", "DAL")
COMPUTATION_AWARE_SUFFIX = "_CA"


def load_instances(log_path, latency_unit: str = "word", spm_model=None) -> Dict[int, LogInstance]:
    """Read a SimulEval ``instances.log`` into SimulEval's ``LogInstance`` objects.

    Args:
        log_path: the ``instances.log`` file.
        latency_unit: ``word``, ``char`` or ``spm``; decides how the reference length is counted.
        spm_model: a ``sentencepiece.SentencePieceProcessor``, needed only for ``spm``.

    Returns:
        A dict from the utterance index to its instance, in file order.
    """
    log_path = Path(log_path)
    if not log_path.is_file():
        raise FileNotFoundError(f"instance log not found: {log_path}; run simuleval with --output first")
    instances: Dict[int, LogInstance] = {}
    with open(log_path, encoding="utf-8") as log_file:
        for line_number, line in enumerate(log_file, start=1):
            if not line.strip():
                continue
            try:
                instance = LogInstance(line, latency_unit)
            except (json.JSONDecodeError, KeyError) as error:
                raise ValueError(f"{log_path}:{line_number}: not a SimulEval instance record ({error})") from error
            for field in ("prediction", "reference", "delays", "elapsed", "source_length"):
                if field not in instance.info:
                    raise ValueError(f"{log_path}:{line_number}: the record has no '{field}' field")
            if len(instance.info["delays"]) != len(instance.info["elapsed"]):
                raise ValueError(
                    f"{log_path}:{line_number}: {len(instance.info['delays'])} delays but "
                    f"{len(instance.info['elapsed'])} elapsed times"
                )
            instance.set_target_spm_model(spm_model)
            instances[instance.index] = instance
    if not instances:
        raise ValueError(f"{log_path} contains no instances")
    return instances


def latency_scores(
    instances: Dict[int, LogInstance],
    metrics: Iterable[str] = LATENCY_METRICS,
    computation_aware: bool = False,
    use_ref_len: bool = True,
) -> Dict[str, float]:
    """Average SimulEval's latency scorers over the instances.

    Instances without output words have no delays; SimulEval's scorers skip them with a
    warning, and so does this function. A metric is NaN when no instance has output.

    Returns:
        ``{metric: value}``, with ``_CA`` appended to each name when ``computation_aware``.
    """
    scored = {index: instance for index, instance in instances.items() if len(instance.delays) > 0}
    skipped = len(instances) - len(scored)
    if skipped:
        logger.warning("%d of %d instances have no output words and are left out of the latency", skipped, len(instances))
    results: Dict[str, float] = {}
    for metric in metrics:
        scorer = get_scorer_class("latency", metric)(computation_aware=computation_aware, use_ref_len=use_ref_len)
        name = metric + COMPUTATION_AWARE_SUFFIX if computation_aware else metric
        results[name] = float(scorer(scored)) if scored else math.nan
    return results


def computation_ms(instances: Dict[int, LogInstance]) -> float:
    """Return the agent's mean computation time per sentence until its last output word, in ms.

    For one sentence this is the elapsed time of the last word minus its delay, the wall-clock
    time that SimulEval measured from the start of the sentence. Sentences without output words
    are left out; the value is NaN when no sentence has output.
    """
    times = [instance.elapsed[-1] - instance.delays[-1] for instance in instances.values() if len(instance.delays) > 0]
    return statistics.fmean(times) if times else math.nan


def bleu_score(hypotheses: Sequence[str], references: Sequence[str], tokenize: str = "13a") -> Tuple[float, str]:
    """Return corpus sacreBLEU and its signature for one reference per hypothesis."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    bleu = BLEU(tokenize=tokenize)
    score = bleu.corpus_score(list(hypotheses), [list(references)])
    return float(score.score), str(bleu.get_signature())


def score_instances(
    instances: Dict[int, LogInstance],
    metrics: Iterable[str] = LATENCY_METRICS,
    tokenize: str = "13a",
    use_ref_len: bool = True,
) -> Dict[str, object]:
    """Compute BLEU and every latency metric, plain and computation-aware, on loaded instances.

    Returns:
        A JSON-ready dict: ``num_instances``, ``BLEU``, ``BLEU_signature``, each metric,
        each metric with ``_CA``, ``computation_ms`` (see :func:`computation_ms`) and
        ``latency_unit``.
    """
    metrics = list(metrics)
    ordered = [instances[index] for index in sorted(instances)]
    bleu, signature = bleu_score([i.prediction for i in ordered], [i.reference for i in ordered], tokenize)
    scores: Dict[str, object] = {
        "num_instances": len(ordered),
        "BLEU": bleu,
        "BLEU_signature": signature,
        "latency_unit": ordered[0].latency_unit,
    }
    scores.update(latency_scores(instances, metrics, computation_aware=False, use_ref_len=use_ref_len))
    scores.update(latency_scores(instances, metrics, computation_aware=True, use_ref_len=use_ref_len))
    scores["computation_ms"] = computation_ms(instances)
    return scores


def score_log(
    log_path,
    metrics: Iterable[str] = LATENCY_METRICS,
    tokenize: str = "13a",
    latency_unit: str = "word",
    use_ref_len: bool = True,
    spm_model=None,
) -> Dict[str, object]:
    """Load ``instances.log`` and return :func:`score_instances` for it, plus the log's path."""
    instances = load_instances(log_path, latency_unit=latency_unit, spm_model=spm_model)
    scores = score_instances(instances, metrics=metrics, tokenize=tokenize, use_ref_len=use_ref_len)
    scores["instances_log"] = str(Path(log_path).resolve())
    return scores


def write_simuleval_table(
    output_dir,
    metrics: Iterable[str] = LATENCY_METRICS,
    tokenize: str = "13a",
    latency_unit: str = "word",
    use_ref_len: bool = True,
    spm_model_path: Optional[str] = None,
) -> bool:
    """Write SimulEval's own ``scores.tsv`` for ``output_dir/instances.log``, as ``simuleval --score-only`` scores it.

    ``output_dir`` is a folder that ``simuleval --output`` wrote, with ``instances.log`` and
    ``config.yaml``. The latency columns are plain values (no ``--computation-aware``).
    SimulEval 1.1.4's latency scorers take ``statistics.mean`` over the instances that have
    output words, so they raise ``StatisticsError`` when no instance has any. That case, and a
    log without records, is logged as a warning and no table is written.

    Returns:
        True when ``scores.tsv`` was written, False when SimulEval could not score the log.
    """
    from simuleval import options
    from simuleval.evaluator import SentenceLevelEvaluator

    arguments = [
        "--score-only",
        "--output", str(output_dir),
        "--quality-metrics", "BLEU",
        "--latency-metrics", *metrics,
        "--sacrebleu-tokenizer", tokenize,
        "--eval-latency-unit", latency_unit,
    ]  # fmt: skip
    if not use_ref_len:
        arguments.append("--no-use-ref-len")
    if spm_model_path is not None:
        arguments += ["--eval-latency-spm-model", str(spm_model_path)]
    parser = options.general_parser()
    options.add_evaluator_args(parser)
    options.add_scorer_args(parser, arguments)
    options.add_dataloader_args(parser)
    args = parser.parse_args(arguments)
    try:
        SentenceLevelEvaluator.from_args(args).dump_results()
    except (statistics.StatisticsError, ZeroDivisionError) as error:
        logger.warning(
            "SimulEval's own scoring of %s failed (%s: %s), usually because no instance has output words; "
            "%s/scores.tsv is not written. The scores of this module do not depend on it",
            Path(output_dir) / "instances.log",
            type(error).__name__,
            error,
            output_dir,
        )
        return False
    return True


def write_json_atomic(data: Dict[str, object], path, extra: Optional[Dict[str, object]] = None) -> None:
    """Write ``data`` (updated with ``extra``) as JSON to a temporary file, then rename it to ``path``.

    NaN values are written as JSON ``null``.
    """
    path = Path(path)
    merged = dict(data)
    if extra:
        merged.update(extra)
    cleaned = {key: (None if isinstance(value, float) and math.isnan(value) else value) for key, value in merged.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as output:
            json.dump(cleaned, output, indent=2, ensure_ascii=False)
            output.write("\n")
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def format_table(scores: Dict[str, object], metrics: List[str]) -> str:
    """Format BLEU and each metric's plain and computation-aware values as a text table."""
    lines = [f"BLEU {scores['BLEU']:.2f}  ({scores['BLEU_signature']})", f"{'metric':<8}{'plain':>12}{'computation-aware':>20}"]
    for metric in metrics:
        plain = scores[metric]
        aware = scores[metric + COMPUTATION_AWARE_SUFFIX]
        lines.append(f"{metric:<8}{plain:>12.3f}{aware:>20.3f}")
    return "\n".join(lines)

#!/usr/bin/env python
"""Score a SimulEval instances.log: sacreBLEU and AL, LAAL, AP, DAL, plain and computation-aware.

SimulEval 1.1.4 hands ``--computation-aware`` to its plain scorers too, so its own table
reports the computation-aware values under the plain names. This script scores the log once
without and once with computation time and writes both to a JSON file:

    python scripts/score_simul.py OUTPUT_DIR/instances.log --json OUTPUT_DIR/scores.json
"""

import argparse
import logging
import sys
from datetime import datetime, timezone
from pathlib import Path

from leap_fairseq.scoring import (
    LATENCY_METRICS,
    format_table,
    score_log,
    write_json_atomic,
    write_simuleval_table,
)

logger = logging.getLogger("score_simul")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("instances_log", help="the instances.log that simuleval --output wrote")
    parser.add_argument("--json", required=True, help="path of the scores file to write (JSON)")
    parser.add_argument(
        "--latency-metrics",
        nargs="+",
        default=list(LATENCY_METRICS),
        help="SimulEval latency metrics to compute, each plain and with the suffix _CA (default: %(default)s)",
    )
    parser.add_argument("--sacrebleu-tokenize", default="13a", help="sacreBLEU tokenizer (default: %(default)s)")
    parser.add_argument(
        "--latency-unit",
        default="word",
        choices=["word", "char", "spm"],
        help="unit that counts the reference length, as SimulEval's --eval-latency-unit (default: %(default)s)",
    )
    parser.add_argument("--spm-model", default=None, help="SentencePiece model, needed for --latency-unit spm")
    parser.add_argument(
        "--no-use-ref-len",
        action="store_true",
        help="divide by the hypothesis length instead of the reference length, as SimulEval's --no-use-ref-len",
    )
    parser.add_argument(
        "--simuleval-table",
        action="store_true",
        help="also write SimulEval's own scores.tsv next to the log, as 'simuleval --score-only' computes it "
        "(plain latencies); a failure of SimulEval's scorers is logged as a warning and does not stop the run",
    )
    parser.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="add a string field to the scores file, for example the checkpoint or k (repeatable)",
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.INFO)
    args = parse_args(argv)

    spm_model = None
    if args.latency_unit == "spm":
        if args.spm_model is None:
            raise SystemExit("--latency-unit spm needs --spm-model PATH")
        import sentencepiece

        spm_model = sentencepiece.SentencePieceProcessor(model_file=args.spm_model)

    if args.simuleval_table and Path(args.instances_log).name != "instances.log":
        raise SystemExit(
            f"--simuleval-table scores the instances.log of a simuleval --output folder, got {args.instances_log}"
        )

    extra = {"scored_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    for item in args.extra:
        key, separator, value = item.partition("=")
        if not separator or not key:
            raise SystemExit(f"--extra expects KEY=VALUE, got {item!r}")
        extra[key] = value

    scores = score_log(
        args.instances_log,
        metrics=args.latency_metrics,
        tokenize=args.sacrebleu_tokenize,
        latency_unit=args.latency_unit,
        use_ref_len=not args.no_use_ref_len,
        spm_model=spm_model,
    )
    if args.simuleval_table:
        write_simuleval_table(
            Path(args.instances_log).parent,
            metrics=args.latency_metrics,
            tokenize=args.sacrebleu_tokenize,
            latency_unit=args.latency_unit,
            use_ref_len=not args.no_use_ref_len,
            spm_model_path=args.spm_model,
        )

    write_json_atomic(scores, args.json, extra)
    print(format_table(scores, args.latency_metrics))
    logger.info("wrote %s", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

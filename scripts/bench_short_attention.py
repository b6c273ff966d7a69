#!/usr/bin/env python
"""Benchmark the chunked and quadratic forms of causal and prefix attention on short sequences.

Wait-k speech models train on utterances of a few seconds, which are a few
dozen to a few hundred encoder states after subsampling. At those lengths the
O(N) chunked form of :mod:`leap_fairseq.ops.linear_attention` can be slower
than the masked quadratic form, and ``method="auto"`` switches between them
at ``QUADRATIC_MAX_PAIRS_CAUSAL`` and ``QUADRATIC_MAX_PAIRS_PREFIX``. This
script measures where the two forms cross, forward plus backward, on
already feature-mapped inputs shaped like a training batch.

The prefix case uses the schedule of a chunk encoder mask: query i sees the
keys up to the end of its block of ``--block`` positions (9 is the
pre-decision ratio of the recipes). Each time is the median of ``--repeats``
runs after one warm-up run.

Usage:
    python scripts/bench_short_attention.py --threads 1 --json short.json
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from leap_fairseq.ops import linear_attention

logger = logging.getLogger("bench_short_attention")


def median_ms(function, inputs, repeats: int) -> float:
    def once():
        leaves = [tensor.detach().clone().requires_grad_() for tensor in inputs]
        function(*leaves).sum().backward()

    once()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        once()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def measure(length: int, args) -> dict:
    generator = torch.Generator().manual_seed(length)
    shape = (args.batch, args.heads, length)
    q = torch.rand(*shape, args.features, generator=generator)
    k = torch.rand(*shape, args.features, generator=generator)
    v = torch.randn(*shape, args.value_dim, generator=generator)
    blocks = (torch.arange(length) // args.block + 1) * args.block
    record = {"length": length}
    for form in ("causal", "prefix"):
        for method in ("chunked", "quadratic"):
            if form == "causal":
                def function(q, k, v, method=method):
                    return linear_attention.causal_linear_attention(q, k, v, method=method)
            else:
                def function(q, k, v, method=method):
                    return linear_attention.prefix_linear_attention(q, k, v, blocks, method=method)
            record[f"{form}_{method}_ms"] = median_ms(function, (q, k, v), args.repeats)
    record["causal_auto"] = "quadratic" if length * length <= linear_attention.QUADRATIC_MAX_PAIRS_CAUSAL else "chunked"
    record["prefix_auto"] = "quadratic" if length * length <= linear_attention.QUADRATIC_MAX_PAIRS_PREFIX else "chunked"
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[32, 50, 64, 96, 128, 192, 256, 320, 384, 512])
    parser.add_argument("--batch", type=int, default=40, help="utterances per batch (default: %(default)s)")
    parser.add_argument("--heads", type=int, default=4, help="attention heads (default: %(default)s)")
    parser.add_argument("--features", type=int, default=64, help="feature size per head, 2 d_h for LeaP (default: %(default)s)")
    parser.add_argument("--value-dim", type=int, default=32, help="value size per head (default: %(default)s)")
    parser.add_argument("--block", type=int, default=9, help="positions per block of the prefix schedule (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs; the median is reported (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="write the records and the settings to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s")
    torch.set_num_threads(args.threads)

    records = []
    print("| N | causal chunked ms | causal quadratic ms | auto | prefix chunked ms | prefix quadratic ms | auto |")
    print("|---|---|---|---|---|---|---|")
    for length in args.lengths:
        record = measure(length, args)
        records.append(record)
        print(
            f"| {length} | {record['causal_chunked_ms']:.1f} | {record['causal_quadratic_ms']:.1f} | "
            f"{record['causal_auto']} | {record['prefix_chunked_ms']:.1f} | {record['prefix_quadratic_ms']:.1f} | "
            f"{record['prefix_auto']} |",
            flush=True,
        )
    if args.json:
        settings = {key: value for key, value in vars(args).items() if key != "json"}
        result = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "settings": settings,
            "records": records,
        }
        temporary = args.json.with_name(args.json.name + ".tmp")
        temporary.write_text(json.dumps(result, indent=2) + "\n")
        temporary.replace(args.json)
        logger.info("wrote %s", args.json)


if __name__ == "__main__":
    main()

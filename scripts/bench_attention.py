#!/usr/bin/env python
"""Benchmark causal self-attention, forward plus backward, at growing lengths.

Compared methods, all on the same projected queries, keys and values
(batch 1, 4 heads of 64 dimensions, so d_model 256), so the projections that
every method shares are left out:

- ``leap_chunked``: LeaP feature map + :func:`leap_fairseq.ops.causal_linear_attention`;
- ``leap_quadratic``: LeaP feature map + the masked quadratic form (how the
  public LeaPformer code trains);
- ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention(is_causal=True)``.

Every (method, length) runs in a fresh subprocess. Time is the median wall
time of ``--repeats`` forward+backward runs after ``--warmup`` runs; the
process CPU time (all threads) is recorded beside it. Peak memory is the
growth of the process's maximum resident set size (``getrusage``) during the
first forward+backward at full size, over the resident size measured just
before it (after the inputs exist and a small warm-up has loaded the kernels).
It counts what the allocator really took from the system, including the
gradients of the inputs.

The chunked form's GFLOP/s counts the dense matrix products it performs
(forward and backward, including the masked halves of the chunk products) on
already feature-mapped inputs; a large float32 matmul in the same subprocess
gives the reference rate.

Usage:
    python scripts/bench_attention.py --lengths 512 1024 2048 4096 8192 16384 --json results.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

logger = logging.getLogger("bench_attention")

METHODS = ("leap_chunked", "leap_quadratic", "sdpa")
HEADS = 4
HEAD_DIM = 64
BATCH = 1


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def max_rss_bytes() -> int:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def chunked_flops(length: int, chunk_size: int, features: int, value_dim: int) -> float:
    """Dense matmul FLOPs of one forward+backward of the chunked causal form (B=1, HEADS heads)."""
    size = min(chunk_size, length)
    chunks = -(-length // size)
    augmented = value_dim + 1  # the column of ones that carries the denominators
    per_chunk = 6 * 2 * size * features * augmented + 3 * 2 * size * size * features + 3 * 2 * size * size * augmented
    return float(per_chunk * chunks * BATCH * HEADS)


def build_case(method: str, length: int, chunk_size: int):
    """Return (inputs, run) where run(*inputs) does one forward+backward."""
    import torch
    import torch.nn.functional as F

    import leap_fairseq  # noqa: F401
    from leap_fairseq.modules.feature_maps import LeapFeatureMap
    from leap_fairseq.ops import causal_linear_attention, causal_linear_attention_reference

    torch.manual_seed(0)
    shape = (BATCH, HEADS, length, HEAD_DIM)
    inputs = [torch.randn(shape, requires_grad=True) for _ in range(3)]
    feature_map = LeapFeatureMap(HEAD_DIM, hidden_ratio=4)

    if method == "sdpa":

        def forward(q, k, v):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    elif method == "leap_chunked":

        def forward(q, k, v):
            return causal_linear_attention(
                feature_map(q, "query"), feature_map(k, "key"), v, chunk_size=chunk_size, method="chunked"
            )

    elif method == "leap_quadratic":

        def forward(q, k, v):
            return causal_linear_attention_reference(feature_map(q, "query"), feature_map(k, "key"), v)

    else:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")

    def run(q, k, v):
        for tensor in (q, k, v):
            tensor.grad = None
        forward(q, k, v).sum().backward()

    return inputs, run


def time_runs(run, inputs, warmup: int, repeats: int):
    for _ in range(warmup):
        run(*inputs)
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        run(*inputs)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus), walls


def matmul_gflops(size: int = 4096, repeats: int = 5):
    """Return (GFLOP/s by wall time, GFLOP/s by process CPU time) of a float32 (size, size) matmul."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        a @ b
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    flops = 2 * size**3
    return flops / statistics.median(walls) / 1e9, flops / statistics.median(cpus) / 1e9


def core_gflops(length: int, chunk_size: int, warmup: int, repeats: int) -> dict:
    """Time the chunked form alone on feature-mapped inputs and return its rate."""
    import torch

    from leap_fairseq.ops import causal_linear_attention

    generator = torch.Generator().manual_seed(1)
    features = 2 * HEAD_DIM
    q = torch.rand(BATCH, HEADS, length, features, generator=generator).requires_grad_()
    k = torch.rand(BATCH, HEADS, length, features, generator=generator).requires_grad_()
    v = torch.randn(BATCH, HEADS, length, HEAD_DIM, generator=generator).requires_grad_()

    def run(q, k, v):
        for tensor in (q, k, v):
            tensor.grad = None
        causal_linear_attention(q, k, v, chunk_size=chunk_size, method="chunked").sum().backward()

    wall, cpu, _ = time_runs(run, (q, k, v), warmup, repeats)
    flops = chunked_flops(length, chunk_size, features, HEAD_DIM)
    return {
        "core_seconds": wall,
        "core_cpu_seconds": cpu,
        "core_gflop": flops / 1e9,
        "core_gflops_per_s": flops / wall / 1e9,
        "core_gflops_per_cpu_s": flops / cpu / 1e9,
    }


def worker(args) -> dict:
    """Measure one (method, length) in this process and return the record."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    small_inputs, small_run = build_case(args.method, 128, args.chunk_size)
    small_run(*small_inputs)
    del small_inputs

    inputs, run = build_case(args.method, args.length, args.chunk_size)
    baseline = current_rss_bytes()
    run(*inputs)
    peak = max_rss_bytes() - baseline
    wall, cpu, walls = time_runs(run, inputs, args.warmup, args.repeats)
    record = {
        "method": args.method,
        "length": args.length,
        "chunk_size": args.chunk_size if args.method == "leap_chunked" else None,
        "seconds_median": wall,
        "seconds_all": walls,
        "cpu_seconds_median": cpu,
        "peak_memory_mib": peak / 2**20,
        "threads": torch.get_num_threads(),
    }
    if args.method == "leap_chunked":
        del inputs, run
        record.update(core_gflops(args.length, args.chunk_size, args.warmup, args.repeats))
        record["matmul_gflops_per_s"], record["matmul_gflops_per_cpu_s"] = matmul_gflops()
        record["fraction_of_matmul"] = record["core_gflops_per_s"] / record["matmul_gflops_per_s"]
        # With one thread, CPU time excludes the time other processes held the core.
        record["fraction_of_matmul_cpu"] = record["core_gflops_per_cpu_s"] / record["matmul_gflops_per_cpu_s"]
    return record


def quadratic_bytes(length: int) -> int:
    # The masked reference keeps about four float32 (N, N) matrices per head alive in the backward.
    return 4 * 4 * HEADS * BATCH * length * length


def run_in_subprocess(method: str, length: int, chunk_size: int, args) -> dict:
    command = [
        sys.executable, __file__, "--worker", "--method", method, "--length", str(length),
        "--chunk-size", str(chunk_size), "--warmup", str(args.warmup), "--repeats", str(args.repeats),
        "--threads", str(args.threads),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{method} at length {length} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--chunk-sizes", type=int, nargs="+", default=[64],
                        help="chunk lengths to run leap_chunked with (default: 64)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs before timing (default: 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs; the median is reported (default: 5)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads; 0 keeps torch's default")
    parser.add_argument("--quadratic-max-gib", type=float, default=6.0,
                        help="skip leap_quadratic when its estimated (N, N) buffers exceed this many GiB")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed per configuration")
    parser.add_argument("--json", type=Path, help="write all records to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--chunk-size", type=int, default=64, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(worker(args)))
        return

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    records, skipped = [], []
    for length in args.lengths:
        for method in args.methods:
            if method == "leap_quadratic" and quadratic_bytes(length) > args.quadratic_max_gib * 2**30:
                reason = f"estimated {quadratic_bytes(length) / 2**30:.1f} GiB of (N, N) buffers > --quadratic-max-gib"
                skipped.append({"method": method, "length": length, "reason": reason})
                logger.info("skip %s at %d: %s", method, length, reason)
                continue
            chunk_sizes = args.chunk_sizes if method == "leap_chunked" else [64]
            for chunk_size in chunk_sizes:
                logger.info("run %s at length %d%s", method, length,
                            f" (chunk {chunk_size})" if method == "leap_chunked" else "")
                record = run_in_subprocess(method, length, chunk_size, args)
                records.append(record)
                logger.info("  %.4f s median, %.1f MiB peak", record["seconds_median"], record["peak_memory_mib"])

    summary = summarize(records)
    for line in summary:
        print(line)
    if args.json:
        payload = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": {
                "platform": platform.platform(),
                "processor": platform.processor(),
                "cpu_count": os.cpu_count(),
                "python": platform.python_version(),
            },
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "records": records,
            "skipped": skipped,
            "summary": summary,
        }
        import torch

        payload["machine"]["torch"] = torch.__version__
        temporary = args.json.with_suffix(args.json.suffix + ".tmp")
        temporary.write_text(json.dumps(payload, indent=2))
        temporary.replace(args.json)


def summarize(records) -> list:
    """Return table lines: per length, the best chunked time and its ratios to the others."""
    by_key = {}
    for record in records:
        key = (record["method"], record["length"])
        if key not in by_key or record["seconds_median"] < by_key[key]["seconds_median"]:
            by_key[key] = record
    lines = [
        "length  method          chunk  seconds  cpu_s    peak_MiB  chunked_speedup  chunked_cpu_speedup  "
        "GF/s   of_matmul  GF/cpu_s  of_matmul_cpu"
    ]
    for length in sorted({r["length"] for r in records}):
        chunked = by_key.get(("leap_chunked", length))
        for method in METHODS:
            record = by_key.get((method, length))
            if record is None:
                continue
            speedup = chunked and record["seconds_median"] / chunked["seconds_median"]
            cpu_speedup = chunked and record["cpu_seconds_median"] / chunked["cpu_seconds_median"]
            rate = record.get("core_gflops_per_s")
            cpu_rate = record.get("core_gflops_per_cpu_s")
            lines.append(
                f"{length:<7} {method:<15} {record['chunk_size'] or '-':<6} {record['seconds_median']:<8.4f} "
                f"{record['cpu_seconds_median']:<8.3f} {record['peak_memory_mib']:<9.1f} "
                f"{'%.1fx' % speedup if speedup else '-':<16} "
                f"{'%.1fx' % cpu_speedup if cpu_speedup else '-':<20} "
                f"{'%.1f' % rate if rate else '-':<6} "
                f"{'%.0f%%' % (100 * record['fraction_of_matmul']) if rate else '-':<10} "
                f"{'%.1f' % cpu_rate if cpu_rate else '-':<9} "
                f"{'%.0f%%' % (100 * record['fraction_of_matmul_cpu']) if cpu_rate else '-'}"
            )
    return lines


if __name__ == "__main__":
    main()

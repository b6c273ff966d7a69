#!/usr/bin/env python3
"""Encoder cost per new 360 ms source chunk against how much source came before.

Builds ``leap_s2t_waitk_s``-sized encoders with random weights and, for each
source position P, measures the time to process one more 360 ms chunk
(36 filterbank frames, 9 encoder states):

- ``leap-chunk-stream``: LeaP encoder with the chunk mask, streamed: the state
  after P seconds is built once, then ``stream_encoder`` runs on the new chunk.
- ``softmax-chunk-stream``: the same with softmax attention, whose streaming
  state is a growing key/value cache.
- ``softmax-full-reencode``: bidirectional softmax encoder, re-encoding the
  whole prefix of P + 0.36 seconds (the baseline that re-runs the encoder on
  every READ).

Each source position's state is built once; the positions are then timed in
turn, ``--repeats`` times, and the median is reported.

Prints a Markdown table (median milliseconds over ``--repeats`` runs) and
writes it with the machine description to ``--output`` when given.

    python scripts/bench_encoder_streaming.py --seconds 5 10 20 30 45 60 --repeats 10
"""

import argparse
import datetime
import logging
import os
import platform
import statistics
import sys
import time
from argparse import Namespace
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import leap_fairseq  # noqa: E402,F401  (applies the compat patches, registers the model)
from fairseq.data import Dictionary  # noqa: E402
from fairseq.models import ARCH_CONFIG_REGISTRY  # noqa: E402
from tqdm import tqdm  # noqa: E402

from leap_fairseq.models.leap_s2t_waitk import LeapS2TWaitkModel  # noqa: E402

logger = logging.getLogger("bench_encoder_streaming")

FRAMES_PER_SECOND = 100  # 10 ms filterbank hop
CHUNK_FRAMES = 36  # 360 ms = 9 encoder states of 40 ms
PRE_DECISION_RATIO = 9

VARIANTS = {
    "leap-chunk-stream": ("leap", "chunk"),
    "softmax-chunk-stream": ("softmax", "chunk"),
    "softmax-full-reencode": ("softmax", "full"),
}


def build_encoder_model(attention_type: str, mask: str, device: torch.device) -> LeapS2TWaitkModel:
    dictionary = Dictionary()
    args = Namespace(
        input_feat_per_channel=80,
        input_channels=1,
        seed=1,
        encoder_attention_type=attention_type,
        decoder_attention_type=attention_type,
        cross_attention_type=attention_type,
        encoder_attention_mask=mask,
        fixed_pre_decision_ratio=PRE_DECISION_RATIO,
        waitk_lagging=3,
        max_source_positions=100000,
    )
    ARCH_CONFIG_REGISTRY["leap_s2t_waitk_s"](args)
    torch.manual_seed(0)
    model = LeapS2TWaitkModel.build_model(args, SimpleNamespace(target_dictionary=dictionary))
    return model.to(device).eval()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def prepare_calls(model: LeapS2TWaitkModel, seconds_list, device: torch.device) -> dict:
    """Return, per source position, a function that processes one new chunk after that position.

    Streaming encoders get the state after each position from a single pass
    over the longest source, fed one 360 ms chunk at a time as an agent would.
    """
    chunk_counts = {seconds: int(round(seconds * FRAMES_PER_SECOND)) // CHUNK_FRAMES for seconds in seconds_list}
    total_chunks = max(chunk_counts.values()) + 1
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(1, total_chunks * CHUNK_FRAMES, 80, generator=generator).to(device)
    calls = {}
    with torch.no_grad():
        if model.encoder_streams_incrementally:
            states = {}
            state = model.init_stream_state(device)
            for index in range(total_chunks):
                for seconds, count in chunk_counts.items():
                    if count == index:
                        states[seconds] = state
                _, state = model.stream_encoder(features[:, index * CHUNK_FRAMES : (index + 1) * CHUNK_FRAMES], state)
            for seconds, count in chunk_counts.items():
                chunk = features[:, count * CHUNK_FRAMES : (count + 1) * CHUNK_FRAMES]
                calls[seconds] = lambda chunk=chunk, state=states[seconds]: model.stream_encoder(chunk, state)
        else:
            for seconds, count in chunk_counts.items():
                prefix = features[:, : (count + 1) * CHUNK_FRAMES]
                lengths = torch.tensor([prefix.size(1)], device=device)
                calls[seconds] = lambda prefix=prefix, lengths=lengths: model.encoder(prefix, lengths)
    return calls


def time_round_robin(calls: dict, repeats: int, device: torch.device) -> dict:
    """Return the median milliseconds of each call.

    The calls run in turn within each repeat, so a change in machine load
    during the run affects every source position alike.
    """
    times = {key: [] for key in calls}
    with torch.no_grad():
        for function in calls.values():
            function()  # warm-up
        for _ in tqdm(range(repeats), desc="repeats", leave=False):
            for key, function in calls.items():
                synchronize(device)
                start = time.perf_counter()
                function()
                synchronize(device)
                times[key].append((time.perf_counter() - start) * 1000.0)
    return {key: statistics.median(values) for key, values in times.items()}


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        hardware = torch.cuda.get_device_name(device)
    else:
        hardware = f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), {torch.get_num_threads()} torch threads"
    return f"{hardware}; Python {platform.python_version()}, torch {torch.__version__}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, nargs="+", default=[5, 10, 20, 30, 45, 60], help="source already read before the new chunk, in seconds")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per point (median reported)")
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS), help="encoders to measure")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--output", type=Path, default=None, help="also write the Markdown result to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    results = {}
    for variant in args.variants:
        attention_type, mask = VARIANTS[variant]
        model = build_encoder_model(attention_type, mask, device)
        logger.info("%s: building the states up to %g s", variant, max(args.seconds))
        calls = prepare_calls(model, args.seconds, device)
        for seconds, milliseconds in time_round_robin(calls, args.repeats, device).items():
            results[variant, seconds] = milliseconds
            logger.info("%s at %g s: %.2f ms per chunk", variant, seconds, milliseconds)

    header = "| source before the chunk (s) | " + " | ".join(f"{variant} (ms)" for variant in args.variants) + " |"
    lines = [header, "|" + " --- |" * (len(args.variants) + 1)]
    for seconds in args.seconds:
        cells = " | ".join(f"{results[variant, seconds]:.1f}" for variant in args.variants)
        lines.append(f"| {seconds:g} | {cells} |")
    first, last = min(args.seconds), max(args.seconds)
    ratios = [f"{variant}: {results[variant, last] / results[variant, first]:.2f}x" for variant in args.variants]
    lines.append("")
    lines.append(f"Cost at {last:g} s relative to {first:g} s: " + ", ".join(ratios) + ".")
    lines.append("")
    lines.append(f"Machine: {machine_description(device)}. Date: {datetime.date.today().isoformat()}. Repeats: {args.repeats} (median).")
    report = "\n".join(lines)
    print(report)
    if args.output is not None:
        temporary = args.output.with_suffix(args.output.suffix + ".tmp")
        temporary.write_text(report + "\n")
        temporary.replace(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Measure filterbank extraction speed in multiples of real time on one core.

    python scripts/bench_features.py --shared-data /path/to/shared/data

Runs leap_fairseq.audio on one thread (torch.set_num_threads(1)) in this one
process: offline extraction of whole recordings, offline extraction of each
segment of a MuST-C talk (read, cut, extract, as the data preparation does),
and OnlineFbank fed in 40, 320 and 1000 ms pieces. Each case runs
--repeats times; the table gives the best and the median speed, where speed
is seconds of audio per second of computation. Prints a Markdown table.
"""

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import leap_fairseq  # noqa: F401  (applies the compat patches before torchaudio is imported)
from leap_fairseq import audio


def time_best_and_median(function, repeats):
    durations = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        durations.append(time.perf_counter() - started)
    return min(durations), statistics.median(durations)


def read_16k(path):
    return audio.load_audio_16k_mono(path, warn=False)


def online(samples, piece_samples):
    extractor = audio.OnlineFbank()
    for start in range(0, samples.shape[0], piece_samples):
        extractor.accept(samples[start:start + piece_samples])


def mustc_segments(talk_wav: Path, yaml_path: Path):
    import yaml

    entries = yaml.load(yaml_path.read_text(encoding="utf-8"), Loader=yaml.BaseLoader)
    return [(float(e["offset"]), float(e["duration"])) for e in entries if e["wav"] == talk_wav.name]


def cut_and_extract(talk_wav: Path, segments):
    for offset, duration in segments:
        audio.extract_fbank(audio.load_audio_16k_mono(talk_wav, offset, duration, warn=False))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared-data", type=Path, default=os.environ.get("LEAP_SHARED_DATA"),
                        help="the shared data folder (speech/real, mustc_mini); default: $LEAP_SHARED_DATA")
    parser.add_argument("--repeats", type=int, default=5, help="runs per case")
    args = parser.parse_args()
    if args.shared_data is None:
        parser.error("--shared-data is required when LEAP_SHARED_DATA is unset")

    import torch

    torch.set_num_threads(1)
    real = args.shared_data / "speech" / "real"
    talk_dir = args.shared_data / "mustc_mini" / "en-de" / "data" / "train"
    talk_wav = talk_dir / "wav" / "ted_1001.wav"
    segments = mustc_segments(talk_wav, talk_dir / "txt" / "train.yaml")
    segment_seconds = sum(duration for _, duration in segments)

    cases = []
    for name in ("jfk.wav", "2412-153948-0000.wav"):
        samples = read_16k(real / name)
        seconds = samples.shape[0] / 16000
        cases.append((f"offline, real speech {name}", seconds, lambda s=samples: audio.extract_fbank(s)))
    talk = read_16k(talk_wav)
    talk_seconds = talk.shape[0] / 16000
    cases.append(("offline, mustc_mini talk ted_1001 whole", talk_seconds, lambda: audio.extract_fbank(talk)))
    cases.append((f"offline, ted_1001 per segment incl. wav read ({len(segments)} segments)", segment_seconds,
                  lambda: cut_and_extract(talk_wav, segments)))
    jfk = read_16k(real / "jfk.wav")
    for piece_ms in (40, 320, 1000):
        cases.append((f"OnlineFbank, jfk.wav in {piece_ms} ms pieces", jfk.shape[0] / 16000,
                      lambda p=piece_ms: online(jfk, p * 16)))

    for _, _, function in cases:  # warm-up: first calls build torch kernels and caches
        function()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
          f"Python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, "
          f"torch threads {torch.get_num_threads()}, repeats {args.repeats}", file=sys.stderr)
    print("| case | audio (s) | best (x real time) | median (x real time) |")
    print("| --- | --- | --- | --- |")
    for name, seconds, function in cases:
        best, median = time_best_and_median(function, args.repeats)
        print(f"| {name} | {seconds:.1f} | {seconds / best:.0f} | {seconds / median:.0f} |")


if __name__ == "__main__":
    main()

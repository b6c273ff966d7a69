#!/usr/bin/env python
"""Time per READ and per WRITE of the SimulEval agent against source position, and AL_CA - AL.

Two randomly initialized leap_s2t_waitk_s models (256 dimensions, 12 encoder and 6 decoder
layers) run through LeapWaitkSpeechAgent on one long input:

- ``leap``: LeaP attention everywhere, chunk encoder mask (the encoder streams incrementally);
- ``softmax_reencode``: softmax attention everywhere, full encoder mask, so every READ
  re-encodes the whole prefix (the usual baseline for offline-trained encoders).

The input is the concatenation of the given wav files (16 kHz mono), cut to --duration seconds;
without files it is synthetic harmonic audio. The agent runs with --force-finish, so random
weights cannot end the translation before the source does, and utterances run through SimulEval's
instance class with the evaluator's loop, as the simuleval command runs them.

A READ is the work for one new source segment (filterbank, CMVN, encoder); a WRITE is one
decoder step. Costs are averaged in windows of --window seconds of source position.

    python scripts/bench_streaming.py --json bench.json --wavs DATA/simuleval/tst-COMMON.wav_list
"""

import argparse
import dataclasses
import json
import logging
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from argparse import Namespace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import soundfile
import torch
import yaml

import leap_fairseq  # noqa: F401  (compat patches, model registration)
from leap_fairseq.agents import LeapWaitkSpeechAgent
from leap_fairseq.audio import SAMPLE_RATE, extract_fbank, load_audio_16k_mono
from leap_fairseq.scoring import latency_scores
from simuleval.data.dataloader import SpeechToTextDataloader
from simuleval.evaluator.instance import LogInstance, SpeechToTextInstance

logger = logging.getLogger("bench_streaming")

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS = {
    "leap": {"attention": "leap", "mask": "chunk"},
    "softmax_reencode": {"attention": "softmax", "mask": "full"},
}
SPM_SENTENCES = [
    "das ist ein kleiner test",
    "wir lesen heute ein buch",
    "der hund schläft im garten",
    "morgen fahren wir nach berlin",
    "kannst du mir bitte helfen",
]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", required=True, help="where to write the results (JSON)")
    parser.add_argument("--wavs", nargs="*", default=[], help="wav files, or text files listing wav paths, to concatenate")
    parser.add_argument("--duration", type=float, default=60.0, help="input length in seconds (default: %(default)s)")
    parser.add_argument("--segment-size", type=int, default=320, help="SimulEval source segment in ms (default: %(default)s)")
    parser.add_argument("--waitk", type=int, default=3, help="k in chunks (default: %(default)s)")
    parser.add_argument("--ratio", type=int, default=9, help="fixed pre-decision ratio, 40 ms states (default: %(default)s)")
    parser.add_argument("--vocab-size", type=int, default=8000, help="target dictionary size (default: %(default)s)")
    parser.add_argument("--window", type=float, default=5.0, help="seconds of source per reported window (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS), help="models to run")
    return parser.parse_args(argv)


def build_input(wavs, duration: float) -> np.ndarray:
    """Concatenate the wav files (or synthetic audio) to exactly ``duration`` seconds."""
    paths = []
    for item in wavs:
        path = Path(item)
        if path.suffix in (".wav", ".flac"):
            paths.append(path)
        else:
            paths.extend(Path(line) for line in path.read_text().split())
    needed = int(duration * SAMPLE_RATE)
    pieces, total = [], 0
    while paths and total < needed:
        for path in paths:
            audio = load_audio_16k_mono(path, warn=False)
            pieces.append(audio)
            total += audio.shape[0]
            if total >= needed:
                break
    if not pieces:
        t = np.arange(needed) / SAMPLE_RATE
        phase = 2 * np.pi * np.cumsum(130 + 40 * np.sin(2 * np.pi * 0.7 * t)) / SAMPLE_RATE
        pieces = [(0.1 * sum(np.sin(h * phase) / h for h in range(1, 6))).astype(np.float32)]
    return np.concatenate(pieces)[:needed].astype(np.float32)


def build_data_dir(folder: Path, audio: np.ndarray, vocab_size: int) -> Path:
    """Write a data folder: a small SentencePiece model, a dictionary padded to vocab_size, CMVN."""
    import sentencepiece

    text = folder / "spm_train.txt"
    text.write_text("\n".join(SPM_SENTENCES) + "\n", encoding="utf-8")
    sentencepiece.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(folder / "spm"), vocab_size=40, unk_id=3, bos_id=0, eos_id=2, pad_id=1,
        character_coverage=1.0, minloglevel=2,
    )  # fmt: skip
    processor = sentencepiece.SentencePieceProcessor(model_file=str(folder / "spm.model"))
    pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    symbols = [p for p in pieces if p not in {"<unk>", "<s>", "</s>", "<pad>"}]
    # Filler words give the output layer the size of a real vocabulary.
    symbols += [f"\u2581w{i}" for i in range(vocab_size - 4 - len(symbols))]
    (folder / "dict.txt").write_text("".join(f"{s} 1\n" for s in symbols), encoding="utf-8")
    features = extract_fbank(audio, SAMPLE_RATE)
    np.savez(folder / "gcmvn.npz", mean=features.mean(0), std=np.maximum(features.std(0), 1e-4))
    config = {
        "bpe_tokenizer": {"bpe": "sentencepiece", "sentencepiece_model": str(folder / "spm.model")},
        "vocab_filename": "dict.txt",
        "input_channels": 1,
        "input_feat_per_channel": 80,
        "transforms": {"*": ["global_cmvn"]},
        "global_cmvn": {"stats_npz_path": str(folder / "gcmvn.npz")},
    }
    (folder / "config_st.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return folder


def build_checkpoint(data_dir: Path, path: Path, attention: str, mask: str, k: int, ratio: int) -> Path:
    """Save a randomly initialized leap_s2t_waitk_s model in fairseq's checkpoint format."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    argv = [
        str(data_dir), "--user-dir", str(REPO_ROOT / "leap_fairseq"), "--task", "speech_to_text",
        "--config-yaml", "config_st.yaml", "--arch", "leap_s2t_waitk_s",
        "--encoder-attention-type", attention, "--decoder-attention-type", attention,
        "--cross-attention-type", attention, "--encoder-attention-mask", mask,
        "--waitk-lagging", str(k), "--fixed-pre-decision-ratio", str(ratio),
        "--criterion", "label_smoothed_cross_entropy", "--optimizer", "adam", "--lr", "1e-3",
        "--max-tokens", "10000",
    ]  # fmt: skip
    args = options.parse_args_and_arch(options.get_training_parser(), argv)
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(1)
    model = task.build_model(cfg.model)
    state = {
        "args": None,
        "cfg": cfg,
        "model": model.state_dict(),
        "optimizer_history": [{"criterion_name": "LabelSmoothedCrossEntropyCriterion", "optimizer_name": "Adam",
                               "lr_scheduler_state": {"best": None}, "num_updates": 0}],
        "extra_state": {"train_iterator": {"epoch": 1}},
        "last_optimizer_state": None,
    }  # fmt: skip
    torch.save(state, path)
    return path


def windowed(timings, kind: str, window_s: float, per_token: bool):
    """Return [{"source_s", "mean_ms", "count"}] for one timing kind, by window of source position.

    Window i covers source positions in ((i - 1) * window_s, i * window_s] seconds and is
    reported at its end, ``source_s``.
    """
    buckets = {}
    for timing in timings:
        if timing.kind != kind:
            continue
        index = max(math.ceil(timing.source_ms / 1000.0 / window_s) - 1, 0)
        cost = 1000.0 * timing.seconds / (timing.num_tokens if per_token and timing.num_tokens else 1)
        weight = timing.num_tokens if per_token else 1
        buckets.setdefault(index, []).extend([cost] * max(weight, 1))
    return [
        {"source_s": round((index + 1) * window_s, 3), "mean_ms": statistics.fmean(costs), "count": len(costs)}
        for index, costs in sorted(buckets.items())
    ]


def cpu_elapsed(delays, timings):
    """Return per-word elapsed times built from process CPU time instead of wall-clock time.

    SimulEval's elapsed time of a word is its delay plus the wall-clock time since the utterance
    started. Here the second term is the agent's CPU time up to the end of the policy call that
    wrote the word, so other processes on a busy machine do not inflate it.
    """
    cumulative, total = {}, 0.0
    for timing in timings:
        total += timing.cpu_seconds
        cumulative[timing.source_ms] = total
    return [delay + 1000.0 * cumulative.get(delay, total) for delay in delays]


def run_model(name: str, data_dir: Path, wav: Path, args) -> dict:
    spec = MODELS[name]
    checkpoint = build_checkpoint(data_dir, data_dir / f"{name}.pt", spec["attention"], spec["mask"], args.waitk, args.ratio)
    parser = argparse.ArgumentParser()
    LeapWaitkSpeechAgent.add_args(parser)
    # The schedule writes one token per chunk. This limit stops random weights a few tokens after
    # the source ends, because a long final burst would dominate the latency.
    max_tokens = int(args.duration / (0.04 * args.ratio)) + 5
    agent_args = parser.parse_args(
        ["--checkpoint", str(checkpoint), "--data-dir", str(data_dir), "--force-finish", "--max-len-b", str(max_tokens)]
    )
    agent_args.device = args.device
    agent = LeapWaitkSpeechAgent.from_args(agent_args)
    agent.to(args.device)

    dataloader = SpeechToTextDataloader([str(wav)], ["x"], [])
    instance = SpeechToTextInstance(0, dataloader, Namespace(eval_latency_unit="word", output=None))
    agent.reset()
    started = time.perf_counter()
    while not instance.source_finished_reading:
        instance.receive_prediction(agent.pushpop(instance.send_source(args.segment_size)))
    total = time.perf_counter() - started
    timings = list(agent.states.timings)

    summary = instance.summarize()
    record = json.dumps(summary)
    scores = {}
    for aware in (False, True):
        scores.update(latency_scores({0: LogInstance(record)}, ["AL", "LAAL", "AP", "DAL"], aware, use_ref_len=False))
    cpu_record = json.dumps(dict(summary, elapsed=cpu_elapsed(summary["delays"], timings)))
    cpu_scores = latency_scores({0: LogInstance(cpu_record)}, ["AL", "LAAL", "AP", "DAL"], True, use_ref_len=False)
    reads = windowed(timings, "read", args.window, per_token=False)
    writes = windowed(timings, "write", args.window, per_token=True)
    cpu_timings = [dataclasses.replace(t, seconds=t.cpu_seconds) for t in timings]
    cpu_reads = windowed(cpu_timings, "read", args.window, per_token=False)
    cpu_writes = windowed(cpu_timings, "write", args.window, per_token=True)
    result = {
        "attention": spec["attention"],
        "encoder_mask": spec["mask"],
        "streams_incrementally": agent.model.encoder_streams_incrementally,
        "parameters": sum(p.numel() for p in agent.model.parameters()),
        "total_s": total,
        "num_reads": sum(1 for t in timings if t.kind == "read"),
        "num_tokens": sum(t.num_tokens for t in timings if t.kind == "write"),
        "num_words": len(instance.prediction_list),
        "read_ms_by_position": reads,
        "write_ms_per_token_by_position": writes,
        "read_cpu_ms_by_position": cpu_reads,
        "write_cpu_ms_per_token_by_position": cpu_writes,
        "latency": scores,
        "latency_cpu_time": cpu_scores,
        "total_cpu_s": sum(t.cpu_seconds for t in timings),
        "AL_CA_minus_AL_ms": scores["AL_CA"] - scores["AL"],
        "AL_CA_cpu_minus_AL_ms": cpu_scores["AL_CA"] - scores["AL"],
    }
    logger.info("%s: %.1f s total, AL %.0f ms, AL_CA %.0f ms", name, total, scores["AL"], scores["AL_CA"])
    return result


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s")
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    audio = build_input(args.wavs, args.duration)
    results = {
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "device": args.device,
            "load_average": os.getloadavg(),
        },
        "input_seconds": audio.shape[0] / SAMPLE_RATE,
        "input": "concatenated: " + " ".join(args.wavs) if args.wavs else "synthetic harmonic audio",
        "segment_size_ms": args.segment_size,
        "waitk": args.waitk,
        "fixed_pre_decision_ratio": args.ratio,
        "vocab_size": args.vocab_size,
        "models": {},
    }
    with tempfile.TemporaryDirectory() as folder:
        data_dir = build_data_dir(Path(folder), audio, args.vocab_size)
        wav = Path(folder) / "input.wav"
        soundfile.write(wav, audio, SAMPLE_RATE, subtype="FLOAT")
        for name in args.models:
            results["models"][name] = run_model(name, data_dir, wav, args)

    leap = results["models"].get("leap")
    if leap:
        for key in ("read_ms_by_position", "read_cpu_ms_by_position"):
            reads = leap[key]
            results[f"leap_{key}_last_over_first_window"] = reads[-1]["mean_ms"] / reads[0]["mean_ms"]
    baseline = results["models"].get("softmax_reencode")
    if leap and baseline:
        results["leap_gap_over_baseline_gap"] = leap["AL_CA_minus_AL_ms"] / baseline["AL_CA_minus_AL_ms"]
        results["leap_cpu_gap_over_baseline_cpu_gap"] = leap["AL_CA_cpu_minus_AL_ms"] / baseline["AL_CA_cpu_minus_AL_ms"]
        for metric in ("LAAL", "AP", "DAL"):
            leap_gap = leap["latency"][metric + "_CA"] - leap["latency"][metric]
            baseline_gap = baseline["latency"][metric + "_CA"] - baseline["latency"][metric]
            results[f"leap_{metric}_gap_over_baseline_gap"] = leap_gap / baseline_gap
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    logger.info("wrote %s", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Time the streaming encoder and decoder of wait-k models on one short utterance.

For each model the script runs the loop of the SimulEval agent through the model's streaming
API. The source arrives in chunks of one pre-decision block, and each chunk goes through
``stream_encoder``. After each chunk the decoder writes every token that the wait-k schedule
allows (``should_write``, ``feed_visible_source``, ``decoder_step``), greedily, up to
``--tokens`` tokens. The input is random filterbank frames, so the times do not depend on what
the model translates. Filterbank extraction and SimulEval's own work are left out.

``--random-init TYPE`` builds a model with random weights instead of loading one: the size of
the parity study in docs/results-simulst.md (128 dimensions, 4 encoder and 2 decoder layers, 4
heads, feed-forward size 512, pre-decision ratio 9, k = 5, a dictionary of ``--vocab-size``
symbols), with ``leap`` or ``softmax`` attention in all blocks and the chunk encoder mask, or
``softmax-full`` (softmax, full encoder mask: every chunk re-encodes the prefix). The loop never
stops at the end-of-sentence symbol, so the times do not depend on the weights, and the numbers
can be reproduced without training.

``--relu-features`` replaces every LeaP feature map by ReLU features of the same width (no
proportion modules, no cosine and sine weights). The outputs are then wrong; the option only
measures how much of LeaP's time the feature map takes. Without a LeaP model to change it is a
usage error, and a model without LeaP feature maps is timed unchanged, with a logged warning.

Every model is loaded or built before the table is printed, so an invalid checkpoint stops the
script before any output.

Usage:
    python scripts/bench_step_cost.py --checkpoint RUN/st/checkpoint_avg.pt --data-dir RUN/data/en-de
    python scripts/bench_step_cost.py --random-init leap --random-init softmax --random-init softmax-full
"""

from __future__ import annotations

import argparse
import logging
import math
import pickle
import statistics
import time
from argparse import Namespace
from pathlib import Path
from types import SimpleNamespace

import torch

import leap_fairseq  # noqa: F401  (applies the compat patches, registers the model)
from fairseq import checkpoint_utils
from fairseq.data import Dictionary
from fairseq.models import ARCH_CONFIG_REGISTRY
from leap_fairseq.models.leap_s2t_waitk import LeapS2TWaitkModel
from leap_fairseq.modules.feature_maps import LeapFeatureMap

logger = logging.getLogger("bench_step_cost")


def relu_features(x, kind, offset=0, positions=None, length=None):
    """Return ReLU(x) twice along the last axis: the width of LeaP's features, without their work."""
    return torch.relu(x).repeat(1, 1, 1, 2)


#: --random-init TYPE: (attention type of all blocks, encoder mask)
RANDOM_MODELS = {"leap": ("leap", "chunk"), "softmax": ("softmax", "chunk"), "softmax-full": ("softmax", "full")}
#: Symbols that fairseq's Dictionary contains before any word: <s>, <pad>, </s>, <unk>.
SPECIAL_SYMBOLS = len(Dictionary())
#: The shortest --seconds: one 10 ms filterbank frame.
MIN_SECONDS = 0.01


def random_model(kind: str, vocab_size: int):
    """Return a randomly initialized model of the parity study's size (see the module docstring)."""
    attention, mask = RANDOM_MODELS[kind]
    dictionary = Dictionary()
    for index in range(vocab_size - len(dictionary)):
        dictionary.add_symbol(f"w{index}")
    args = Namespace(
        input_feat_per_channel=80, input_channels=1, dropout=0.0,
        encoder_attention_type=attention, decoder_attention_type=attention, cross_attention_type=attention,
        encoder_attention_mask=mask, waitk_lagging=5, fixed_pre_decision_ratio=9,
        encoder_embed_dim=128, decoder_embed_dim=128, encoder_ffn_embed_dim=512, decoder_ffn_embed_dim=512,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_layers=4, decoder_layers=2,
        conv_channels=128,
    )  # fmt: skip
    ARCH_CONFIG_REGISTRY["leap_s2t_waitk_tiny"](args)
    torch.manual_seed(1)
    model = LeapS2TWaitkModel.build_model(args, SimpleNamespace(target_dictionary=dictionary))
    return model.eval()


class ModelLoadError(Exception):
    """A --checkpoint or --data-dir that cannot give a leap_s2t_waitk model; main() reports it as a usage error."""


def load_model(checkpoint: Path, data_dir: Path, config_yaml: str):
    try:
        models, _, _ = checkpoint_utils.load_model_ensemble_and_task(
            [str(checkpoint)], arg_overrides={"data": str(data_dir), "config_yaml": config_yaml}
        )
    except (OSError, EOFError, RuntimeError, pickle.UnpicklingError) as error:
        raise ModelLoadError(
            f"cannot load {checkpoint} ({type(error).__name__}: {error}); pass a checkpoint that fairseq-train wrote"
        ) from error
    model = models[0]
    if not isinstance(model, LeapS2TWaitkModel):
        raise ModelLoadError(f"{checkpoint} contains a {type(model).__name__}; the benchmark needs a leap_s2t_waitk model")
    return model.eval()


def use_relu_features(model) -> int:
    """Replace the forward of every LeaP feature map of ``model`` by :func:`relu_features`; return how many."""
    replaced = 0
    for module in model.modules():
        if isinstance(module, LeapFeatureMap):
            module.forward = relu_features
            replaced += 1
    return replaced


def run_utterance(model, frames: torch.Tensor, chunk_frames: int, max_tokens: int):
    """Return (encoder seconds, decoder seconds, tokens written) for one utterance."""
    encoder_seconds = decoder_seconds = 0.0
    written = 0
    token = model.decoder.dictionary.eos()
    with torch.no_grad():
        state = model.init_stream_state()
        for start in range(0, frames.size(0), chunk_frames):
            started = time.perf_counter()
            finished = start + chunk_frames >= frames.size(0)
            _, state = model.stream_encoder(frames[start : start + chunk_frames], state, finished=finished)
            encoder_seconds += time.perf_counter() - started

            started = time.perf_counter()
            while written < max_tokens and model.should_write(state):
                state = model.feed_visible_source(state)
                log_probs, state = model.decoder_step(token, state)
                token = int(log_probs[0].argmax())
                written += 1
            decoder_seconds += time.perf_counter() - started
    return encoder_seconds, decoder_seconds, written


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, action="append", default=[],
                        help="trained leap_s2t_waitk checkpoint; repeat for several models")
    parser.add_argument("--data-dir", type=Path, action="append", default=[],
                        help="prepared data folder of each checkpoint, in the same order")
    parser.add_argument("--random-init", action="append", default=[], choices=list(RANDOM_MODELS),
                        help="also time a model with random weights of the parity study's size (128 dimensions, "
                        "4 encoder and 2 decoder layers, pre-decision ratio 9, k = 5): leap or softmax attention "
                        "with the chunk encoder mask, or softmax-full (full encoder mask, so every chunk "
                        "re-encodes the prefix); repeatable")
    parser.add_argument("--vocab-size", type=int, default=1000,
                        help=f"dictionary size for --random-init, at least the {SPECIAL_SYMBOLS} special symbols "
                        "(default: %(default)s)")
    parser.add_argument("--config-yaml", default="config_st.yaml", help="data config in each data folder (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=2.5,
                        help="utterance length in seconds, at least 0.01 (one 10 ms frame) (default: %(default)s)")
    parser.add_argument("--tokens", type=int, default=20,
                        help="target tokens to write per utterance, at least 1 (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=20,
                        help="timed utterances, at least 1; medians are reported (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads, at least 1 (default: %(default)s)")
    parser.add_argument("--relu-features", action="store_true",
                        help="replace every LeaP feature map by ReLU features of the same width, without proportion "
                        "modules and cosine and sine weights. The outputs are then wrong: the option only measures "
                        "how much of LeaP's time the feature map takes. It needs a LeaP model (--random-init leap "
                        "or a LeaP checkpoint); a model without LeaP feature maps is timed unchanged, with a warning")
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit with a usage error (status 2) for an invalid value."""
    if len(args.checkpoint) != len(args.data_dir):
        parser.error(
            f"got {len(args.checkpoint)} --checkpoint and {len(args.data_dir)} --data-dir; give one data folder per checkpoint"
        )
    if not args.checkpoint and not args.random_init:
        parser.error("nothing to time: give --checkpoint with --data-dir, or --random-init")
    for checkpoint, data_dir in zip(args.checkpoint, args.data_dir):
        for path in (checkpoint, data_dir / args.config_yaml):
            if not path.is_file():
                parser.error(f"{path} not found; pass a trained checkpoint and its prepared data folder")
    for name in ("tokens", "repeats", "threads"):
        value = getattr(args, name)
        if value < 1:
            parser.error(f"--{name} must be at least 1, got {value}")
    if not (math.isfinite(args.seconds) and args.seconds >= MIN_SECONDS):
        parser.error(f"--seconds must be at least {MIN_SECONDS} (one 10 ms filterbank frame), got {args.seconds}")
    if args.vocab_size < SPECIAL_SYMBOLS:
        parser.error(
            f"--vocab-size must be at least {SPECIAL_SYMBOLS}, the special symbols of fairseq's dictionary "
            f"(<s>, <pad>, </s>, <unk>), got {args.vocab_size}"
        )
    if args.relu_features and not args.checkpoint and "leap" not in args.random_init:
        parser.error(
            f"--relu-features replaces LeaP feature maps, but --random-init {' '.join(args.random_init)} has none; "
            "add --random-init leap or a LeaP --checkpoint"
        )


def build_models(parser: argparse.ArgumentParser, args: argparse.Namespace):
    """Load or build every requested model before any timing; return (name, model) pairs."""
    models = []
    for checkpoint, data_dir in zip(args.checkpoint, args.data_dir):
        try:
            models.append((str(checkpoint), load_model(checkpoint, data_dir, args.config_yaml)))
        except ModelLoadError as error:
            parser.error(str(error))
    models += [(f"random {kind}", random_model(kind, args.vocab_size)) for kind in args.random_init]
    if args.relu_features:
        for name, model in models:
            if use_relu_features(model) == 0:
                logger.warning("%s has no LeaP feature maps; --relu-features leaves it unchanged", name)
    return models


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s")
    check_args(parser, args)
    torch.set_num_threads(args.threads)
    models = build_models(parser, args)

    print("| model | encoder ms | decoder ms | total ms | chunks | tokens |")
    print("|---|---|---|---|---|---|")
    for name, model in models:
        # The subsampler reduces frames by 4, so one block of R encoder states is 4 R frames.
        chunk_frames = 4 * model.fixed_pre_decision_ratio
        generator = torch.Generator().manual_seed(0)
        frames = torch.randn(round(args.seconds * 100), model.encoder.input_dim, generator=generator)
        run_utterance(model, frames, chunk_frames, args.tokens)
        runs = [run_utterance(model, frames, chunk_frames, args.tokens) for _ in range(args.repeats)]
        encoder_ms = statistics.median(run[0] for run in runs) * 1000
        decoder_ms = statistics.median(run[1] for run in runs) * 1000
        total_ms = statistics.median(run[0] + run[1] for run in runs) * 1000
        chunks = -(-frames.size(0) // chunk_frames)
        print(f"| {name} | {encoder_ms:.1f} | {decoder_ms:.1f} | {total_ms:.1f} | {chunks} | {runs[0][2]} |", flush=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Time per generated token against context length for leap_transformer_lm.

One decoding step is what fairseq's SequenceGenerator runs per token:
``model.decoder(prefix, incremental_state=...)`` on the new token, then a log-softmax over the
vocabulary. For each context length L, the incremental state is set to the size it has after L
tokens. The next ``--steps`` steps are timed one by one, and their median is reported for L. The
linear types (LeaP, ReLU, cosFormer) carry a fixed-size recurrent state; softmax carries fairseq's
key and value cache, which grows with L.

Values do not change the work of a step, so the state after L tokens is built directly (random
cached keys and values for softmax, the position counter for the linear types) instead of by
decoding L tokens first, and the model has random weights and random input tokens.

Example (results go to docs/benchmarks.md):

    python scripts/bench_generation.py --json runs/bench_generation.json
"""

import argparse
import datetime
import json
import logging
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import leap_fairseq  # noqa: E402,F401  (registers the models)
from fairseq import options  # noqa: E402
from fairseq.data import Dictionary  # noqa: E402
from fairseq.dataclass.utils import convert_namespace_to_omegaconf  # noqa: E402
from fairseq.tasks.language_modeling import LanguageModelingTask  # noqa: E402

logger = logging.getLogger("bench_generation")

DEFAULT_CONTEXTS = [128, 256, 512, 1024, 2048, 4096, 8192]


def build_model(attention_type: str, args: argparse.Namespace, dictionary: Dictionary):
    """Build leap_transformer_lm (eval mode) with room for the longest context."""
    max_positions = max(args.contexts) + args.steps + 2
    words = [
        "unused-data-dir",
        "--task", "language_modeling",
        "--arch", "leap_transformer_lm",
        "--decoder-attention-type", attention_type,
        "--decoder-layers", str(args.layers),
        "--decoder-embed-dim", str(args.embed_dim),
        "--decoder-input-dim", str(args.embed_dim),
        "--decoder-output-dim", str(args.embed_dim),
        "--decoder-ffn-embed-dim", str(4 * args.embed_dim),
        "--decoder-attention-heads", str(args.heads),
        "--tokens-per-sample", str(max_positions),
        "--max-target-positions", str(max_positions),
    ]
    parser = options.get_training_parser()
    parsed = options.parse_args_and_arch(parser, words)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = convert_namespace_to_omegaconf(parsed)
    task = LanguageModelingTask(cfg.task, dictionary, dictionary)
    torch.manual_seed(args.seed)
    model = task.build_model(cfg.model)
    return model.to(args.device).eval()


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def decode_step(model, prefix, state, device):
    """Run one incremental decoding step and the log-softmax; return its (wall, process CPU) seconds.

    On a shared machine the process CPU time is the steadier measure, because it leaves out the
    time the process waits for a core.
    """
    synchronize(device)
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    out = model.decoder(prefix, incremental_state=state)
    model.get_normalized_probs(out, log_probs=True)
    synchronize(device)
    return time.perf_counter() - wall_start, time.process_time() - cpu_start


def set_context_length(state, context: int, generator: torch.Generator) -> None:
    """Make every self-attention state in ``state`` look like ``context`` decoded tokens.

    Softmax buffers (fairseq's MultiheadAttention) get random keys and values of shape
    (B, H, context, d_h). Linear buffers keep their fixed-size sums and get ``positions`` =
    context. The next step then does the work of a real step at that context length.
    """
    for buffer in state.values():
        names = set(buffer)
        if {"prev_key", "prev_value"} <= names:
            for name in ("prev_key", "prev_value"):
                old = buffer[name]
                shape = (old.shape[0], old.shape[1], context, old.shape[3])
                buffer[name] = torch.randn(shape, generator=generator, dtype=old.dtype).to(old.device)
            if buffer.get("prev_key_padding_mask") is not None:
                old = buffer["prev_key_padding_mask"]
                buffer["prev_key_padding_mask"] = torch.zeros(old.shape[0], context, dtype=old.dtype, device=old.device)
        elif {"kv", "k_sum", "positions"} <= names:
            buffer["positions"] = torch.full_like(buffer["positions"], context)
        else:
            raise RuntimeError(f"unknown incremental state buffer with entries {sorted(names)}")


def time_decoding(model, attention_type: str, args: argparse.Namespace, vocab_size: int):
    """Time ``args.steps`` decoding steps after each context length; return {context: seconds per step}."""
    longest = max(args.contexts) + args.steps + 1
    generator = torch.Generator().manual_seed(args.seed)
    tokens = torch.randint(4, vocab_size, (args.batch_size, longest), generator=generator).to(args.device)
    samples = {}
    with torch.no_grad():
        for context in tqdm(args.contexts, desc=attention_type, unit="context", disable=args.quiet):
            state = {}
            # One real step creates every layer's buffers, which then get the context's size.
            decode_step(model, tokens[:, :1], state, args.device)
            set_context_length(state, context, generator)
            samples[context] = [
                decode_step(model, tokens[:, : context + step + 1], state, args.device) for step in range(args.steps)
            ]
    return samples


def summarize(samples):
    """Return one row per context: median, 10th and 90th percentile of wall and CPU milliseconds."""
    rows = []
    for context, times in sorted(samples.items()):
        row = {"context": context, "steps": len(times)}
        for index, clock in enumerate(("wall", "cpu")):
            ordered = sorted(pair[index] for pair in times)
            row[f"{clock}_ms_median"] = 1000 * statistics.median(ordered)
            row[f"{clock}_ms_p10"] = 1000 * ordered[len(ordered) // 10]
            row[f"{clock}_ms_p90"] = 1000 * ordered[(9 * len(ordered)) // 10]
        rows.append(row)
    return rows


def machine_description(device: str) -> dict:
    description = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    if device.startswith("cuda"):
        description["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return description


def markdown_table(results, types, clock: str) -> str:
    """Format the medians of one clock ("wall" or "cpu") as a Markdown table, with softmax's ratios."""
    key = f"{clock}_ms_median"
    others = [name for name in types if name != "softmax"] if "softmax" in types else []
    columns = ["context"] + [f"{name} {clock} ms/token" for name in types] + [f"softmax / {name}" for name in others]
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for index, row in enumerate(results[types[0]]):
        cells = [str(row["context"])] + [f"{results[name][index][key]:.2f}" for name in types]
        for name in others:
            cells.append(f"{results['softmax'][index][key] / results[name][index][key]:.1f}x")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the results to this JSON file")
    parser.add_argument("--types", nargs="+", default=["leap", "softmax"],
                        choices=["softmax", "relu", "cosformer", "leap"], help="attention types to time")
    parser.add_argument("--contexts", nargs="+", type=int, default=DEFAULT_CONTEXTS,
                        help="context lengths in tokens at which to time generation")
    parser.add_argument("--steps", type=int, default=32, help="timed tokens per context length")
    parser.add_argument("--layers", type=int, default=6, help="decoder layers")
    parser.add_argument("--embed-dim", type=int, default=512, help="model dimension")
    parser.add_argument("--heads", type=int, default=8, help="attention heads")
    parser.add_argument("--vocab-size", type=int, default=10000, help="dictionary size")
    parser.add_argument("--batch-size", type=int, default=1, help="sequences decoded together")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if min(args.contexts) < 1 or args.steps < 1:
        parser.error("--contexts and --steps must be positive")
    args.contexts = sorted(set(args.contexts))
    return args


def main(argv=None) -> int:
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.INFO)
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    dictionary = Dictionary()
    for index in range(args.vocab_size - len(dictionary)):
        dictionary.add_symbol(f"word{index}")

    results = {}
    for attention_type in args.types:
        model = build_model(attention_type, args, dictionary)
        parameters = sum(p.numel() for p in model.parameters())
        logger.info("%s: %d parameters", attention_type, parameters)
        results[attention_type] = summarize(time_decoding(model, attention_type, args, len(dictionary)))
        del model

    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).as_posix()] + (sys.argv[1:] if argv is None else list(argv))),
        "machine": machine_description(args.device),
        "model": {
            "arch": "leap_transformer_lm",
            "layers": args.layers,
            "embed_dim": args.embed_dim,
            "ffn_dim": 4 * args.embed_dim,
            "heads": args.heads,
            "vocab_size": len(dictionary),
            "batch_size": args.batch_size,
        },
        "steps_per_context": args.steps,
        "results": results,
    }
    for clock in ("wall", "cpu"):
        print(markdown_table(results, args.types, clock) + "\n")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        tmp.rename(args.json)
        logger.info("wrote %s", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

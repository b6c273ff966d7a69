#!/usr/bin/env python
"""Plot the proportions that LeaP attention learned, against position, for a few utterances.

LeaP re-weights each query-key score by cos(pi/2 (p_i - p_j)), where a small module predicts the
proportion p of each query and key from the token itself
(``leap_fairseq.modules.feature_maps.ProportionModule``). cosFormer uses the fixed
p = position / length instead. This script runs a trained ``leap_s2t_waitk`` model offline
(teacher-forced on the reference) over the first utterances of a split, records every
proportion module's output with forward hooks, and draws one panel per attention block of the
last layer (encoder self-attention, decoder self-attention, cross-attention): the proportion
averaged over heads against relative position, queries solid and keys dashed, one colour per
utterance, with cosFormer's p = position / length as a grey diagonal.

    python scripts/plot_proportions.py --checkpoint CKPT --data-dir PREP/en-de \\
        --config-yaml config_st.yaml --split tst-COMMON_st --output proportions.png
"""

import argparse
import logging
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import leap_fairseq  # noqa: F401  (applies the compat patches and registers the models)
import numpy as np
import torch
from fairseq import checkpoint_utils

from leap_fairseq.modules.feature_maps import ProportionModule

logger = logging.getLogger("plot_proportions")

BLOCKS = (
    ("encoder", "self_attn", "encoder self-attention"),
    ("decoder", "self_attn", "decoder self-attention"),
    ("decoder", "encoder_attn", "cross-attention"),
)


def load_model_and_task(checkpoint: str, data_dir: str, config_yaml: str):
    if not Path(checkpoint).is_file():
        raise SystemExit(f"error: checkpoint not found: {checkpoint}")
    if not (Path(data_dir) / config_yaml).is_file():
        raise SystemExit(f"error: {Path(data_dir) / config_yaml} not found; pass the prepared en-<lang> folder "
                         "as --data-dir and its config file as --config-yaml")
    models, _, task = checkpoint_utils.load_model_ensemble_and_task(
        [checkpoint], arg_overrides={"data": data_dir, "config_yaml": config_yaml}
    )
    model = models[0]
    model.eval()
    return model, task


def proportion_modules(model) -> Dict[Tuple[str, int, str, str], ProportionModule]:
    """Map (part, layer, block, query|key) to each proportion module of the model."""
    found = {}
    for name, module in model.named_modules():
        if not isinstance(module, ProportionModule):
            continue
        # For example encoder.layers.1.self_attn.feature_map.key_proportion
        parts = name.split(".")
        if len(parts) < 6 or parts[1] != "layers" or parts[-2] != "feature_map":
            logger.info("ignoring proportion module %s (not in an attention layer)", name)
            continue
        kind = "query" if parts[-1] == "query_proportion" else "key"
        found[(parts[0], int(parts[2]), parts[3], kind)] = module
    return found


def record_proportions(model, task, split: str, count: int) -> Tuple[List[Dict], List[str]]:
    """Run ``count`` utterances of ``split`` one at a time; return per utterance {module key: p (N,)}."""
    modules = proportion_modules(model)
    if not modules:
        raise SystemExit("error: the model has no LeaP attention (no proportion modules); "
                         "proportions exist only for --*-attention-type leap")
    captured: Dict = {}

    def hook_for(key):
        def hook(_module, _inputs, output):
            # (B, H, N) -> mean over heads of the single utterance -> (N,)
            captured[key] = output.detach().float().mean(dim=1)[0].cpu().numpy()
        return hook

    handles = [module.register_forward_hook(hook_for(key)) for key, module in modules.items()]
    task.load_dataset(split)
    dataset = task.dataset(split)
    results, ids = [], []
    try:
        with torch.no_grad():
            for index in range(min(count, len(dataset))):
                captured.clear()
                batch = dataset.collater([dataset[index]])
                net_input = batch["net_input"]
                model(net_input["src_tokens"], net_input["src_lengths"], net_input["prev_output_tokens"])
                results.append(dict(captured))
                ids.append(str(batch["id"][0].item()))
    finally:
        for handle in handles:
            handle.remove()
    return results, ids


def plot(results: List[Dict], ids: Sequence[str], output: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    last_layer = defaultdict(int)
    for result in results:
        for part, layer, block, _ in result:
            last_layer[(part, block)] = max(last_layer[(part, block)], layer)
    panels = [(part, block, label) for part, block, label in BLOCKS if (part, block) in last_layer]
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for axis, (part, block, label) in zip(axes[0], panels):
        layer = last_layer[(part, block)]
        for index, (result, utterance) in enumerate(zip(results, ids)):
            colour = colours[index % len(colours)]
            for kind, style in (("query", "-"), ("key", "--")):
                values = result.get((part, layer, block, kind))
                if values is None:
                    continue
                positions = (np.arange(len(values)) + 0.5) / len(values)
                axis.plot(positions, values, style, color=colour, linewidth=1,
                          label=f"utt {utterance} {kind}" if axis is axes[0][0] else None)
        axis.plot([0, 1], [0, 1], color="grey", linewidth=0.8, alpha=0.6)
        axis.set_title(f"{label}, layer {layer + 1}", fontsize=10)
        axis.set_xlabel("relative position i / N")
        axis.set_ylim(-0.02, 1.02)
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("proportion p (mean over heads)")
    axes[0][0].legend(fontsize=7)
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(f".{output.stem}.tmp-{os.getpid()}{output.suffix}")
    figure.savefig(temporary, dpi=120)
    plt.close(figure)
    os.replace(temporary, output)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="leap_s2t_waitk checkpoint with LeaP attention")
    parser.add_argument("--data-dir", required=True, help="prepared en-<lang> folder (manifests, fbank80.zip)")
    parser.add_argument("--config-yaml", default="config_st.yaml", help="data config inside --data-dir")
    parser.add_argument("--split", default="tst-COMMON_st", help="manifest name without .tsv")
    parser.add_argument("--num-utterances", type=int, default=3, help="utterances to plot")
    parser.add_argument("--output", required=True, help="PNG file to write")
    parser.add_argument("--title", default="Learned LeaP proportions (last layer)", help="figure title")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.INFO, force=True)
    args = parse_args(argv)
    if args.num_utterances < 1:
        raise SystemExit(f"error: --num-utterances must be at least 1, got {args.num_utterances}")
    model, task = load_model_and_task(args.checkpoint, args.data_dir, args.config_yaml)
    results, ids = record_proportions(model, task, args.split, args.num_utterances)
    plot(results, ids, Path(args.output), args.title)
    logger.info("wrote %s (%d utterances of %s)", args.output, len(results), args.split)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Average the parameters of the last N fairseq checkpoints into one checkpoint.

fairseq's own ``scripts/average_checkpoints.py`` is not part of the fairseq wheel, so this
script does the same job with ``fairseq.checkpoint_utils``. Checkpoints are chosen by the
number in their name: ``checkpoint<EPOCH>.pt`` with ``--num-epoch-checkpoints`` and
``checkpoint_<EPOCH>_<UPDATE>.pt`` with ``--num-update-checkpoints`` (plus ``checkpoint_last.pt``
with ``--include-last`` when it is newer); ``--inputs`` may also
list checkpoint files directly. Floating-point tensors are averaged in float64 and stored in
their original dtype; other tensors (counters) come from the newest checkpoint, and so do the
configuration and the optimizer history. The output is written to a temporary name and then
renamed.

    python scripts/average_checkpoints.py --inputs CKPT_DIR --num-update-checkpoints 5 \\
        --output CKPT_DIR/checkpoint_avg5.pt
"""

import argparse
import logging
import os
import re
import sys
from collections import OrderedDict
from pathlib import Path
from typing import List, Optional, Sequence

import leap_fairseq  # noqa: F401  (applies the compat patches that fairseq's checkpoint loading needs)
import torch
from fairseq import checkpoint_utils
from omegaconf import OmegaConf

logger = logging.getLogger("average_checkpoints")

EPOCH_PATTERN = re.compile(r"^checkpoint(\d+)\.pt$")
UPDATE_PATTERN = re.compile(r"^checkpoint_(\d+)_(\d+)\.pt$")


def checkpoint_updates(path: Path) -> int:
    """Return the number of updates stored in a fairseq checkpoint."""
    state = checkpoint_utils.load_checkpoint_to_cpu(str(path))
    try:
        return int(state["optimizer_history"][-1]["num_updates"])
    except (KeyError, IndexError, TypeError) as error:
        raise SystemExit(f"error: {path} records no number of updates ({error}); is it a fairseq training checkpoint?")


def select_checkpoints(folder: Path, count: int, by_update: bool, allow_fewer: bool, include_last: bool = False) -> List[Path]:
    """Return the ``count`` newest epoch or update checkpoints in ``folder``, oldest first.

    With ``include_last``, ``checkpoint_last.pt`` counts as an update checkpoint when it is newer
    than all of them: fairseq saves the update that ends an epoch (often the final one) only as
    an epoch checkpoint and as checkpoint_last.pt.
    """
    pattern = UPDATE_PATTERN if by_update else EPOCH_PATTERN
    found = []
    for path in folder.iterdir():
        match = pattern.match(path.name)
        if match:
            found.append((int(match.groups()[-1]), path))
    found.sort()
    last = folder / "checkpoint_last.pt"
    if by_update and include_last and last.is_file():
        updates = checkpoint_updates(last)
        if not found or updates > found[-1][0]:
            found.append((updates, last))
    kind = "checkpoint_<epoch>_<update>.pt" if by_update else "checkpoint<epoch>.pt"
    if not found:
        raise SystemExit(f"error: no {kind} files in {folder}; train with --save-interval-updates "
                         "(update checkpoints) or keep epoch checkpoints, or pass the files to --inputs")
    if len(found) < count:
        if not allow_fewer:
            raise SystemExit(f"error: {folder} has {len(found)} {kind} files, fewer than the {count} requested; "
                             "pass --allow-fewer to average the ones there are")
        logger.warning("%s has %d %s files, fewer than the %d requested; averaging all of them",
                       folder, len(found), kind, count)
    return [path for _, path in found[-count:]]


def average_states(paths: Sequence[Path]) -> dict:
    """Load the checkpoints and return the newest one's state with averaged model parameters."""
    sums: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    names = None
    newest = None
    for path in paths:
        logger.info("reading %s", path)
        state = checkpoint_utils.load_checkpoint_to_cpu(str(path))
        model = state["model"]
        if names is None:
            names = set(model)
        elif set(model) != names:
            missing = sorted(names ^ set(model))[:5]
            raise SystemExit(f"error: {path} has other parameters than {paths[0]} (for example {missing}); "
                             "average only checkpoints of one model")
        for name, tensor in model.items():
            if not tensor.is_floating_point():
                continue
            if name in sums:
                if sums[name].shape != tensor.shape:
                    raise SystemExit(f"error: parameter {name} has shape {tuple(tensor.shape)} in {path} "
                                     f"but {tuple(sums[name].shape)} in {paths[0]}")
                sums[name] += tensor.to(torch.float64)
            else:
                sums[name] = tensor.to(torch.float64).clone()
        newest = state

    averaged = OrderedDict()
    for name, tensor in newest["model"].items():
        averaged[name] = (sums[name] / len(paths)).to(tensor.dtype) if tensor.is_floating_point() else tensor
    newest["model"] = averaged
    # load_checkpoint_to_cpu turns the configuration into an OmegaConf object; fairseq saves a plain container.
    if newest.get("cfg") is not None and OmegaConf.is_config(newest["cfg"]):
        newest["cfg"] = OmegaConf.to_container(newest["cfg"], resolve=True, enum_to_str=True)
    newest.setdefault("extra_state", {})
    if isinstance(newest["extra_state"], dict):
        newest["extra_state"]["averaged_checkpoints"] = [str(path) for path in paths]
    return newest


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", nargs="+", required=True,
                        help="one checkpoint folder (with a --num-* option) or the checkpoint files to average")
    parser.add_argument("--output", required=True, help="path of the averaged checkpoint")
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--num-epoch-checkpoints", type=int, help="average the last N checkpoint<EPOCH>.pt files")
    choice.add_argument("--num-update-checkpoints", type=int,
                        help="average the last N checkpoint_<EPOCH>_<UPDATE>.pt files")
    parser.add_argument("--include-last", action="store_true",
                        help="with --num-update-checkpoints, count checkpoint_last.pt as the newest update "
                        "checkpoint when it is newer than all checkpoint_<EPOCH>_<UPDATE>.pt files")
    parser.add_argument("--allow-fewer", action="store_true",
                        help="average the checkpoints there are when fewer than N exist, instead of failing")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.INFO, force=True)
    args = parse_args(argv)
    count = args.num_epoch_checkpoints or args.num_update_checkpoints
    if count is not None:
        if count < 1:
            raise SystemExit(f"error: the number of checkpoints must be at least 1, got {count}")
        if len(args.inputs) != 1 or not Path(args.inputs[0]).is_dir():
            raise SystemExit("error: with --num-epoch-checkpoints or --num-update-checkpoints, "
                             f"--inputs must be one checkpoint folder, got {' '.join(args.inputs)}")
        paths = select_checkpoints(Path(args.inputs[0]), count, args.num_update_checkpoints is not None,
                                   args.allow_fewer, args.include_last)
    else:
        paths = [Path(path) for path in args.inputs]
        for path in paths:
            if not path.is_file():
                raise SystemExit(f"error: checkpoint not found: {path}")

    state = average_states(paths)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    torch.save(state, temporary)
    os.replace(temporary, output)
    logger.info("averaged %d checkpoints into %s", len(paths), output)
    return 0


if __name__ == "__main__":
    sys.exit(main())

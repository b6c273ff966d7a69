#!/usr/bin/env python
"""Collect SimulEval scores for several wait-k values into results.md and a BLEU-AL plot.

Each run is a folder with one subfolder per k, ``k<K>/scores.json``, as written by
``scripts/eval_simul.sh`` (through ``scripts/score_simul.py``): BLEU and AL, LAAL, AP, DAL,
each plain and computation-aware (suffix ``_CA``). Several runs (for example LeaP and a
softmax baseline) go into one table and one plot:

    python scripts/make_results.py --run leap=work/mustc_de/eval --output work/mustc_de/results.md \\
        --plot work/mustc_de/bleu_al.png [--proportions-plot work/mustc_de/proportions.png] [--k 3 7]

Without ``--k``, every ``k<K>`` folder with a scores file is listed. With ``--k``, only the
given k values are, and every run must have a scores file for each of them.
"""

import argparse
import json
import logging
import math
import os
import re
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

logger = logging.getLogger("make_results")

K_FOLDER = re.compile(r"^k(\d+)$")
LATENCY_METRICS = ("AL", "LAAL", "AP", "DAL")
TABLE_COLUMNS = ("BLEU", "AL", "AL_CA", "LAAL", "LAAL_CA", "AP", "AP_CA", "DAL", "DAL_CA")


def read_run(folder: Path, k_values: Optional[Sequence[int]] = None) -> List[Dict]:
    """Return the scores of each ``k<K>/scores.json`` in ``folder``, sorted by k.

    With ``k_values``, read only those, and raise SystemExit when one has no scores file.
    """
    if not folder.is_dir():
        raise SystemExit(f"error: evaluation folder not found: {folder}")
    if k_values is not None:
        missing = [k for k in sorted(set(k_values)) if not (folder / f"k{k}" / "scores.json").is_file()]
        if missing:
            names = ", ".join(f"k{k}/scores.json" for k in missing)
            raise SystemExit(f"error: no {names} in {folder}; run the evaluation of those k values first, "
                             "or leave them out of --k")
    rows = []
    for child in folder.iterdir():
        match = K_FOLDER.match(child.name)
        scores_path = child / "scores.json"
        if not match or not scores_path.is_file():
            continue
        if k_values is not None and int(match.group(1)) not in k_values:
            continue
        try:
            scores = json.loads(scores_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise SystemExit(f"error: {scores_path} is not valid JSON ({error}); rerun its evaluation")
        missing = [name for name in TABLE_COLUMNS if name not in scores]
        if missing:
            raise SystemExit(f"error: {scores_path} has no {', '.join(missing)}; "
                             "write it with scripts/score_simul.py (scripts/eval_simul.sh does)")
        scores["k"] = int(match.group(1))
        scores["path"] = str(scores_path)
        rows.append(scores)
    if not rows:
        raise SystemExit(f"error: no k<K>/scores.json in {folder}; run the evaluation stage first")
    return sorted(rows, key=lambda row: row["k"])


def sentence_count_note(runs: Sequence[Tuple[str, List[Dict]]]) -> Optional[str]:
    """Return a note when the rows were scored on different numbers of sentences, else None.

    BLEU and latency on different sentence sets do not compare, for example when a run's
    preparation dropped test segments that another run kept.
    """
    counts = sorted({row.get("num_instances") for _, rows in runs for row in rows}, key=str)
    if len(counts) < 2:
        return None
    listed = ", ".join(
        f"{label} k={row['k']}: {row.get('num_instances', 'n/a')}" for label, rows in runs for row in rows
    )
    return f"the rows were scored on different numbers of sentences ({listed}), so they do not compare directly"


def format_number(value, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def markdown_table(runs: Sequence[Tuple[str, List[Dict]]]) -> str:
    header = ["run", "k"] + list(TABLE_COLUMNS) + ["sentences"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, rows in runs:
        for row in rows:
            cells = [label, str(row["k"])]
            for name in TABLE_COLUMNS:
                if name == "BLEU":
                    digits = 2
                elif name.startswith("AP"):
                    digits = 3
                else:
                    digits = 0
                cells.append(format_number(row.get(name), digits))
            cells.append(str(row.get("num_instances", "n/a")))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_bleu_latency(runs: Sequence[Tuple[str, List[Dict]]], path: Path, title: str) -> None:
    """Plot BLEU against AL (solid) and against computation-aware AL (dashed), one colour per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (label, rows) in enumerate(runs):
        colour = colours[index % len(colours)]
        for metric, style, marker, suffix in (("AL", "-", "o", "AL"), ("AL_CA", "--", "x", "AL_CA")):
            points = [(row[metric], row["BLEU"], row["k"]) for row in rows if row.get(metric) is not None]
            if not points:
                continue
            xs, ys, ks = zip(*points)
            axes.plot(xs, ys, linestyle=style, marker=marker, color=colour, label=f"{label} ({suffix})")
            if metric == "AL":
                for x, y, k in points:
                    axes.annotate(f"k={k}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    axes.set_xlabel("average lagging (ms of source audio)")
    axes.set_ylabel("BLEU")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    figure.savefig(temporary, dpi=120)
    plt.close(figure)
    os.replace(temporary, path)


def relative_link(target: Path, document: Path) -> str:
    return os.path.relpath(target.resolve(), document.resolve().parent)


def write_markdown(runs, output: Path, plot: Path, proportions: Optional[Path], title: str, notes: List[str]) -> None:
    lines = [f"# {title}", ""]
    lines.append(f"Generated {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by scripts/make_results.py.")
    lines.append("")
    for note in notes:
        lines.append(f"- {note}")
    if notes:
        lines.append("")
    lines.append(markdown_table(runs))
    lines.append("")
    lines.append(
        "BLEU is sacreBLEU (13a) on the detokenized output. AL, LAAL and DAL are in milliseconds of source "
        "audio and AP is a fraction of the source, all as SimulEval 1.1.4 computes them. The `_CA` columns are "
        "computation-aware: the wall-clock time spent computing counts as lag, so they depend on the machine."
    )
    lines.append("")
    lines.append(f"![BLEU against AL]({relative_link(plot, output)})")
    if proportions is not None:
        lines.append("")
        lines.append(f"![Learned LeaP proportions]({relative_link(proportions, output)})")
    lines.append("")
    lines.append("Scores files:")
    lines.append("")
    for label, rows in runs:
        for row in rows:
            lines.append(f"- {label}, k={row['k']}: `{row['path']}`")
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    temporary.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(temporary, output)


def parse_run(text: str) -> Tuple[str, Path]:
    label, separator, folder = text.partition("=")
    if not separator:
        return Path(text).name, Path(text)
    if not label or not folder:
        raise SystemExit(f"error: --run expects LABEL=FOLDER or FOLDER, got {text!r}")
    return label, Path(folder)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", required=True, metavar="LABEL=FOLDER",
                        help="a folder with k<K>/scores.json files, with the label to show; repeatable")
    parser.add_argument("--output", required=True, help="markdown file to write")
    parser.add_argument("--plot", required=True, help="PNG file for the BLEU-AL plot")
    parser.add_argument("--proportions-plot", help="PNG of learned proportions to link from the markdown file")
    parser.add_argument("--title", default="Simultaneous speech translation on tst-COMMON", help="heading and plot title")
    parser.add_argument("--note", action="append", default=[], help="a line to list under the heading; repeatable")
    parser.add_argument("--k", nargs="+", type=int, metavar="K",
                        help="list only these k values, each of which every run must have (default: every "
                        "k<K> folder with a scores.json)")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.INFO, force=True)
    args = parse_args(argv)
    runs = []
    folders: Dict[str, Path] = {}
    for text in args.run:
        label, folder = parse_run(text)
        if label in folders:
            raise SystemExit(f"error: two --run options have the label {label!r} ({folders[label]} and {folder}); "
                             "give each run its own label with --run LABEL=FOLDER")
        folders[label] = folder
        runs.append((label, read_run(folder, args.k)))
    notes = list(args.note)
    mismatch = sentence_count_note(runs)
    if mismatch is not None:
        logger.warning("%s", mismatch)
        notes.append(mismatch)
    plot = Path(args.plot)
    plot_bleu_latency(runs, plot, args.title)
    proportions = Path(args.proportions_plot) if args.proportions_plot else None
    if proportions is not None and not proportions.is_file():
        logger.warning("proportions plot %s does not exist; linking it anyway", proportions)
    write_markdown(runs, Path(args.output), plot, proportions, args.title, notes)
    print(markdown_table(runs))
    logger.info("wrote %s and %s", args.output, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Binarize raw WikiText files for fairseq's language_modeling task.

Reads the tokenized WikiText splits (``wiki.{train,valid,test}.tokens`` as Salesforce ships
WikiText-103 and WikiText-2, or ``{train,valid,test}.txt``) and runs fairseq's preprocessing
(``fairseq_cli.preprocess`` with ``--only-source``), which builds ``dict.txt`` from the training
split and writes ``train``, ``valid`` and ``test`` as ``.bin``/``.idx`` pairs.

The output is written to a temporary folder beside OUT_DIR and renamed when complete, so an
interrupted run leaves no half-written OUT_DIR. An existing OUT_DIR is kept unless
``--overwrite`` is given.

Examples::

    # WikiText-103 as downloaded (wiki.train.tokens, wiki.valid.tokens, wiki.test.tokens)
    python data_prep/prep_wikitext.py wikitext-103 data-bin/wikitext-103 --workers 8

    # A folder with only valid.txt and test.txt: train on valid.txt, validate and test on test.txt
    python data_prep/prep_wikitext.py wikitext-2 data-bin/wikitext-2 \\
        --train-file valid.txt --valid-file test.txt --test-file test.txt
"""

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

logger = logging.getLogger("prep_wikitext")

SPLITS = ("train", "valid", "test")

# File names tried in order for each split when --{split}-file is not given.
DEFAULT_NAMES = {
    "train": ("wiki.train.tokens", "train.txt"),
    "valid": ("wiki.valid.tokens", "valid.txt"),
    "test": ("wiki.test.tokens", "test.txt"),
}

# Marks a split as not wanted on the command line, for example --valid-file none.
NO_FILE = "none"

# How to name other split files, for this script and for scripts/lm_wikitext103.sh, which calls it.
SPLIT_FILES_HINT = (
    f"Name other files with --train-file, --valid-file and --test-file NAME ('{NO_FILE}' skips the valid or "
    f"test split); with scripts/lm_wikitext103.sh, use --splits TRAIN,VALID,TEST"
)

# fairseq-preprocess writes these for every binarized split.
BINARY_SUFFIXES = (".bin", ".idx")


class PrepError(Exception):
    """An input or output problem that the user must fix; main() prints it without a traceback."""


def resolve_split_files(raw_dir: Path, requested: Dict[str, Optional[str]]) -> Dict[str, Optional[Path]]:
    """Find the raw text file of each split.

    Args:
        raw_dir: folder with the raw WikiText files.
        requested: split name to a file name (relative to raw_dir, or absolute), ``None`` to
            search DEFAULT_NAMES, or ``"none"`` to skip the split. The train split cannot be
            skipped because the dictionary is built from it.

    Returns:
        Split name to file path, or None for a skipped split.

    Raises:
        PrepError: naming every missing file and what to pass instead.
    """
    if not raw_dir.is_dir():
        raise PrepError(f"raw data folder not found: {raw_dir}")

    found: Dict[str, Optional[Path]] = {}
    problems: List[str] = []
    for split in SPLITS:
        name = requested.get(split)
        if name is not None and name.lower() == NO_FILE:
            if split == "train":
                problems.append(f"train split: '{NO_FILE}' is invalid because the dictionary is built from the train split")
            found[split] = None
            continue
        if name is not None:
            path = Path(name) if os.path.isabs(name) else raw_dir / name
            if not path.is_file():
                problems.append(f"{split} split: file not found: {path}")
            found[split] = path
            continue
        candidates = [raw_dir / default for default in DEFAULT_NAMES[split]]
        existing = [path for path in candidates if path.is_file()]
        if not existing:
            tried = " or ".join(str(path) for path in candidates)
            problems.append(f"{split} split: file not found: {tried}")
            found[split] = None
            continue
        found[split] = existing[0]

    if problems:
        raise PrepError("cannot binarize WikiText:\n  " + "\n  ".join(problems) + "\n" + SPLIT_FILES_HINT)

    for split, path in found.items():
        if path is not None and path.stat().st_size == 0:
            raise PrepError(f"{split} split: file is empty: {path}")
    return found


def preprocess_command(files: Dict[str, Optional[Path]], dest_dir: Path, workers: int, extra: Sequence[str]) -> List[str]:
    """Return the fairseq preprocessing command line for the given split files."""
    command = [
        sys.executable,
        "-m",
        "fairseq_cli.preprocess",
        "--only-source",
        "--destdir",
        str(dest_dir),
        "--workers",
        str(workers),
    ]
    # With --only-source and no --source-lang, fairseq reads each prefix as the file itself.
    for split in SPLITS:
        if files[split] is not None:
            command += [f"--{split}pref", str(files[split])]
    return command + list(extra)


def check_output(dest_dir: Path, files: Dict[str, Optional[Path]]) -> None:
    """Raise PrepError unless fairseq wrote the dictionary and every requested split."""
    expected = [dest_dir / "dict.txt"]
    for split, path in files.items():
        if path is not None:
            expected += [dest_dir / f"{split}{suffix}" for suffix in BINARY_SUFFIXES]
    missing = [str(path) for path in expected if not path.is_file()]
    if missing:
        raise PrepError("fairseq preprocessing finished but did not write: " + ", ".join(missing))


def replace_folder(new_dir: Path, out_dir: Path) -> None:
    """Move new_dir to out_dir; an existing out_dir is removed only after the move succeeds."""
    old_dir = None
    if out_dir.exists():
        old_dir = out_dir.with_name(f"{out_dir.name}.old-{os.getpid()}")
        out_dir.rename(old_dir)
    new_dir.rename(out_dir)
    if old_dir is not None:
        shutil.rmtree(old_dir)


def prepare(
    raw_dir: Path,
    out_dir: Path,
    requested: Dict[str, Optional[str]],
    workers: int = 1,
    overwrite: bool = False,
    extra: Sequence[str] = (),
) -> Dict[str, Optional[Path]]:
    """Binarize the WikiText splits in raw_dir into out_dir and return the files used per split."""
    if out_dir.exists() and not overwrite:
        raise PrepError(f"output folder exists: {out_dir}; pass --overwrite to replace it")
    if workers < 1:
        raise PrepError(f"--workers must be at least 1, got {workers}")
    files = resolve_split_files(raw_dir, requested)
    for split in SPLITS:
        logger.info("%s split: %s", split, files[split] if files[split] is not None else "skipped")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        command = preprocess_command(files, tmp_dir, workers, extra)
        logger.info("running: %s", " ".join(command))
        result = subprocess.run(command)
        if result.returncode != 0:
            raise PrepError(f"fairseq preprocessing failed with exit status {result.returncode}; see its log above")
        check_output(tmp_dir, files)
        replace_folder(tmp_dir, out_dir)
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir)
    logger.info("wrote %s", out_dir)
    return files


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Binarize raw WikiText for fairseq's language_modeling task.",
        epilog="Arguments after -- go to fairseq's preprocessing, for example -- --thresholdsrc 3",
    )
    parser.add_argument("raw_dir", type=Path, help="folder with the raw WikiText files")
    parser.add_argument("out_dir", type=Path, help="output folder for fairseq's binarized data")
    for split in SPLITS:
        defaults = " or ".join(DEFAULT_NAMES[split])
        skip = "" if split == "train" else f"; '{NO_FILE}' skips the split"
        parser.add_argument(
            f"--{split}-file",
            default=None,
            help=f"file for the {split} split, relative to RAW_DIR or absolute (default: {defaults}{skip})",
        )
    parser.add_argument("--workers", type=int, default=1, help="parallel processes for binarization")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR when it exists")

    argv = list(sys.argv[1:] if argv is None else argv)
    extra: List[str] = []
    if "--" in argv:
        split_at = argv.index("--")
        argv, extra = argv[:split_at], argv[split_at + 1 :]
    args = parser.parse_args(argv)
    args.extra = extra
    return args


def main(argv=None) -> int:
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.INFO)
    args = parse_args(argv)
    requested = {split: getattr(args, f"{split}_file") for split in SPLITS}
    try:
        prepare(args.raw_dir, args.out_dir, requested, workers=args.workers, overwrite=args.overwrite, extra=args.extra)
    except PrepError as error:
        logger.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

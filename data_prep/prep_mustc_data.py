#!/usr/bin/env python3
"""Prepare MuST-C for leap_fairseq: filterbank features, SentencePiece, fairseq manifests, SimulEval inputs.

    python data_prep/prep_mustc_data.py --data-root ROOT --lang de es --output-root OUT

reads ``ROOT/en-<lang>/data/<split>/{wav,txt}`` (the MuST-C layout) and writes,
for each language pair, into ``OUT/en-<lang>/``:

    fbank80.zip                       80-dim filterbanks, one .npy per segment, uncompressed
    <split>_st.tsv, <split>_asr.tsv   fairseq manifests (id, audio, n_frames, tgt_text, speaker)
    spm_<type><size>_<task>.{model,vocab,txt}
                                      SentencePiece model trained on the train split, fairseq dictionary
    config_st.yaml, config_asr.yaml   data configs for fairseq's speech_to_text task
    gcmvn.npz                         global CMVN mean and std over the train split
    simuleval/<split>/<id>.wav        16 kHz mono audio of each evaluation segment
    simuleval/<split>.wav_list        their absolute paths, SimulEval's --source
    simuleval/<split>.<lang>, .en     raw reference translation and transcript, SimulEval's --target
    dropped_segments.tsv              every segment left out of a manifest, with the reason
    prep_summary.json                 counts, hours and run time

A killed run resumes when rerun with the same command. Existing outputs from
other options are replaced only with ``--overwrite``. After moving an output
folder, ``--relocate OUT/en-<lang>`` rewrites the absolute paths in its
SimulEval wav lists (the data configs use relative paths).

Testing hook: the environment variable LEAP_PREP_MUSTC_KILL_AFTER=N makes the
run kill itself with SIGKILL after N segments' features are written.
"""

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

if __package__ in (None, ""):
    # Run as a script: make the repository root importable for data_prep.*.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_prep import mustc_corpus, mustc_features, mustc_files, mustc_outputs  # noqa: E402
from data_prep.mustc_corpus import CorpusError, Segment  # noqa: E402
from leap_fairseq import audio  # noqa: E402

logger = logging.getLogger("prep_mustc_data")

TASKS = {"st": ("st",), "asr": ("asr",), "both": ("st", "asr")}
CACHE_DIR = "fbank80_cache"
STATE_FILE = ".prep_state.json"
DROPPED_FILE = "dropped_segments.tsv"
SUMMARY_FILE = "prep_summary.json"
DROPPED_COLUMNS = ("split", "task", "line", "id", "talk", "offset", "duration", "reason", "detail")
STATE_VERSION = 1
# Everything this script writes into a pair folder. --overwrite deletes these.
OUTPUT_PATTERNS = (
    mustc_outputs.FEATURE_ZIP,
    mustc_outputs.GCMVN_FILE,
    "spm_*_st.model",
    "spm_*_st.vocab",
    "spm_*_st.txt",
    "spm_*_asr.model",
    "spm_*_asr.vocab",
    "spm_*_asr.txt",
    "*_st.tsv",
    "*_asr.tsv",
    "config_st.yaml",
    "config_asr.yaml",
    mustc_outputs.SIMULEVAL_DIR,
    CACHE_DIR,
    DROPPED_FILE,
    SUMMARY_FILE,
    STATE_FILE,
)
MAX_LOGGED_PROBLEMS = 20


@dataclass
class Options:
    data_root: Path
    output_root: Path
    langs: Sequence[str]
    splits: Optional[Sequence[str]]
    task: str
    vocab_type: str
    vocab_size: int
    cmvn_type: str
    max_frames: Optional[int]
    jobs: int
    overwrite: bool
    strict: bool
    keep_cache: bool


@dataclass
class PairPlan:
    """Segments of one language pair per split, and the subsets that each output uses."""

    lang: str
    out: Path
    tasks: Sequence[str]
    segments: "OrderedDict[str, List[Segment]]"
    max_frames: Optional[int]
    kept: Dict[str, Dict[str, List[Segment]]] = field(default_factory=dict)  # split -> task -> segments
    with_features: Dict[str, List[Segment]] = field(default_factory=dict)  # split -> segments
    evaluation: Dict[str, List[Segment]] = field(default_factory=dict)  # non-train split -> segments

    def __post_init__(self):
        for split, segments in self.segments.items():
            self.kept[split] = {
                task: [s for s in segments if s.drop_reason(task, self.max_frames) is None] for task in self.tasks
            }
            kept_any = {s.id for task in self.tasks for s in self.kept[split][task]}
            self.with_features[split] = [s for s in segments if s.id in kept_any]
            if split != mustc_corpus.TRAIN_SPLIT:
                kept_all = set.intersection(*({s.id for s in self.kept[split][task]} for task in self.tasks))
                self.evaluation[split] = [s for s in segments if s.id in kept_all]


# ---------------------------------------------------------------------------
# Run state: resume or refuse
# ---------------------------------------------------------------------------


def fingerprint(options: Options, lang: str, split_files: Sequence[mustc_corpus.SplitFiles]) -> Dict:
    """Return the options and input digests that the outputs depend on.

    "features" is what decides the segments and their features, "text" the
    options of the SentencePiece model and the data config only.
    """
    return {
        "features": {
            "lang": lang,
            "tasks": list(TASKS[options.task]),
            "max_frames": options.max_frames,
            "min_frames": audio.MIN_FRAMES,
            "splits": {files.name: files.digest() for files in split_files},
        },
        "text": {
            "vocab_type": options.vocab_type,
            "vocab_size": options.vocab_size,
            "cmvn_type": options.cmvn_type,
        },
    }


def changed_keys(old: Dict, new: Dict) -> List[str]:
    """Return the dotted names of the entries that differ between two fingerprints."""
    changed = []
    for part in sorted(set(old) | set(new)):
        old_part, new_part = old.get(part) or {}, new.get(part) or {}
        changed.extend(
            f"{part}.{key}" for key in sorted(set(old_part) | set(new_part)) if old_part.get(key) != new_part.get(key)
        )
    return changed


def read_state(out: Path) -> Optional[Dict]:
    try:
        state = json.loads((out / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and state.get("version") == STATE_VERSION else None


def write_state(out: Path, run_fingerprint: Dict, complete: bool) -> None:
    state = {"version": STATE_VERSION, "complete": complete, "fingerprint": run_fingerprint}
    mustc_files.write_text_atomic(out / STATE_FILE, json.dumps(state, indent=1, sort_keys=True) + "\n")


def existing_outputs(out: Path) -> List[Path]:
    found = []
    for pattern in OUTPUT_PATTERNS:
        found.extend(path for path in out.glob(pattern) if mustc_files.TEMPORARY_MARKER not in path.name)
    return sorted(set(found))


def decide_start(out: Path, run_fingerprint: Dict, overwrite: bool) -> str:
    """Return "fresh", "resume" or "complete" for a pair folder, or raise CorpusError when it contains other outputs."""
    if overwrite:
        if out.is_dir():
            mustc_outputs.remove_outputs(out, OUTPUT_PATTERNS)
        return "fresh"
    existing = existing_outputs(out)
    if not existing:
        return "fresh"
    state = read_state(out)
    if state is not None and state.get("fingerprint") == run_fingerprint:
        return "complete" if state.get("complete") else "resume"
    if state is None:
        reason = "not written by this script, or its run state is missing"
    else:
        old = state.get("fingerprint") or {}
        changed = changed_keys(old, run_fingerprint)
        if not state.get("complete") and old.get("features") == run_fingerprint["features"]:
            # An unfinished run with the same segments, for example one that
            # stopped at a too large --vocab-size: keep its features.
            logger.info("%s: resuming an unfinished run with changed options (%s)", out, ", ".join(changed))
            return "resume"
        reason = f"prepared with other options or inputs (differences: {', '.join(changed)})"
    names = ", ".join(path.name for path in existing[:5]) + (" ..." if len(existing) > 5 else "")
    raise CorpusError(
        f"{out} already contains outputs ({names}) {reason}; pass --overwrite to replace them, "
        "or choose another --output-root"
    )


# ---------------------------------------------------------------------------
# Checks and reports
# ---------------------------------------------------------------------------


def check_unique_ids(segments: "OrderedDict[str, List[Segment]]") -> None:
    seen: Dict[str, Segment] = {}
    for split, split_segments in segments.items():
        for segment in split_segments:
            other = seen.get(segment.id)
            if other is not None:
                raise CorpusError(
                    f"segment id {segment.id} occurs twice: {other.split} line {other.line} and "
                    f"{split} line {segment.line}; the same talk ({segment.talk}.wav) is in two splits"
                )
            seen[segment.id] = segment


def report_audio_problems(plan: PairPlan, split_files: Dict[str, mustc_corpus.SplitFiles], strict: bool) -> None:
    """Log each segment skipped for a missing or unreadable wav or for ending past its wav, or raise with ``strict``."""
    problems = [
        (split, segment)
        for split, segments in plan.segments.items()
        for segment in segments
        if segment.audio_problem in mustc_corpus.AUDIO_FILE_PROBLEMS
    ]
    lines = [
        f"{split_files[split].yaml}:{segment.line}: talk {segment.talk}, offset {segment.offset} s, "
        f"duration {segment.duration} s: {segment.audio_problem}: {segment.detail}"
        for split, segment in problems
    ]
    if strict and lines:
        shown = "\n  ".join(lines[:MAX_LOGGED_PROBLEMS])
        more = f"\n  ... and {len(lines) - MAX_LOGGED_PROBLEMS} more" if len(lines) > MAX_LOGGED_PROBLEMS else ""
        raise CorpusError(
            f"--strict: {len(lines)} segment(s) of en-{plan.lang} have unusable audio:\n  {shown}{more}\n"
            "fix the corpus, or run without --strict to skip them"
        )
    for line in lines[:MAX_LOGGED_PROBLEMS]:
        logger.warning("%s; skipped", line)
    if len(lines) > MAX_LOGGED_PROBLEMS:
        logger.warning(
            "... and %d more skipped segments, listed in %s", len(lines) - MAX_LOGGED_PROBLEMS, plan.out / DROPPED_FILE
        )


def dropped_rows(plan: PairPlan) -> List[List[object]]:
    """Return one row (columns DROPPED_COLUMNS) per segment and task that a manifest leaves out."""
    rows = []
    for split, segments in plan.segments.items():
        for segment in segments:
            for task in plan.tasks:
                reason = segment.drop_reason(task, plan.max_frames)
                if reason is None:
                    continue
                detail = segment.detail if reason == segment.audio_problem else ""
                if reason == mustc_corpus.TOO_LONG:
                    detail = f"{segment.n_frames} frames > --max-frames {plan.max_frames}"
                rows.append(
                    [split, task, segment.line, segment.id, segment.talk, segment.offset, segment.duration,
                     reason, detail]
                )
    return rows


def build_summary(plan: PairPlan, seconds: float, computed: int, reused: int) -> Dict:
    splits = {}
    for split, segments in plan.segments.items():
        entry = {"segments": len(segments)}
        for task in plan.tasks:
            kept = plan.kept[split][task]
            dropped = Counter(
                reason for reason in (s.drop_reason(task, plan.max_frames) for s in segments) if reason is not None
            )
            entry[task] = {
                "kept": len(kept),
                "kept_hours": round(sum(s.num_samples_16k for s in kept) / audio.SAMPLE_RATE / 3600.0, 4),
                "dropped": dict(sorted(dropped.items())),
            }
        if split in plan.evaluation:
            entry["simuleval"] = len(plan.evaluation[split])
        splits[split] = entry
    return {
        "pair": f"en-{plan.lang}",
        "splits": splits,
        "features_computed": computed,
        "features_reused": reused,
        "seconds": round(seconds, 1),
    }


def log_summary(summary: Dict) -> None:
    lines = [f"{summary['pair']}: done in {summary['seconds']:.1f} s "
             f"({summary['features_computed']} segments extracted, {summary['features_reused']} reused)"]
    lines.append(f"  {'split':<12} {'task':<4} {'segments':>8} {'kept':>7} {'hours':>8}  dropped")
    for split, entry in summary["splits"].items():
        for task in ("st", "asr"):
            if task not in entry:
                continue
            stats = entry[task]
            dropped = ", ".join(f"{reason}: {count}" for reason, count in stats["dropped"].items()) or "-"
            lines.append(
                f"  {split:<12} {task:<4} {entry['segments']:>8} {stats['kept']:>7} "
                f"{stats['kept_hours']:>8.3f}  {dropped}"
            )
    logger.info("\n".join(lines))


def log_evaluation_losses(plan: PairPlan, dropped_path: Path) -> None:
    """Log a warning for each evaluation split whose SimulEval lists leave segments out.

    A segment enters an evaluation split's SimulEval lists only when every prepared task keeps
    it, so BLEU and latency on that split cover fewer segments than the corpus has. Each
    left-out segment is counted under the reason of the first task that drops it.
    """
    for split, evaluation in plan.evaluation.items():
        evaluation_ids = {segment.id for segment in evaluation}
        reasons: Counter = Counter()
        for segment in plan.segments[split]:
            if segment.id in evaluation_ids:
                continue
            task_reasons = (segment.drop_reason(task, plan.max_frames) for task in plan.tasks)
            reasons[next(reason for reason in task_reasons if reason is not None)] += 1
        if not reasons:
            continue
        counts = ", ".join(f"{reason}: {count}" for reason, count in sorted(reasons.items()))
        logger.warning(
            "en-%s %s: %d of %d segments are left out of the SimulEval lists (%s), so BLEU and latency on %s "
            "are computed on %d of the %d segments; %s lists each one with its reason",
            plan.lang,
            split,
            sum(reasons.values()),
            len(plan.segments[split]),
            counts,
            split,
            len(evaluation),
            len(plan.segments[split]),
            dropped_path,
        )

# ---------------------------------------------------------------------------
# The preparation of one language pair
# ---------------------------------------------------------------------------


def remove_other_vocabularies(out: Path, tasks: Sequence[str], options: Options) -> None:
    """Delete SentencePiece files that an unfinished run wrote with another --vocab-type or --vocab-size."""
    for task in tasks:
        prefix = mustc_outputs.spm_prefix(options.vocab_type, options.vocab_size, task)
        for path in out.glob(f"spm_*_{task}.*"):
            if path.name.rsplit(".", 1)[0] != prefix:
                logger.info("removing %s, written by the unfinished run with other vocabulary options", path)
                path.unlink()


def talk_jobs(plan: PairPlan, cache_dir: Path) -> List[mustc_features.TalkJob]:
    by_wav: "OrderedDict[Path, List[mustc_features.SegmentJob]]" = OrderedDict()
    infos = {}
    for split, segments in plan.with_features.items():
        evaluation_ids = {s.id for s in plan.evaluation.get(split, [])}
        wav_dir = mustc_outputs.simuleval_paths(plan.out, split, plan.lang)["wav_dir"]
        for segment in segments:
            eval_wav = str(wav_dir / f"{segment.id}.wav") if segment.id in evaluation_ids else None
            by_wav.setdefault(segment.wav.path, []).append(
                mustc_features.SegmentJob(
                    id=segment.id,
                    start=segment.start,
                    num_samples=segment.num_samples,
                    num_samples_16k=segment.num_samples_16k,
                    n_frames=segment.n_frames,
                    cache_path=str(cache_dir / f"{segment.id}.npy"),
                    eval_wav_path=eval_wav,
                )
            )
            infos[segment.wav.path] = segment.wav
    return [
        mustc_features.TalkJob(
            wav_path=str(path),
            sample_rate=infos[path].sample_rate,
            channels=infos[path].channels,
            subtype=infos[path].subtype,
            segments=tuple(jobs),
        )
        for path, jobs in by_wav.items()
    ]


def prepare_pair(options: Options, lang: str) -> Optional[Dict]:
    """Prepare ``en-<lang>`` and return its summary, or None when it was already complete.

    A lock file beside the pair folder keeps two runs from writing the same
    folder at once.
    """
    lock_path = options.output_root / f".en-{lang}.lock"
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(mustc_files.exclusive_lock(lock_path))
        except BlockingIOError:
            raise CorpusError(
                f"another prep_mustc_data.py run is writing {options.output_root / f'en-{lang}'} "
                f"(it holds {lock_path}); wait for it to finish or stop it, then rerun"
            ) from None
        return prepare_pair_unlocked(options, lang)


def prepare_pair_unlocked(options: Options, lang: str) -> Optional[Dict]:
    started = time.monotonic()
    out = options.output_root / f"en-{lang}"
    split_files = mustc_corpus.find_splits(options.data_root, lang, options.splits)
    segments = OrderedDict()
    for files in split_files:
        logger.info("en-%s: reading %s", lang, files.yaml)
        segments[files.name] = mustc_corpus.load_split(files)
    check_unique_ids(segments)
    plan = PairPlan(lang=lang, out=out, tasks=TASKS[options.task], segments=segments, max_frames=options.max_frames)
    report_audio_problems(plan, {files.name: files for files in split_files}, options.strict)
    if not plan.with_features[mustc_corpus.TRAIN_SPLIT]:
        reason_column = DROPPED_COLUMNS.index("reason")
        reasons = Counter(row[reason_column] for row in dropped_rows(plan) if row[0] == mustc_corpus.TRAIN_SPLIT)
        raise CorpusError(
            f"every train segment of en-{lang} was dropped ({', '.join(f'{r}: {n}' for r, n in reasons.items())}); "
            "SentencePiece and the global CMVN statistics need training data"
        )

    # Inputs are valid: only now may existing outputs be deleted (--overwrite) or reused.
    run_fingerprint = fingerprint(options, lang, split_files)
    start = decide_start(out, run_fingerprint, options.overwrite)
    if start == "complete":
        logger.info("%s is already prepared with these options and inputs; pass --overwrite to prepare it again", out)
        return None
    out.mkdir(parents=True, exist_ok=True)
    removed = mustc_files.remove_temporaries(out)
    if start == "resume":
        logger.info("resuming the preparation in %s (%d temporary files of the stopped run removed)", out, len(removed))
        remove_other_vocabularies(out, plan.tasks, options)
    write_state(out, run_fingerprint, complete=False)

    cache_dir = out / CACHE_DIR
    jobs = talk_jobs(plan, cache_dir)
    handled, computed = mustc_features.extract_all(jobs, options.jobs, f"en-{lang} features")

    feature_ids = [s.id for split_segments in plan.with_features.values() for s in split_segments]
    zip_path = out / mustc_outputs.FEATURE_ZIP
    if not zip_path.is_file():
        mustc_features.assemble_zip(zip_path, feature_ids, cache_dir)
    locations = mustc_features.feature_locations(zip_path, feature_ids)

    gcmvn_path = out / mustc_outputs.GCMVN_FILE
    if not gcmvn_path.is_file():
        train = plan.with_features[mustc_corpus.TRAIN_SPLIT]
        stats = mustc_features.global_cmvn_stats(zip_path, [locations[s.id] for s in train])
        mustc_files.write_npz_atomic(gcmvn_path, stats)

    train_vocabularies(plan, options)
    for task in plan.tasks:
        write_task_outputs(plan, task, options, locations)
    for split, evaluation in plan.evaluation.items():
        paths = mustc_outputs.simuleval_paths(out, split, lang)
        mustc_outputs.remove_stale_simuleval_wavs(paths["wav_dir"], [s.id for s in evaluation])
        mustc_outputs.write_simuleval_split(
            out, split, lang, [s.id for s in evaluation], [s.translation for s in evaluation],
            [s.transcript for s in evaluation],
        )
    mustc_files.write_tsv_atomic(
        out / DROPPED_FILE,
        DROPPED_COLUMNS,
        dropped_rows(plan),
    )

    summary = build_summary(plan, time.monotonic() - started, computed, handled - computed)
    mustc_files.write_text_atomic(out / SUMMARY_FILE, json.dumps(summary, indent=1) + "\n")
    write_state(out, run_fingerprint, complete=True)
    if not options.keep_cache:
        mustc_outputs.remove_outputs(out, [CACHE_DIR])
    log_summary(summary)
    log_evaluation_losses(plan, out / DROPPED_FILE)
    return summary


def train_vocabularies(plan: PairPlan, options: Options) -> None:
    """Train the SentencePiece model of each task that lacks one, and write them only when all succeed.

    Raises:
        VocabularyTooLargeError: --vocab-size is too large for one or more vocabularies; with
            several, the message names the smallest of their limits.
    """
    trained = []
    too_large = []
    for task in plan.tasks:
        prefix = mustc_outputs.spm_prefix(options.vocab_type, options.vocab_size, task)
        if mustc_outputs.sentencepiece_complete(plan.out, prefix):
            continue
        sentences = [s.text(task) for s in plan.kept[mustc_corpus.TRAIN_SPLIT][task]]
        logger.info("en-%s: training %s on %d sentences", plan.lang, prefix, len(sentences))
        try:
            trained.append(
                mustc_outputs.fit_sentencepiece(
                    sentences, plan.out.name, prefix, options.vocab_type, options.vocab_size
                )
            )
        except mustc_outputs.VocabularyTooLargeError as error:
            too_large.append(error)

    if len(too_large) == 1:
        raise too_large[0]
    if too_large:
        smallest = min(error.limit for error in too_large)
        limits = " and ".join(f"at most {error.limit} for {error.prefix}" for error in too_large)
        raise mustc_outputs.VocabularyTooLargeError(
            f"--vocab-size {options.vocab_size} is too large for {plan.out.name}: SentencePiece accepts "
            f"{limits}; rerun with --vocab-size {smallest} or smaller, the smallest of these limits",
            prefix=too_large[0].prefix,
            requested=options.vocab_size,
            limit=smallest,
        )
    for files in trained:
        files.write(plan.out)


def write_task_outputs(plan: PairPlan, task: str, options: Options, locations: Dict) -> None:
    """Write the manifests and the data config of one task; its SentencePiece model must exist."""
    prefix = mustc_outputs.spm_prefix(options.vocab_type, options.vocab_size, task)
    for split in plan.segments:
        rows = []
        for segment in plan.kept[split][task]:
            offset, length, n_frames = locations[segment.id]
            rows.append([segment.id, f"{mustc_outputs.FEATURE_ZIP}:{offset}:{length}", n_frames,
                         segment.text(task), segment.speaker])
        mustc_outputs.write_manifest(plan.out / f"{split}_{task}.tsv", rows)
    config = mustc_outputs.data_config(plan.out, prefix, options.cmvn_type)
    mustc_outputs.write_data_config(plan.out / f"config_{task}.yaml", config)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Add "(default: X)" to the help of options whose default is a value, not to None or to flags."""

    def _get_help_string(self, action: argparse.Action) -> Optional[str]:
        if action.default is None or action.nargs == 0:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Prepare MuST-C language pairs for fairseq's speech_to_text task and SimulEval.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--data-root", type=Path, help="folder that contains en-<lang>/data/<split>/{wav,txt} "
                        "(required unless --relocate is given)")
    parser.add_argument("--lang", nargs="+", help="target languages, e.g. de es (one en-<lang> folder each; "
                        "required unless --relocate is given)")
    parser.add_argument("--output-root", type=Path, help="folder for the outputs, one en-<lang> folder per pair "
                        "(required unless --relocate is given)")
    parser.add_argument(
        "--splits", nargs="+", default=None,
        help="splits to prepare; must include train. Default: those of train, dev, tst-COMMON, tst-HE that exist",
    )
    parser.add_argument("--task", choices=sorted(TASKS), default="both", help="st: translation targets, asr: "
                        "English transcripts, both: both sets of manifests, vocabularies and configs")
    parser.add_argument("--vocab-type", choices=["unigram", "bpe", "char"], default="unigram",
                        help="SentencePiece model type")
    parser.add_argument("--vocab-size", type=int, default=8000, help="SentencePiece vocabulary size (ignored in the "
                        "file name for char)")
    parser.add_argument("--cmvn-type", choices=["global", "utterance"], default="global",
                        help="feature normalisation in the data config; global works for streaming, utterance needs "
                        "the whole utterance")
    parser.add_argument("--max-frames", type=int, default=3000, help="drop train segments with more filterbank "
                        "frames than this (10 ms each; fairseq's recipe uses 3000); 0 keeps all")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes for feature "
                        "extraction")
    parser.add_argument("--overwrite", action="store_true", help="delete and redo outputs of an earlier preparation")
    parser.add_argument("--strict", action="store_true", help="stop with an error on a missing or unreadable wav "
                        "or a segment past the end of its wav, instead of skipping the segment")
    parser.add_argument("--keep-cache", action="store_true", help=f"keep the per-segment features in {CACHE_DIR}/ "
                        "after the ZIP is written")
    parser.add_argument("--relocate", nargs="+", type=Path, metavar="PAIR_DIR", help="only rewrite the absolute "
                        "paths in the SimulEval wav lists of prepared pair folders (OUT/en-<lang>) after moving them, "
                        "then exit")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="minimum level of the log messages to print")
    return parser


def options_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Options:
    for name in ("data_root", "lang", "output_root"):
        if getattr(args, name) is None:
            parser.error(f"--{name.replace('_', '-')} is required (unless --relocate is given)")
    if args.vocab_size < 1:
        parser.error(f"--vocab-size must be positive, got {args.vocab_size}")
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    if args.max_frames < 0:
        parser.error(f"--max-frames must be 0 or positive, got {args.max_frames}")
    if args.splits is not None and len(set(args.splits)) != len(args.splits):
        parser.error(f"--splits lists a split twice: {args.splits}")
    return Options(
        data_root=args.data_root.resolve(),
        output_root=args.output_root.resolve(),
        langs=list(dict.fromkeys(args.lang)),
        splits=args.splits,
        task=args.task,
        vocab_type=args.vocab_type,
        vocab_size=args.vocab_size,
        cmvn_type=args.cmvn_type,
        max_frames=args.max_frames or None,
        jobs=args.jobs,
        overwrite=args.overwrite,
        strict=args.strict,
        keep_cache=args.keep_cache,
    )


def check_relocatable(pair: Path) -> None:
    """Raise CorpusError unless ``pair`` is a pair folder whose preparation finished.

    The run state file records ``complete: true`` only after every output of the pair is written.
    """
    if not (pair / STATE_FILE).is_file():
        raise CorpusError(f"{pair} is not a folder prepared by this script ({STATE_FILE} is missing)")
    state = read_state(pair)
    if state is None:
        raise CorpusError(
            f"{pair}: {pair / STATE_FILE} is unreadable or from another version of this script; "
            "prepare the folder again with --overwrite"
        )
    if not state.get("complete"):
        raise CorpusError(
            f"{pair} is incomplete: its preparation did not finish ({STATE_FILE} records complete: false), "
            "so its outputs are not all written. Rerun prep_mustc_data.py with the options of that run to finish "
            "it; the resumed run writes the paths for the folder's current location"
        )


def main(argv: Optional[Sequence[str]] = None, configure_logging: bool = True) -> int:
    """Run the command line and return the exit status: 1 for input errors, whose message is logged."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if configure_logging:
        logging.basicConfig(
            level=getattr(logging, args.log_level),
            format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
            stream=sys.stderr,
            force=True,  # importing fairseq has already configured the root logger
        )
    try:
        if args.relocate:
            # Check every folder first, so an error leaves all of them unchanged.
            for pair in args.relocate:
                check_relocatable(pair)
            for pair in args.relocate:
                changed = mustc_outputs.relocate(pair)
                if changed:
                    logger.info("%s: rewrote %d file(s): %s", pair, len(changed), ", ".join(p.name for p in changed))
                else:
                    logger.info("%s: every path already matches the folder's location; no file rewritten", pair)
            return 0
        options = options_from_args(parser, args)
        for lang in options.langs:
            prepare_pair(options, lang)
    except (CorpusError, mustc_outputs.VocabularyError) as error:
        logger.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Build a small MuST-C-layout speech translation corpus from the demo grammar.

The English sentences come from ``demo_grammar`` (a phrase grammar with German and Spanish
translations), espeak-ng reads them aloud, and the sentences of one talk are joined into one
16 kHz mono 16-bit wav with silences between them. The output has MuST-C v1's layout, so the
same data preparation reads it::

    OUT/en-<lang>/data/<split>/wav/<talk>.wav
    OUT/en-<lang>/data/<split>/txt/<split>.yaml    one line per segment, as in MuST-C
    OUT/en-<lang>/data/<split>/txt/<split>.en      transcripts, line-aligned with the yaml
    OUT/en-<lang>/data/<split>/txt/<split>.<lang>  translations
    OUT/demo_corpus.json                           options, program versions, counts; written last

Splits are train, dev and tst-COMMON. dev and tst-COMMON sentences never occur in train (in any
language), and every word they use occurs in train. The output depends only on the options and
the espeak-ng and SoX versions, not on ``--jobs``. An interrupted run continues where it
stopped when started again with the same options: finished talks are kept.

Needs the programs ``espeak-ng`` and ``sox`` (Debian: ``apt-get install -y espeak-ng sox``).
"""

import argparse
import hashlib
import json
import logging
import os
import random
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from multiprocessing import Pool
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import demo_grammar  # noqa: E402

logger = logging.getLogger("make_demo_corpus")

SAMPLE_RATE = 16000
SPLITS = ("train", "dev", "tst-COMMON")
DEFAULT_VOICES = ("en-us", "en", "en-us+f3", "en+m3", "en-gb-scotland", "en-us+f2")
DEFAULT_RATES = (150, 165, 180)
# espeak-ng amplitude (0-200); 80 keeps the loudest vowels well below full scale.
AMPLITUDE = 80
# Samples at or below this magnitude count as silence when trimming espeak-ng's own margins.
TRIM_THRESHOLD = 64
TRIM_MARGIN_S = 0.02
INFO_FILE = "demo_corpus.json"
BUILD_DIR = ".build"


@dataclass
class TalkPlan:
    """Everything that decides the audio of one talk; equal plans give identical wavs."""

    name: str
    split: str
    voice: str
    rate: int
    sentences: List[str]
    leading_silence_s: float
    gaps_s: List[float] = field(default_factory=list)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary name beside ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def program_version(command: Sequence[str]) -> str:
    try:
        result = subprocess.run(list(command), capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as error:
        raise SystemExit(
            f"error: running {' '.join(command)} failed ({error}). Install espeak-ng and sox "
            "(Debian/Ubuntu: sudo apt-get install -y espeak-ng sox) and rerun."
        )
    return (result.stdout or result.stderr).strip().splitlines()[0]


# ---------------------------------------------------------------------------
# Sentences and talks
# ---------------------------------------------------------------------------


def _sentence_keys(sentence: demo_grammar.Sentence, languages: Sequence[str]) -> List[Tuple[str, str]]:
    return [(language, sentence.text(language).lower()) for language in ("en",) + tuple(languages)]


def draw_sentences(counts: Dict[str, int], languages: Sequence[str], seed: int) -> Dict[str, List[demo_grammar.Sentence]]:
    """Draw distinct sentences for each split.

    train comes first. A held-out sentence is accepted only when none of its sides occurs in
    another split and each of its words occurs in train, so dev and tst-COMMON test new
    combinations of words the model has seen.
    """
    rng = random.Random(seed)
    taken = set()
    train_words = {language: set() for language in ("en",) + tuple(languages)}
    result: Dict[str, List[demo_grammar.Sentence]] = {}
    for split in SPLITS:
        chosen: List[demo_grammar.Sentence] = []
        attempts = 0
        max_attempts = 200 * counts[split] + 10000
        while len(chosen) < counts[split]:
            attempts += 1
            if attempts > max_attempts:
                raise SystemExit(
                    f"error: could not draw {counts[split]} distinct {split} sentences from the demo "
                    f"grammar after {max_attempts} attempts; ask for fewer talks or segments per talk."
                )
            sentence = demo_grammar.sample_sentence(rng)
            keys = _sentence_keys(sentence, languages)
            if any(key in taken for key in keys):
                continue
            if split != "train" and any(
                not set(demo_grammar.words(sentence.text(language))) <= train_words[language]
                for language in train_words
            ):
                continue
            taken.update(keys)
            chosen.append(sentence)
            if split == "train":
                for language in train_words:
                    train_words[language].update(demo_grammar.words(sentence.text(language)))
        result[split] = chosen
    return result


def plan_talks(args: argparse.Namespace) -> Tuple[List[TalkPlan], Dict[str, List[demo_grammar.Sentence]]]:
    talks_per_split = {"train": args.train_talks, "dev": args.dev_talks, "tst-COMMON": args.test_talks}
    counts = {split: talks * args.segs_per_talk for split, talks in talks_per_split.items()}
    sentences = draw_sentences(counts, args.langs, args.seed)

    rng = random.Random(f"talks-{args.seed}")
    plans = []
    number = args.first_talk_id
    for split in SPLITS:
        for index in range(talks_per_split[split]):
            chunk = sentences[split][index * args.segs_per_talk:(index + 1) * args.segs_per_talk]
            plans.append(TalkPlan(
                name=f"ted_{number}",
                split=split,
                voice=args.voices[(number - args.first_talk_id) % len(args.voices)],
                rate=rng.choice(args.rates),
                sentences=[sentence.en for sentence in chunk],
                leading_silence_s=round(rng.uniform(0.3, 0.8), 3),
                gaps_s=[round(rng.uniform(0.2, 0.6), 3) for _ in chunk],
            ))
            number += 1
    return plans, sentences


# ---------------------------------------------------------------------------
# Audio
# ---------------------------------------------------------------------------


def parse_wav_bytes(data: bytes, source: str) -> Tuple[np.ndarray, int]:
    """Read 16-bit mono PCM from wav bytes whose chunk sizes may be unset (as from a pipe)."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise RuntimeError(f"{source}: output is not a wav file")
    position = 12
    sample_rate = None
    while position + 8 <= len(data):
        chunk_id = data[position:position + 4]
        chunk_size = int.from_bytes(data[position + 4:position + 8], "little")
        body = position + 8
        if chunk_id == b"fmt ":
            channels = int.from_bytes(data[body + 2:body + 4], "little")
            sample_rate = int.from_bytes(data[body + 4:body + 8], "little")
            bits = int.from_bytes(data[body + 14:body + 16], "little")
            if channels != 1 or bits != 16:
                raise RuntimeError(f"{source}: expected mono 16-bit audio, got {channels} channels, {bits} bits")
        elif chunk_id == b"data":
            if sample_rate is None:
                raise RuntimeError(f"{source}: data chunk before fmt chunk")
            payload = data[body:]
            payload = payload[:len(payload) - len(payload) % 2]
            return np.frombuffer(payload, dtype="<i2").copy(), sample_rate
        position = body + chunk_size + (chunk_size % 2)
    raise RuntimeError(f"{source}: no data chunk in wav output")


def speak(text: str, voice: str, rate: int) -> Tuple[np.ndarray, int]:
    """Return espeak-ng's reading of ``text``, trimmed to the speech plus a short margin."""
    command = ["espeak-ng", "-v", voice, "-s", str(rate), "-a", str(AMPLITUDE), "--stdout", text]
    result = subprocess.run(command, capture_output=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"espeak-ng failed on {text!r} with voice {voice}: {result.stderr.decode().strip()}")
    samples, sample_rate = parse_wav_bytes(result.stdout, f"espeak-ng -v {voice}")
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > TRIM_THRESHOLD)
    if loud.size == 0:
        raise RuntimeError(f"espeak-ng produced silence for {text!r} with voice {voice}")
    margin = int(TRIM_MARGIN_S * sample_rate)
    start = max(0, loud[0] - margin)
    end = min(len(samples), loud[-1] + 1 + margin)
    return samples[start:end], sample_rate


def resample_to_wav(samples: np.ndarray, sample_rate: int, path: Path) -> int:
    """Write ``samples`` as a 16 kHz wav with SoX (no dither, so silence stays zero); return its length."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}.wav")
    command = [
        "sox", "-D", "-t", "raw", "-r", str(sample_rate), "-e", "signed", "-b", "16", "-c", "1", "-",
        "-t", "wav", "-r", str(SAMPLE_RATE), "-e", "signed", "-b", "16", "-c", "1", str(temporary),
    ]
    result = subprocess.run(command, input=samples.astype("<i2").tobytes(), capture_output=True, check=False)
    if result.returncode != 0:
        temporary.unlink(missing_ok=True)
        raise RuntimeError(f"sox failed writing {path}: {result.stderr.decode().strip()}")
    output, output_rate = parse_wav_bytes(temporary.read_bytes(), str(temporary))
    if output_rate != SAMPLE_RATE:
        raise RuntimeError(f"sox wrote {output_rate} Hz to {temporary}, expected {SAMPLE_RATE}")
    os.replace(temporary, path)
    return len(output)


def synthesize_talk(job: Tuple[TalkPlan, str, str]) -> Dict:
    """Write one talk's wav and its segment list; skip it when a matching result exists."""
    plan, wav_path, record_path = job
    wav_path, record_path = Path(wav_path), Path(record_path)
    digest = plan.digest()
    if wav_path.exists() and record_path.exists():
        record = json.loads(record_path.read_text(encoding="utf-8"))
        if record.get("plan_digest") == digest:
            record["skipped"] = True
            return record

    pieces = []
    segments = []
    input_rate = None
    position = 0
    leading = None
    for sentence, gap in zip(plan.sentences, plan.gaps_s):
        samples, sample_rate = speak(sentence, plan.voice, plan.rate)
        if input_rate is None:
            input_rate = sample_rate
            leading = np.zeros(int(round(plan.leading_silence_s * sample_rate)), dtype=np.int16)
            pieces.append(leading)
            position = len(leading)
        elif sample_rate != input_rate:
            raise RuntimeError(f"espeak-ng changed its sample rate within talk {plan.name}")
        segments.append((position / input_rate, len(samples) / input_rate, len(demo_grammar.words(sentence))))
        pieces.append(samples)
        silence = np.zeros(int(round(gap * input_rate)), dtype=np.int16)
        pieces.append(silence)
        position += len(samples) + len(silence)

    wav_path.parent.mkdir(parents=True, exist_ok=True)
    n_samples = resample_to_wav(np.concatenate(pieces), input_rate, wav_path)
    length_s = n_samples / SAMPLE_RATE
    for offset, duration, _ in segments:
        if offset + duration > length_s + 1e-6:
            raise RuntimeError(f"segment at {offset:.3f}+{duration:.3f} s ends after {wav_path} ({length_s:.3f} s)")
    record = {
        "plan_digest": digest,
        "name": plan.name,
        "samples": n_samples,
        "segments": [{"offset": offset, "duration": duration, "words": count} for offset, duration, count in segments],
    }
    write_text_atomic(record_path, json.dumps(record, indent=1) + "\n")
    record["skipped"] = False
    return record


# ---------------------------------------------------------------------------
# Output files
# ---------------------------------------------------------------------------


def yaml_line(offset: float, duration: float, words: int, talk: str) -> str:
    speaker = talk.split("_", 1)[1]
    return (f"- {{duration: {duration:.6f}, offset: {offset:.6f}, rW: {words}, uW: 0, "
            f"speaker_id: spk.{speaker}, wav: {talk}.wav}}")


def link_or_copy(source: Path, target: Path) -> None:
    """Give ``target`` the content of ``source``: a hard link when possible, else a copy."""
    if target.exists() and target.stat().st_size == source.stat().st_size and os.path.samefile(source, target):
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    temporary.unlink(missing_ok=True)
    try:
        os.link(source, temporary)
    except OSError:
        shutil.copyfile(source, temporary)
    os.replace(temporary, target)


def write_split_texts(out: Path, languages: Sequence[str], split: str, plans: List[TalkPlan],
                      records: Dict[str, Dict], sentences: List[demo_grammar.Sentence]) -> None:
    yaml_lines = []
    for plan in plans:
        record = records[plan.name]
        for segment in record["segments"]:
            yaml_lines.append(yaml_line(segment["offset"], segment["duration"], segment["words"], plan.name))
    if len(yaml_lines) != len(sentences):
        raise RuntimeError(f"{split}: {len(yaml_lines)} segments but {len(sentences)} sentences")
    for language in languages:
        text_dir = out / f"en-{language}" / "data" / split / "txt"
        write_text_atomic(text_dir / f"{split}.yaml", "\n".join(yaml_lines) + "\n")
        write_text_atomic(text_dir / f"{split}.en", "".join(s.en + "\n" for s in sentences))
        write_text_atomic(text_dir / f"{split}.{language}", "".join(s.text(language) + "\n" for s in sentences))


def build(args: argparse.Namespace) -> Path:
    out = Path(args.out)
    options = {
        "seed": args.seed, "train_talks": args.train_talks, "dev_talks": args.dev_talks,
        "test_talks": args.test_talks, "segs_per_talk": args.segs_per_talk, "langs": list(args.langs),
        "voices": list(args.voices), "rates": list(args.rates), "first_talk_id": args.first_talk_id,
    }
    info_path = out / INFO_FILE
    if info_path.exists():
        info = json.loads(info_path.read_text(encoding="utf-8"))
        if info.get("options") == options:
            logger.info("%s is complete (%s exists); nothing to do", out, info_path)
            return info_path
        raise SystemExit(
            f"error: {out} contains a demo corpus built with other options ({info_path}). "
            "Delete the folder or choose another --out."
        )

    versions = {"espeak-ng": program_version(["espeak-ng", "--version"]), "sox": program_version(["sox", "--version"])}
    plans, sentences = plan_talks(args)
    first_language = args.langs[0]
    jobs = []
    for plan in plans:
        wav_path = out / f"en-{first_language}" / "data" / plan.split / "wav" / f"{plan.name}.wav"
        record_path = out / BUILD_DIR / plan.split / f"{plan.name}.json"
        jobs.append((plan, str(wav_path), str(record_path)))

    logger.info("synthesizing %d talks (%s) into %s with %d jobs", len(plans),
                ", ".join(f"{split} {sum(p.split == split for p in plans)}" for split in SPLITS), out, args.jobs)
    records: Dict[str, Dict] = {}
    progress = tqdm(total=len(jobs), desc="talks", unit="talk", disable=args.quiet)
    if args.jobs > 1:
        with Pool(args.jobs) as pool:
            for record in pool.imap_unordered(synthesize_talk, jobs):
                records[record["name"]] = record
                progress.update()
    else:
        for job in jobs:
            record = synthesize_talk(job)
            records[record["name"]] = record
            progress.update()
    progress.close()
    skipped = sum(record["skipped"] for record in records.values())
    if skipped:
        logger.info("kept %d talks from an earlier run", skipped)

    for language in args.langs[1:]:
        for plan in plans:
            source = out / f"en-{first_language}" / "data" / plan.split / "wav" / f"{plan.name}.wav"
            link_or_copy(source, out / f"en-{language}" / "data" / plan.split / "wav" / f"{plan.name}.wav")
    for split in SPLITS:
        write_split_texts(out, args.langs, split, [p for p in plans if p.split == split], records, sentences[split])

    hours = {split: sum(records[p.name]["samples"] for p in plans if p.split == split) / SAMPLE_RATE / 3600
             for split in SPLITS}
    info = {
        "options": options,
        "versions": versions,
        "segments": {split: len(sentences[split]) for split in SPLITS},
        "hours": {split: round(value, 4) for split, value in hours.items()},
        "talks": [{"name": p.name, "split": p.split, "voice": p.voice, "rate": p.rate} for p in plans],
    }
    write_text_atomic(info_path, json.dumps(info, indent=1, ensure_ascii=False) + "\n")
    logger.info("wrote %s: %s segments, %.3f h of audio per language pair",
                out, ", ".join(f"{split} {count}" for split, count in info["segments"].items()), sum(hours.values()))
    return info_path


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (MuST-C root: en-<lang>/data/...)")
    parser.add_argument("--train-talks", type=int, default=60, help="number of train talks")
    parser.add_argument("--dev-talks", type=int, default=2, help="number of dev talks")
    parser.add_argument("--test-talks", type=int, default=3, help="number of tst-COMMON talks")
    parser.add_argument("--segs-per-talk", type=int, default=20, help="sentences (segments) per talk")
    parser.add_argument("--seed", type=int, default=1, help="seed for sentences, voices, rates and silences")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel synthesis processes")
    parser.add_argument("--langs", nargs="+", default=["de", "es"], choices=["de", "es"],
                        help="target languages; one en-<lang> folder each")
    parser.add_argument("--voices", nargs="+", default=list(DEFAULT_VOICES),
                        help="espeak-ng voices, assigned to talks in turn")
    parser.add_argument("--rates", nargs="+", type=int, default=list(DEFAULT_RATES),
                        help="speaking rates in words per minute, drawn per talk")
    parser.add_argument("--first-talk-id", type=int, default=1, help="number of the first talk (ted_<N>)")
    parser.add_argument("--quiet", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    for name in ("train_talks", "dev_talks", "test_talks", "segs_per_talk", "jobs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if len(set(args.langs)) != len(args.langs):
        parser.error(f"--langs has a repeated language: {' '.join(args.langs)}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s")
    build(parse_args(argv))


if __name__ == "__main__":
    main()

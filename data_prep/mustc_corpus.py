"""Read and check a MuST-C language pair: segment lists, texts and audio file metadata.

MuST-C (v1 and v2) stores each split of a pair as

    <root>/en-<lang>/data/<split>/wav/<talk>.wav
    <root>/en-<lang>/data/<split>/txt/<split>.yaml     one YAML flow mapping per segment
    <root>/en-<lang>/data/<split>/txt/<split>.en       English transcript, one line per segment
    <root>/en-<lang>/data/<split>/txt/<split>.<lang>   translation, one line per segment

where a YAML entry reads
``- {duration: 3.5, offset: 12.0, rW: 8, uW: 0, speaker_id: spk.1, wav: ted_1.wav}``
with times in seconds. This module turns a split into :class:`Segment` records,
each with its drop reason (None when kept). Malformed input raises
:class:`CorpusError` naming the file and line.
"""

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import yaml

from leap_fairseq import audio

logger = logging.getLogger(__name__)

MUSTC_SPLITS = ("train", "dev", "tst-COMMON", "tst-HE")
TRAIN_SPLIT = "train"

# Drop reasons. Audio problems affect both tasks, and the text reasons only
# the task whose target text is empty.
MISSING_WAV = "missing wav"
UNREADABLE_WAV = "unreadable wav"
PAST_END_OF_WAV = "past end of wav"
ZERO_LENGTH = "zero length"
TOO_SHORT = f"too short (< {audio.MIN_FRAMES} frames)"
TOO_LONG = "too long"
EMPTY_TARGET = "empty target"
EMPTY_TRANSCRIPT = "empty transcript"

# Reasons that mean the corpus is inconsistent. --strict turns them into errors.
AUDIO_FILE_PROBLEMS = (MISSING_WAV, UNREADABLE_WAV, PAST_END_OF_WAV)

_REQUIRED_KEYS = ("duration", "offset", "wav")


class CorpusError(Exception):
    """Input that the preparation cannot use. The message names the file and what to fix."""


@dataclass(frozen=True)
class WavInfo:
    """Metadata of one talk's audio file, with ``problem`` set to a drop reason when it cannot be used."""

    path: Path
    sample_rate: int = 0
    channels: int = 0
    frames: int = 0
    subtype: str = ""
    problem: Optional[str] = None
    detail: str = ""


@dataclass
class Segment:
    """One YAML entry of a split with its texts and where its audio lies.

    Attributes:
        split: the split name.
        line: 1-based line of the entry in the YAML file.
        id: ``<talk>_<n>``, n counting the talk's segments in order of offset.
        talk: wav file stem.
        wav: the talk's audio metadata.
        offset, duration: as written in the YAML file (seconds).
        start, num_samples: first sample and sample count at the file's rate.
        num_samples_16k: sample count after conversion to 16 kHz.
        n_frames: filterbank frames of the segment.
        speaker: the ``speaker_id`` value ("" when absent).
        transcript, translation: the text lines, stripped of surrounding white space.
        audio_problem: a drop reason that applies to every task, or None.
        detail: human-readable explanation of ``audio_problem``.
    """

    split: str
    line: int
    id: str
    talk: str
    wav: WavInfo
    offset: str
    duration: str
    start: int
    num_samples: int
    num_samples_16k: int
    n_frames: int
    speaker: str
    transcript: str
    translation: str
    audio_problem: Optional[str] = None
    detail: str = ""

    def text(self, task: str) -> str:
        """Return the target text of ``task`` ("st": the translation, "asr": the transcript)."""
        return self.translation if task == "st" else self.transcript

    def drop_reason(self, task: str, max_frames: Optional[int]) -> Optional[str]:
        """Return why the segment is left out of ``task``'s manifest, or None when it is kept."""
        if self.audio_problem is not None:
            return self.audio_problem
        if max_frames is not None and self.split == TRAIN_SPLIT and self.n_frames > max_frames:
            return TOO_LONG
        if not self.text(task):
            return EMPTY_TARGET if task == "st" else EMPTY_TRANSCRIPT
        return None


@dataclass
class SplitFiles:
    """The input files of one split."""

    name: str
    yaml: Path
    transcript: Path
    translation: Path
    wav_dir: Path

    def digest(self) -> str:
        """Return a SHA-256 over the text files and the wav files' sizes and modification times."""
        hasher = hashlib.sha256()
        for path in (self.yaml, self.transcript, self.translation):
            hasher.update(path.name.encode())
            hasher.update(path.read_bytes())
        for wav in sorted(self.wav_dir.glob("*")):
            stat = wav.stat()
            hasher.update(f"{wav.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        return hasher.hexdigest()


def pair_dir(data_root: Path, lang: str) -> Path:
    return data_root / f"en-{lang}"


def find_splits(data_root: Path, lang: str, requested: Optional[Sequence[str]]) -> List[SplitFiles]:
    """Locate the files of each split. A requested split must exist, a default one may be absent."""
    base = pair_dir(data_root, lang)
    if not base.is_dir():
        raise CorpusError(f"language pair folder not found: {base}; check --data-root and --lang")
    names = list(requested) if requested else list(MUSTC_SPLITS)
    found = []
    for name in names:
        split_dir = base / "data" / name
        if not split_dir.is_dir():
            if requested:
                raise CorpusError(f"split {name!r} not found: {split_dir} is missing")
            logger.info("en-%s: no split %s (%s is missing)", lang, name, split_dir)
            continue
        files = SplitFiles(
            name=name,
            yaml=split_dir / "txt" / f"{name}.yaml",
            transcript=split_dir / "txt" / f"{name}.en",
            translation=split_dir / "txt" / f"{name}.{lang}",
            wav_dir=split_dir / "wav",
        )
        for path in (files.yaml, files.transcript, files.translation):
            if not path.is_file():
                raise CorpusError(f"split {name!r} of en-{lang} is incomplete: {path} is missing")
        if not files.wav_dir.is_dir():
            raise CorpusError(f"split {name!r} of en-{lang} is incomplete: {files.wav_dir} is missing")
        found.append(files)
    if not any(files.name == TRAIN_SPLIT for files in found):
        raise CorpusError(
            f"no {TRAIN_SPLIT!r} split for en-{lang} under {base / 'data'}: the SentencePiece model and the "
            f"global CMVN statistics are trained on it; add {TRAIN_SPLIT} to --splits or fix the corpus"
        )
    return found


def read_segment_list(path: Path) -> List[Tuple[int, Dict[str, str]]]:
    """Parse a MuST-C YAML segment list into (line, entry) pairs, every value a string.

    Values stay strings, as with ``yaml.BaseLoader`` in fairseq's recipe, so
    that numbers are parsed once, with errors that name the line.
    """
    loader = getattr(yaml, "CBaseLoader", yaml.BaseLoader)
    try:
        with open(path, encoding="utf-8") as handle:
            root = yaml.compose(handle, Loader=loader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise CorpusError(f"invalid YAML at {where}: {error.problem or error}; fix or regenerate the file") from error
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise CorpusError(f"cannot read {path} as UTF-8 YAML: {error}") from error
    if root is None:
        return []
    if not isinstance(root, yaml.SequenceNode):
        raise CorpusError(
            f"invalid segment list {path}:{root.start_mark.line + 1}: expected a list of segments "
            f"('- {{duration: ..., offset: ..., wav: ...}}'), got a {root.id}"
        )
    entries = []
    for item in root.value:
        line = item.start_mark.line + 1
        if not isinstance(item, yaml.MappingNode):
            raise CorpusError(f"invalid segment at {path}:{line}: expected a mapping, got a {item.id}")
        entry = {}
        for key_node, value_node in item.value:
            if not isinstance(key_node, yaml.ScalarNode) or not isinstance(value_node, yaml.ScalarNode):
                raise CorpusError(f"invalid segment at {path}:{line}: keys and values must be plain scalars")
            entry[key_node.value] = value_node.value
        missing = [key for key in _REQUIRED_KEYS if key not in entry]
        if missing:
            raise CorpusError(f"invalid segment at {path}:{line}: missing {', '.join(missing)}")
        entries.append((line, entry))
    return entries


def read_text_lines(path: Path) -> List[str]:
    """Read a text file as lines without their line breaks.

    Lines end at ``\\n``, ``\\r\\n`` or ``\\r`` only. ``str.splitlines`` would
    also split at characters such as U+2028 that occur inside MuST-C sentences.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            return [line.rstrip("\n") for line in handle]
    except UnicodeDecodeError as error:
        raise CorpusError(f"{path} is not valid UTF-8 (byte {error.start}): {error.reason}") from error


def _parse_seconds(value: str, key: str, path: Path, line: int) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise CorpusError(f"invalid {key} {value!r} at {path}:{line}: expected seconds as a number") from None
    if not seconds >= 0.0 or seconds == float("inf"):
        raise CorpusError(f"invalid {key} {value!r} at {path}:{line}: expected a finite number >= 0")
    return seconds


def read_wav_info(path: Path) -> WavInfo:
    """Return the audio metadata of ``path``, or a WavInfo with ``problem`` set."""
    import soundfile

    if not path.is_file():
        return WavInfo(path=path, problem=MISSING_WAV, detail=f"{path} not found")
    try:
        info = soundfile.info(str(path))
    except (RuntimeError, OSError) as error:  # soundfile.LibsndfileError is a RuntimeError
        return WavInfo(path=path, problem=UNREADABLE_WAV, detail=f"soundfile cannot read {path}: {error}")
    return WavInfo(
        path=path, sample_rate=info.samplerate, channels=info.channels, frames=info.frames, subtype=info.subtype
    )


def load_split(files: SplitFiles) -> List[Segment]:
    """Read one split into segments in YAML order, with ids and audio problems filled in.

    Raises:
        CorpusError: the YAML is invalid, or its entry count differs from the
            line count of a text file.
    """
    entries = read_segment_list(files.yaml)
    transcripts = read_text_lines(files.transcript)
    translations = read_text_lines(files.translation)
    for text_path, lines in ((files.transcript, transcripts), (files.translation, translations)):
        if len(lines) != len(entries):
            raise CorpusError(
                f"{files.yaml} has {len(entries)} segments but {text_path} has {len(lines)} lines; "
                "the segment list and the text files must be line-aligned"
            )

    wav_infos: Dict[str, WavInfo] = {}
    segments = []
    for index, (line, entry) in enumerate(entries):
        offset_s = _parse_seconds(entry["offset"], "offset", files.yaml, line)
        duration_s = _parse_seconds(entry["duration"], "duration", files.yaml, line)
        wav_name = entry["wav"]
        if wav_name not in wav_infos:
            wav_infos[wav_name] = read_wav_info(files.wav_dir / wav_name)
        info = wav_infos[wav_name]
        segment = Segment(
            split=files.name,
            line=line,
            id="",
            talk=Path(wav_name).stem,
            wav=info,
            offset=entry["offset"],
            duration=entry["duration"],
            start=0,
            num_samples=0,
            num_samples_16k=0,
            n_frames=0,
            speaker=entry.get("speaker_id", ""),
            transcript=transcripts[index].strip(),
            translation=translations[index].strip(),
        )
        _locate_audio(segment, offset_s, duration_s)
        segments.append(segment)

    _assign_ids(segments)
    _warn_about_conversions(wav_infos.values())
    return segments


def _locate_audio(segment: Segment, offset_s: float, duration_s: float) -> None:
    info = segment.wav
    if info.problem is not None:
        segment.audio_problem, segment.detail = info.problem, info.detail
        return
    segment.start, segment.num_samples = audio.segment_sample_range(offset_s, duration_s, info.sample_rate)
    end = segment.start + segment.num_samples
    if end > info.frames:
        segment.audio_problem = PAST_END_OF_WAV
        segment.detail = (
            f"offset {segment.offset} s + duration {segment.duration} s ends at {end / info.sample_rate:.3f} s, "
            f"after the end of {info.path.name} ({info.frames / info.sample_rate:.3f} s)"
        )
        return
    segment.num_samples_16k = audio.converted_length(segment.num_samples, info.sample_rate)
    segment.n_frames = audio.num_frames(segment.num_samples_16k)
    if segment.num_samples == 0:
        segment.audio_problem, segment.detail = ZERO_LENGTH, f"duration {segment.duration} s has no samples"
    elif segment.n_frames < audio.MIN_FRAMES:
        segment.audio_problem = TOO_SHORT
        segment.detail = f"duration {segment.duration} s gives {segment.n_frames} frames"


def _assign_ids(segments: List[Segment]) -> None:
    """Name each segment ``<talk>_<n>``, n numbering the talk's segments by offset (YAML order on ties)."""
    by_talk: Dict[str, List[Tuple[float, int, Segment]]] = {}
    for position, segment in enumerate(segments):
        by_talk.setdefault(segment.talk, []).append((float(segment.offset), position, segment))
    for talk, members in by_talk.items():
        for number, (_, _, segment) in enumerate(sorted(members, key=lambda item: item[:2])):
            segment.id = f"{talk}_{number}"


def _warn_about_conversions(infos) -> None:
    for info in infos:
        if info.problem is None and (info.sample_rate != audio.SAMPLE_RATE or info.channels != 1):
            logger.warning(
                "%s is %d Hz with %d channel(s); its segments are converted to %d Hz mono",
                info.path,
                info.sample_rate,
                info.channels,
                audio.SAMPLE_RATE,
            )

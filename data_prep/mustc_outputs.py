"""The text outputs of the MuST-C preparation: SentencePiece model, manifests, data configs, SimulEval lists.

File names follow fairseq's ``examples/speech_to_text/prep_mustc_data.py``
(fairseq 0.12.3): ``spm_<type><size>_<task>.{model,vocab,txt}``,
``<split>_<task>.tsv`` and ``config_<task>.yaml``.

Paths in ``config_<task>.yaml`` are relative to the data folder, so the
folder can be moved: fairseq 0.12.3 finds ``vocab_filename`` and
``sentencepiece_model`` there itself, and ``leap_fairseq.compat`` makes it
resolve ``audio_root: .`` and ``global_cmvn.stats_npz_path`` there too.
SimulEval reads the wav lists with paths as written, so those are absolute and
:func:`relocate` rewrites them after the folder has moved.
"""

import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Sequence

import yaml

from data_prep import mustc_files
from leap_fairseq import audio

logger = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("id", "audio", "n_frames", "tgt_text", "speaker")
FEATURE_ZIP = "fbank80.zip"
GCMVN_FILE = "gcmvn.npz"
SIMULEVAL_DIR = "simuleval"

# fairseq's special symbols and their ids (examples/speech_to_text/data_utils.py).
BOS, PAD, EOS, UNK = "<s>", "<pad>", "</s>", "<unk>"
BOS_ID, PAD_ID, EOS_ID, UNK_ID = 0, 1, 2, 3

# SpecAugment "LB" policy of Park et al. (2019), as fairseq's
# S2TDataConfigWriter.set_specaugment_lb_policy writes it.
SPECAUGMENT_LB = {
    "time_wrap_W": 0,
    "freq_mask_N": 1,
    "freq_mask_F": 27,
    "time_mask_N": 1,
    "time_mask_T": 100,
    "time_mask_p": 1.0,
}

_TOO_LARGE = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")


class VocabularyError(Exception):
    """SentencePiece training failed for a reason the user can fix with another option."""


class VocabularyTooLargeError(VocabularyError):
    """The requested vocabulary size is larger than SentencePiece accepts for the training text."""

    def __init__(self, message: str, prefix: str, requested: int, limit: int):
        super().__init__(message)
        self.prefix = prefix
        self.requested = requested
        self.limit = limit


@dataclass
class SentencePieceFiles:
    """A trained SentencePiece model and the file contents that :meth:`write` puts beside it."""

    prefix: str
    model: bytes
    vocab: List[str]
    dictionary: List[str]

    def write(self, folder: Path) -> None:
        """Write ``<prefix>.model``, ``.vocab`` and the fairseq ``.txt`` dictionary into ``folder``."""
        mustc_files.write_bytes_atomic(folder / f"{self.prefix}.model", self.model)
        mustc_files.write_lines_atomic(folder / f"{self.prefix}.vocab", self.vocab)
        # The .txt file is written last: sentencepiece_complete checks for all three.
        mustc_files.write_lines_atomic(folder / f"{self.prefix}.txt", self.dictionary)


def spm_prefix(vocab_type: str, vocab_size: int, task: str) -> str:
    """Return fairseq's name for the SentencePiece files, e.g. ``spm_unigram8000_st``."""
    size = "" if vocab_type == "char" else str(vocab_size)
    return f"spm_{vocab_type}{size}_{task}"


def fit_sentencepiece(
    sentences: Sequence[str], pair_name: str, prefix: str, vocab_type: str, vocab_size: int
) -> SentencePieceFiles:
    """Train a SentencePiece model in memory and return it with its ``.vocab`` and dictionary lines.

    The special ids are fairseq's (<s> 0, <pad> 1, </s> 2, <unk> 3), and
    ``character_coverage`` is 1.0 so that no character of the text becomes <unk>.
    Training runs on one thread, because SentencePiece records the thread
    count in the model: the model file then does not depend on --jobs.

    Raises:
        VocabularyTooLargeError: ``vocab_size`` is larger than the text allows; the
            message and the ``limit`` attribute give the largest size SentencePiece accepts.
        VocabularyError: training failed for another reason.
    """
    import io

    import sentencepiece

    if not sentences:
        raise VocabularyError(f"no training sentences for {prefix}: every train segment was dropped")
    # Sentences go in through an iterator and the model comes back as bytes:
    # with file names, SentencePiece stores the input and output paths in the
    # model, and the same data would give different model files.
    model = io.BytesIO()
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            model_type=vocab_type,
            vocab_size=vocab_size,
            character_coverage=1.0,
            num_threads=1,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            pad_id=PAD_ID,
            minloglevel=1,
        )
    except RuntimeError as error:
        match = _TOO_LARGE.search(str(error))
        if match is None:
            raise VocabularyError(f"SentencePiece training failed for {prefix}: {error}") from error
        requested, limit = int(match.group(1)), int(match.group(2))
        raise VocabularyTooLargeError(
            f"--vocab-size {requested} is too large for the {len(sentences)} training sentences of "
            f"{pair_name} ({prefix}): SentencePiece accepts at most {limit}; rerun with "
            f"--vocab-size {limit} or smaller",
            prefix=prefix,
            requested=requested,
            limit=limit,
        ) from None

    processor = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue())
    pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    expected = {BOS_ID: BOS, PAD_ID: PAD, EOS_ID: EOS, UNK_ID: UNK}
    for piece_id, piece in expected.items():
        if pieces[piece_id] != piece:
            raise VocabularyError(f"{prefix}: SentencePiece put {pieces[piece_id]!r} at id {piece_id}, not {piece}")
    # The .vocab file lists "piece<TAB>score", as spm_train writes it.
    vocab = [f"{piece}\t{processor.get_score(i):g}" for i, piece in enumerate(pieces)]
    # fairseq's Dictionary adds the four special symbols itself, and its ids
    # then match SentencePiece's. The count column is unused.
    dictionary = [f"{piece} 1" for piece in pieces if piece not in expected.values()]
    return SentencePieceFiles(prefix=prefix, model=model.getvalue(), vocab=vocab, dictionary=dictionary)


def sentencepiece_complete(folder: Path, prefix: str) -> bool:
    return all((folder / f"{prefix}{suffix}").is_file() for suffix in (".model", ".vocab", ".txt"))


def write_manifest(path: Path, rows: Iterable[Sequence[object]]) -> None:
    """Write a fairseq speech-to-text manifest with the columns of :data:`MANIFEST_COLUMNS`."""
    mustc_files.write_tsv_atomic(path, MANIFEST_COLUMNS, rows)


def data_config(pair_dir: Path, prefix: str, cmvn_type: str) -> Dict:
    """Return the content of ``config_<task>.yaml`` for fairseq's speech_to_text task.

    The ``transforms`` entry applies CMVN to every split ("*") and CMVN then
    SpecAugment to training splits ("_train"), as fairseq's recipe does.
    """
    cmvn = f"{cmvn_type}_cmvn"
    config = {
        "vocab_filename": f"{prefix}.txt",
        "bpe_tokenizer": {"bpe": "sentencepiece", "sentencepiece_model": f"{prefix}.model"},
        "input_feat_per_channel": audio.NUM_MEL_BINS,
        "input_channels": 1,
        "audio_root": ".",
        "specaugment": dict(SPECAUGMENT_LB),
        "transforms": {"_train": [cmvn, "specaugment"], "*": [cmvn]},
    }
    if cmvn_type == "global":
        config["global_cmvn"] = {"stats_npz_path": GCMVN_FILE}
    return config


def write_data_config(path: Path, config: Dict) -> None:
    mustc_files.write_text_atomic(path, yaml.safe_dump(config, sort_keys=True, allow_unicode=True))


def simuleval_paths(pair_dir: Path, split: str, lang: str) -> Dict[str, Path]:
    """Return the SimulEval files of an evaluation split: wav folder, wav list, target and source text."""
    folder = pair_dir / SIMULEVAL_DIR
    return {
        "wav_dir": folder / split,
        "wav_list": folder / f"{split}.wav_list",
        "target": folder / f"{split}.{lang}",
        "source": folder / f"{split}.en",
    }


def write_simuleval_split(pair_dir: Path, split: str, lang: str, ids: Sequence[str], targets, sources) -> None:
    """Write the wav list (absolute paths) and the raw reference texts of one evaluation split."""
    paths = simuleval_paths(pair_dir, split, lang)
    wav_dir = paths["wav_dir"].resolve()
    mustc_files.write_lines_atomic(paths["wav_list"], [str(wav_dir / f"{segment_id}.wav") for segment_id in ids])
    mustc_files.write_lines_atomic(paths["target"], targets)
    mustc_files.write_lines_atomic(paths["source"], sources)


def remove_stale_simuleval_wavs(wav_dir: Path, keep: Iterable[str]) -> int:
    """Delete the wavs of segments no longer in the split (after an input change) and return how many."""
    if not wav_dir.is_dir():
        return 0
    keep_names = {f"{segment_id}.wav" for segment_id in keep}
    removed = 0
    for path in wav_dir.glob("*.wav"):
        if path.name not in keep_names:
            path.unlink()
            removed += 1
    return removed


def relocate(pair_dir: Path) -> List[Path]:
    """Rewrite the absolute paths in a prepared pair folder for the folder's current location.

    Rewrites the paths in every SimulEval ``*.wav_list``, and turns absolute
    ``audio_root`` and ``global_cmvn.stats_npz_path`` entries (written by
    earlier versions) into the relative ones :func:`data_config` writes.
    Returns the files that changed.
    """
    pair_dir = pair_dir.resolve()
    changed = []
    for config_path in sorted(pair_dir.glob("config_*.yaml")):
        config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
        updated = dict(config)
        updated["audio_root"] = "."
        if "global_cmvn" in config:
            updated["global_cmvn"] = dict(config["global_cmvn"], stats_npz_path=GCMVN_FILE)
        if updated != config:
            write_data_config(config_path, updated)
            changed.append(config_path)
    for list_path in sorted((pair_dir / SIMULEVAL_DIR).glob("*.wav_list")):
        split = list_path.name[: -len(".wav_list")]
        lines = list_path.read_text(encoding="utf-8").splitlines()
        new_lines = [str(pair_dir / SIMULEVAL_DIR / split / Path(line).name) for line in lines]
        if new_lines != lines:
            mustc_files.write_lines_atomic(list_path, new_lines)
            changed.append(list_path)
    return changed


def remove_outputs(pair_dir: Path, known_names: Iterable[str]) -> None:
    """Delete the files and folders that match ``known_names`` (for --overwrite), and nothing else."""
    for name in known_names:
        for path in pair_dir.glob(name):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()

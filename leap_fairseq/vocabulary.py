"""Fingerprints of the target vocabulary, so that a checkpoint is never decoded with another one.

A model's output layer is tied to the dictionary and the SentencePiece model it was trained with.
Decoding with another dictionary, or detokenizing with another SentencePiece model, gives
wrong text without any error. The fingerprint is:

- ``target_dictionary_sha256``: SHA-256 of the dictionary's symbols in index order (fairseq's
  four special symbols included), one per line. Counts in ``dict.txt`` do not matter.
- ``sentencepiece_model_sha256``: SHA-256 of the SentencePiece model file's bytes.

A checkpoint records the fingerprint in one of two places, read in this order:

1. the model configuration (``cfg.model`` or the legacy ``args``) under the two names above,
   where ``leap_s2t_waitk``'s ``build_model`` stores it at training time
   (:func:`record_or_check_vocabulary`);
2. a top-level ``leap_vocabulary`` entry of the checkpoint, written by :func:`stamp_checkpoint`
   (``python -m leap_fairseq.vocabulary CHECKPOINT --data-dir DIR``) right after training,
   from the data folder the model was trained on.

:func:`check_vocabulary` raises :class:`VocabularyMismatchError` when the data folder's files
differ from the recorded ones.
"""

import argparse
import hashlib
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

logger = logging.getLogger(__name__)

CHECKPOINT_KEY = "leap_vocabulary"
DICTIONARY_KEY = "target_dictionary_sha256"
SENTENCEPIECE_KEY = "sentencepiece_model_sha256"


class VocabularyMismatchError(ValueError):
    """The dictionary or SentencePiece model differs from the one the checkpoint was trained with."""


@dataclass(frozen=True)
class VocabularyFingerprint:
    """SHA-256 digests of a data folder's target dictionary and SentencePiece model.

    Attributes:
        target_dictionary_sha256: digest of the dictionary's symbols in index order.
        sentencepiece_model_sha256: digest of the SentencePiece model file, or None when the
            data config names no SentencePiece model.
    """

    target_dictionary_sha256: str
    sentencepiece_model_sha256: Optional[str]


def vocabulary_files(data_dir, config_yaml: str = "config_st.yaml") -> Tuple[Path, Optional[Path]]:
    """Return (dictionary path, SentencePiece model path or None) named by a fairseq S2T data config."""
    from fairseq.data.audio.data_cfg import S2TDataConfig

    config_path = Path(data_dir) / config_yaml
    if not config_path.is_file():
        raise FileNotFoundError(f"data config not found: {config_path}; check --data-dir and --config-yaml")
    data_cfg = S2TDataConfig(config_path)
    dictionary_path = Path(data_dir) / data_cfg.vocab_filename
    if not dictionary_path.is_file():
        raise FileNotFoundError(f"dictionary {dictionary_path} named by {config_path} (vocab_filename) not found")
    bpe = data_cfg.bpe_tokenizer or {}
    spm_path = None
    if bpe.get("bpe") == "sentencepiece":
        spm_path = Path(bpe["sentencepiece_model"])
        if not spm_path.is_file():
            raise FileNotFoundError(f"SentencePiece model {spm_path} named by {config_path} not found")
    return dictionary_path, spm_path


def dictionary_sha256(dictionary_path) -> str:
    """Return the SHA-256 of a fairseq dictionary's symbols in index order, one per line."""
    from fairseq.data import Dictionary

    dictionary = Dictionary.load(str(dictionary_path))
    return hashlib.sha256("\n".join(dictionary.symbols).encode("utf-8")).hexdigest()


def file_sha256(path) -> str:
    """Return the SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def compute_fingerprint(data_dir, config_yaml: str = "config_st.yaml") -> VocabularyFingerprint:
    """Return the fingerprint of the dictionary and SentencePiece model a data config names."""
    dictionary_path, spm_path = vocabulary_files(data_dir, config_yaml)
    return VocabularyFingerprint(
        target_dictionary_sha256=dictionary_sha256(dictionary_path),
        sentencepiece_model_sha256=file_sha256(spm_path) if spm_path is not None else None,
    )


def recorded_fingerprint(checkpoint_state: Dict) -> Tuple[Optional[Dict[str, Optional[str]]], str]:
    """Return (the fingerprint a checkpoint records, where it was found), or (None, "") if none."""
    model_cfg = None
    if checkpoint_state.get("cfg") is not None:
        model_cfg = checkpoint_state["cfg"].get("model") if hasattr(checkpoint_state["cfg"], "get") else None
    if model_cfg is None and checkpoint_state.get("args") is not None:
        model_cfg = checkpoint_state["args"]
    if model_cfg is not None and getattr(model_cfg, DICTIONARY_KEY, None):
        return {
            DICTIONARY_KEY: getattr(model_cfg, DICTIONARY_KEY),
            SENTENCEPIECE_KEY: getattr(model_cfg, SENTENCEPIECE_KEY, None),
        }, "the model configuration"
    stamped = checkpoint_state.get(CHECKPOINT_KEY)
    if stamped:
        return {DICTIONARY_KEY: stamped.get(DICTIONARY_KEY), SENTENCEPIECE_KEY: stamped.get(SENTENCEPIECE_KEY)}, (
            f"the checkpoint's '{CHECKPOINT_KEY}' entry"
        )
    return None, ""


def _mismatch_advice(data_dir, config_yaml: str) -> str:
    """Return the next step for a vocabulary mismatch, naming the data config that was read."""
    # Either part can be wrong: the data folder, or the config inside it (config_asr.yaml
    # names the transcript vocabulary, config_st.yaml the translation one).
    return (
        f"The files were read through the data config {Path(data_dir) / config_yaml}. Use the data folder "
        "and the --config-yaml the model was trained with: for the SimulEval agent, --data-dir and "
        "--config-yaml; for fairseq-generate, its positional data argument and --config-yaml"
    )


def check_vocabulary(checkpoint_state: Dict, checkpoint_path, data_dir, config_yaml: str = "config_st.yaml") -> bool:
    """Raise VocabularyMismatchError when the data folder's vocabulary differs from the checkpoint's.

    Returns True when the checkpoint records a fingerprint and it matches, False (with a
    warning) when the checkpoint records none, so that nothing could be checked.
    """
    recorded, source = recorded_fingerprint(checkpoint_state)
    if recorded is None:
        logger.warning(
            "%s records no vocabulary fingerprint, so the dictionary and SentencePiece model in %s cannot be "
            "checked against the ones it was trained with; record them with "
            "'python -m leap_fairseq.vocabulary %s --data-dir TRAINING_DATA_DIR'",
            checkpoint_path,
            data_dir,
            checkpoint_path,
        )
        return False
    dictionary_path, spm_path = vocabulary_files(data_dir, config_yaml)
    current = compute_fingerprint(data_dir, config_yaml)
    if recorded[DICTIONARY_KEY] != current.target_dictionary_sha256:
        raise VocabularyMismatchError(
            f"the dictionary {dictionary_path} differs from the one {checkpoint_path} was trained with "
            f"(symbols sha256 {current.target_dictionary_sha256[:12]}..., recorded in {source}: "
            f"{recorded[DICTIONARY_KEY][:12]}...). {_mismatch_advice(data_dir, config_yaml)}"
        )
    if recorded[SENTENCEPIECE_KEY] is not None and recorded[SENTENCEPIECE_KEY] != current.sentencepiece_model_sha256:
        raise VocabularyMismatchError(
            f"the SentencePiece model {spm_path} differs from the one {checkpoint_path} was trained with "
            f"(sha256 {str(current.sentencepiece_model_sha256)[:12]}..., recorded in {source}: "
            f"{recorded[SENTENCEPIECE_KEY][:12]}...). {_mismatch_advice(data_dir, config_yaml)}"
        )
    return True


def record_or_check_vocabulary(model_args, task) -> Optional[VocabularyFingerprint]:
    """Store the task's vocabulary fingerprint in ``model_args``, or check it against a stored one.

    Called from a model's ``build_model``. When training starts, ``model_args``
    contains no fingerprint and gets the task's, so the checkpoint records it.
    When a checkpoint is loaded (``fairseq-generate``, resuming), the stored
    fingerprint is compared with the task's data folder and a difference
    raises :class:`VocabularyMismatchError`. Tasks without a speech-to-text
    data folder (``data`` and ``config_yaml`` arguments) are left alone and
    None is returned.
    """
    task_args = getattr(task, "args", None)
    data_dir = getattr(task_args, "data", None)
    config_yaml = getattr(task_args, "config_yaml", None)
    if not data_dir or not config_yaml or not (Path(data_dir) / config_yaml).is_file():
        return None
    current = compute_fingerprint(data_dir, config_yaml)
    recorded = getattr(model_args, DICTIONARY_KEY, None)
    if recorded is None:
        setattr(model_args, DICTIONARY_KEY, current.target_dictionary_sha256)
        setattr(model_args, SENTENCEPIECE_KEY, current.sentencepiece_model_sha256)
        return current
    check_vocabulary(
        {"args": model_args}, "the checkpoint being loaded", data_dir, config_yaml
    )
    return current


def stamp_checkpoint(checkpoint_path, data_dir, config_yaml: str = "config_st.yaml") -> VocabularyFingerprint:
    """Record the data folder's vocabulary fingerprint in a checkpoint, in place.

    The checkpoint is written to a temporary file in the same folder and then renamed over the
    original, so an interruption leaves the original intact.
    """
    import torch

    checkpoint_path = Path(checkpoint_path)
    fingerprint = compute_fingerprint(data_dir, config_yaml)
    state = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    state[CHECKPOINT_KEY] = asdict(fingerprint)
    handle, temporary = tempfile.mkstemp(dir=checkpoint_path.parent, prefix=f".{checkpoint_path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        torch.save(state, temporary)
        os.replace(temporary, checkpoint_path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return fingerprint


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Record the target dictionary and SentencePiece model a checkpoint was trained with "
        "(SHA-256 digests), so that the SimulEval agent rejects other ones."
    )
    parser.add_argument("checkpoint", help="fairseq checkpoint to update in place")
    parser.add_argument("--data-dir", required=True, help="the prepared data folder the model was trained on")
    parser.add_argument("--config-yaml", default="config_st.yaml", help="data config inside --data-dir (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s | %(name)s | %(message)s")
    fingerprint = stamp_checkpoint(args.checkpoint, args.data_dir, args.config_yaml)
    logger.info("recorded %s in %s", asdict(fingerprint), args.checkpoint)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

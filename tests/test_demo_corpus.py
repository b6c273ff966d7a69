"""Tests for the demo grammar and the demo corpus builder (data_prep/make_demo_corpus.py)."""

import json
import random
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "data_prep"))

import demo_grammar  # noqa: E402
import make_demo_corpus  # noqa: E402

SPLITS = ("train", "dev", "tst-COMMON")
SMALL = ["--train-talks", "3", "--dev-talks", "1", "--test-talks", "2", "--segs-per-talk", "4", "--seed", "7"]

needs_programs = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("sox") is None,
    reason="espeak-ng and sox are needed: sudo apt-get install -y espeak-ng sox",
)


def find(items, english):
    return next(item for item in items if getattr(item, "en", getattr(item, "en_base", None)) == english)


# ---------------------------------------------------------------------------
# Grammar
# ---------------------------------------------------------------------------


def test_grammar_is_deterministic():
    rng_a, rng_b = random.Random(11), random.Random(11)
    first = [demo_grammar.sample_sentence(rng_a) for _ in range(50)]
    second = [demo_grammar.sample_sentence(rng_b) for _ in range(50)]
    assert first == second


def test_grammar_vocabulary_is_small():
    vocabulary = demo_grammar.english_vocabulary()
    assert 40 <= len(vocabulary) <= 100
    rng = random.Random(0)
    for _ in range(2000):
        assert set(demo_grammar.words(demo_grammar.sample_sentence(rng).en)) <= vocabulary


def test_grammar_has_many_sentences():
    rng = random.Random(5)
    distinct = {demo_grammar.sample_sentence(rng).en for _ in range(5000)}
    assert len(distinct) > 4000


def test_grammar_agreement_and_cases():
    subjects, verbs, nouns = demo_grammar.SUBJECTS, demo_grammar.VERBS, demo_grammar.NOUNS
    adjectives, adverbials = demo_grammar.ADJECTIVES, demo_grammar.ADVERBIALS
    phrase = demo_grammar.ObjectPhrase
    realize = demo_grammar.realize

    sentence = realize(find(subjects, "he"), find(verbs, "buy"),
                       phrase(find(nouns, "apple"), "a", False, None),
                       False, find(adverbials, "today"))
    assert sentence == demo_grammar.Sentence(
        "He buys an apple today.", "Er kauft heute einen Apfel.", "Él compra una manzana hoy.")

    sentence = realize(find(subjects, "the children"), find(verbs, "read"),
                       phrase(find(nouns, "book"), "my", True, find(adjectives, "old")),
                       True, find(adverbials, "at home"))
    assert sentence.en == "The children do not read my old books at home."
    assert sentence.de == "Die Kinder lesen meine alten Bücher nicht zu Hause."
    assert sentence.es == "Los niños no leen mis libros viejos en casa."

    sentence = realize(find(subjects, "you"), find(verbs, "eat"),
                       phrase(find(nouns, "cake"), "a", False, find(adjectives, "big")),
                       True, None)
    assert sentence.en == "You do not eat a big cake."
    assert sentence.de == "Du isst keinen großen Kuchen."
    assert sentence.es == "Tú no comes un pastel grande."

    sentence = realize(find(subjects, "my sister"), find(verbs, "see"),
                       phrase(find(nouns, "car"), "a", False, find(adjectives, "new")),
                       False, None)
    assert sentence.de == "Meine Schwester sieht ein neues Auto."
    assert sentence.es == "Mi hermana ve un coche nuevo."

    sentence = realize(find(subjects, "we"), find(verbs, "drink"),
                       phrase(find(nouns, "milk"), "the", False, find(adjectives, "hot")),
                       True, find(adverbials, "in the morning"))
    assert sentence.en == "We do not drink the hot milk in the morning."
    assert sentence.de == "Wir trinken die heiße Milch am Morgen nicht."
    assert sentence.es == "Nosotros no bebemos la leche caliente por la mañana."

    sentence = realize(find(subjects, "I"), find(verbs, "find"),
                       phrase(find(nouns, "key"), "the", False, None), False, None)
    assert sentence == demo_grammar.Sentence("I find the key.", "Ich finde den Schlüssel.", "Yo encuentro la llave.")


def test_grammar_rejects_unknown_language():
    sentence = demo_grammar.sample_sentence(random.Random(0))
    with pytest.raises(ValueError, match="unknown language 'fr'"):
        sentence.text("fr")


def test_held_out_sentences_are_new():
    drawn = make_demo_corpus.draw_sentences({"train": 300, "dev": 40, "tst-COMMON": 40}, ["de", "es"], seed=3)
    for language in ("en", "de", "es"):
        train = {sentence.text(language) for sentence in drawn["train"]}
        train_words = {word for text in train for word in demo_grammar.words(text)}
        for split in ("dev", "tst-COMMON"):
            held_out = [sentence.text(language) for sentence in drawn[split]]
            assert not set(held_out) & train
            assert len(set(held_out)) == len(held_out)
            for text in held_out:
                assert set(demo_grammar.words(text)) <= train_words


# ---------------------------------------------------------------------------
# Corpus builder
# ---------------------------------------------------------------------------


def build(out: Path, *extra: str) -> None:
    make_demo_corpus.main(["--out", str(out), "--quiet", *SMALL, *extra])


def read_wav(path: Path):
    with wave.open(str(path), "rb") as handle:
        assert handle.getnchannels() == 1
        assert handle.getsampwidth() == 2
        assert handle.getframerate() == 16000
        return np.frombuffer(handle.readframes(handle.getnframes()), dtype="<i2")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        pytest.skip("espeak-ng and sox are needed: sudo apt-get install -y espeak-ng sox")
    out = tmp_path_factory.mktemp("demo") / "corpus"
    build(out, "--jobs", "2")
    return out


@needs_programs
def test_corpus_layout_and_counts(corpus):
    expected = {"train": (3, 12), "dev": (1, 4), "tst-COMMON": (2, 8)}
    for language in ("de", "es"):
        for split, (talks, segments) in expected.items():
            root = corpus / f"en-{language}" / "data" / split
            assert len(list((root / "wav").glob("*.wav"))) == talks
            for suffix in ("yaml", "en", language):
                lines = (root / "txt" / f"{split}.{suffix}").read_text(encoding="utf-8").splitlines()
                assert len(lines) == segments, f"{split}.{suffix}"
                assert all(line.strip() for line in lines)
    info = json.loads((corpus / "demo_corpus.json").read_text(encoding="utf-8"))
    assert info["segments"] == {split: counts[1] for split, counts in expected.items()}


@needs_programs
def test_corpus_yaml_matches_mustc(corpus):
    root = corpus / "en-de" / "data" / "train" / "txt"
    first = (root / "train.yaml").read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("- {duration: ")
    assert ", uW: 0, speaker_id: spk.1, wav: ted_1.wav}" in first
    # fairseq's MuST-C reader loads the yaml with BaseLoader, so every value is a string.
    segments = yaml.load((root / "train.yaml").read_text(encoding="utf-8"), Loader=yaml.BaseLoader)
    english = (root / "train.en").read_text(encoding="utf-8").splitlines()
    assert list(segments[0]) == ["duration", "offset", "rW", "uW", "speaker_id", "wav"]
    for segment, sentence in zip(segments, english):
        assert int(segment["rW"]) == len(demo_grammar.words(sentence))
        assert segment["uW"] == "0"
        assert segment["speaker_id"] == "spk." + segment["wav"][len("ted_"):-len(".wav")]


@needs_programs
def test_corpus_segments_match_audio(corpus):
    for split in SPLITS:
        root = corpus / "en-de" / "data" / split
        segments = yaml.load((root / "txt" / f"{split}.yaml").read_text(encoding="utf-8"), Loader=yaml.BaseLoader)
        by_talk = {}
        for segment in segments:
            by_talk.setdefault(segment["wav"], []).append((float(segment["offset"]), float(segment["duration"])))
        for talk, spans in by_talk.items():
            samples = read_wav(root / "wav" / talk).astype(np.int32)
            length = len(samples) / 16000
            speech = np.zeros(len(samples), dtype=bool)
            previous_end = 0.0
            for offset, duration in spans:
                assert offset >= previous_end, f"{talk}: segments overlap"
                assert offset + duration <= length + 1e-6, f"{talk}: segment ends after the audio"
                start, end = int(offset * 16000), int((offset + duration) * 16000)
                piece = samples[start:end]
                assert np.sqrt(np.mean(piece.astype(np.float64) ** 2)) > 100, f"{talk}: segment is silent"
                speech[start:end] = True
                previous_end = offset + duration
            # Outside the segments there are only silences (a few samples of resampling ripple at the edges).
            outside = samples[~speech]
            assert np.mean(np.abs(outside) <= 2) > 0.97
            assert np.abs(samples).max() < 32767


@needs_programs
def test_corpus_pairs_share_audio_and_english(corpus):
    for split in SPLITS:
        german = corpus / "en-de" / "data" / split
        spanish = corpus / "en-es" / "data" / split
        for name in ("yaml", "en"):
            assert (german / "txt" / f"{split}.{name}").read_bytes() == (spanish / "txt" / f"{split}.{name}").read_bytes()
        for wav in (german / "wav").glob("*.wav"):
            assert wav.read_bytes() == (spanish / "wav" / wav.name).read_bytes()


@needs_programs
def test_corpus_test_sentences_not_in_train(corpus):
    for language in ("en", "de", "es"):
        pair = "de" if language != "es" else "es"
        root = corpus / f"en-{pair}" / "data"
        train = set((root / "train" / "txt" / f"train.{language}").read_text(encoding="utf-8").splitlines())
        for split in ("dev", "tst-COMMON"):
            held_out = set((root / split / "txt" / f"{split}.{language}").read_text(encoding="utf-8").splitlines())
            assert not held_out & train


@needs_programs
def test_corpus_translations_aligned(corpus):
    root = corpus / "en-de" / "data" / "train" / "txt"
    english = (root / "train.en").read_text(encoding="utf-8").splitlines()
    german = (root / "train.de").read_text(encoding="utf-8").splitlines()
    spanish = (corpus / "en-es" / "data" / "train" / "txt" / "train.es").read_text(encoding="utf-8").splitlines()
    drawn = make_demo_corpus.draw_sentences({"train": 12, "dev": 4, "tst-COMMON": 8}, ["de", "es"], seed=7)
    assert english == [sentence.en for sentence in drawn["train"]]
    assert german == [sentence.de for sentence in drawn["train"]]
    assert spanish == [sentence.es for sentence in drawn["train"]]


@needs_programs
def test_corpus_rerun_is_noop(corpus, caplog):
    before = {path: path.stat().st_mtime_ns for path in corpus.rglob("*") if path.is_file()}
    caplog.set_level("INFO")
    build(corpus, "--jobs", "2")
    after = {path: path.stat().st_mtime_ns for path in corpus.rglob("*") if path.is_file()}
    assert before == after
    assert "nothing to do" in caplog.text


@needs_programs
def test_corpus_rejects_other_options(corpus):
    with pytest.raises(SystemExit, match="built with other options"):
        make_demo_corpus.main(["--out", str(corpus), "--quiet", "--train-talks", "2"])


@needs_programs
def test_corpus_resume_and_jobs_give_same_bytes(corpus, tmp_path):
    out = tmp_path / "corpus"
    build(out, "--jobs", "1", "--langs", "de")
    for split in SPLITS:
        for path in (corpus / "en-de" / "data" / split).rglob("*"):
            if path.is_file():
                assert path.read_bytes() == (out / path.relative_to(corpus)).read_bytes(), path.name

    # An interrupted run: the completion record and one talk are missing.
    (out / "demo_corpus.json").unlink()
    wav = out / "en-de" / "data" / "train" / "wav" / "ted_2.wav"
    wav.unlink()
    kept = out / "en-de" / "data" / "train" / "wav" / "ted_1.wav"
    kept_time = kept.stat().st_mtime_ns
    build(out, "--jobs", "1", "--langs", "de")
    assert kept.stat().st_mtime_ns == kept_time
    assert wav.read_bytes() == (corpus / "en-de" / "data" / "train" / "wav" / "ted_2.wav").read_bytes()
    assert (out / "demo_corpus.json").exists()


def test_corpus_rejects_bad_counts(capsys):
    with pytest.raises(SystemExit):
        make_demo_corpus.parse_args(["--out", "x", "--segs-per-talk", "0"])
    assert "--segs-per-talk must be at least 1" in capsys.readouterr().err


@needs_programs
def test_cli_runs_as_script(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "data_prep" / "make_demo_corpus.py"), "--help"],
        capture_output=True, text=True, check=True,
    )
    assert "--train-talks" in result.stdout

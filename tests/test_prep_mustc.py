"""Tests of data_prep/prep_mustc_data.py on mustc_mini and on small broken corpora the tests write."""

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile

import leap_fairseq  # noqa: F401  (applies the compat patches)

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    # data_prep is a folder of scripts, not an installed package.
    sys.path.insert(0, str(REPO_ROOT))

from data_prep import mustc_features, mustc_files, prep_mustc_data  # noqa: E402
from leap_fairseq import audio  # noqa: E402

SCRIPT = REPO_ROOT / "data_prep" / "prep_mustc_data.py"
MINI_SPLITS = ["train", "dev", "tst-COMMON"]
VOCAB_SIZE = "300"


def run_script(args, env_extra=None, check=True):
    env = dict(os.environ)
    env.update(env_extra or {})
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env, timeout=600
    )
    if check and result.returncode != 0:
        pytest.fail(f"prep_mustc_data.py failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


def run_main(args, caplog):
    """Run the script's main() in this process (no fairseq import cost) and return (status, log text)."""
    caplog.clear()
    with caplog.at_level(logging.INFO):
        status = prep_mustc_data.main([str(arg) for arg in args], configure_logging=False)
    return status, caplog.text


def read_tsv(path):
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == ""
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:-1]]


def zip_features(pair_dir, audio_field):
    name, offset, length = audio_field.split(":")
    return mustc_features.load_features(pair_dir / name, int(offset), int(length))


def snapshot(folder):
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != prep_mustc_data.SUMMARY_FILE
    }


def task_args(data_dir, config="config_st.yaml"):
    return argparse.Namespace(
        data=str(data_dir),
        config_yaml=config,
        multitask_config_yaml=None,
        seed=1,
        train_subset="train_st",
        max_source_positions=6000,
        max_target_positions=1024,
    )


# ---------------------------------------------------------------------------
# mustc_mini
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mini_root(shared_data):
    return shared_data / "mustc_mini"


@pytest.fixture(scope="module")
def prepared(mini_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("mustc_prepared")
    run_script(
        ["--data-root", mini_root, "--lang", "de", "es", "--output-root", out, "--splits", *MINI_SPLITS,
         "--vocab-size", VOCAB_SIZE, "--jobs", "2"]
    )
    return out


def test_mini_output_layout(prepared):
    for lang in ("de", "es"):
        pair = prepared / f"en-{lang}"
        for name in ["fbank80.zip", "gcmvn.npz", "config_st.yaml", "config_asr.yaml", "dropped_segments.tsv",
                     f"spm_unigram{VOCAB_SIZE}_st.model", f"spm_unigram{VOCAB_SIZE}_st.vocab",
                     f"spm_unigram{VOCAB_SIZE}_st.txt", f"spm_unigram{VOCAB_SIZE}_asr.txt"]:
            assert (pair / name).is_file(), name
        for split in MINI_SPLITS:
            assert len(read_tsv(pair / f"{split}_st.tsv")) == (240 if split == "train" else 40)
            assert (pair / f"{split}_asr.tsv").is_file()
        for split in ("dev", "tst-COMMON"):
            wavs = (pair / "simuleval" / f"{split}.wav_list").read_text().splitlines()
            assert len(wavs) == 40
            assert all(Path(p).is_absolute() and Path(p).is_file() for p in wavs)
        assert not (pair / prep_mustc_data.CACHE_DIR).exists()
        assert not list(pair.rglob(".*.tmp-*"))
        summary = json.loads((pair / "prep_summary.json").read_text())
        assert summary["splits"]["train"]["st"]["kept"] == 240
        assert summary["features_computed"] == 320


def test_mini_zip_is_stored(prepared):
    with zipfile.ZipFile(prepared / "en-de" / "fbank80.zip") as archive:
        infos = archive.infolist()
    assert len(infos) == 320
    assert all(info.compress_type == zipfile.ZIP_STORED for info in infos)


def test_mini_features_equal_offline_reference(prepared, mini_root):
    pair = prepared / "en-de"
    rows = read_tsv(pair / "tst-COMMON_st.tsv")
    yaml_lines = (mini_root / "en-de/data/tst-COMMON/txt/tst-COMMON.yaml").read_text().splitlines()
    # ted_1015_3 is the fourth segment of talk ted_1015 in time order.
    import yaml

    entries = [yaml.safe_load(line)[0] for line in yaml_lines]
    talk_entries = sorted((e for e in entries if e["wav"] == "ted_1015.wav"), key=lambda e: e["offset"])
    entry = talk_entries[3]
    row = next(r for r in rows if r["id"] == "ted_1015_3")
    samples, rate = soundfile.read(str(mini_root / "en-de/data/tst-COMMON/wav/ted_1015.wav"), dtype="float32")
    start, count = int(entry["offset"] * rate), int(entry["duration"] * rate)
    reference = audio.extract_fbank(samples[start:start + count], rate)
    stored = zip_features(pair, row["audio"])
    np.testing.assert_array_equal(stored, reference)
    assert int(row["n_frames"]) == reference.shape[0]


def test_mini_simuleval_inputs(prepared, mini_root):
    pair = prepared / "en-de"
    rows = read_tsv(pair / "dev_st.tsv")
    wavs = (pair / "simuleval" / "dev.wav_list").read_text().splitlines()
    assert [Path(p).stem for p in wavs] == [r["id"] for r in rows]
    for wav, row in list(zip(wavs, rows))[:5]:
        samples, rate = soundfile.read(wav, dtype="float32")
        assert rate == 16000
        assert samples.ndim == 1
        np.testing.assert_array_equal(audio.extract_fbank(samples), zip_features(pair, row["audio"]))
    raw_targets = (mini_root / "en-de/data/dev/txt/dev.de").read_text(encoding="utf-8").splitlines()
    raw_sources = (mini_root / "en-de/data/dev/txt/dev.en").read_text(encoding="utf-8").splitlines()
    assert (pair / "simuleval" / "dev.de").read_text(encoding="utf-8").splitlines() == raw_targets
    assert (pair / "simuleval" / "dev.en").read_text(encoding="utf-8").splitlines() == raw_sources


def test_mini_gcmvn_from_train_only(prepared):
    pair = prepared / "en-de"
    rows = read_tsv(pair / "train_st.tsv")
    features = np.concatenate([zip_features(pair, row["audio"]) for row in rows]).astype(np.float64)
    with np.load(pair / "gcmvn.npz") as stats:
        mean, std = stats["mean"], stats["std"]
    assert mean.dtype == std.dtype == np.float32
    assert mean.shape == std.shape == (80,)
    np.testing.assert_allclose(mean, features.mean(axis=0), rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(std, features.std(axis=0), rtol=1e-4, atol=1e-5)


def test_mini_dictionary_matches_sentencepiece(prepared):
    import sentencepiece
    from fairseq.data import Dictionary

    pair = prepared / "en-de"
    processor = sentencepiece.SentencePieceProcessor(model_file=str(pair / f"spm_unigram{VOCAB_SIZE}_st.model"))
    dictionary = Dictionary.load(str(pair / f"spm_unigram{VOCAB_SIZE}_st.txt"))
    assert len(dictionary) == processor.get_piece_size()
    pieces = processor.encode("Das ist ein Test.", out_type=str)
    assert [dictionary.index(p) for p in pieces] == processor.encode("Das ist ein Test.")


def test_mini_loads_in_fairseq_task(prepared, mini_root, tmp_path, monkeypatch):
    from fairseq.tasks.speech_to_text import SpeechToTextTask

    pair = prepared / "en-de"
    monkeypatch.chdir(tmp_path)  # paths must not depend on the working directory
    task = SpeechToTextTask.setup_task(task_args(pair))
    task.load_dataset("dev_st")
    task.load_dataset("train_st")
    dev = task.datasets["dev_st"]
    assert len(dev) == 40
    assert len(task.datasets["train_st"]) == 240
    item = dev[0]
    rows = read_tsv(pair / "dev_st.tsv")
    expected = audio.GlobalCMVN.load(pair / "gcmvn.npz")(zip_features(pair, rows[0]["audio"]))
    np.testing.assert_allclose(item.source.numpy(), expected, rtol=0, atol=1e-6)
    decoded = task.build_bpe(task.args).decode(task.target_dictionary.string(item.target[:-1]))
    assert decoded == rows[0]["tgt_text"]

    asr = SpeechToTextTask.setup_task(task_args(pair, "config_asr.yaml"))
    asr.load_dataset("tst-COMMON_asr")
    assert asr.datasets["tst-COMMON_asr"][0].source.shape[1] == 80


def test_mini_moved_folder_still_loads(prepared, tmp_path, monkeypatch):
    from fairseq.tasks.speech_to_text import SpeechToTextTask

    staging = tmp_path / "staging"
    shutil.copytree(prepared / "en-de", staging / "en-de")
    moved = tmp_path / "moved"
    shutil.move(str(staging), str(moved))
    pair = moved / "en-de"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    # Every path in the data config is relative to the config's folder.
    task = SpeechToTextTask.setup_task(task_args(pair))
    assert task.build_bpe(task.args) is not None
    task.load_dataset("dev_st")
    assert task.datasets["dev_st"][3].source.shape[1] == 80

    # The SimulEval wav lists hold absolute paths, which --relocate rewrites.
    wavs = (pair / "simuleval" / "dev.wav_list").read_text().splitlines()
    assert not any(str(p).startswith(str(pair)) for p in wavs)
    status = prep_mustc_data.main(["--relocate", str(pair)], configure_logging=False)
    assert status == 0
    wavs = (pair / "simuleval" / "dev.wav_list").read_text().splitlines()
    assert all(Path(p).is_file() for p in wavs)
    assert all(str(p).startswith(str(pair)) for p in wavs)


def test_mini_interrupted_run_resumes_identically(mini_root, tmp_path):
    out = tmp_path / "out"
    args = ["--data-root", mini_root, "--lang", "de", "--output-root", out, "--splits", "train", "dev",
            "--vocab-size", VOCAB_SIZE, "--jobs", "2"]
    killed = run_script(args, env_extra={mustc_features.KILL_AFTER_ENV: "60"}, check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]
    pair = out / "en-de"
    cache = sorted((pair / prep_mustc_data.CACHE_DIR).glob("*.npy"))
    assert 60 <= len(cache) < 280
    assert not (pair / "fbank80.zip").exists()
    for path in cache:
        assert np.load(path).shape[1] == 80
    assert json.loads((pair / prep_mustc_data.STATE_FILE).read_text())["complete"] is False

    run_script(args)
    summary = json.loads((pair / "prep_summary.json").read_text())
    assert summary["features_reused"] >= len(cache)
    assert summary["features_reused"] + summary["features_computed"] == 280
    resumed = snapshot(pair)

    # The reference run uses one process in place of two: the outputs must not depend on --jobs.
    jobs_at = args.index("--jobs")
    one_job = [str(arg) for arg in args[:jobs_at]] + ["--jobs", "1", "--overwrite"]
    assert prep_mustc_data.main(one_job, configure_logging=False) == 0
    fresh_summary = json.loads((pair / "prep_summary.json").read_text())
    assert fresh_summary["features_computed"] == 280
    fresh = snapshot(pair)
    assert sorted(resumed) == sorted(fresh)
    differing = [name for name in fresh if fresh[name] != resumed[name]]
    assert differing == []


def test_mini_rerun_keeps_outputs(prepared, mini_root, caplog):
    before = snapshot(prepared / "en-de")
    common = ["--data-root", mini_root, "--lang", "de", "--output-root", prepared, "--splits", *MINI_SPLITS,
              "--jobs", "1"]
    status, log = run_main([*common, "--vocab-size", VOCAB_SIZE], caplog)
    assert status == 0
    assert "already prepared" in log
    status, log = run_main([*common, "--vocab-size", "200"], caplog)
    assert status == 1
    assert "--overwrite" in log
    assert "vocab_size" in log
    assert snapshot(prepared / "en-de") == before


# ---------------------------------------------------------------------------
# Small broken corpora
# ---------------------------------------------------------------------------

SENTENCES_EN = ["hello there", "how are you", "fine thanks", "see you soon", "good night", "what a day"]
SENTENCES_DE = ["hallo du", "wie geht es dir", "gut danke", "bis bald", "gute nacht", "was fuer ein tag"]


def write_wav(path, seconds, rate=16000, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    count = int(seconds * rate)
    t = np.arange(count) / rate
    tone = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(count)
    data = np.stack([tone * (0.5 + 0.5 * c) for c in range(channels)], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), data.astype(np.float32), rate, subtype="PCM_16")


def write_split(root, split, segments, lang="de", en=None, de=None, yaml_text=None):
    """Write txt/<split>.{yaml,en,<lang>} for (talk, offset, duration) segments."""
    txt = root / f"en-{lang}" / "data" / split / "txt"
    txt.mkdir(parents=True, exist_ok=True)
    (root / f"en-{lang}" / "data" / split / "wav").mkdir(parents=True, exist_ok=True)
    lines = [
        f"- {{duration: {duration}, offset: {offset}, rW: 2, uW: 0, speaker_id: spk.{talk}, wav: {talk}.wav}}"
        for talk, offset, duration in segments
    ]
    (txt / f"{split}.yaml").write_text(yaml_text if yaml_text is not None else "\n".join(lines) + "\n")
    english = en if en is not None else [SENTENCES_EN[i % 6] for i in range(len(segments))]
    german = de if de is not None else [SENTENCES_DE[i % 6] for i in range(len(segments))]
    (txt / f"{split}.en").write_text("".join(f"{line}\n" for line in english), encoding="utf-8")
    (txt / f"{split}.{lang}").write_text("".join(f"{line}\n" for line in german), encoding="utf-8")
    return txt


def tiny_corpus(root, train_segments=None, dev_segments=None, **split_kwargs):
    """A corpus with two 3 s train talks and one 3 s dev talk, 16 kHz mono."""
    train_segments = train_segments or [("t1", 0.1, 1.0), ("t1", 1.5, 1.2), ("t2", 0.2, 2.0), ("t2", 2.3, 0.5)]
    dev_segments = dev_segments or [("d1", 0.0, 1.0), ("d1", 1.2, 1.5)]
    for talk in {seg[0] for seg in train_segments}:
        write_wav(root / "en-de/data/train/wav" / f"{talk}.wav", 3.0, seed=len(talk))
    for talk in {seg[0] for seg in dev_segments}:
        write_wav(root / "en-de/data/dev/wav" / f"{talk}.wav", 3.0, seed=7)
    write_split(root, "train", train_segments, **split_kwargs.get("train", {}))
    write_split(root, "dev", dev_segments, **split_kwargs.get("dev", {}))
    return root


def tiny_args(root, out, *extra):
    return ["--data-root", root, "--lang", "de", "--output-root", out, "--vocab-type", "char", "--jobs", "1", *extra]


def test_count_mismatch_names_files_and_counts(tmp_path, caplog):
    root = tiny_corpus(tmp_path / "c", train={"de": SENTENCES_DE[:3]})
    status, log = run_main(tiny_args(root, tmp_path / "o"), caplog)
    assert status == 1
    assert "train.yaml has 4 segments" in log
    assert "train.de has 3 lines" in log
    assert not (tmp_path / "o" / "en-de" / "fbank80.zip").exists()


def test_transcript_count_mismatch(tmp_path, caplog):
    root = tiny_corpus(tmp_path / "c", dev={"en": SENTENCES_EN[:5]})
    status, log = run_main(tiny_args(root, tmp_path / "o"), caplog)
    assert status == 1
    assert "dev.yaml has 2 segments" in log
    assert "dev.en has 5 lines" in log


def test_bad_segments_skipped_and_reported(tmp_path, caplog):
    train = [("t1", 0.1, 1.0), ("t1", 2.5, 1.0), ("gone", 0.0, 1.0), ("t2", 0.2, 2.0), ("t2", 2.3, 0.1),
             ("t2", 2.5, 0.0), ("t1", 1.2, 1.0)]
    german = list(SENTENCES_DE[:6]) + [""]
    root = tiny_corpus(tmp_path / "c", train_segments=train, train={"de": german, "en": SENTENCES_EN[:6] + ["x"]})
    (root / "en-de/data/train/wav/gone.wav").unlink(missing_ok=True)
    out = tmp_path / "o"
    status, log = run_main(tiny_args(root, out), caplog)
    assert status == 0, log
    assert "train.yaml:2: talk t1, offset 2.5 s, duration 1.0 s: past end of wav" in log
    assert "train.yaml:3: talk gone" in log
    assert "missing wav" in log

    pair = out / "en-de"
    dropped = read_tsv(pair / "dropped_segments.tsv")
    st_reasons = {int(row["line"]): row["reason"] for row in dropped if row["task"] == "st"}
    assert st_reasons == {2: "past end of wav", 3: "missing wav", 5: audio_too_short(), 6: "zero length",
                          7: "empty target"}
    asr_reasons = {int(row["line"]): row["reason"] for row in dropped if row["task"] == "asr"}
    assert 7 not in asr_reasons
    summary = json.loads((pair / "prep_summary.json").read_text())
    assert summary["splits"]["train"]["st"]["kept"] == 2
    assert summary["splits"]["train"]["st"]["dropped"] == {
        "empty target": 1, "missing wav": 1, "past end of wav": 1, audio_too_short(): 1, "zero length": 1}
    assert summary["splits"]["train"]["asr"]["kept"] == 3
    assert [row["id"] for row in read_tsv(pair / "train_st.tsv")] == ["t1_0", "t2_0"]


def test_evaluation_losses_warned(tmp_path, caplog):
    dev = [("d1", 0.0, 1.0), ("d1", 2.5, 1.0), ("d1", 1.2, 0.0), ("d1", 1.2, 1.5)]
    german = ["hallo du", "wie geht es dir", "gut danke", ""]
    root = tiny_corpus(tmp_path / "c", dev_segments=dev, dev={"de": german, "en": SENTENCES_EN[:4]})
    out = tmp_path / "o"
    status, log = run_main(tiny_args(root, out), caplog)
    assert status == 0, log
    warnings = [
        record.getMessage()
        for record in caplog.records
        if record.levelno == logging.WARNING and "SimulEval lists" in record.getMessage()
    ]
    assert len(warnings) == 1, warnings
    message = warnings[0]
    assert message.startswith("en-de dev: 3 of 4 segments")
    assert "empty target: 1" in message
    assert "past end of wav: 1" in message
    assert "zero length: 1" in message
    assert "computed on 1 of the 4 segments" in message
    assert str(out / "en-de" / "dropped_segments.tsv") in message
    wav_list = (out / "en-de" / "simuleval" / "dev.wav_list").read_text().splitlines()
    assert len(wav_list) == 1


def audio_too_short():
    return f"too short (< {audio.MIN_FRAMES} frames)"


def test_strict_turns_skips_into_errors(tmp_path, caplog):
    root = tiny_corpus(tmp_path / "c", train_segments=[("t1", 0.1, 1.0), ("t1", 2.5, 1.0), ("t2", 0.0, 1.0)])
    status, log = run_main(tiny_args(root, tmp_path / "o", "--strict"), caplog)
    assert status == 1
    assert "--strict" in log
    assert "train.yaml:2: talk t1, offset 2.5 s, duration 1.0 s: past end of wav" in log


def test_non_16k_stereo_wav_converted(tmp_path, caplog):
    root = tiny_corpus(tmp_path / "c")
    write_wav(root / "en-de/data/dev/wav/d1.wav", 3.0, rate=44100, channels=2, seed=7)
    out = tmp_path / "o"
    status, log = run_main(tiny_args(root, out), caplog)
    assert status == 0, log
    assert "d1.wav is 44100 Hz with 2 channel(s)" in log
    pair = out / "en-de"
    row = read_tsv(pair / "dev_st.tsv")[1]
    reference = audio.extract_fbank(
        audio.load_audio_16k_mono(root / "en-de/data/dev/wav/d1.wav", 1.2, 1.5, warn=False)
    )
    np.testing.assert_array_equal(zip_features(pair, row["audio"]), reference)
    samples, rate = soundfile.read(str(pair / "simuleval" / "dev" / "d1_1.wav"), dtype="float32")
    assert rate == 16000
    assert samples.ndim == 1
    np.testing.assert_array_equal(audio.extract_fbank(samples), reference)


def test_invalid_yaml_names_file_and_line(tmp_path, caplog):
    text = ("- {duration: 1.0, offset: 0.1, speaker_id: s, wav: t1.wav}\n"
            "- {duration: 1.0, offset: 1.5, speaker_id: s, wav: t1.wav}\n"
            "- {duration: 2.0, offset: 0.2 speaker_id: s wav: t2.wav\n"
            "- {duration: 0.5, offset: 2.3, speaker_id: s, wav: t2.wav}\n")
    root = tiny_corpus(tmp_path / "c", train={"yaml_text": text})
    status, log = run_main(tiny_args(root, tmp_path / "o"), caplog)
    assert status == 1
    assert "invalid YAML at" in log
    assert "train.yaml:" in log


def test_invalid_number_names_line(tmp_path, caplog):
    text = ("- {duration: 1.0, offset: 0.1, speaker_id: s, wav: t1.wav}\n"
            "- {duration: abc, offset: 1.5, speaker_id: s, wav: t1.wav}\n")
    root = tiny_corpus(tmp_path / "c", train_segments=[("t1", 0, 1), ("t1", 1, 1)], train={"yaml_text": text})
    status, log = run_main(tiny_args(root, tmp_path / "o"), caplog)
    assert status == 1
    assert "invalid duration 'abc'" in log
    assert "train.yaml:2" in log


def test_missing_train_split(tmp_path, caplog):
    root = tiny_corpus(tmp_path / "c")
    shutil.rmtree(root / "en-de/data/train")
    status, log = run_main(tiny_args(root, tmp_path / "o"), caplog)
    assert status == 1
    assert "no 'train' split" in log


def test_all_train_segments_dropped(tmp_path, caplog):
    root = tiny_corpus(tmp_path / "c", train_segments=[("t1", 2.5, 1.0), ("t1", 0.0, 0.05)])
    status, log = run_main(tiny_args(root, tmp_path / "o"), caplog)
    assert status == 1
    assert "every train segment of en-de was dropped" in log
    assert "past end of wav: 2" in log
    assert f"{audio_too_short()}: 2" in log


def test_vocab_too_large_suggests_size(tmp_path, caplog):
    root = tiny_corpus(tmp_path / "c")
    args = ["--data-root", root, "--lang", "de", "--output-root", tmp_path / "o", "--vocab-size", "8000", "--jobs", "1"]
    status, log = run_main(args, caplog)
    assert status == 1
    assert "--vocab-size 8000 is too large" in log
    assert "or smaller" in log

    # The rerun with the suggested size resumes and reuses the features.
    suggested = re.search(r"rerun with --vocab-size (\d+)", log).group(1)
    status, log = run_main([*args[:-4], "--vocab-size", suggested, "--jobs", "1"], caplog)
    assert status == 0, log
    summary = json.loads((tmp_path / "o" / "en-de" / "prep_summary.json").read_text())
    assert summary["features_computed"] == 0
    assert summary["features_reused"] == 6
    assert (tmp_path / "o" / "en-de" / f"spm_unigram{suggested}_st.model").is_file()


# Longer German sentences than SENTENCES_EN with few distinct letters: SentencePiece accepts at
# most 34 st (German) pieces and 25 asr (English) ones, and 26 pieces cover the German letters.
RICH_GERMAN = ["hallo du da drueben", "wie geht es dir heute", "gut danke der nachfrage", "bis bald und tschuess"]


def test_vocab_too_large_names_smallest_limit(tmp_path, caplog):
    root = tiny_corpus(tmp_path / "c", train={"de": RICH_GERMAN})
    out = tmp_path / "o"
    args = ["--data-root", root, "--lang", "de", "--output-root", out, "--task", "both", "--jobs", "1"]
    status, log = run_main([*args, "--vocab-size", "8000"], caplog)
    assert status == 1
    limits = {prefix: int(limit) for limit, prefix in re.findall(r"at most (\d+) for (spm_\w+)", log)}
    assert set(limits) == {"spm_unigram8000_st", "spm_unigram8000_asr"}
    smallest = limits["spm_unigram8000_asr"]
    assert smallest < limits["spm_unigram8000_st"]
    assert f"rerun with --vocab-size {smallest} or smaller" in log

    # Between the two limits the st vocabulary trains, but no vocabulary is written.
    between = smallest + 1
    assert between <= limits["spm_unigram8000_st"]
    status, log = run_main([*args, "--vocab-size", between], caplog)
    assert status == 1
    assert f"rerun with --vocab-size {smallest} or smaller" in log
    assert sorted((out / "en-de").glob("spm_*")) == []

    status, log = run_main([*args, "--vocab-size", smallest], caplog)
    assert status == 0, log
    for task in ("st", "asr"):
        assert (out / "en-de" / f"spm_unigram{smallest}_{task}.model").is_file()


def test_relocate_rejects_incomplete_folder(tmp_path, caplog):
    root = tiny_corpus(tmp_path / "c")
    complete = tmp_path / "complete"
    status, log = run_main(tiny_args(root, complete), caplog)
    assert status == 0, log
    incomplete = tmp_path / "incomplete"
    # SentencePiece rejects this size after the features are written, so the run stops unfinished.
    status, log = run_main(["--data-root", root, "--lang", "de", "--output-root", incomplete,
                            "--vocab-size", "8000", "--jobs", "1"], caplog)
    assert status == 1
    assert json.loads((incomplete / "en-de" / prep_mustc_data.STATE_FILE).read_text())["complete"] is False

    moved = tmp_path / "moved"
    shutil.move(str(complete), str(moved))
    wav_list = moved / "en-de" / "simuleval" / "dev.wav_list"
    before = wav_list.read_text()
    status, log = run_main(["--relocate", moved / "en-de", incomplete / "en-de"], caplog)
    assert status == 1
    assert f"{incomplete / 'en-de'} is incomplete" in log
    assert "rerun prep_mustc_data.py" in log.lower()
    # Every folder is checked before any is rewritten.
    assert wav_list.read_text() == before

    status, log = run_main(["--relocate", moved / "en-de"], caplog)
    assert status == 0, log
    assert "rewrote 1 file(s): dev.wav_list" in log
    status, log = run_main(["--relocate", moved / "en-de"], caplog)
    assert status == 0, log
    assert "no file rewritten" in log


def test_help_shows_only_real_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        prep_mustc_data.main(["--help"], configure_logging=False)
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text
    assert "(default: False)" not in text
    assert "(default: 8000)" in text
    assert text.count("required unless --relocate is given") == 3


def test_existing_foreign_outputs_not_overwritten(tmp_path, caplog):
    root = tiny_corpus(tmp_path / "c")
    pair = tmp_path / "o" / "en-de"
    pair.mkdir(parents=True)
    (pair / "train_st.tsv").write_text("precious\n")
    status, log = run_main(tiny_args(root, tmp_path / "o"), caplog)
    assert status == 1
    assert "--overwrite" in log
    assert (pair / "train_st.tsv").read_text() == "precious\n"
    status, log = run_main(tiny_args(root, tmp_path / "o", "--overwrite"), caplog)
    assert status == 0, log
    assert read_tsv(pair / "train_st.tsv")[0]["id"] == "t1_0"


def test_text_with_tabs_quotes_backslashes(tmp_path, caplog):
    german = ['er sagte "ja"\tund ging', "a\\b c", "gut danke", "bis bald"]
    root = tiny_corpus(tmp_path / "c", train={"de": german}, dev={"de": ['"zitat" \\n', "ok"]})
    out = tmp_path / "o"
    status, log = run_main(tiny_args(root, out), caplog)
    assert status == 0, log
    from fairseq.data.audio.speech_to_text_dataset import SpeechToTextDatasetCreator

    samples = SpeechToTextDatasetCreator._load_samples_from_tsv(str(out / "en-de"), "train_st")
    assert [s["tgt_text"] for s in samples] == ['er sagte "ja" und ging', "a\\b c", "gut danke", "bis bald"]
    reference = (out / "en-de" / "simuleval" / "dev.de").read_text(encoding="utf-8").splitlines()
    assert reference == ['"zitat" \\n', "ok"]


def test_concurrent_run_rejected(tmp_path, caplog):
    root = tiny_corpus(tmp_path / "corpus")
    out = tmp_path / "o"
    with mustc_files.exclusive_lock(out / ".en-de.lock"):
        status, log = run_main(tiny_args(root, out), caplog)
    assert status == 1
    assert "another prep_mustc_data.py run is writing" in log
    assert not (out / "en-de").exists()
    status, log = run_main(tiny_args(root, out), caplog)
    assert status == 0, log

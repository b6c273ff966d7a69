"""Tests for the SimulEval agent LeapWaitkSpeechAgent on a tiny model and tiny synthetic data.

The data folder is built here: a SentencePiece model and dictionary trained on a few sentences,
synthetic 16 kHz speech-like audio, global CMVN statistics, a fairseq speech_to_text manifest
with filterbank .npy files, and the SimulEval source and reference lists. The checkpoint is a
randomly initialized leap_s2t_waitk_tiny model saved in fairseq's checkpoint format. Random
weights are enough to check that streaming decoding equals fairseq-generate's wait-k decoding.

Utterances run through SimulEval's own instance class and evaluator loop (send_source,
pushpop, receive_prediction), so the agent sees exactly what the simuleval command sends.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import types
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

import leap_fairseq  # noqa: F401  (compat patches, model registration)
from leap_fairseq.agents import LeapWaitkSpeechAgent
from leap_fairseq.agents.online_features import SampleRateError
from leap_fairseq.vocabulary import VocabularyMismatchError, stamp_checkpoint
from leap_fairseq.agents.word_assembler import WordAssembler
from leap_fairseq.audio import GlobalCMVN, extract_fbank
from simuleval.data.dataloader import SpeechToTextDataloader
from simuleval.evaluator.instance import SpeechToTextInstance

from conftest import PLUGIN_DIR, fairseq_command

REPO_ROOT = Path(__file__).resolve().parent.parent
# One thread per process: the tiny model's matrix products are far slower when several threads
# compete for the few cores of a test machine.
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
torch.set_num_threads(1)
SAMPLE_RATE = 16000
SPLIT = "tst"
MAX_LEN_B = 24

SENTENCES = [
    "das ist ein kleiner test",
    "wir lesen heute ein buch",
    "der hund schläft im garten",
    "sie trinkt gerne kalten tee",
    "morgen fahren wir nach berlin",
    "ich habe keine zeit dafür",
    "das wetter ist sehr schön",
    "kannst du mir bitte helfen",
    "er spielt jeden abend schach",
    "die kinder lachen laut",
    "wo ist der nächste bahnhof",
    "ein weg muss es doch geben",
]

# Utterance lengths in seconds: uneven, not multiples of any segment size or chunk.
DURATIONS = [1.37, 2.113, 0.851, 3.02]


# ---------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------


def synthetic_speech(duration_s: float, seed: int) -> np.ndarray:
    """Return float32 mono audio in [-1, 1]: harmonic tones with a varying pitch plus noise."""
    rng = np.random.default_rng(seed)
    n = int(round(duration_s * SAMPLE_RATE))
    t = np.arange(n) / SAMPLE_RATE
    pitch = 120 + 40 * np.sin(2 * np.pi * rng.uniform(0.5, 2.0) * t)
    phase = 2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE
    voice = sum(np.sin(h * phase) / h for h in range(1, 6))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 5) * t) ** 2
    audio = 0.2 * voice * envelope + 0.01 * rng.standard_normal(n)
    return (audio / max(1.0, np.abs(audio).max() * 1.05)).astype(np.float32)


def write_config(data_dir: Path, spm_name="spm.model", dict_name="spm.txt") -> None:
    import yaml

    config = {
        "bpe_tokenizer": {"bpe": "sentencepiece", "sentencepiece_model": spm_name},
        "vocab_filename": dict_name,
        "input_channels": 1,
        "input_feat_per_channel": 80,
        "transforms": {"*": ["global_cmvn"]},
        # fairseq's global_cmvn transform opens this path as given, so it must be absolute.
        "global_cmvn": {"stats_npz_path": str(data_dir / "gcmvn.npz")},
    }
    (data_dir / "config_st.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")


def train_sentencepiece(data_dir: Path, sentences, prefix="spm", vocab_size=60) -> None:
    import sentencepiece

    text = data_dir / f"{prefix}_train.txt"
    text.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    sentencepiece.SentencePieceTrainer.train(
        input=str(text),
        model_prefix=str(data_dir / prefix),
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=1.0,
        unk_id=3,
        bos_id=0,
        eos_id=2,
        pad_id=1,
        minloglevel=2,
    )
    processor = sentencepiece.SentencePieceProcessor(model_file=str(data_dir / f"{prefix}.model"))
    specials = {"<unk>", "<s>", "</s>", "<pad>"}
    pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    lines = [f"{piece} 1" for piece in pieces if piece not in specials]
    (data_dir / f"{prefix}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def build_data_dir(root: Path) -> Path:
    """Write a complete prepared data folder for the speech_to_text task and SimulEval."""
    data_dir = root / "data"
    (data_dir / "wav").mkdir(parents=True)
    (data_dir / "fbank").mkdir()
    train_sentencepiece(data_dir, SENTENCES)
    write_config(data_dir)

    wav_paths, features = [], []
    for index, duration in enumerate(DURATIONS):
        audio = synthetic_speech(duration, seed=index)
        wav = data_dir / "wav" / f"utt{index}.wav"
        soundfile.write(wav, audio, SAMPLE_RATE, subtype="FLOAT")
        wav_paths.append(wav)
        fbank = extract_fbank(audio, SAMPLE_RATE)
        np.save(data_dir / "fbank" / f"utt{index}.npy", fbank)
        features.append(fbank)
    stacked = np.concatenate(features)
    np.savez(data_dir / "gcmvn.npz", mean=stacked.mean(0), std=np.maximum(stacked.std(0), 1e-4))

    rows = ["id\taudio\tn_frames\ttgt_text\tspeaker"]
    for index, fbank in enumerate(features):
        path = data_dir / "fbank" / f"utt{index}.npy"
        rows.append(f"utt{index}\t{path}\t{fbank.shape[0]}\t{SENTENCES[index]}\tspk")
    (data_dir / f"{SPLIT}.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    # fairseq-train needs a split named train*; the tiny model memorizes these four utterances.
    (data_dir / "train.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (data_dir / f"{SPLIT}.wav_list").write_text("".join(f"{p}\n" for p in wav_paths), encoding="utf-8")
    (data_dir / f"{SPLIT}.de").write_text("".join(f"{SENTENCES[i]}\n" for i in range(len(DURATIONS))), encoding="utf-8")
    return data_dir


def build_checkpoint(data_dir: Path, path: Path, attention="leap", mask="chunk", k=2, ratio=3, seed=0) -> Path:
    """Instantiate leap_s2t_waitk_tiny through fairseq's task and save it as a fairseq checkpoint."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    parser = options.get_training_parser()
    argv = [
        str(data_dir),
        "--user-dir", str(PLUGIN_DIR),
        "--task", "speech_to_text",
        "--config-yaml", "config_st.yaml",
        "--arch", "leap_s2t_waitk_tiny",
        "--encoder-attention-type", attention,
        "--decoder-attention-type", attention,
        "--cross-attention-type", attention,
        "--encoder-attention-mask", mask,
        "--waitk-lagging", str(k),
        "--fixed-pre-decision-ratio", str(ratio),
        "--criterion", "label_smoothed_cross_entropy",
        "--optimizer", "adam",
        "--lr", "1e-3",
        "--max-tokens", "10000",
        "--seed", str(seed),
    ]  # fmt: skip
    args = options.parse_args_and_arch(parser, argv)
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(seed)
    model = task.build_model(cfg.model)
    with torch.no_grad():
        # Raise the end-of-sentence logit so that random weights end some sentences early.
        model.decoder.embed_tokens.weight[task.target_dictionary.eos()] *= 4.0
    state = {
        "args": None,
        "cfg": cfg,
        "model": model.state_dict(),
        "criterion": None,
        "optimizer_history": [
            {
                "criterion_name": "LabelSmoothedCrossEntropyCriterion",
                "optimizer_name": "Adam",
                "lr_scheduler_state": {"best": None},
                "num_updates": 0,
            }
        ],
        "extra_state": {"train_iterator": {"epoch": 1}},
        "last_optimizer_state": None,
    }
    torch.save(state, path)
    return path


def train_checkpoint(data_dir: Path, save_dir: Path, k=2, ratio=3, updates=80) -> Path:
    """Train leap_s2t_waitk_tiny with fairseq-train until it memorizes the four utterances.

    A memorized model writes varied words and ends some sentences with EOS before the source
    ends, which random weights do not do.
    """
    command = [
        fairseq_command("fairseq-train"),
        str(data_dir),
        "--user-dir", str(PLUGIN_DIR),
        "--task", "speech_to_text",
        "--config-yaml", "config_st.yaml",
        "--train-subset", "train",
        "--arch", "leap_s2t_waitk_tiny",
        "--waitk-lagging", str(k),
        "--fixed-pre-decision-ratio", str(ratio),
        "--criterion", "label_smoothed_cross_entropy",
        "--optimizer", "adam",
        "--lr", "5e-3",
        "--lr-scheduler", "inverse_sqrt",
        "--warmup-updates", "20",
        "--dropout", "0",
        "--max-tokens", "20000",
        "--required-batch-size-multiple", "1",
        "--max-update", str(updates),
        "--save-interval", str(updates + 1),
        "--no-epoch-checkpoints",
        "--disable-validation",
        "--save-dir", str(save_dir),
        "--seed", "1",
        "--no-progress-bar",
    ]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, check=False, env=SUBPROCESS_ENV)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return save_dir / "checkpoint_last.pt"


def make_agent(checkpoint: Path, data_dir: Path, *extra: str) -> LeapWaitkSpeechAgent:
    parser = argparse.ArgumentParser()
    LeapWaitkSpeechAgent.add_args(parser)
    args = parser.parse_args(
        ["--checkpoint", str(checkpoint), "--data-dir", str(data_dir), "--max-len-b", str(MAX_LEN_B), *extra]
    )
    args.device = "cpu"
    agent = LeapWaitkSpeechAgent.from_args(args)
    agent.to("cpu")
    return agent


def simuleval_run(agent, wav_paths, segment_ms: int, references=None, reset_after_last=True):
    """Run utterances through SimulEval's instance class with the evaluator's loop; return the instances.

    ``reset_after_last=False`` keeps the agent's states of the last utterance for inspection.
    """
    references = references or ["x"] * len(wav_paths)
    dataloader = SpeechToTextDataloader([str(p) for p in wav_paths], references, [])
    args = Namespace(eval_latency_unit="word", source_segment_size=segment_ms, output=None)
    instances = []
    agent.reset()
    for index in range(len(wav_paths)):
        instance = SpeechToTextInstance(index, dataloader, args)
        while not instance.source_finished_reading:
            segment = instance.send_source(segment_ms)
            output = agent.pushpop(segment)
            instance.receive_prediction(output)
            if instance.finish_prediction and (reset_after_last or index < len(wav_paths) - 1):
                agent.reset()
        assert instance.finish_prediction, f"utterance {index}: the agent did not finish after the last segment"
        instances.append(instance)
    return instances


_GENERATE_CACHE = {}


def fairseq_generate(data_dir: Path, checkpoint: Path, k: int, max_len_b: int = MAX_LEN_B):
    """Run fairseq-generate (greedy, wait-k) and return {utterance index: detokenized hypothesis}."""
    key = (str(checkpoint), k, max_len_b)
    if key not in _GENERATE_CACHE:
        _GENERATE_CACHE[key] = _run_fairseq_generate(data_dir, checkpoint, k, max_len_b)
    return _GENERATE_CACHE[key]


def _run_fairseq_generate(data_dir: Path, checkpoint: Path, k: int, max_len_b: int):
    command = [
        fairseq_command("fairseq-generate"),
        str(data_dir),
        "--user-dir", str(PLUGIN_DIR),
        "--task", "speech_to_text",
        "--config-yaml", "config_st.yaml",
        "--gen-subset", SPLIT,
        "--path", str(checkpoint),
        "--beam", "1",
        "--max-len-a", "0",
        "--max-len-b", str(max_len_b),
        "--max-tokens", "50000",
        "--required-batch-size-multiple", "1",
        "--model-overrides", json.dumps({"waitk_lagging": k}),
        "--scoring", "sacrebleu",
    ]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, check=False, env=SUBPROCESS_ENV)
    assert completed.returncode == 0, completed.stderr[-3000:]
    hypotheses = {}
    for line in completed.stdout.splitlines():
        match = re.match(r"D-(\d+)\t[^\t]*\t?(.*)$", line)
        if match:
            hypotheses[int(match.group(1))] = " ".join(match.group(2).split())
    assert len(hypotheses) == len(DURATIONS), completed.stdout[-3000:]
    return hypotheses


# ---------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return build_data_dir(tmp_path_factory.mktemp("agent"))


@pytest.fixture(scope="module")
def wav_paths(data_dir):
    return [Path(line) for line in (data_dir / f"{SPLIT}.wav_list").read_text().split()]


@pytest.fixture(scope="module")
def checkpoint(data_dir) -> Path:
    return build_checkpoint(data_dir, data_dir.parent / "leap_chunk.pt")


@pytest.fixture(scope="module")
def trained_checkpoint(data_dir) -> Path:
    return train_checkpoint(data_dir, data_dir.parent / "trained")


@pytest.fixture(scope="module")
def trained_agent(trained_checkpoint, data_dir):
    return make_agent(trained_checkpoint, data_dir)


@pytest.fixture(scope="module")
def agent(checkpoint, data_dir):
    return make_agent(checkpoint, data_dir)


# ---------------------------------------------------------------------------
# Word assembly
# ---------------------------------------------------------------------------


def test_word_assembler_holds_until_next_word():
    words = WordAssembler()
    assert words.push("\u2581gu") == []
    assert words.push("ten") == []
    assert words.push("\u2581Tag") == ["guten"]
    assert words.flush() == ["Tag"]
    assert words.flush() == []


def test_word_assembler_lone_boundary_piece():
    words = WordAssembler()
    assert words.push("\u2581") == []
    assert words.push("\u2581a") == []
    assert words.push("b") == []
    assert words.flush() == ["ab"]


def test_word_assembler_reset_drops_pieces():
    words = WordAssembler()
    words.push("\u2581x")
    words.reset()
    assert words.flush() == []


# ---------------------------------------------------------------------------
# Equality with fairseq-generate
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3])
def test_agent_equals_fairseq_generate(trained_checkpoint, data_dir, wav_paths, k):
    expected = fairseq_generate(data_dir, trained_checkpoint, k)
    agent = make_agent(trained_checkpoint, data_dir, "--waitk-lagging", str(k))
    for segment_ms in (40, 320, 1000):
        instances = simuleval_run(agent, wav_paths, segment_ms)
        for index, instance in enumerate(instances):
            assert instance.prediction == expected[index], f"k={k}, {segment_ms} ms, utterance {index}"


def test_random_model_equals_fairseq_generate(checkpoint, data_dir, wav_paths):
    # Random weights repeat tokens up to the length limit: this covers the limit.
    expected = fairseq_generate(data_dir, checkpoint, 2)
    agent = make_agent(checkpoint, data_dir)
    for index, instance in enumerate(simuleval_run(agent, wav_paths, 320)):
        assert instance.prediction == expected[index], f"utterance {index}"


def test_trained_model_ends_before_source(trained_checkpoint, data_dir, wav_paths):
    # The equality test must cover EOS before the end of the source: then the last word is
    # written before the source ends, and later segments are only read.
    agent = make_agent(trained_checkpoint, data_dir, "--waitk-lagging", "2")
    instances = simuleval_run(agent, wav_paths, 40)
    early = [i for i in instances if i.delays and i.delays[-1] < i.source_length]
    assert early, [(i.delays, i.source_length) for i in instances]
    assert all(i.finish_prediction for i in instances)


def test_words_held_until_complete(trained_checkpoint, data_dir, wav_paths):
    agent = make_agent(trained_checkpoint, data_dir, "--waitk-lagging", "1")
    for instance in simuleval_run(agent, wav_paths, 40):
        # Every written word is a whole word of the memorized sentences' vocabulary or a
        # detokenized piece sequence: no word starts with the boundary marker.
        assert all("\u2581" not in word for word in instance.prediction_list)
        assert len(instance.delays) == len(instance.prediction.split())


def test_delays_follow_schedule(agent, wav_paths):
    # k=2 chunks of 3 encoder states (40 ms each): nothing is written before 240 ms of audio.
    instance = simuleval_run(agent, wav_paths[:1], 40)[0]
    assert instance.delays, "no words were written"
    assert instance.delays[0] >= 240
    assert instance.delays == sorted(instance.delays)
    assert instance.delays[-1] <= instance.source_length


# ---------------------------------------------------------------------------
# Feature path
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("segment_ms", [40, 320, 1000])
def test_online_features_equal_offline(agent, data_dir, wav_paths, segment_ms):
    cmvn = GlobalCMVN.load(data_dir / "gcmvn.npz")
    for wav in wav_paths[:2]:
        captured = []
        agent.reset()
        features = agent.states.features
        original_accept = features.accept

        def recording_accept(content, sample_rate, original_accept=original_accept):
            frames = original_accept(content, sample_rate)
            captured.append(frames)
            return frames

        features.accept = recording_accept
        dataloader = SpeechToTextDataloader([str(wav)], ["x"], [])
        instance = SpeechToTextInstance(0, dataloader, Namespace(eval_latency_unit="word", output=None))
        while not instance.source_finished_reading:
            instance.receive_prediction(agent.pushpop(instance.send_source(segment_ms)))
        online = torch.cat(captured).numpy()
        audio, _ = soundfile.read(wav, dtype="float32")
        offline = cmvn(extract_fbank(audio, SAMPLE_RATE))
        assert online.shape == offline.shape, wav.name
        np.testing.assert_array_equal(online, offline.astype(np.float32), err_msg=f"{wav.name}, {segment_ms} ms")


# ---------------------------------------------------------------------------
# Unusual sources
# ---------------------------------------------------------------------------


def write_wav(path: Path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    soundfile.write(path, audio, sample_rate, subtype="FLOAT")
    return path


def test_fewer_chunks_than_k(checkpoint, data_dir, tmp_path):
    # k=8 chunks of 3 states = 960 ms; a 0.5 s source ends before the first write is allowed.
    agent = make_agent(checkpoint, data_dir, "--waitk-lagging", "8")
    wav = write_wav(tmp_path / "short.wav", synthetic_speech(0.5, seed=7))
    instance = simuleval_run(agent, [wav], 40)[0]
    assert instance.prediction_list, "a short source still gets a translation"
    assert set(instance.delays) == {instance.source_length}


def test_one_frame_source(agent, tmp_path):
    wav = write_wav(tmp_path / "one_frame.wav", synthetic_speech(400 / SAMPLE_RATE, seed=3))
    instance = simuleval_run(agent, [wav], 40)[0]
    assert instance.finish_prediction


def test_source_shorter_than_a_frame(agent, tmp_path):
    wav = write_wav(tmp_path / "tiny.wav", synthetic_speech(0.01, seed=4))
    instance = simuleval_run(agent, [wav], 320)[0]
    assert instance.finish_prediction
    assert instance.prediction == ""


def test_silence(agent, tmp_path):
    wav = write_wav(tmp_path / "silence.wav", np.zeros(SAMPLE_RATE, dtype=np.float32))
    instance = simuleval_run(agent, [wav], 320)[0]
    assert instance.finish_prediction
    assert instance.delays == sorted(instance.delays)


def test_wrong_sample_rate(agent, tmp_path):
    wav = write_wav(tmp_path / "8k.wav", synthetic_speech(1.0, seed=5)[::2], sample_rate=8000)
    with pytest.raises(SampleRateError, match="8000 Hz") as raised:
        simuleval_run(agent, [wav], 320)
    assert "sox IN.wav -r 16000 OUT.wav" in str(raised.value)
    assert "prep_mustc_data.py" in str(raised.value)


def test_stereo_mixed_to_mono(agent, tmp_path):
    left = synthetic_speech(1.3, seed=11)
    right = synthetic_speech(1.3, seed=12)
    stereo = write_wav(tmp_path / "stereo.wav", np.stack([left, right], axis=1))
    mono = write_wav(tmp_path / "mono.wav", ((left.astype(np.float64) + right) / 2).astype(np.float32))
    stereo_out = simuleval_run(agent, [stereo], 320)[0]
    mono_out = simuleval_run(agent, [mono], 320)[0]
    assert stereo_out.prediction == mono_out.prediction
    assert stereo_out.delays == mono_out.delays


def test_reset_between_instances(trained_agent, wav_paths):
    first = [i.prediction for i in simuleval_run(trained_agent, wav_paths, 320)]
    again = [i.prediction for i in simuleval_run(trained_agent, list(reversed(wav_paths)), 320)]
    assert len(set(first)) == len(first), "the memorized sentences differ"
    assert again == list(reversed(first))


def test_force_finish_writes_until_source_end(checkpoint, data_dir, wav_paths):
    agent = make_agent(checkpoint, data_dir, "--force-finish")
    for instance in simuleval_run(agent, wav_paths, 40):
        assert instance.delays, "no output"
        assert instance.delays[-1] == instance.source_length


# ---------------------------------------------------------------------------
# Other encoders and vocabulary checks
# ---------------------------------------------------------------------------


def test_reencoding_softmax_encoder(data_dir, wav_paths):
    checkpoint = build_checkpoint(data_dir, data_dir.parent / "softmax_full.pt", attention="softmax", mask="full")
    agent = make_agent(checkpoint, data_dir)
    assert not agent.model.encoder_streams_incrementally
    instances = simuleval_run(agent, wav_paths[:2], 320, reset_after_last=False)
    for instance in instances:
        assert instance.finish_prediction
    reads = [timing for timing in agent.states.timings if timing.kind == "read"]
    assert len(reads) == len(range(0, len(agent.states.source), 320 * 16)), "one READ per segment"
    # Every READ re-encodes the whole prefix, so it reports all encoder states so far.
    assert [timing.num_tokens for timing in reads] == sorted(timing.num_tokens for timing in reads)


def test_causal_encoder_equals_generate(data_dir, wav_paths):
    checkpoint = build_checkpoint(
        data_dir, data_dir.parent / "relu_causal.pt", attention="relu", mask="causal", k=3, ratio=2, seed=5
    )
    expected = fairseq_generate(data_dir, checkpoint, 3)
    agent = make_agent(checkpoint, data_dir)
    for index, instance in enumerate(simuleval_run(agent, wav_paths, 1000)):
        assert instance.prediction == expected[index], f"utterance {index}"


def copy_data_dir(data_dir: Path, target: Path) -> Path:
    shutil.copytree(data_dir, target, ignore=shutil.ignore_patterns("*.wav", "*.npy"))
    return target


def copy_with_swapped_symbols(data_dir: Path, target: Path) -> Path:
    """Copy the data folder with the dictionary's first two symbols swapped."""
    other = copy_data_dir(data_dir, target)
    lines = (other / "spm.txt").read_text(encoding="utf-8").splitlines()
    lines[0], lines[1] = lines[1], lines[0]
    (other / "spm.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return other


def test_vocabulary_stamp_accepts_same_files(checkpoint, data_dir, tmp_path):
    stamped = tmp_path / "stamped.pt"
    shutil.copy(checkpoint, stamped)
    stamp_checkpoint(stamped, data_dir)
    agent = make_agent(stamped, data_dir)
    assert agent.waitk_lagging == 2


def test_other_dictionary_rejected(checkpoint, data_dir, tmp_path):
    stamped = tmp_path / "stamped.pt"
    shutil.copy(checkpoint, stamped)
    stamp_checkpoint(stamped, data_dir)
    other = copy_with_swapped_symbols(data_dir, tmp_path / "other")
    with pytest.raises(VocabularyMismatchError, match="dictionary"):
        make_agent(stamped, other)


def test_other_sentencepiece_rejected(checkpoint, data_dir, tmp_path):
    stamped = tmp_path / "stamped.pt"
    shutil.copy(checkpoint, stamped)
    stamp_checkpoint(stamped, data_dir)
    other = copy_data_dir(data_dir, tmp_path / "other")
    train_sentencepiece(other, list(reversed(SENTENCES)) + ["noch ein satz mehr"], prefix="spm2")
    shutil.copy(other / "spm2.model", other / "spm.model")
    with pytest.raises(VocabularyMismatchError, match="SentencePiece"):
        make_agent(stamped, other)


def test_mismatch_names_config_yaml(checkpoint, data_dir, tmp_path):
    stamped = tmp_path / "stamped.pt"
    shutil.copy(checkpoint, stamped)
    stamp_checkpoint(stamped, data_dir)
    other = copy_data_dir(data_dir, tmp_path / "other")
    lines = (other / "spm.txt").read_text(encoding="utf-8").splitlines()
    lines[0], lines[1] = lines[1], lines[0]
    (other / "spm_other.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = (other / "config_st.yaml").read_text(encoding="utf-8")
    assert "spm.txt" in config
    (other / "config_other.yaml").write_text(config.replace("spm.txt", "spm_other.txt"), encoding="utf-8")
    with pytest.raises(VocabularyMismatchError, match="dictionary") as raised:
        make_agent(stamped, other, "--config-yaml", "config_other.yaml")
    message = str(raised.value)
    assert str(other / "config_other.yaml") in message
    assert "--config-yaml" in message
    assert "fairseq-generate" in message
    assert "--data-dir at" not in message


def test_trained_checkpoint_records_vocabulary(trained_checkpoint, data_dir, tmp_path):
    import torch

    from leap_fairseq.vocabulary import compute_fingerprint, recorded_fingerprint

    state = torch.load(trained_checkpoint, map_location="cpu", weights_only=False)
    recorded, source = recorded_fingerprint(state)
    assert source == "the model configuration"
    expected = compute_fingerprint(data_dir)
    assert recorded["target_dictionary_sha256"] == expected.target_dictionary_sha256
    assert recorded["sentencepiece_model_sha256"] == expected.sentencepiece_model_sha256

    other = copy_with_swapped_symbols(data_dir, tmp_path / "other")
    with pytest.raises(VocabularyMismatchError, match="dictionary"):
        make_agent(trained_checkpoint, other)


def test_dictionary_size_mismatch_rejected(checkpoint, data_dir, tmp_path):
    other = copy_data_dir(data_dir, tmp_path / "other")
    with open(other / "spm.txt", "a", encoding="utf-8") as handle:
        handle.write("extra 1\n")
    with pytest.raises(Exception, match="symbols|size"):
        make_agent(checkpoint, other)


def test_shadowed_package_rejected(checkpoint, data_dir, tmp_path, monkeypatch):
    # What Python imports when a folder named leap_fairseq without __init__.py is in the
    # current directory: a namespace package without the real package's attributes.
    shadow = types.ModuleType("leap_fairseq")
    shadow.__path__ = [str(tmp_path / "leap_fairseq")]
    monkeypatch.setitem(sys.modules, "leap_fairseq", shadow)
    with pytest.raises(ImportError, match="compat patches are not applied") as raised:
        make_agent(checkpoint, data_dir)
    assert str(tmp_path / "leap_fairseq") in str(raised.value)
    assert "another folder" in str(raised.value)


def test_missing_checkpoint(data_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="--checkpoint"):
        make_agent(tmp_path / "missing.pt", data_dir)


# ---------------------------------------------------------------------------
# The simuleval command line
# ---------------------------------------------------------------------------


def simuleval_command(*arguments: str):
    return [sys.executable, "-m", "simuleval.cli", *arguments]


@pytest.mark.parametrize("loader", ["class", "file"])
def test_simuleval_command_line(checkpoint, data_dir, tmp_path, loader):
    output = tmp_path / f"out_{loader}"
    if loader == "class":
        agent_options = ["--agent-class", "leap_fairseq.agents.LeapWaitkSpeechAgent"]
    else:
        agent_options = ["--agent", str(REPO_ROOT / "leap_fairseq" / "agents" / "waitk_speech_agent.py")]
    command = simuleval_command(
        *agent_options,
        "--source", str(data_dir / f"{SPLIT}.wav_list"),
        "--target", str(data_dir / f"{SPLIT}.de"),
        "--checkpoint", str(checkpoint),
        "--data-dir", str(data_dir),
        "--config-yaml", "config_st.yaml",
        "--source-segment-size", "320",
        "--max-len-b", str(MAX_LEN_B),
        "--output", str(output),
        "--end-index", "2",
        "--no-progress-bar",
        "--quality-metrics", "BLEU",
        "--latency-metrics", "AL",
    )  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, check=False, cwd=REPO_ROOT, env=SUBPROCESS_ENV)
    assert completed.returncode == 0, completed.stderr[-4000:]
    records = [json.loads(line) for line in (output / "instances.log").read_text().splitlines()]
    assert [record["index"] for record in records] == [0, 1]
    for record in records:
        assert len(record["delays"]) == len(record["prediction"].split())

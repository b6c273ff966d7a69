"""fairseq-train and fairseq-generate on leap_s2t_waitk_tiny, through --user-dir.

The main corpus is built by the test itself (random features, a SentencePiece
model trained on a few sentences), so these tests need neither the shared data
nor the MuST-C preparation. One more test runs the MuST-C preparation on the
shared mini corpus when LEAP_SHARED_DATA is set.
"""

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from conftest import REPO_ROOT, fairseq_command

SENTENCES = [
    "the cat sat on the mat",
    "a dog ran in the park",
    "we like green tea",
    "she reads a book at night",
    "the sun is warm today",
    "he plays the piano well",
    "they walk to school",
    "it rains in the morning",
    "my friend has a red car",
    "birds sing in the trees",
    "the river is long and wide",
    "you can open the window",
]

MODEL_ARGS = [
    "--arch", "leap_s2t_waitk_tiny",
    "--encoder-attention-mask", "chunk",
    "--fixed-pre-decision-ratio", "3",
    "--waitk-lagging", "2",
    "--waitk-lagging-train", "1,2,3",
]
TRAIN_ARGS = [
    "--task", "speech_to_text",
    "--config-yaml", "config_st.yaml",
    "--train-subset", "train_st",
    "--valid-subset", "dev_st",
    "--criterion", "label_smoothed_cross_entropy",
    "--label-smoothing", "0.1",
    "--optimizer", "adam",
    "--lr", "0.001",
    "--max-tokens", "2000",
    "--required-batch-size-multiple", "1",
    "--num-workers", "0",
    "--seed", "1",
    "--log-format", "simple",
    "--log-interval", "1",
    "--no-progress-bar",
    "--cpu",
]


def write_corpus(root: Path) -> Path:
    """Write a speech_to_text data folder with random 80-dim features; return it."""
    root.mkdir(parents=True, exist_ok=True)
    text_file = root / "text.txt"
    text_file.write_text("\n".join(SENTENCES) + "\n")
    spm.SentencePieceTrainer.train(
        input=str(text_file),
        model_prefix=str(root / "spm_char"),
        model_type="char",
        vocab_size=26,
        hard_vocab_limit=False,
        character_coverage=1.0,
        bos_id=-1,
        eos_id=-1,
        unk_id=0,
        minloglevel=2,
    )
    processor = spm.SentencePieceProcessor(model_file=str(root / "spm_char.model"))
    pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size()) if i != processor.unk_id()]
    (root / "spm_char.txt").write_text("".join(f"{piece} 1\n" for piece in pieces))
    (root / "config_st.yaml").write_text(
        "input_feat_per_channel: 80\n"
        "input_channels: 1\n"
        "vocab_filename: spm_char.txt\n"
        "bpe_tokenizer:\n"
        "  bpe: sentencepiece\n"
        f"  sentencepiece_model: {root / 'spm_char.model'}\n"
    )
    features_dir = root / "fbank"
    features_dir.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    splits = {"train_st": SENTENCES[:9], "dev_st": SENTENCES[9:]}
    for split, sentences in splits.items():
        rows = ["id\taudio\tn_frames\ttgt_text\tspeaker"]
        for i, sentence in enumerate(sentences):
            utterance = f"{split}_{i}"
            # Lengths from 2 frames (shorter than the subsampler's receptive field) to 90.
            num_frames = [2, 90, 33, 61, 17, 45, 77, 9, 52][i % 9]
            path = features_dir / f"{utterance}.npy"
            np.save(path, rng.standard_normal((num_frames, 80)).astype(np.float32))
            rows.append(f"{utterance}\t{path}\t{num_frames}\t{sentence}\tspk{i % 2}")
        (root / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return root


def run_fairseq(name: str, args, cwd: Path, timeout: int = 300) -> str:
    """Run a fairseq console script with the plugin and return its combined output."""
    command = [fairseq_command(name), *map(str, args)]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{name} failed with exit code {result.returncode}:\n{output[-4000:]}"
    return output


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("s2t_corpus"))


@pytest.fixture(scope="module")
def trained(corpus, plugin_dir, tmp_path_factory) -> Path:
    save_dir = tmp_path_factory.mktemp("s2t_checkpoints")
    output = run_fairseq(
        "fairseq-train",
        [corpus, "--user-dir", plugin_dir, *TRAIN_ARGS, *MODEL_ARGS, "--max-update", "4", "--save-dir", save_dir],
        cwd=corpus,
    )
    assert "num_updates 4" in output, output[-3000:]
    assert (save_dir / "checkpoint_last.pt").is_file()
    return save_dir


def generate(corpus, plugin_dir, checkpoint, *extra) -> str:
    return run_fairseq(
        "fairseq-generate",
        [
            corpus,
            "--user-dir", plugin_dir,
            "--task", "speech_to_text",
            "--config-yaml", "config_st.yaml",
            "--gen-subset", "dev_st",
            "--path", checkpoint,
            "--max-tokens", "4000",
            "--required-batch-size-multiple", "1",
            "--max-len-b", "20",
            "--scoring", "sacrebleu",
            "--cpu",
            *extra,
        ],
        cwd=corpus,
    )


def hypotheses(output: str) -> dict:
    return {line.split("\t")[0]: line for line in output.splitlines() if line.startswith("H-")}


def test_train_then_generate_greedy(corpus, plugin_dir, trained):
    output = generate(corpus, plugin_dir, trained / "checkpoint_last.pt", "--beam", "1")
    assert len(hypotheses(output)) == 3, output[-3000:]
    assert re.search(r"BLEU", output), output[-2000:]


def test_generate_beam_and_lagging_override(corpus, plugin_dir, trained):
    output = generate(
        corpus, plugin_dir, trained / "checkpoint_last.pt", "--beam", "3", "--model-overrides", "{'waitk_lagging': 4}"
    )
    assert len(hypotheses(output)) == 3, output[-3000:]


def test_encoder_from_asr_checkpoint(corpus, plugin_dir, trained, tmp_path):
    """--load-pretrained-encoder-from takes the encoder of a checkpoint of the same architecture."""
    output = run_fairseq(
        "fairseq-train",
        [
            corpus, "--user-dir", plugin_dir, *TRAIN_ARGS, *MODEL_ARGS,
            "--max-update", "1",
            "--save-dir", tmp_path,
            "--load-pretrained-encoder-from", trained / "checkpoint_last.pt",
            "--no-save",
            "--disable-validation",
        ],
        cwd=corpus,
    )
    assert "loaded the pretrained encoder" in output, output[-3000:]


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_process_data_parallel_on_cpu(corpus, plugin_dir, tmp_path):
    """Two fairseq-train processes (gloo, loopback) train as one data-parallel job."""
    port = free_loopback_port()
    common = [
        corpus, "--user-dir", plugin_dir, *TRAIN_ARGS, *MODEL_ARGS,
        "--max-update", "2",
        "--disable-validation",
        "--save-dir", tmp_path,
        "--distributed-world-size", "2",
        "--distributed-backend", "gloo",
        "--distributed-init-method", f"tcp://127.0.0.1:{port}",
        "--distributed-no-spawn",
        "--ddp-backend", "legacy_ddp",
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    processes = [
        subprocess.Popen(
            [fairseq_command("fairseq-train"), *map(str, common), "--distributed-rank", str(rank)],
            cwd=corpus, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for rank in (0, 1)
    ]
    outputs = []
    for process in processes:
        try:
            out, _ = process.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
            raise
        outputs.append(out)
    for rank, (process, out) in enumerate(zip(processes, outputs)):
        assert process.returncode == 0, f"rank {rank} failed:\n{out[-4000:]}"
    assert "distributed init (rank 1)" in outputs[1], outputs[1][-3000:]
    assert "training on 2 devices" in outputs[0], outputs[0][-3000:]
    assert "num_updates 2" in outputs[0], outputs[0][-3000:]
    assert (tmp_path / "checkpoint_last.pt").is_file()


def test_mustc_mini_preparation_train_generate(shared_data, plugin_dir, tmp_path):
    """The MuST-C preparation's output trains and decodes with the tiny model."""
    prep_script = REPO_ROOT / "data_prep" / "prep_mustc_data.py"
    if not prep_script.is_file():
        pytest.skip(f"{prep_script} is not in this checkout")
    output_root = tmp_path / "prepared"
    result = subprocess.run(
        [
            sys.executable, str(prep_script),
            "--data-root", str(shared_data / "mustc_mini"),
            "--lang", "de",
            "--output-root", str(output_root),
            "--task", "st",
            "--vocab-type", "char",
            "--splits", "train", "dev",
            "--jobs", "2",
        ],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    data = output_root / "en-de"
    run_fairseq(
        "fairseq-train",
        [data, "--user-dir", plugin_dir, *TRAIN_ARGS, *MODEL_ARGS, "--max-update", "2", "--save-dir", tmp_path / "ckpt"],
        cwd=data,
    )
    output = run_fairseq(
        "fairseq-generate",
        [
            data, "--user-dir", plugin_dir, "--task", "speech_to_text", "--config-yaml", "config_st.yaml",
            "--gen-subset", "dev_st", "--path", tmp_path / "ckpt" / "checkpoint_last.pt", "--beam", "1",
            "--max-tokens", "20000", "--required-batch-size-multiple", "1", "--max-len-b", "30", "--cpu",
        ],
        cwd=data,
    )
    assert len(hypotheses(output)) == 40, output[-3000:]

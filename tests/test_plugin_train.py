"""fairseq-train with --user-dir: a few updates, a checkpoint, and a resume from it."""

import re
import subprocess

import pytest

from conftest import fairseq_command

WORDS = "the a cat dog sat ran on under mat rug big small red blue quickly slowly".split()


def write_corpus(path, lines, seed):
    import random

    generator = random.Random(seed)
    with open(path, "w", encoding="utf-8") as handle:
        for _ in range(lines):
            handle.write(" ".join(generator.choice(WORDS) for _ in range(generator.randint(4, 12))) + "\n")


@pytest.fixture(scope="module")
def binarized_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_corpus")
    write_corpus(root / "train.txt", 200, seed=1)
    write_corpus(root / "valid.txt", 20, seed=2)
    data_bin = root / "bin"
    subprocess.run(
        [
            fairseq_command("fairseq-preprocess"), "--only-source",
            "--trainpref", str(root / "train.txt"), "--validpref", str(root / "valid.txt"),
            "--destdir", str(data_bin), "--workers", "1",
        ],
        check=True, capture_output=True, text=True, timeout=300,
    )
    return data_bin


def train(data_bin, save_dir, plugin_dir, max_update):
    command = [
        fairseq_command("fairseq-train"), str(data_bin),
        "--user-dir", str(plugin_dir),
        "--task", "language_modeling", "--arch", "transformer_lm",
        "--decoder-layers", "1", "--decoder-embed-dim", "32", "--decoder-ffn-embed-dim", "64",
        "--decoder-attention-heads", "2",
        "--tokens-per-sample", "32", "--max-tokens", "256",
        "--optimizer", "adam", "--lr", "1e-3", "--criterion", "cross_entropy",
        "--max-update", str(max_update), "--save-dir", str(save_dir),
        "--no-epoch-checkpoints", "--save-interval-updates", "3", "--log-interval", "1",
        "--cpu", "--num-workers", "0", "--seed", "1",
        # The validation set is a handful of blocks: without this, batch_by_size
        # drops a last batch smaller than the default multiple of 8, leaving none.
        "--required-batch-size-multiple", "1",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def test_train_save_and_resume(binarized_corpus, tmp_path, plugin_dir):
    save_dir = tmp_path / "checkpoints"
    first = train(binarized_corpus, save_dir, plugin_dir, max_update=3)
    assert (save_dir / "checkpoint_last.pt").exists()
    assert "done training" in first

    second = train(binarized_corpus, save_dir, plugin_dir, max_update=5)
    loaded = re.search(r"Loaded checkpoint \S+ \(epoch \d+ @ (\d+) updates\)", second)
    assert loaded, second[-3000:]
    assert int(loaded.group(1)) >= 3
    assert re.search(r"num_updates\D+5\b", second), second[-3000:]

"""Smoke tests for scripts/bench_step_cost.py with random weights: it runs, and its table parses."""

import logging
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "scripts"))

import bench_step_cost  # noqa: E402


def table_rows(stdout: str):
    """Return the cells of each Markdown table row after the header and separator lines."""
    lines = [line for line in stdout.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def test_bench_step_cost_random_models():
    command = [
        sys.executable, str(REPO_ROOT / "scripts" / "bench_step_cost.py"),
        "--random-init", "leap", "--random-init", "softmax-full",
        "--seconds", "1.0", "--tokens", "3", "--repeats", "1", "--vocab-size", "50",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = table_rows(result.stdout)
    assert [row[0] for row in rows] == ["random leap", "random softmax-full"]
    for row in rows:
        assert float(row[3]) > 0, row
        assert row[4] == "3", row  # 100 frames in chunks of 36 frames
        assert row[5] == "3", row


def test_bench_step_cost_relu_features():
    command = [
        sys.executable, str(REPO_ROOT / "scripts" / "bench_step_cost.py"),
        "--random-init", "leap", "--relu-features", "--seconds", "0.5", "--tokens", "2", "--repeats", "1",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert [row[0] for row in table_rows(result.stdout)] == ["random leap"]


def test_bench_step_cost_without_models():
    command = [sys.executable, str(REPO_ROOT / "scripts" / "bench_step_cost.py")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "nothing to time" in result.stderr


def check_bench_args(argv):
    """Parse and check ``argv`` as bench_step_cost.py does; return the parser and the arguments."""
    parser = bench_step_cost.build_parser()
    args = parser.parse_args(argv)
    bench_step_cost.check_args(parser, args)
    return parser, args


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--repeats", "0"], "--repeats must be at least 1, got 0"),
        (["--threads", "0"], "--threads must be at least 1, got 0"),
        (["--tokens", "0"], "--tokens must be at least 1, got 0"),
        (["--seconds", "-1"], "--seconds must be at least 0.01"),
        (["--seconds", "0"], "--seconds must be at least 0.01"),
        (["--seconds", "nan"], "--seconds must be at least 0.01"),
        (["--vocab-size", "2"], "--vocab-size must be at least 4"),
    ],
)
def test_bench_step_cost_rejects_invalid_value(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        check_bench_args(["--random-init", "leap", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_bench_step_cost_relu_features_needs_leap(capsys):
    with pytest.raises(SystemExit) as exit_info:
        check_bench_args(["--random-init", "softmax", "--relu-features"])
    assert exit_info.value.code == 2
    assert "--relu-features replaces LeaP feature maps" in capsys.readouterr().err


def test_bench_step_cost_relu_features_warns_softmax(caplog):
    parser, args = check_bench_args(
        ["--random-init", "leap", "--random-init", "softmax", "--relu-features", "--vocab-size", "10"]
    )
    with caplog.at_level(logging.WARNING, logger="bench_step_cost"):
        models = dict(bench_step_cost.build_models(parser, args))
    assert sorted(models) == ["random leap", "random softmax"]
    assert "random softmax has no LeaP feature maps" in caplog.text
    assert "random leap" not in caplog.text
    feature_maps = [module for module in models["random leap"].modules()
                    if isinstance(module, bench_step_cost.LeapFeatureMap)]
    assert feature_maps
    assert all(module.forward is bench_step_cost.relu_features for module in feature_maps)


def test_bench_step_cost_minimum_values_accepted():
    _, args = check_bench_args(["--random-init", "leap", "--seconds", "0.01", "--vocab-size", "4", "--repeats", "1"])
    assert args.vocab_size == 4
    model = bench_step_cost.random_model("leap", args.vocab_size)
    assert len(model.decoder.dictionary) == 4


def test_bench_step_cost_bad_checkpoint_before_table(tmp_path):
    checkpoint = tmp_path / "broken.pt"
    checkpoint.write_text("not a checkpoint\n")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "config_st.yaml").write_text("vocab_filename: dict.txt\n")
    command = [
        sys.executable, str(REPO_ROOT / "scripts" / "bench_step_cost.py"),
        "--checkpoint", str(checkpoint), "--data-dir", str(data_dir), "--random-init", "leap",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert f"cannot load {checkpoint}" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_bench_step_cost_help_explains_relu_features():
    help_text = " ".join(bench_step_cost.build_parser().format_help().split())
    assert "see above" not in help_text
    assert "replace every LeaP feature map by ReLU features" in help_text
    assert "128 dimensions" in help_text

"""Smoke tests for scripts/bench_step_cost.py with random weights: it runs, and its table parses."""

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


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

"""A full simuleval command-line run on the MuST-C mini corpus through scripts/eval_simul.sh.

The corpus is prepared with data_prep/prep_mustc_data.py (small SentencePiece vocabulary), a
randomly initialized leap_s2t_waitk_tiny checkpoint is built on its dictionary, and three
tst-COMMON utterances are evaluated. The test checks every field of scores.json and that its
plain latencies equal the ones SimulEval itself wrote to scores.tsv.
"""

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from test_agent import SUBPROCESS_ENV, build_checkpoint

REPO_ROOT = Path(__file__).resolve().parent.parent
METRICS = ("AL", "LAAL", "AP", "DAL")
NUM_UTTERANCES = 3


@pytest.fixture(scope="module")
def prepared_pair(shared_data, tmp_path_factory) -> Path:
    output_root = tmp_path_factory.mktemp("mustc_prep")
    command = [
        sys.executable,
        str(REPO_ROOT / "data_prep" / "prep_mustc_data.py"),
        "--data-root", str(shared_data / "mustc_mini"),
        "--lang", "de",
        "--output-root", str(output_root),
        "--task", "st",
        "--vocab-size", "200",
        "--jobs", "1",
    ]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, check=False, env=SUBPROCESS_ENV)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return output_root / "en-de"


def test_eval_simul_script_on_mustc_mini(prepared_pair, tmp_path):
    checkpoint = build_checkpoint(prepared_pair, tmp_path / "tiny.pt", k=3, ratio=3)
    output = tmp_path / "eval"
    command = [
        "bash",
        str(REPO_ROOT / "scripts" / "eval_simul.sh"),
        "--checkpoint", str(checkpoint),
        "--data-dir", str(prepared_pair),
        "--split", "tst-COMMON",
        "--output", str(output),
        "--waitk", "3",
        "--segment-size", "320",
        "--max-len-b", "20",
        "--end-index", str(NUM_UTTERANCES),
        "--", "--no-progress-bar",
    ]  # fmt: skip
    env = {**SUBPROCESS_ENV, "PYTHON": sys.executable}
    completed = subprocess.run(command, capture_output=True, text=True, check=False, env=env, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-4000:]

    records = [json.loads(line) for line in (output / "instances.log").read_text().splitlines()]
    assert len(records) == NUM_UTTERANCES

    scores = json.loads((output / "scores.json").read_text())
    assert scores["num_instances"] == NUM_UTTERANCES
    assert isinstance(scores["BLEU"], float)
    assert 0.0 <= scores["BLEU"] <= 100.0
    assert "tok:13a" in scores["BLEU_signature"]
    assert scores["latency_unit"] == "word"
    assert scores["split"] == "tst-COMMON"
    assert scores["waitk_lagging"] == "3"
    assert scores["source_segment_size_ms"] == "320"
    assert Path(scores["checkpoint"]) == checkpoint
    assert Path(scores["instances_log"]) == (output / "instances.log").resolve()
    for metric in METRICS:
        plain, aware = scores[metric], scores[metric + "_CA"]
        assert isinstance(plain, float), metric
        assert math.isfinite(plain), metric
        assert isinstance(aware, float), metric
        assert math.isfinite(aware), metric
        # Computation takes some time, so elapsed times exceed delays.
        assert aware > plain, metric

    with open(output / "scores.tsv", encoding="utf-8") as table:
        simuleval_scores = next(csv.DictReader(table, delimiter="\t"))
    for metric in METRICS:
        assert float(simuleval_scores[metric]) == pytest.approx(scores[metric], abs=1e-3), metric
    assert float(simuleval_scores["BLEU"]) == pytest.approx(scores["BLEU"], abs=1e-3)

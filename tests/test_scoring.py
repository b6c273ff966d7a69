"""Tests for leap_fairseq.scoring and scripts/score_simul.py on instance logs with known values.

The expected latencies are computed by hand from the definitions that SimulEval 1.1.4
implements (delays and elapsed times in milliseconds):

- AL = mean over i <= tau of d_i - (i - 1) * |X| / |Y|, where tau is the first i with
  d_i >= |X| and |Y| is the reference length in words;
- LAAL is AL with |Y| replaced by max(|Y|, hypothesis length);
- AP = sum(d_i) / (|X| * |Y|);
- DAL = mean of g'_i - (i - 1) / gamma with g'_1 = d_1, g'_i = max(d_i, g'_{i-1} + 1 / gamma),
  gamma = hypothesis length / |X|.

The computation-aware values use the elapsed times in place of the delays.
"""

import csv
import json
import math
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import sacrebleu

from leap_fairseq.scoring import load_instances, latency_scores, score_log, write_json_atomic

REPO_ROOT = Path(__file__).resolve().parent.parent

# Utterance 0: 1000 ms of source, 4 reference words, 4 output words.
# Utterance 1: 2000 ms of source, 2 reference words, 3 output words (over-generation).
RECORDS = [
    {
        "index": 0,
        "prediction": "das ist ein Test",
        "delays": [200.0, 400.0, 600.0, 1000.0],
        "elapsed": [250.0, 500.0, 800.0, 1300.0],
        "prediction_length": 4,
        "reference": "das ist ein Test",
        "source": ["a.wav"],
        "source_length": 1000.0,
    },
    {
        "index": 1,
        "prediction": "guten Tag heute",
        "delays": [1000.0, 2000.0, 2000.0],
        "elapsed": [1100.0, 2300.0, 2400.0],
        "prediction_length": 3,
        "reference": "guten Tag",
        "source": ["b.wav"],
        "source_length": 2000.0,
    },
]


def _hand_values():
    """Return the per-utterance metrics of RECORDS, written out term by term."""
    al_0 = ((200 - 0) + (400 - 250) + (600 - 500) + (1000 - 750)) / 4
    al_ca_0 = ((250 - 0) + (500 - 250) + (800 - 500) + (1300 - 750)) / 4
    # Utterance 1: |X| / |Y| = 2000 / 2 = 1000; tau = 2 because d_2 = 2000 reaches |X|.
    al_1 = ((1000 - 0) + (2000 - 1000)) / 2
    al_ca_1 = ((1100 - 0) + (2300 - 1000)) / 2
    # LAAL for utterance 1 divides by max(2, 3) = 3 words.
    step = 2000 / 3
    laal_1 = ((1000 - 0) + (2000 - step)) / 2
    laal_ca_1 = ((1100 - 0) + (2300 - step)) / 2
    ap_0 = (200 + 400 + 600 + 1000) / (1000 * 4)
    ap_ca_0 = (250 + 500 + 800 + 1300) / (1000 * 4)
    ap_1 = (1000 + 2000 + 2000) / (2000 * 2)
    ap_ca_1 = (1100 + 2300 + 2400) / (2000 * 2)
    # DAL, utterance 0: 1 / gamma = 250; g' = 200, max(400, 450), max(600, 700), max(1000, 950).
    dal_0 = (200 + (450 - 250) + (700 - 500) + (1000 - 750)) / 4
    # Computation-aware: g' = 250, max(500, 500), max(800, 750), max(1300, 1050).
    dal_ca_0 = (250 + (500 - 250) + (800 - 500) + (1300 - 750)) / 4
    # DAL, utterance 1: 1 / gamma = 2000 / 3; g' = 1000, max(2000, 1000 + step), max(2000, 2000 + step).
    dal_1 = (1000 + (2000 - step) + (2000 + step - 2 * step)) / 3
    dal_ca_1 = (1100 + (2300 - step) + (max(2400, 2300 + step) - 2 * step)) / 3
    return {
        "AL": (al_0 + al_1) / 2,
        "AL_CA": (al_ca_0 + al_ca_1) / 2,
        "LAAL": (al_0 + laal_1) / 2,
        "LAAL_CA": (al_ca_0 + laal_ca_1) / 2,
        "AP": (ap_0 + ap_1) / 2,
        "AP_CA": (ap_ca_0 + ap_ca_1) / 2,
        "DAL": (dal_0 + dal_1) / 2,
        "DAL_CA": (dal_ca_0 + dal_ca_1) / 2,
    }


def _write_log(path: Path, records) -> Path:
    with open(path, "w", encoding="utf-8") as log_file:
        for record in records:
            log_file.write(json.dumps(record) + "\n")
    return path


@pytest.fixture
def instances_log(tmp_path) -> Path:
    return _write_log(tmp_path / "instances.log", RECORDS)


def test_latency_plain_matches_hand(instances_log):
    instances = load_instances(instances_log)
    scores = latency_scores(instances, computation_aware=False)
    expected = _hand_values()
    for metric in ("AL", "LAAL", "AP", "DAL"):
        assert scores[metric] == pytest.approx(expected[metric], rel=1e-9), metric


def test_latency_computation_aware_matches_hand(instances_log):
    instances = load_instances(instances_log)
    scores = latency_scores(instances, computation_aware=True)
    expected = _hand_values()
    for metric in ("AL", "LAAL", "AP", "DAL"):
        assert scores[metric + "_CA"] == pytest.approx(expected[metric + "_CA"], rel=1e-9), metric


def test_plain_and_aware_differ(instances_log):
    scores = score_log(instances_log)
    for metric in ("AL", "LAAL", "AP", "DAL"):
        assert scores[metric + "_CA"] > scores[metric], metric


def test_plain_equals_aware_without_compute(tmp_path):
    records = [dict(record, elapsed=list(record["delays"])) for record in RECORDS]
    scores = score_log(_write_log(tmp_path / "instances.log", records))
    for metric in ("AL", "LAAL", "AP", "DAL"):
        assert scores[metric + "_CA"] == pytest.approx(scores[metric]), metric


def test_simuleval_flag_leaks_into_plain():
    # The reason score_simul.py exists: SimulEval 1.1.4 builds its plain scorers with
    # computation_aware taken from --computation-aware.
    from simuleval.evaluator.scorers import get_scorer_class

    scorer = get_scorer_class("latency", "AL").from_args(Namespace(computation_aware=True, no_use_ref_len=False))
    assert scorer.timestamp_type == "elapsed"


def test_bleu_and_signature(instances_log):
    scores = score_log(instances_log)
    hypotheses = [record["prediction"] for record in RECORDS]
    references = [record["reference"] for record in RECORDS]
    expected = sacrebleu.corpus_bleu(hypotheses, [references], tokenize="13a")
    assert scores["BLEU"] == pytest.approx(expected.score)
    assert "tok:13a" in scores["BLEU_signature"]
    assert f"version:{sacrebleu.__version__}" in scores["BLEU_signature"]
    assert scores["num_instances"] == 2


def test_empty_prediction_skipped_in_latency(tmp_path):
    empty = {
        "index": 2,
        "prediction": "",
        "delays": [],
        "elapsed": [],
        "prediction_length": 0,
        "reference": "nichts",
        "source": ["c.wav"],
        "source_length": 500.0,
    }
    scores = score_log(_write_log(tmp_path / "instances.log", RECORDS + [empty]))
    assert scores["num_instances"] == 3
    assert scores["AL"] == pytest.approx(_hand_values()["AL"])


def test_log_with_bad_line(tmp_path):
    path = tmp_path / "instances.log"
    path.write_text(json.dumps(RECORDS[0]) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"instances.log:2"):
        load_instances(path)


def test_log_with_mismatched_lengths(tmp_path):
    broken = dict(RECORDS[0], elapsed=[1.0])
    path = _write_log(tmp_path / "instances.log", [broken])
    with pytest.raises(ValueError, match="4 delays but 1 elapsed"):
        load_instances(path)


def test_missing_log(tmp_path):
    with pytest.raises(FileNotFoundError, match="run simuleval with --output"):
        load_instances(tmp_path / "instances.log")


def test_write_json_atomic_nan(tmp_path):
    target = tmp_path / "out" / "scores.json"
    write_json_atomic({"AL": math.nan, "BLEU": 1.5}, target, {"k": "3"})
    assert json.loads(target.read_text()) == {"AL": None, "BLEU": 1.5, "k": "3"}
    assert [p.name for p in target.parent.iterdir()] == ["scores.json"]


def test_score_simul_script(instances_log, tmp_path):
    output = tmp_path / "scores.json"
    completed = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "scripts" / "score_simul.py"),
            str(instances_log),
            "--json",
            str(output),
            "--extra",
            "waitk=3",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    scores = json.loads(output.read_text())
    expected = _hand_values()
    for name, value in expected.items():
        assert scores[name] == pytest.approx(value), name
    for field in ("BLEU", "BLEU_signature", "num_instances", "latency_unit", "instances_log", "scored_at"):
        assert field in scores, field
    assert scores["waitk"] == "3"
    assert "computation-aware" in completed.stdout


def _empty_record(index: int, reference: str) -> dict:
    """Return an instance record without output words, as SimulEval logs an empty translation."""
    return {
        "index": index,
        "prediction": "",
        "delays": [],
        "elapsed": [],
        "prediction_length": 0,
        "reference": reference,
        "source": [f"{index}.wav"],
        "source_length": 500.0 * (index + 1),
    }


def _run_score_simul(instances_log: Path, output: Path, *options: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO_ROOT / "scripts" / "score_simul.py"), str(instances_log), "--json", str(output)]
    return subprocess.run([*command, *options], capture_output=True, text=True, check=False)


def test_all_empty_predictions_score(tmp_path):
    records = [_empty_record(0, "das ist ein Test"), _empty_record(1, "guten Tag")]
    scores = score_log(_write_log(tmp_path / "instances.log", records))
    assert scores["num_instances"] == 2
    assert scores["BLEU"] == 0.0
    for metric in ("AL", "LAAL", "AP", "DAL"):
        assert math.isnan(scores[metric]), metric
        assert math.isnan(scores[metric + "_CA"]), metric


def test_score_simul_all_empty_predictions(tmp_path):
    # SimulEval 1.1.4's own latency scorers raise StatisticsError on this log.
    records = [_empty_record(0, "das ist ein Test"), _empty_record(1, "guten Tag")]
    instances_log = _write_log(tmp_path / "instances.log", records)
    (tmp_path / "config.yaml").write_text("source_type: speech\ntarget_type: text\n", encoding="utf-8")
    output = tmp_path / "scores.json"
    completed = _run_score_simul(instances_log, output, "--simuleval-table")
    assert completed.returncode == 0, completed.stderr
    scores = json.loads(output.read_text())
    assert scores["BLEU"] == 0.0
    for metric in ("AL", "LAAL", "AP", "DAL"):
        assert scores[metric] is None, metric
        assert scores[metric + "_CA"] is None, metric
    assert "StatisticsError" in completed.stderr
    assert not (tmp_path / "scores.tsv").exists()


def test_score_simul_writes_simuleval_table(instances_log, tmp_path):
    (tmp_path / "config.yaml").write_text("source_type: speech\ntarget_type: text\n", encoding="utf-8")
    output = tmp_path / "scores.json"
    completed = _run_score_simul(instances_log, output, "--simuleval-table")
    assert completed.returncode == 0, completed.stderr
    scores = json.loads(output.read_text())
    with open(tmp_path / "scores.tsv", encoding="utf-8") as table:
        simuleval_scores = next(csv.DictReader(table, delimiter="\t"))
    for metric in ("AL", "LAAL", "AP", "DAL"):
        assert float(simuleval_scores[metric]) == pytest.approx(scores[metric], abs=1e-3), metric
    assert float(simuleval_scores["BLEU"]) == pytest.approx(scores["BLEU"], abs=1e-3)


def test_simuleval_table_needs_instances_log(tmp_path):
    other_log = _write_log(tmp_path / "other.log", RECORDS)
    completed = _run_score_simul(other_log, tmp_path / "scores.json", "--simuleval-table")
    assert completed.returncode != 0
    assert "instances.log" in completed.stderr


def test_computation_ms_matches_hand(tmp_path):
    # Last words: 1300 - 1000 = 300 ms and 2400 - 2000 = 400 ms; an empty sentence is left out.
    records = RECORDS + [_empty_record(2, "leer")]
    scores = score_log(_write_log(tmp_path / "with_empty.log", records))
    assert scores["computation_ms"] == pytest.approx(350.0)


def test_computation_ms_without_output(tmp_path):
    scores = score_log(_write_log(tmp_path / "empty.log", [_empty_record(0, "leer")]))
    assert math.isnan(scores["computation_ms"])

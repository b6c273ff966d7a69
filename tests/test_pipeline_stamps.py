"""Tests for the MuST-C pipeline's stage bookkeeping: reruns after a redone stage, and failed stages.

Each test runs the real stages of the tiny pipeline of test_pipeline.py (about 30 s a full run
on 2 CPU cores).
"""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_pipeline import CORPUS_OPTIONS, REPO_ROOT, needs_programs, run_pipeline

PAIR = "en-de"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Return a tiny MuST-C corpus whose tst-COMMON has one of its 6 segments without a translation.

    The preparation drops that segment from the ST manifest and the SimulEval lists.
    """
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        pytest.skip("espeak-ng and sox are needed: sudo apt-get install -y espeak-ng sox")
    out = tmp_path_factory.mktemp("pipeline_stamps") / "corpus"
    subprocess.run([sys.executable, str(REPO_ROOT / "data_prep" / "make_demo_corpus.py"), "--out", str(out),
                    *CORPUS_OPTIONS], check=True, capture_output=True)
    translations = out / PAIR / "data" / "tst-COMMON" / "txt" / "tst-COMMON.de"
    lines = translations.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 6
    lines[1] = ""
    translations.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out.resolve()


def model_weights(checkpoint: Path) -> dict:
    state = torch.load(checkpoint, weights_only=False)
    return {name: value for name, value in state["model"].items() if value.is_floating_point()}


def check_success(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@needs_programs
def test_redone_training_reruns_later_stages(corpus, tmp_path):
    work = tmp_path / "work"
    check_success(run_pipeline(corpus, work))
    old_weights = model_weights(work / "st" / "checkpoint_avg.pt")

    # Other options for st_train: the message names the files to delete and deletes nothing.
    changed = run_pipeline(corpus, work, "--set", "st.max-update=3")
    stamp = work / "stamps" / "st_train.done"
    checkpoints = work / "st" / "checkpoints"
    assert changed.returncode != 0
    assert "stage st_train was run with other options" in changed.stderr
    assert f"rm -r {stamp} {checkpoints}\n" in changed.stderr
    assert "the later stages then run again by themselves" in changed.stderr
    assert "another --work-dir" in changed.stderr
    assert stamp.is_file()
    assert (checkpoints / "checkpoint_last.pt").is_file()

    # Following the message redoes st_train, and every stage after it runs again.
    stamp.unlink()
    shutil.rmtree(checkpoints)
    redo = run_pipeline(corpus, work, "--set", "st.max-update=3", "--set", "pipeline.eval_k=[1]")
    check_success(redo)
    for stage in ("prep", "asr_train", "asr_average"):
        assert f"== {stage}: done earlier, skipping" in redo.stdout, stage
    for stage in ("st_train", "st_average", "eval_k1", "proportions", "results"):
        assert f"== {stage}: started" in redo.stdout, stage
    removal = "== st_train ran again, so later results are out of date: removing "
    for path in (work / "st" / "checkpoint_avg.pt", work / "stamps" / "eval_k2.done", work / "eval" / "k2",
                 work / "proportions.png"):
        assert f"{removal}{path}\n" in redo.stdout, path
    assert not (work / "eval" / "k2").exists()
    new_weights = model_weights(work / "st" / "checkpoint_avg.pt")
    assert new_weights.keys() == old_weights.keys()
    assert any(not torch.equal(new_weights[name], old_weights[name]) for name in new_weights)
    results = (work / "results.md").read_text(encoding="utf-8")
    assert "--set st.max-update=3" in results
    assert f"- MuST-C: {corpus / PAIR}\n" in results
    assert "| en-de leap/leap/leap | 1 |" in results
    assert "| en-de leap/leap/leap | 2 |" not in results

    # results.md lists only the k values of the run, whatever else eval/ holds.
    shutil.copytree(work / "eval" / "k1", work / "eval" / "k5")
    rerun = run_pipeline(corpus, work, "--set", "st.max-update=3", "--set", "pipeline.eval_k=[1]")
    check_success(rerun)
    assert "== eval_k1: done earlier, skipping" in rerun.stdout
    results = (work / "results.md").read_text(encoding="utf-8")
    assert "| en-de leap/leap/leap | 1 |" in results
    assert "| en-de leap/leap/leap | 5 |" not in results

    # A stamp whose output was deleted does not count: the stage and those after it run again.
    (work / "st" / "checkpoint_avg.pt").unlink()
    missing = run_pipeline(corpus, work, "--set", "st.max-update=3", "--set", "pipeline.eval_k=[1]")
    check_success(missing)
    assert f"== st_average: {work / 'st' / 'checkpoint_avg.pt'} is missing although" in missing.stdout
    for stage in ("st_average", "eval_k1", "results"):
        assert f"== {stage}: started" in missing.stdout, stage
    assert (work / "st" / "checkpoint_avg.pt").is_file()


@needs_programs
def test_failed_prep_reruns_with_other_options(corpus, tmp_path):
    work = tmp_path / "work"
    stamps = work / "stamps"
    failed = run_pipeline(corpus, work, "--set", "prep.vocab-type=unigram", "--set", "prep.vocab-size=100000")
    assert failed.returncode != 0
    assert "stage prep failed" in failed.stderr
    assert re.search(r"in this pipeline pass --set prep\.vocab-size=\d+", failed.stderr), failed.stderr[-2000:]
    assert (stamps / "prep.failed").is_file()
    assert not (stamps / "prep.started").exists()

    # Other options get past the stamp of the failed stage. Their other features make
    # prep_mustc_data.py ask for --overwrite, which the message translates into a --set option.
    other = run_pipeline(corpus, work, "--set", "prep.max-frames=2000")
    assert other.returncode != 0
    assert "failed earlier with other options; running it with the current ones" in other.stdout
    assert "was run with other options" not in other.stderr
    assert "in this pipeline pass --set prep.overwrite=true" in other.stderr

    fixed = run_pipeline(corpus, work, "--set", "prep.max-frames=2000", "--set", "prep.overwrite=true")
    check_success(fixed)
    assert not (stamps / "prep.failed").exists()
    # --quiet keeps the log off the console, but not the warning about the dropped segment.
    warnings = [line for line in fixed.stderr.splitlines() if "| WARNING | prep_mustc_data |" in line]
    assert len(warnings) == 1, fixed.stderr[-3000:]
    assert "tst-COMMON" in warnings[0]
    results = (work / "results.md").read_text(encoding="utf-8")
    assert ("- tst-COMMON: 5 of 6 segments evaluated; the others were dropped during preparation, "
            "see data/en-de/dropped_segments.tsv\n") in results
    scores = json.loads((work / "eval" / "k2" / "scores.json").read_text(encoding="utf-8"))
    assert scores["num_instances"] == 5

    # --overwrite is left out of prep's stamp key, so a rerun without it finds prep done.
    rerun = run_pipeline(corpus, work, "--set", "prep.max-frames=2000")
    check_success(rerun)
    assert "== prep: done earlier, skipping" in rerun.stdout


def test_prep_warnings_shortened(tmp_path):
    log = tmp_path / "prep.log"
    segment = "2026-12-05 00:00:00,000 | WARNING | prep_mustc_data | ROOT/tst-COMMON.yaml:{}: unreadable wav"
    summary = "2026-12-05 00:00:01,000 | WARNING | prep_mustc_data | en-de tst-COMMON: 20 of 40 segments are left out"
    lines = ["# earlier run", segment.format(0)] + [segment.format(line) for line in range(1, 21)] + [summary]
    log.write_text("\n".join(lines) + "\n", encoding="utf-8")
    script = f'source "{REPO_ROOT}/scripts/lib/pipeline_stages.sh"; print_prep_warnings "{log}" 3'
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    printed = result.stderr.splitlines()
    assert printed[:3] == [segment.format(line) for line in (1, 2, 3)]
    assert printed[3] == f"... 17 more warnings about single segments in {log}"
    assert printed[4:] == [summary]

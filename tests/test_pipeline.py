"""Tests for the MuST-C pipeline: its helper scripts and one small end-to-end run."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = REPO_ROOT / "scripts"
sys.path.insert(0, str(SCRIPTS))

import config_to_args  # noqa: E402
import make_results  # noqa: E402

# A pipeline run small enough for CI: a corpus of 12 training sentences, character vocabulary,
# two updates of ASR and of ST training, one k.
TINY_OVERRIDES = [
    "pipeline.eval_k=[2]",
    "pipeline.average_last=2",
    "pipeline.proportions_utterances=2",
    "train.save-interval-updates=1",
    "train.keep-interval-updates=2",
    "train.max-tokens=1000",
    "train.log-interval=1",
    "asr.max-update=2",
    "asr.warmup-updates=1",
    "st.max-update=2",
    "st.warmup-updates=1",
    "st.waitk-lagging-train=[1,2]",
    "st.waitk-lagging=2",
    "model.fixed-pre-decision-ratio=3",
]
CORPUS_OPTIONS = ["--train-talks", "2", "--dev-talks", "1", "--test-talks", "1", "--segs-per-talk", "6",
                  "--langs", "de", "--seed", "3", "--quiet"]


# ---------------------------------------------------------------------------
# config_to_args.py
# ---------------------------------------------------------------------------


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_config_args_merges_sections(tmp_path):
    path = write_config(tmp_path, (
        "model:\n  arch: tiny\n  encoder-attention-type: leap\n"
        "train:\n  lr: 0.001\n  cpu: true\n  fp16: false\n  seed: null\n"
        "st:\n  lr: 0.002\n  waitk-lagging-train: [1, 3, 5]\n  adam-betas: \"(0.9, 0.98)\"\n"
    ))
    config = config_to_args.load_config(str(path))
    words = config_to_args.option_words(config, str(path), ["model", "train", "st"])
    assert words == [
        "--arch", "tiny", "--encoder-attention-type", "leap", "--lr", "0.002", "--cpu",
        "--waitk-lagging-train", "1,3,5", "--adam-betas", "(0.9, 0.98)",
    ]


def test_config_overrides(tmp_path):
    path = write_config(tmp_path, "model:\n  encoder-attention-type: leap\npipeline:\n  eval_k: [1, 3]\n")
    config = config_to_args.load_config(
        str(path), ["model.encoder-attention-type=softmax", "pipeline.eval_k=[5]", "asr.max-update=3", "eval=null"]
    )
    assert config["model"]["encoder-attention-type"] == "softmax"
    assert config_to_args.get_value(config, str(path), "pipeline.eval_k") == "5"
    assert config_to_args.option_words(config, str(path), ["asr"]) == ["--max-update", "3"]
    assert config_to_args.option_words(config, str(path), ["eval"]) == []


def test_config_get_reports_missing_key(tmp_path):
    path = write_config(tmp_path, "pipeline:\n  asr_pretraining: true\n")
    config = config_to_args.load_config(str(path))
    assert config_to_args.get_value(config, str(path), "pipeline.asr_pretraining") == "true"
    assert config_to_args.get_value(config, str(path), "pipeline.eval_k", default="3") == "3"
    with pytest.raises(SystemExit, match="has no value for pipeline.eval_k"):
        config_to_args.get_value(config, str(path), "pipeline.eval_k")


def test_config_rejects_bad_input(tmp_path):
    with pytest.raises(SystemExit, match="config file not found"):
        config_to_args.load_config(str(tmp_path / "missing.yaml"))
    path = write_config(tmp_path, "model: [1, 2]\n")
    config = config_to_args.load_config(str(path))
    with pytest.raises(SystemExit, match="section 'model'"):
        config_to_args.option_words(config, str(path), ["model"])
    with pytest.raises(SystemExit, match="expects SECTION.KEY=VALUE"):
        config_to_args.load_config(str(path), ["no-equals-sign"])


def test_config_cli_prints_nul_separated_words(tmp_path):
    path = write_config(tmp_path, "train:\n  lr: 0.5\n  cpu: true\n")
    result = subprocess.run(
        [sys.executable, str(SCRIPTS / "config_to_args.py"), "args", str(path), "train", "--set", "train.seed=4"],
        capture_output=True, check=True,
    )
    assert result.stdout.split(b"\0")[:-1] == [b"--lr", b"0.5", b"--cpu", b"--seed", b"4"]


@pytest.mark.parametrize("name", ["mustc_paper.yaml", "mustc_tiny.yaml", "demo.yaml"])
def test_shipped_configs_parse(name):
    path = str(REPO_ROOT / "configs" / name)
    config = config_to_args.load_config(path)
    for section in ("prep", "model", "train", "asr", "st", "eval"):
        config_to_args.option_words(config, path, [section])
    assert config_to_args.get_value(config, path, "pipeline.eval_k")
    for block in ("encoder", "decoder", "cross"):
        assert config["model"][f"{block}-attention-type"] == "leap"
    softmax = config_to_args.load_config(path, ["model.encoder-attention-type=softmax"])
    assert "softmax" in config_to_args.option_words(softmax, path, ["model"])


# ---------------------------------------------------------------------------
# average_checkpoints.py
# ---------------------------------------------------------------------------


def save_fake_checkpoint(path: Path, scale: float, updates: int) -> None:
    state = {
        "args": None,
        "cfg": {"common": {"seed": 1}, "model": {"_name": "fake"}},
        "model": {
            "weight": torch.full((2, 3), scale, dtype=torch.float32),
            "half": torch.full((2,), scale, dtype=torch.float16),
            "counter": torch.tensor(updates),
        },
        "optimizer_history": [{"criterion_name": "x", "optimizer_name": "y", "lr_scheduler_state": {"best": 1.0},
                               "num_updates": updates}],
        "extra_state": {"train_iterator": {"epoch": 1}},
        "last_optimizer_state": {},
    }
    torch.save(state, path)


def test_average_checkpoints_last_updates(tmp_path):
    import average_checkpoints

    for index, updates in enumerate([10, 20, 30, 40]):
        save_fake_checkpoint(tmp_path / f"checkpoint_1_{updates}.pt", float(index + 1), updates)
    save_fake_checkpoint(tmp_path / "checkpoint_best.pt", 100.0, 5)
    output = tmp_path / "avg" / "checkpoint_avg.pt"
    average_checkpoints.main(["--inputs", str(tmp_path), "--num-update-checkpoints", "3", "--output", str(output)])
    state = torch.load(output, weights_only=False)
    assert torch.allclose(state["model"]["weight"], torch.full((2, 3), 3.0))
    assert state["model"]["half"].dtype == torch.float16
    assert torch.allclose(state["model"]["half"].float(), torch.full((2,), 3.0))
    assert int(state["model"]["counter"]) == 40
    assert [Path(p).name for p in state["extra_state"]["averaged_checkpoints"]] == [
        "checkpoint_1_20.pt", "checkpoint_1_30.pt", "checkpoint_1_40.pt"]


def test_average_checkpoints_include_last(tmp_path):
    import average_checkpoints

    for index, updates in enumerate([10, 20]):
        save_fake_checkpoint(tmp_path / f"checkpoint_1_{updates}.pt", float(index + 1), updates)
    save_fake_checkpoint(tmp_path / "checkpoint_last.pt", 6.0, 30)
    output = tmp_path / "avg.pt"
    average_checkpoints.main(["--inputs", str(tmp_path), "--num-update-checkpoints", "2", "--include-last",
                              "--output", str(output)])
    state = torch.load(output, weights_only=False)
    assert torch.allclose(state["model"]["weight"], torch.full((2, 3), 4.0))
    assert int(state["model"]["counter"]) == 30

    # An older checkpoint_last.pt (training resumed elsewhere) is not counted.
    save_fake_checkpoint(tmp_path / "checkpoint_last.pt", 6.0, 15)
    average_checkpoints.main(["--inputs", str(tmp_path), "--num-update-checkpoints", "2", "--include-last",
                              "--output", str(output)])
    assert torch.allclose(torch.load(output, weights_only=False)["model"]["weight"], torch.full((2, 3), 1.5))


def test_average_checkpoints_too_few(tmp_path):
    import average_checkpoints

    save_fake_checkpoint(tmp_path / "checkpoint_1_10.pt", 1.0, 10)
    output = tmp_path / "avg.pt"
    with pytest.raises(SystemExit, match="fewer than the 3 requested"):
        average_checkpoints.main(["--inputs", str(tmp_path), "--num-update-checkpoints", "3", "--output", str(output)])
    average_checkpoints.main(["--inputs", str(tmp_path), "--num-update-checkpoints", "3", "--allow-fewer",
                              "--output", str(output)])
    assert torch.allclose(torch.load(output, weights_only=False)["model"]["weight"], torch.ones(2, 3))


# ---------------------------------------------------------------------------
# make_results.py
# ---------------------------------------------------------------------------


def fake_scores(folder: Path, k: int, bleu: float, al: float, sentences: int = 4) -> None:
    scores = {"num_instances": sentences, "BLEU": bleu, "BLEU_signature": "nrefs:1", "latency_unit": "word"}
    for metric in ("AL", "LAAL", "AP", "DAL"):
        scores[metric] = al if metric != "AP" else 0.7
        scores[metric + "_CA"] = al + 100 if metric != "AP" else 0.9
    (folder / f"k{k}").mkdir(parents=True)
    (folder / f"k{k}" / "scores.json").write_text(json.dumps(scores), encoding="utf-8")


def test_make_results_table_and_plot(tmp_path):
    leap, softmax = tmp_path / "leap", tmp_path / "softmax"
    fake_scores(leap, 5, 20.0, 1500.0)
    fake_scores(leap, 3, 15.5, 1000.0)
    fake_scores(softmax, 3, 16.25, 990.0)
    output = tmp_path / "out" / "results.md"
    make_results.main(["--run", f"leap={leap}", "--run", f"softmax={softmax}", "--output", str(output),
                       "--plot", str(tmp_path / "out" / "bleu_al.png"), "--note", "a note"])
    text = output.read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith("| leap") or line.startswith("| softmax")]
    assert rows[0].startswith("| leap | 3 | 15.50 | 1000 | 1100 |")
    assert rows[1].startswith("| leap | 5 | 20.00 | 1500 | 1600 |")
    assert rows[2].startswith("| softmax | 3 | 16.25 | 990 |")
    assert "![BLEU against AL](bleu_al.png)" in text
    assert "- a note" in text
    assert (tmp_path / "out" / "bleu_al.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_make_results_restricts_k_values(tmp_path):
    run = tmp_path / "run"
    for k in (3, 5, 7):
        fake_scores(run, k, 10.0 + k, 300.0 * k)
    assert [row["k"] for row in make_results.read_run(run)] == [3, 5, 7]
    assert [row["k"] for row in make_results.read_run(run, [7, 3])] == [3, 7]
    with pytest.raises(SystemExit, match=r"no k4/scores.json in .*leave them out of --k"):
        make_results.read_run(run, [3, 4])

    output = tmp_path / "results.md"
    make_results.main(["--run", f"leap={run}", "--k", "3", "7", "--output", str(output),
                       "--plot", str(tmp_path / "bleu_al.png")])
    text = output.read_text(encoding="utf-8")
    assert "| leap | 3 |" in text
    assert "| leap | 7 |" in text
    assert "| leap | 5 |" not in text


def test_make_results_notes_sentence_mismatch(tmp_path):
    full, partial = tmp_path / "full", tmp_path / "partial"
    fake_scores(full, 3, 15.0, 1000.0, sentences=40)
    fake_scores(partial, 3, 16.0, 1000.0, sentences=20)
    output = tmp_path / "results.md"
    arguments = ["--output", str(output), "--plot", str(tmp_path / "bleu_al.png")]
    make_results.main(["--run", f"full={full}", "--run", f"partial={partial}", *arguments])
    text = output.read_text(encoding="utf-8")
    assert ("- the rows were scored on different numbers of sentences (full k=3: 40, partial k=3: 20), "
            "so they do not compare directly\n") in text
    make_results.main(["--run", f"full={full}", *arguments])
    assert "different numbers of sentences" not in output.read_text(encoding="utf-8")


def test_make_results_rejects_duplicate_labels(tmp_path):
    first, second = tmp_path / "a" / "eval", tmp_path / "b" / "eval"
    fake_scores(first, 3, 15.0, 1000.0)
    fake_scores(second, 3, 16.0, 1000.0)
    arguments = ["--output", str(tmp_path / "results.md"), "--plot", str(tmp_path / "bleu_al.png")]
    with pytest.raises(SystemExit, match="two --run options have the label 'leap'"):
        make_results.main(["--run", f"leap={first}", "--run", f"leap={second}", *arguments])
    # Without LABEL=, the label is the folder name, so both are "eval".
    with pytest.raises(SystemExit, match="two --run options have the label 'eval'"):
        make_results.main(["--run", str(first), "--run", str(second), *arguments])
    assert not (tmp_path / "results.md").exists()


def test_make_results_rejects_incomplete_scores(tmp_path):
    (tmp_path / "run" / "k3").mkdir(parents=True)
    (tmp_path / "run" / "k3" / "scores.json").write_text(json.dumps({"BLEU": 1.0}), encoding="utf-8")
    with pytest.raises(SystemExit, match="has no AL"):
        make_results.read_run(tmp_path / "run")
    with pytest.raises(SystemExit, match="no k<K>/scores.json"):
        make_results.read_run(tmp_path)


# ---------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------


needs_programs = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("sox") is None,
    reason="espeak-ng and sox are needed: sudo apt-get install -y espeak-ng sox",
)


def run_pipeline(corpus: Path, work: Path, *extra: str) -> subprocess.CompletedProcess:
    command = ["bash", str(SCRIPTS / "mustc_pipeline.sh"), "--lang", "de", "--mustc-root", str(corpus),
               "--work-dir", str(work), "--config", str(REPO_ROOT / "configs" / "mustc_tiny.yaml"),
               "--jobs", "2", "--quiet"]
    for override in TINY_OVERRIDES:
        command += ["--set", override]
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(command + list(extra), capture_output=True, text=True, env=environment, timeout=900)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        pytest.skip("espeak-ng and sox are needed: sudo apt-get install -y espeak-ng sox")
    out = tmp_path_factory.mktemp("pipeline") / "corpus"
    subprocess.run([sys.executable, str(REPO_ROOT / "data_prep" / "make_demo_corpus.py"), "--out", str(out),
                    *CORPUS_OPTIONS], check=True, capture_output=True)
    return out


@needs_programs
def test_pipeline_end_to_end(corpus, tmp_path):
    work = tmp_path / "work"
    result = run_pipeline(corpus, work)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    for stage in ("prep", "asr_train", "asr_average", "st_train", "st_average", "eval_k2", "proportions", "results"):
        assert (work / "stamps" / f"{stage}.done").is_file(), stage
    scores = json.loads((work / "eval" / "k2" / "scores.json").read_text(encoding="utf-8"))
    assert scores["num_instances"] == 6
    for metric in ("BLEU", "AL", "AL_CA", "LAAL", "LAAL_CA"):
        assert metric in scores
    results = (work / "results.md").read_text(encoding="utf-8")
    assert "| en-de leap/leap/leap | 2 |" in results
    for png in ("bleu_al.png", "proportions.png"):
        assert (work / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    state = torch.load(work / "st" / "checkpoint_avg.pt", weights_only=False)
    assert len(state["extra_state"]["averaged_checkpoints"]) == 2
    assert "== st_train: finished" in result.stdout
    assert "results:" in result.stdout

    # A rerun finds every stage done; only the results are rebuilt.
    rerun = run_pipeline(corpus, work)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    for stage in ("prep", "asr_train", "st_train", "eval_k2", "proportions"):
        assert f"== {stage}: done earlier, skipping" in rerun.stdout, stage

    # Other options for a finished stage stop the pipeline instead of mixing results.
    changed = run_pipeline(corpus, work, "--set", "st.max-update=3")
    assert changed.returncode != 0
    assert "stage st_train was run with other options" in changed.stderr


@needs_programs
def test_pipeline_names_failed_stage(corpus, tmp_path):
    result = run_pipeline(corpus, tmp_path / "work", "--set", "prep.vocab-type=unigram", "--set",
                          "prep.vocab-size=100000")
    assert result.returncode != 0
    assert "stage prep failed" in result.stderr
    assert not (tmp_path / "work" / "stamps" / "prep.done").exists()


def run_pipeline_script(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPTS / "mustc_pipeline.sh"), *arguments], capture_output=True, text=True)


def make_mustc_layout(root: Path, lang: str) -> None:
    """Create the empty folders of MuST-C v1's train, dev and tst-COMMON splits."""
    for split in ("train", "dev", "tst-COMMON"):
        for folder in ("wav", "txt"):
            (root / f"en-{lang}" / "data" / split / folder).mkdir(parents=True)


def test_pipeline_rejects_bad_arguments(tmp_path):
    work = tmp_path / "w"
    result = run_pipeline_script("--lang", "xx", "--mustc-root", str(tmp_path), "--work-dir", str(work))
    assert result.returncode != 0
    assert "--lang must be one of de es fr it nl pt ro ru" in result.stderr
    # Every target language of MuST-C v1 is accepted.
    result = run_pipeline_script("--lang", "fr", "--mustc-root", str(tmp_path), "--work-dir", str(work))
    assert result.returncode != 0
    assert "en-fr/data not found" in result.stderr
    result = run_pipeline_script("--lang", "de", "--mustc-root", str(tmp_path), "--work-dir", str(work))
    assert result.returncode != 0
    assert "en-de/data not found" in result.stderr
    (tmp_path / "en-de" / "data").mkdir(parents=True)
    result = run_pipeline_script("--lang", "de", "--mustc-root", str(tmp_path), "--work-dir", str(work),
                                 "--attention-type", "fast")
    assert result.returncode != 0
    assert "--attention-type must be" in result.stderr
    assert not work.exists()


def test_pipeline_rejects_missing_split(tmp_path):
    root = tmp_path / "mustc"
    make_mustc_layout(root, "it")
    (root / "en-it" / "data" / "tst-COMMON" / "txt").rmdir()
    result = run_pipeline_script("--lang", "it", "--mustc-root", str(root), "--work-dir", str(tmp_path / "w"))
    assert result.returncode != 0
    assert f"{root}/en-it/data/tst-COMMON/txt not found" in result.stderr
    shutil.rmtree(root / "en-it" / "data" / "dev")
    result = run_pipeline_script("--lang", "it", "--mustc-root", str(root), "--work-dir", str(tmp_path / "w"))
    assert result.returncode != 0
    assert f"{root}/en-it/data/dev not found" in result.stderr
    assert not (tmp_path / "w").exists()


def test_pipeline_checks_config_before_writing(tmp_path):
    root = tmp_path / "mustc"
    make_mustc_layout(root, "de")
    work = tmp_path / "w"
    common = ["--lang", "de", "--mustc-root", str(root), "--work-dir", str(work),
              "--config", str(REPO_ROOT / "configs" / "mustc_tiny.yaml")]
    result = run_pipeline_script(*common, "--set", "foo")
    assert result.returncode != 0
    assert "expects SECTION.KEY=VALUE" in result.stderr
    result = run_pipeline_script(*common, "--set", "pipeline.eval_k=[3,0]")
    assert result.returncode != 0
    assert "pipeline.eval_k must list positive numbers, got 0" in result.stderr
    # A typo in a pipeline key is reported once, by config_to_args.py.
    result = run_pipeline_script(*common, "--set", "pipeline.eval-k=[5]")
    assert result.returncode == 2
    assert "unknown key 'eval-k' in section pipeline (did you mean eval_k?)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not work.exists()

"""Input checks of scripts/config_to_args.py and scripts/eval_simul.sh: errors instead of silent defaults."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = REPO_ROOT / "scripts"
sys.path.insert(0, str(SCRIPTS))

import config_to_args  # noqa: E402

TINY_CONFIG = str(REPO_ROOT / "configs" / "mustc_tiny.yaml")


def run_config_tool(*arguments):
    return subprocess.run(
        [sys.executable, str(SCRIPTS / "config_to_args.py"), *arguments], capture_output=True, text=True, timeout=60
    )


# ---------------------------------------------------------------------------
# config_to_args.py
# ---------------------------------------------------------------------------


def test_set_pipeline_key_typo_suggests_key():
    result = run_config_tool("get", TINY_CONFIG, "pipeline.eval_k", "--set", "pipeline.eval-k=[5]")
    assert result.returncode == 1
    assert result.stdout == ""
    assert "unknown key 'eval-k' in section pipeline (did you mean eval_k?)" in result.stderr
    assert "asr_pretraining, average_last, eval_k, proportions_utterances" in result.stderr


def test_set_unknown_section_lists_sections():
    with pytest.raises(SystemExit) as exit_info:
        config_to_args.load_config(TINY_CONFIG, ["foo.bar=1"])
    message = str(exit_info.value)
    assert "--set foo.bar=1: unknown section 'foo'" in message
    for section in config_to_args.KNOWN_SECTIONS:
        assert section in message


def test_set_section_typo_suggests_section():
    with pytest.raises(SystemExit, match=r"unknown section 'trian' \(did you mean train\?\)"):
        config_to_args.load_config(TINY_CONFIG, ["trian.lr=0.1"])
    with pytest.raises(SystemExit, match="unknown section 'pipelines'"):
        config_to_args.load_config(TINY_CONFIG, ["pipelines=null"])


@pytest.mark.parametrize(
    "override, spelling",
    [
        ("st.max_update=5", "st.max-update"),
        ("st.keep_interval_updates=2", "st.keep-interval-updates"),
        ("model.encoder_attention_type=softmax", "model.encoder-attention-type"),
        # No config table has these options: the commands of these sections expect hyphens.
        ("prep.vocab_size=100", "prep.vocab-size"),
        ("st.stop_time_hours=1", "st.stop-time-hours"),
        ("eval.max_len_b=50", "eval.max-len-b"),
    ],
)
def test_set_underscore_option_suggests_hyphens(override, spelling):
    with pytest.raises(SystemExit, match=f"write {spelling}$"):
        config_to_args.load_config(TINY_CONFIG, [override])


def test_set_new_options_still_allowed():
    config = config_to_args.load_config(
        TINY_CONFIG,
        ["st.stop-time-hours=1", "train.local_rank=0", "asr=null", "corpus.seed=2", "pipeline.eval_k=[5]"],
    )
    words = config_to_args.option_words(config, TINY_CONFIG, ["train", "st"])
    assert words[-2:] == ["--stop-time-hours", "1"]
    assert words[words.index("--local_rank") + 1] == "0"
    assert config_to_args.option_words(config, TINY_CONFIG, ["asr"]) == []
    assert config_to_args.get_value(config, TINY_CONFIG, "pipeline.eval_k") == "5"
    assert config_to_args.get_value(config, TINY_CONFIG, "corpus.seed") == "2"


def test_config_file_pipeline_key_checked(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("pipeline:\n  eval-k: [1, 3]\n", encoding="utf-8")
    with pytest.raises(SystemExit, match=r"unknown key 'eval-k' in section pipeline \(did you mean eval_k\?\)"):
        config_to_args.load_config(str(path))


def test_config_file_sections_are_known(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("extra:\n  lr: 0.5\n  max-update: 3\n", encoding="utf-8")
    config = config_to_args.load_config(str(path), ["extra.lr=0.25", "extra.new_option=1"])
    words = config_to_args.option_words(config, str(path), ["extra"])
    assert words == ["--lr", "0.25", "--max-update", "3", "--new_option", "1"]
    # In a section of the config's own, only a hyphenated twin in the config rejects an underscore.
    with pytest.raises(SystemExit, match="write extra.max-update$"):
        config_to_args.load_config(str(path), ["extra.max_update=5"])


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "configs").glob("*.yaml")), ids=lambda path: path.name)
def test_shipped_configs_pass_checks(path):
    config = config_to_args.load_config(str(path))
    for section in config:
        if section != config_to_args.PIPELINE_SECTION:
            config_to_args.option_words(config, str(path), [section])


def test_cli_rejects_unknown_section_and_key():
    result = run_config_tool("args", TINY_CONFIG, "trian")
    assert result.returncode == 1
    assert "args trian: unknown section 'trian' (did you mean train?)" in result.stderr
    result = run_config_tool("get", TINY_CONFIG, "pipeline.evalk", "--default", "3")
    assert result.returncode == 1
    assert result.stdout == ""
    assert "unknown key 'evalk' in section pipeline (did you mean eval_k?)" in result.stderr


def test_cli_callers_still_work():
    # The calls of scripts/demo.sh and scripts/mustc_pipeline.sh.
    demo = str(REPO_ROOT / "configs" / "demo.yaml")
    assert run_config_tool("get", demo, "corpus.langs", "--default", "de").stdout == "de\n"
    assert run_config_tool("get", TINY_CONFIG, "corpus.langs", "--default", "de").stdout == "de\n"
    result = run_config_tool("get", TINY_CONFIG, "model.decoder-attention-type", "--default", "leap",
                             "--set", "model.decoder-attention-type=softmax")
    assert result.stdout == "softmax\n"
    result = run_config_tool("args", TINY_CONFIG, "train", "st", "--set", "st.max-update=3")
    assert result.returncode == 0, result.stderr
    words = result.stdout.split("\0")[:-1]
    assert words[words.index("--max-update") + 1] == "3"


# ---------------------------------------------------------------------------
# eval_simul.sh
# ---------------------------------------------------------------------------

REQUIRED_EVAL_OPTIONS = ["--checkpoint", "model.pt", "--data-dir", "data", "--split", "tst-COMMON", "--output", "out"]


@pytest.mark.parametrize(
    "options, message",
    [
        (["--checkpoint"], "--checkpoint needs a value"),
        (["--end-index"], "--end-index needs a value"),
        (["--lang", "--device", "cpu"], "--lang needs a value, got the option --device"),
        (["--waitk", "0"], "--waitk must be a positive integer (source chunks read before the first target token), got '0'"),
        (["--waitk", "three"], "--waitk must be a positive integer"),
        (["--segment-size", "0"], "--segment-size must be a positive integer number of milliseconds, got '0'"),
        (["--segment-size", "-320"], "--segment-size must be a positive integer"),
        (["--max-len-a", "-1"], "--max-len-a must be a number of 0 or more"),
        (["--max-len-b", "1.5"], "--max-len-b must be an integer of 0 or more"),
        (["--end-index", "0"], "--end-index must be a positive integer (utterances to evaluate) or -1 for all"),
    ],
)
def test_eval_simul_rejects_invalid_option(tmp_path, options, message):
    result = subprocess.run(
        ["bash", str(SCRIPTS / "eval_simul.sh"), *REQUIRED_EVAL_OPTIONS, *options],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "unbound variable" not in result.stderr
    assert "Traceback" not in result.stderr
    # The check comes before any work: no output folder.
    assert not (tmp_path / "out").exists()


def test_eval_simul_valid_numbers_pass_checks(tmp_path):
    # Valid numbers get past the checks to the first file check.
    options = ["--waitk", "3", "--segment-size", "360", "--max-len-a", "0.5", "--max-len-b", "0", "--end-index", "-1"]
    result = subprocess.run(
        ["bash", str(SCRIPTS / "eval_simul.sh"), *REQUIRED_EVAL_OPTIONS, *options],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert "checkpoint not found: model.pt" in result.stderr

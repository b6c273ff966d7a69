#!/usr/bin/env bash
# Train and evaluate a LeaP language model on WikiText-103: binarize, train, evaluate.
#
# Usage: bash scripts/lm_wikitext103.sh DATA_DIR [--tiny] [--work-dir DIR] [--config FILE]
#            [--splits TRAIN,VALID,TEST] [-- FAIRSEQ_TRAIN_ARGS...]
#
#   DATA_DIR     raw WikiText files (wiki.{train,valid,test}.tokens or {train,valid,test}.txt)
#   --tiny       use configs/lm_tiny.yaml: the tiny architecture for a few updates on CPU
#   --work-dir   output folder (default: work/lm_wikitext103, or work/lm_tiny with --tiny)
#   --config     a YAML file with prep, train and eval sections (default: configs/lm_wikitext103.yaml)
#   --splits     raw file names for train, valid and test, for example valid.txt,test.txt,test.txt
#   -- ARGS      extra options for fairseq-train, for example -- --decoder-attention-type softmax
#
# Each stage is skipped when its output exists, so a rerun after an interruption continues:
# WORK/data-bin (binarized data), WORK/checkpoints/TRAINING_DONE (fairseq-train resumes from
# checkpoint_last.pt until then), WORK/eval_test.log (fairseq-eval-lm output).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | grep '^#' | sed 's/^# \{0,1\}//'
}

fail() {
    echo "lm_wikitext103.sh: $*" >&2
    exit 1
}

data_dir=""
config=""
work_dir=""
splits=""
tiny=0
extra_train_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --tiny) tiny=1; shift ;;
        --work-dir) [ $# -ge 2 ] || fail "--work-dir needs a folder"; work_dir=$2; shift 2 ;;
        --config) [ $# -ge 2 ] || fail "--config needs a file"; config=$2; shift 2 ;;
        --splits) [ $# -ge 2 ] || fail "--splits needs TRAIN,VALID,TEST"; splits=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        --) shift; extra_train_args=("$@"); break ;;
        -*) fail "unknown option $1 (see --help)" ;;
        *) [ -z "$data_dir" ] || fail "unexpected argument $1: DATA_DIR is already $data_dir"; data_dir=$1; shift ;;
    esac
done
[ -n "$data_dir" ] || { usage >&2; fail "DATA_DIR is missing"; }
[ -d "$data_dir" ] || fail "DATA_DIR $data_dir is not a folder"

if [ -z "$config" ]; then
    if [ "$tiny" = 1 ]; then config=$repo/configs/lm_tiny.yaml; else config=$repo/configs/lm_wikitext103.yaml; fi
fi
[ -f "$config" ] || fail "config file not found: $config"
if [ -z "$work_dir" ]; then
    if [ "$tiny" = 1 ]; then work_dir=work/lm_tiny; else work_dir=work/lm_wikitext103; fi
fi

# The project's virtual environment when it exists, else the commands on PATH.
if [ -x "$repo/.venv/bin/fairseq-train" ]; then
    bin="$repo/.venv/bin/"
    python="$repo/.venv/bin/python"
else
    bin=""
    python=$(command -v python3 || command -v python) || fail "python not found on PATH"
    command -v fairseq-train >/dev/null || fail "fairseq-train not found: install fairseq, or run scripts/setup.sh"
fi
user_dir=$repo/leap_fairseq

# Print the options of one config section as NUL-separated command-line words.
config_args() {
    "$python" - "$config" "$1" <<'PYTHON'
import sys

import yaml

path, section = sys.argv[1], sys.argv[2]
with open(path, encoding="utf-8") as stream:
    config = yaml.safe_load(stream) or {}
options = config.get(section) or {}
if not isinstance(options, dict):
    sys.exit(f"{path}: section {section!r} must map option names to values")
words = []
for name, value in options.items():
    if value is None or value is False:
        continue
    words.append(f"--{name}")
    if value is not True:
        words.append(str(value))
sys.stdout.write("".join(word + "\0" for word in words))
PYTHON
}

mapfile -d '' prep_args < <(config_args prep)
mapfile -d '' train_args < <(config_args train)
mapfile -d '' eval_args < <(config_args eval)

mkdir -p "$work_dir"
data_bin=$work_dir/data-bin
save_dir=$work_dir/checkpoints
echo "config: $config"
echo "work folder: $work_dir"

# Stage 1: binarize.
if [ -f "$data_bin/dict.txt" ] && [ -f "$data_bin/train.bin" ]; then
    echo "== prep: $data_bin exists, skipping"
else
    echo "== prep: $data_dir -> $data_bin"
    split_args=()
    if [ -n "$splits" ]; then
        IFS=, read -r train_file valid_file test_file <<<"$splits"
        [ -n "$train_file" ] && [ -n "$valid_file" ] && [ -n "$test_file" ] ||
            fail "--splits needs three comma-separated names (TRAIN,VALID,TEST), got $splits"
        split_args=(--train-file "$train_file" --valid-file "$valid_file" --test-file "$test_file")
    fi
    "$python" "$repo/data_prep/prep_wikitext.py" "$data_dir" "$data_bin" "${split_args[@]}" "${prep_args[@]}" --overwrite
fi

# Stage 2: train. fairseq-train continues from checkpoint_last.pt when it exists.
if [ -f "$save_dir/TRAINING_DONE" ]; then
    echo "== train: $save_dir/TRAINING_DONE exists, skipping"
else
    echo "== train: checkpoints in $save_dir, log in $work_dir/train.log"
    mkdir -p "$save_dir"
    "${bin}fairseq-train" "$data_bin" --user-dir "$user_dir" --save-dir "$save_dir" \
        "${train_args[@]}" "${extra_train_args[@]}" 2>&1 | tee -a "$work_dir/train.log"
    touch "$save_dir/TRAINING_DONE"
fi

# Stage 3: evaluate the best checkpoint (the last one when no validation ran).
checkpoint=$save_dir/checkpoint_best.pt
[ -f "$checkpoint" ] || checkpoint=$save_dir/checkpoint_last.pt
[ -f "$checkpoint" ] || fail "no checkpoint in $save_dir: remove $save_dir/TRAINING_DONE and rerun to train"
if [ -f "$work_dir/eval_test.log" ]; then
    echo "== eval: $work_dir/eval_test.log exists, skipping"
else
    echo "== eval: $checkpoint"
    "${bin}fairseq-eval-lm" "$data_bin" --user-dir "$user_dir" --path "$checkpoint" \
        "${eval_args[@]}" 2>&1 | tee "$work_dir/eval_test.log.tmp"
    mv "$work_dir/eval_test.log.tmp" "$work_dir/eval_test.log"
fi
grep -E "Loss \(base 2\)|Perplexity" "$work_dir/eval_test.log" | tail -n 2

#!/usr/bin/env bash
# Train and evaluate a simultaneous speech translation model on a MuST-C corpus, end to end.
#
# Usage: bash scripts/mustc_pipeline.sh --lang LANG --mustc-root ROOT --work-dir DIR
#            [--config FILE] [--attention-type softmax|relu|cosformer|leap]
#            [--set SECTION.KEY=VALUE ...] [--jobs N] [--quiet]
#
#   --lang            target language, one of MuST-C v1's de, es, fr, it, nl, pt, ro, ru;
#                     ROOT/en-<lang>/data/{train,dev,tst-COMMON}/{wav,txt} must exist
#   --mustc-root      MuST-C root folder (the one that contains en-de/, en-es/, ...)
#   --work-dir        output folder for data, checkpoints, evaluations and results
#   --config          pipeline config (default: configs/mustc_paper.yaml; configs/mustc_tiny.yaml
#                     is a CPU recipe of a few minutes)
#   --attention-type  set the encoder, decoder and cross-attention type at once (softmax gives
#                     the baseline)
#   --set             override a config value, for example --set st.max-update=2000,
#                     --set prep.vocab-size=5000 or --set pipeline.eval_k=[3,5]; repeatable
#   --jobs            processes for feature extraction (default: number of CPUs)
#   --quiet           write the commands' output only to WORK/logs/<stage>.log; the warnings of
#                     the data preparation still go to the console
#
# Stages, in order: prep (features, SentencePiece models, ST and ASR manifests), asr_train and
# asr_average (when pipeline.asr_pretraining is true), st_train, st_average, eval_k<K> for each
# k in pipeline.eval_k (SimulEval on tst-COMMON), proportions (LeaP models only) and results
# (WORK/results.md and WORK/bleu_al.png).
#
# A stage is skipped when its stamp WORK/stamps/<stage>.done exists. The stamp is written last
# and records the stage's command, so a rerun continues after the last finished stage, and a
# rerun with other options for a finished stage stops with the command that deletes its stamp
# and outputs. fairseq-train continues from checkpoint_last.pt. A stage that fails leaves
# WORK/stamps/<stage>.failed, and a rerun may give it other options, except for a training
# that left checkpoints, because fairseq-train would continue from them. When a stage has run,
# the stamps and outputs of the stages that use its outputs (directly or through other stages)
# are deleted, so those stages run again.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | grep '^#' | sed 's/^# \{0,1\}//'
}

fail() {
    echo "mustc_pipeline.sh: error: $*" >&2
    exit 1
}

# The target languages of MuST-C v1. Nothing in the pipeline depends on the language: prep
# reads ROOT/en-<lang>, and SimulEval scores with sacreBLEU's 13a tokenizer.
mustc_langs=(de es fr it nl pt ro ru)
# The splits that the pipeline reads: train and dev for training, tst-COMMON for evaluation.
mustc_splits=(train dev tst-COMMON)

lang=""
mustc_root=""
work_dir=""
config=$repo/configs/mustc_paper.yaml
attention_type=""
jobs=$(nproc 2>/dev/null || echo 1)
quiet=0
overrides=()
while [ $# -gt 0 ]; do
    case "$1" in
        --lang) [ $# -ge 2 ] || fail "--lang needs a language (${mustc_langs[*]})"; lang=$2; shift 2 ;;
        --mustc-root) [ $# -ge 2 ] || fail "--mustc-root needs a folder"; mustc_root=$2; shift 2 ;;
        --work-dir) [ $# -ge 2 ] || fail "--work-dir needs a folder"; work_dir=$2; shift 2 ;;
        --config) [ $# -ge 2 ] || fail "--config needs a file"; config=$2; shift 2 ;;
        --attention-type) [ $# -ge 2 ] || fail "--attention-type needs a type"; attention_type=$2; shift 2 ;;
        --set) [ $# -ge 2 ] || fail "--set needs SECTION.KEY=VALUE"; overrides+=(--set "$2"); shift 2 ;;
        --jobs) [ $# -ge 2 ] || fail "--jobs needs a number"; jobs=$2; shift 2 ;;
        --quiet) quiet=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; fail "unknown argument $1" ;;
    esac
done

# ---------------------------------------------------------------------------
# Argument checks. Nothing is written before they pass.
# ---------------------------------------------------------------------------

[ -n "$lang" ] || { usage >&2; fail "--lang is missing"; }
lang_known=0
for known in "${mustc_langs[@]}"; do
    if [ "$lang" = "$known" ]; then
        lang_known=1
    fi
done
[ "$lang_known" = 1 ] || fail "--lang must be one of ${mustc_langs[*]} (the target languages of MuST-C v1), got $lang"
[ -n "$mustc_root" ] || fail "--mustc-root is missing"
[ -n "$work_dir" ] || fail "--work-dir is missing"
case "$attention_type" in
    "") ;;
    softmax|relu|cosformer|leap)
        for block in encoder decoder cross; do
            overrides+=(--set "model.$block-attention-type=$attention_type")
        done ;;
    *) fail "--attention-type must be softmax, relu, cosformer or leap, got $attention_type" ;;
esac
[[ "$jobs" =~ ^[1-9][0-9]*$ ]] || fail "--jobs must be a positive number, got $jobs"
[ -d "$mustc_root/en-$lang/data" ] ||
    fail "$mustc_root/en-$lang/data not found: --mustc-root must hold MuST-C's en-$lang/data/{train,dev,tst-COMMON}"
# MuST-C v1 layout: ROOT/en-<lang>/data/<split>/wav/<talk>.wav and .../txt/<split>.{yaml,en,<lang>}.
# prep_mustc_data.py skips a missing dev or tst-COMMON, which would stop the pipeline only
# after training, so the pipeline checks all three splits first.
for split in "${mustc_splits[@]}"; do
    for path in "$mustc_root/en-$lang/data/$split" "$mustc_root/en-$lang/data/$split/wav" \
                "$mustc_root/en-$lang/data/$split/txt"; do
        [ -d "$path" ] || fail "$path not found: the pipeline needs the MuST-C splits" \
            "${mustc_splits[*]} of en-$lang, each with wav/ and txt/ folders"
    done
done
[ -f "$config" ] || fail "config file not found: $config"

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
# realpath -m (GNU coreutils) resolves a folder that does not exist yet.
work_dir=$(realpath -m -- "$work_dir")
mustc_root=$(cd "$mustc_root" && pwd)
config=$(cd "$(dirname "$config")" && pwd)/$(basename "$config")
stamps=$work_dir/stamps
logs=$work_dir/logs

config_args() {
    "$python" "$repo/scripts/config_to_args.py" args "$config" "$@" "${overrides[@]}"
}

config_value() {
    "$python" "$repo/scripts/config_to_args.py" get "$config" "$@" "${overrides[@]}"
}

# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------

# The option words are NUL-separated, which a bash variable cannot hold, so they pass through
# a temporary file outside the work folder.
config_words_file=$(mktemp "${TMPDIR:-/tmp}/mustc_pipeline.XXXXXX")
trap 'rm -f "$config_words_file"' EXIT

# read_args ARRAY SECTION...: put the options of the config sections into the array ARRAY.
read_args() {
    local -n words=$1
    shift
    # config_to_args.py prints its own error, which names the value and the file.
    config_args "$@" > "$config_words_file" || exit 2
    mapfile -d '' words < "$config_words_file"
}

read_args prep_args prep
read_args model_args model
read_args asr_args train asr
read_args st_args train st
read_args eval_args eval
rm -f "$config_words_file"
trap - EXIT
asr_pretraining=$(config_value pipeline.asr_pretraining --default true)
average_last=$(config_value pipeline.average_last --default 5)
read -r -a eval_k <<<"$(config_value pipeline.eval_k)"
proportions_utterances=$(config_value pipeline.proportions_utterances --default 3)
attention_types=$(config_value model.encoder-attention-type --default leap)
attention_types+=" $(config_value model.decoder-attention-type --default leap)"
attention_types+=" $(config_value model.cross-attention-type --default leap)"
pre_decision_ratio=$(config_value model.fixed-pre-decision-ratio --default 9)
[ ${#eval_k[@]} -gt 0 ] || fail "pipeline.eval_k in $config lists no k values"
for k in "${eval_k[@]}"; do
    [[ "$k" =~ ^[1-9][0-9]*$ ]] || fail "pipeline.eval_k must list positive numbers, got $k"
done
[[ "$pre_decision_ratio" =~ ^[1-9][0-9]*$ ]] || fail "model.fixed-pre-decision-ratio must be a positive number, got $pre_decision_ratio"
case "$asr_pretraining" in
    true|false) ;;
    *) fail "pipeline.asr_pretraining must be true or false, got $asr_pretraining" ;;
esac
# SimulEval sends the source in pieces of one pre-decision block: ratio encoder states of 40 ms.
segment_ms=$((pre_decision_ratio * 40))
[[ "$average_last" =~ ^[0-9]+$ ]] || fail "pipeline.average_last must be a number, got $average_last"

data_dir=$work_dir/data/en-$lang
mkdir -p "$stamps" "$logs"
echo "config: $config${overrides[*]:+ (overrides: ${overrides[*]})}"
echo "MuST-C: $mustc_root/en-$lang"
echo "work folder: $work_dir"

# Stage outputs, dependencies, stamps and run_stage.
source "$repo/scripts/lib/pipeline_stages.sh"

# ---------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------

# ASR manifests and vocabulary only when the encoder is pretrained on ASR.
prep_task=st
[ "$asr_pretraining" != true ] || prep_task=both
prep_command=("$python" "$repo/data_prep/prep_mustc_data.py" --data-root "$mustc_root" --lang "$lang"
    --output-root "$work_dir/data" --task "$prep_task" "${prep_args[@]}")
# --jobs does not change prep's outputs, and --overwrite (--set prep.overwrite=true) only lets prep
# replace outputs of other options. Both are left out of the stamp key, so a finished prep is
# found done whatever their values.
prep_key_words=()
for word in "${prep_command[@]}"; do
    [ "$word" = --overwrite ] || prep_key_words+=("$word")
done
run_stage_with_key prep "$(stage_key "${prep_key_words[@]}")" "${prep_command[@]}" --jobs "$jobs"

# Average the last N update checkpoints of FOLDER (checkpoint_last.pt counts when it is newer)
# into OUTPUT; N = 0 takes checkpoint_best.pt.
average() {
    local folder=$1 output=$2
    if [ "$average_last" = 0 ]; then
        cp "$folder/checkpoint_best.pt" "$output.tmp" && mv "$output.tmp" "$output"
    else
        "$python" "$repo/scripts/average_checkpoints.py" --inputs "$folder" \
            --num-update-checkpoints "$average_last" --include-last --allow-fewer --output "$output"
    fi
}

# fairseq-train writes TRAINING_DONE nowhere, so the stamp marks a finished training; until
# then a rerun continues from checkpoint_last.pt.
encoder_args=()
if [ "$asr_pretraining" = true ]; then
    run_stage asr_train "${bin}fairseq-train" "$data_dir" --user-dir "$user_dir" \
        --save-dir "$work_dir/asr/checkpoints" "${model_args[@]}" "${asr_args[@]}"
    run_stage asr_average average "$work_dir/asr/checkpoints" "$work_dir/asr/checkpoint_avg.pt"
    encoder_args=(--load-pretrained-encoder-from "$work_dir/asr/checkpoint_avg.pt")
fi

run_stage st_train "${bin}fairseq-train" "$data_dir" --user-dir "$user_dir" \
    --save-dir "$work_dir/st/checkpoints" "${model_args[@]}" "${st_args[@]}" "${encoder_args[@]}"
checkpoint=$work_dir/st/checkpoint_avg.pt
run_stage st_average average "$work_dir/st/checkpoints" "$checkpoint"

for k in "${eval_k[@]}"; do
    run_stage "eval_k$k" env PYTHON="$python" bash "$repo/scripts/eval_simul.sh" --checkpoint "$checkpoint" \
        --data-dir "$data_dir" --split tst-COMMON --lang "$lang" --waitk "$k" --segment-size "$segment_ms" \
        --output "$work_dir/eval/k$k" "${eval_args[@]}"
done

proportions_args=()
if [[ " $attention_types " == *" leap "* ]]; then
    run_stage proportions "$python" "$repo/scripts/plot_proportions.py" --checkpoint "$checkpoint" \
        --data-dir "$data_dir" --config-yaml config_st.yaml --split tst-COMMON_st \
        --num-utterances "$proportions_utterances" --output "$work_dir/proportions.png"
    proportions_args=(--proportions-plot "$work_dir/proportions.png")
fi

# Results are cheap to rebuild, so this stage always runs. It lists only the k values of this
# run, because eval/ may hold folders of other k values from earlier runs.
rm -f "$stamps/results.done" "$stamps/results.started" "$stamps/results.failed"
read -r encoder_type decoder_type cross_type <<<"$attention_types"
result_notes=(
    --note "config: $config${overrides[*]:+ with ${overrides[*]}}"
    --note "MuST-C: $mustc_root/en-$lang"
    --note "checkpoint: $checkpoint"
    --note "attention (encoder/decoder/cross): $encoder_type/$decoder_type/$cross_type"
)
coverage_note=$(evaluation_coverage_note)
[ -z "$coverage_note" ] || result_notes+=(--note "$coverage_note")
run_stage results "$python" "$repo/scripts/make_results.py" \
    --run "en-$lang $encoder_type/$decoder_type/$cross_type=$work_dir/eval" --k "${eval_k[@]}" \
    --output "$work_dir/results.md" --plot "$work_dir/bleu_al.png" "${proportions_args[@]}" \
    --title "MuST-C en-$lang tst-COMMON, wait-k" "${result_notes[@]}"

echo "results: $work_dir/results.md"
echo "BLEU-AL plot: $work_dir/bleu_al.png"
[ ${#proportions_args[@]} -eq 0 ] || echo "proportions plot: $work_dir/proportions.png"

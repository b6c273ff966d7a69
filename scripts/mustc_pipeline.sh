#!/usr/bin/env bash
# Train and evaluate a simultaneous speech translation model on a MuST-C corpus, end to end.
#
# Usage: bash scripts/mustc_pipeline.sh --lang de|es --mustc-root ROOT --work-dir DIR
#            [--config FILE] [--attention-type softmax|relu|cosformer|leap]
#            [--set SECTION.KEY=VALUE ...] [--jobs N] [--quiet]
#
#   --lang            target language; ROOT/en-<lang>/data/{train,dev,tst-COMMON} must exist
#   --mustc-root      MuST-C root folder (the one that contains en-de/, en-es/)
#   --work-dir        output folder for data, checkpoints, evaluations and results
#   --config          pipeline config (default: configs/mustc_paper.yaml; configs/mustc_tiny.yaml
#                     is a CPU recipe of a few minutes)
#   --attention-type  set the encoder, decoder and cross-attention type at once (softmax gives
#                     the baseline)
#   --set             override a config value, for example --set st.max-update=2000 or
#                     --set pipeline.eval_k=[3,5]; repeatable
#   --jobs            processes for feature extraction (default: number of CPUs)
#   --quiet           write the commands' output only to WORK/logs/<stage>.log
#
# Stages, in order: prep (features, SentencePiece models, ST and ASR manifests), asr_train and
# asr_average (when pipeline.asr_pretraining is true), st_train, st_average, eval_k<K> for each
# k in pipeline.eval_k (SimulEval on tst-COMMON), proportions (LeaP models only) and results
# (WORK/results.md and WORK/bleu_al.png). A stage is skipped when its stamp
# WORK/stamps/<stage>.done exists; the stamp is written last and records the stage's command,
# so a rerun continues after the last finished stage, and a rerun with other options stops
# with a message instead of mixing results. fairseq-train continues from checkpoint_last.pt.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | grep '^#' | sed 's/^# \{0,1\}//'
}

fail() {
    echo "mustc_pipeline.sh: error: $*" >&2
    exit 1
}

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
        --lang) [ $# -ge 2 ] || fail "--lang needs de or es"; lang=$2; shift 2 ;;
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
case "$lang" in
    de|es) ;;
    "") usage >&2; fail "--lang is missing" ;;
    *) fail "--lang must be de or es, got $lang" ;;
esac
[ -n "$mustc_root" ] || fail "--mustc-root is missing"
[ -n "$work_dir" ] || fail "--work-dir is missing"
[ -d "$mustc_root/en-$lang/data" ] ||
    fail "$mustc_root/en-$lang/data not found: --mustc-root must hold MuST-C's en-$lang/data/{train,dev,tst-COMMON}"
[ -f "$config" ] || fail "config file not found: $config"
case "$attention_type" in
    "") ;;
    softmax|relu|cosformer|leap)
        for block in encoder decoder cross; do
            overrides+=(--set "model.$block-attention-type=$attention_type")
        done ;;
    *) fail "--attention-type must be softmax, relu, cosformer or leap, got $attention_type" ;;
esac
[[ "$jobs" =~ ^[1-9][0-9]*$ ]] || fail "--jobs must be a positive number, got $jobs"

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
mkdir -p "$work_dir"
work_dir=$(cd "$work_dir" && pwd)
mustc_root=$(cd "$mustc_root" && pwd)
config=$(cd "$(dirname "$config")" && pwd)/$(basename "$config")
stamps=$work_dir/stamps
logs=$work_dir/logs
mkdir -p "$stamps" "$logs"

config_args() {
    "$python" "$repo/scripts/config_to_args.py" args "$config" "$@" "${overrides[@]}"
}

config_value() {
    "$python" "$repo/scripts/config_to_args.py" get "$config" "$@" "${overrides[@]}"
}

# ---------------------------------------------------------------------------
# Stage bookkeeping
# ---------------------------------------------------------------------------

# The key of a stage is a hash of its command, so a stamp from other options is noticed.
stage_key() {
    printf '%s\0' "$@" | sha256sum | cut -d' ' -f1
}

# Return 0 when the stage is done with this key; stop when it was started or done with another.
stage_done() {
    local name=$1 key=$2 file
    for file in "$stamps/$name.done" "$stamps/$name.started"; do
        if [ -f "$file" ] && [ "$(cat "$file")" != "$key" ]; then
            fail "stage $name was run with other options ($file). Delete that file and the stage's outputs to redo it, or use another --work-dir"
        fi
    done
    [ -f "$stamps/$name.done" ]
}

write_stamp() {
    printf '%s\n' "$2" > "$stamps/.$1.tmp"
    mv "$stamps/.$1.tmp" "$stamps/$1"
}

# run_stage NAME COMMAND...: run COMMAND unless the stage is done, logging to WORK/logs/NAME.log.
run_stage() {
    local name=$1
    shift
    local key log start status
    key=$(stage_key "$@")
    if stage_done "$name" "$key"; then
        echo "== $name: done earlier, skipping ($stamps/$name.done)"
        return 0
    fi
    write_stamp "$name.started" "$key"
    log=$logs/$name.log
    start=$SECONDS
    echo "== $name: started $(date '+%F %T'), log: $log"
    {
        printf '# %s\n' "$(date '+%F %T')"
        printf '#'
        printf ' %q' "$@"
        printf '\n'
    } >> "$log"
    status=0
    if [ "$quiet" = 1 ]; then
        "$@" >> "$log" 2>&1 || status=$?
    else
        "$@" 2>&1 | tee -a "$log" || status=$?
    fi
    if [ "$status" != 0 ]; then
        [ "$quiet" = 1 ] && tail -n 20 "$log" >&2
        fail "stage $name failed (exit status $status); see $log. Fix the cause and rerun the same command to continue"
    fi
    write_stamp "$name.done" "$key"
    rm -f "$stamps/$name.started"
    echo "== $name: finished in $((SECONDS - start)) s"
}

# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------

# read_args ARRAY SECTION...: put the options of the config sections into the array ARRAY.
read_args() {
    local -n words=$1
    shift
    local file=$work_dir/.config_args.tmp
    config_args "$@" > "$file" || fail "could not read sections $* of $config"
    mapfile -d '' words < "$file"
    rm -f "$file"
}

read_args prep_args prep
read_args model_args model
read_args asr_args train asr
read_args st_args train st
read_args eval_args eval
asr_pretraining=$(config_value pipeline.asr_pretraining --default true)
average_last=$(config_value pipeline.average_last --default 5)
read -r -a eval_k <<<"$(config_value pipeline.eval_k)"
proportions_utterances=$(config_value pipeline.proportions_utterances --default 3)
attention_types=$(config_value model.encoder-attention-type --default leap)
attention_types+=" $(config_value model.decoder-attention-type --default leap)"
attention_types+=" $(config_value model.cross-attention-type --default leap)"
pre_decision_ratio=$(config_value model.fixed-pre-decision-ratio --default 9)
[ ${#eval_k[@]} -gt 0 ] || fail "pipeline.eval_k in $config lists no k values"
[[ "$pre_decision_ratio" =~ ^[1-9][0-9]*$ ]] || fail "model.fixed-pre-decision-ratio must be a positive number, got $pre_decision_ratio"
case "$asr_pretraining" in
    true|false) ;;
    *) fail "pipeline.asr_pretraining must be true or false, got $asr_pretraining" ;;
esac
# SimulEval sends the source in pieces of one pre-decision block: ratio encoder states of 40 ms.
segment_ms=$((pre_decision_ratio * 40))
[[ "$average_last" =~ ^[0-9]+$ ]] || fail "pipeline.average_last must be a number, got $average_last"

data_dir=$work_dir/data/en-$lang
echo "config: $config${overrides[*]:+ (overrides: ${overrides[*]})}"
echo "MuST-C: $mustc_root/en-$lang"
echo "work folder: $work_dir"

# ---------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------

# ASR manifests and vocabulary only when the encoder is pretrained on ASR.
prep_task=st
[ "$asr_pretraining" != true ] || prep_task=both
run_stage prep "$python" "$repo/data_prep/prep_mustc_data.py" --data-root "$mustc_root" --lang "$lang" \
    --output-root "$work_dir/data" --task "$prep_task" --jobs "$jobs" "${prep_args[@]}"

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
    [[ "$k" =~ ^[1-9][0-9]*$ ]] || fail "pipeline.eval_k must list positive numbers, got $k"
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

# Results are cheap to rebuild, so this stage always runs.
rm -f "$stamps/results.done"
read -r encoder_type decoder_type cross_type <<<"$attention_types"
run_stage results "$python" "$repo/scripts/make_results.py" \
    --run "en-$lang $encoder_type/$decoder_type/$cross_type=$work_dir/eval" \
    --output "$work_dir/results.md" --plot "$work_dir/bleu_al.png" "${proportions_args[@]}" \
    --title "MuST-C en-$lang tst-COMMON, wait-k" \
    --note "config: $config${overrides[*]:+ with ${overrides[*]}}" \
    --note "checkpoint: $checkpoint" \
    --note "attention (encoder/decoder/cross): $encoder_type/$decoder_type/$cross_type"

echo "results: $work_dir/results.md"
echo "BLEU-AL plot: $work_dir/bleu_al.png"
[ ${#proportions_args[@]} -eq 0 ] || echo "proportions plot: $work_dir/proportions.png"

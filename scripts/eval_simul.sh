#!/usr/bin/env bash
# Evaluate a leap_s2t_waitk checkpoint with SimulEval 1.1.4 and write OUTPUT/scores.json:
# sacreBLEU with its signature, and AL, LAAL, AP, DAL both plain and computation-aware (_CA).
#
#   scripts/eval_simul.sh --checkpoint CKPT --data-dir PREP/en-de --split tst-COMMON --output OUT \
#       [--waitk K] [--segment-size MS] [--lang de] [--config-yaml config_st.yaml] [--device cpu] \
#       [--max-len-a A] [--max-len-b B] [--end-index N] [--force-finish] [-- EXTRA_SIMULEVAL_ARGS...]
#
# --data-dir is a pair folder written by data_prep/prep_mustc_data.py; the SimulEval inputs are
# read from DATA_DIR/simuleval/SPLIT.wav_list and SPLIT.LANG (or DATA_DIR/SPLIT.* if present).
# SimulEval runs the agent with --no-scoring, so its scorers cannot stop the run. Then
# scripts/score_simul.py scores instances.log into scores.json, with null latencies when no
# utterance has output, and writes SimulEval's own scores.tsv with plain latency columns.
# PYTHON selects the interpreter (default: the repository's .venv, else python3).
set -euo pipefail

usage() {
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$repo_root/.venv/bin/python" ]]; then PYTHON="$repo_root/.venv/bin/python"; else PYTHON=python3; fi
fi

# Print the message on stderr and exit with status 2, the usual status of a usage error.
usage_error() {
    echo "eval_simul.sh: $*" >&2
    exit 2
}

# need_value OPTION [VALUE...]: stop unless OPTION is followed by a value.
need_value() {
    [[ $# -ge 2 ]] || usage_error "$1 needs a value (see --help)"
    [[ "$2" != --* ]] || usage_error "$1 needs a value, got the option $2 (see --help)"
}

checkpoint="" data_dir="" split="" output="" waitk="" segment_size=320 lang="" config_yaml="config_st.yaml"
device=cpu max_len_a=0 max_len_b=200 end_index=-1 force_finish=()
extra=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --checkpoint) need_value "$@"; checkpoint="$2"; shift 2 ;;
        --data-dir) need_value "$@"; data_dir="$2"; shift 2 ;;
        --split) need_value "$@"; split="$2"; shift 2 ;;
        --output) need_value "$@"; output="$2"; shift 2 ;;
        --waitk) need_value "$@"; waitk="$2"; shift 2 ;;
        --segment-size) need_value "$@"; segment_size="$2"; shift 2 ;;
        --lang) need_value "$@"; lang="$2"; shift 2 ;;
        --config-yaml) need_value "$@"; config_yaml="$2"; shift 2 ;;
        --device) need_value "$@"; device="$2"; shift 2 ;;
        --max-len-a) need_value "$@"; max_len_a="$2"; shift 2 ;;
        --max-len-b) need_value "$@"; max_len_b="$2"; shift 2 ;;
        --end-index) need_value "$@"; end_index="$2"; shift 2 ;;
        --force-finish) force_finish=(--force-finish); shift ;;
        -h|--help) usage 0 ;;
        --) shift; extra=("$@"); break ;;
        *) usage_error "unknown option '$1' (see --help)" ;;
    esac
done

for name in checkpoint data_dir split output; do
    if [[ -z "${!name}" ]]; then
        usage_error "--${name//_/-} is required (see --help)"
    fi
done
# The numbers are checked here, because SimulEval and the agent stop on them with a traceback.
if [[ -n "$waitk" && ! "$waitk" =~ ^[1-9][0-9]*$ ]]; then
    usage_error "--waitk must be a positive integer (source chunks read before the first target token), got '$waitk'; pass 1 or more, or leave it out to use the checkpoint's k"
fi
if [[ ! "$segment_size" =~ ^[1-9][0-9]*$ ]]; then
    usage_error "--segment-size must be a positive integer number of milliseconds, got '$segment_size'; scripts/mustc_pipeline.sh passes the pre-decision ratio times 40 ms, for example 360 for ratio 9"
fi
if [[ ! "$max_len_a" =~ ^([0-9]+([.][0-9]*)?|[.][0-9]+)$ ]]; then
    usage_error "--max-len-a must be a number of 0 or more (target tokens per filterbank frame), got '$max_len_a'"
fi
if [[ ! "$max_len_b" =~ ^[0-9]+$ ]]; then
    usage_error "--max-len-b must be an integer of 0 or more (target tokens), got '$max_len_b'"
fi
if [[ ! "$end_index" =~ ^(-1|[1-9][0-9]*)$ ]]; then
    usage_error "--end-index must be a positive integer (utterances to evaluate) or -1 for all, got '$end_index'"
fi
[[ -f "$checkpoint" ]] || { echo "eval_simul.sh: checkpoint not found: $checkpoint" >&2; exit 1; }
[[ -f "$data_dir/$config_yaml" ]] || { echo "eval_simul.sh: data config not found: $data_dir/$config_yaml" >&2; exit 1; }

input_dir="$data_dir/simuleval"
[[ -f "$data_dir/$split.wav_list" ]] && input_dir="$data_dir"
source_list="$input_dir/$split.wav_list"
[[ -f "$source_list" ]] || { echo "eval_simul.sh: SimulEval source list not found: $source_list" >&2; exit 1; }
if [[ -z "$lang" ]]; then
    # The pair folder is named en-<lang> by the data preparation.
    lang="$(basename "$(cd "$data_dir" && pwd)")"
    lang="${lang#*-}"
fi
target_list="$input_dir/$split.$lang"
[[ -f "$target_list" ]] || { echo "eval_simul.sh: reference file not found: $target_list (pass --lang)" >&2; exit 1; }

agent_options=(--checkpoint "$checkpoint" --data-dir "$data_dir" --config-yaml "$config_yaml"
    --max-len-a "$max_len_a" --max-len-b "$max_len_b" "${force_finish[@]}")
[[ -n "$waitk" ]] && agent_options+=(--waitk-lagging "$waitk")

# python -m and python -c put the current directory first on sys.path, so a folder named
# leap_fairseq there (a clone of this repository) would shadow the installed package and its
# compat patches. Python 3.11 and later leave the current directory out with -P.
python_flags=()
if "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    python_flags=(-P)
else
    echo "eval_simul.sh: $PYTHON is older than 3.11 and has no -P; run from a folder without a leap_fairseq subfolder" >&2
fi

mkdir -p "$output"
echo "eval_simul.sh: SimulEval on $source_list, source segments of $segment_size ms" >&2
# SimulEval 1.1.4 scores right after inference unless --no-scoring is given, and its latency
# scorers raise statistics.StatisticsError when no utterance has output words (an early
# checkpoint, an empty source). score_simul.py below scores the log, then runs SimulEval's
# scorers for scores.tsv and logs their failure as a warning instead of stopping.
"$PYTHON" "${python_flags[@]}" -m simuleval.cli \
    --agent-class leap_fairseq.agents.LeapWaitkSpeechAgent \
    --source "$source_list" --target "$target_list" \
    --source-segment-size "$segment_size" \
    --device "$device" \
    --output "$output" \
    --end-index "$end_index" \
    --no-scoring \
    "${agent_options[@]}" "${extra[@]}"

num_records=$(grep -c . "$output/instances.log" || true)
echo "eval_simul.sh: $num_records utterances in $output/instances.log; scoring them" >&2
"$PYTHON" "$repo_root/scripts/score_simul.py" "$output/instances.log" --json "$output/scores.json" --simuleval-table \
    --extra "checkpoint=$(cd "$(dirname "$checkpoint")" && pwd)/$(basename "$checkpoint")" \
    --extra "split=$split" --extra "waitk_lagging=${waitk:-checkpoint}" \
    --extra "source_segment_size_ms=$segment_size" --extra "device=$device"

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
# SimulEval's own scores.tsv is written too; its latency columns are plain values because the
# run does not pass --computation-aware (SimulEval 1.1.4 would apply that flag to the plain
# scorers as well). scripts/score_simul.py computes both kinds from the same instances.log.
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

checkpoint="" data_dir="" split="" output="" waitk="" segment_size=320 lang="" config_yaml="config_st.yaml"
device=cpu max_len_a=0 max_len_b=200 end_index=-1 force_finish=()
extra=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --checkpoint) checkpoint="$2"; shift 2 ;;
        --data-dir) data_dir="$2"; shift 2 ;;
        --split) split="$2"; shift 2 ;;
        --output) output="$2"; shift 2 ;;
        --waitk) waitk="$2"; shift 2 ;;
        --segment-size) segment_size="$2"; shift 2 ;;
        --lang) lang="$2"; shift 2 ;;
        --config-yaml) config_yaml="$2"; shift 2 ;;
        --device) device="$2"; shift 2 ;;
        --max-len-a) max_len_a="$2"; shift 2 ;;
        --max-len-b) max_len_b="$2"; shift 2 ;;
        --end-index) end_index="$2"; shift 2 ;;
        --force-finish) force_finish=(--force-finish); shift ;;
        -h|--help) usage 0 ;;
        --) shift; extra=("$@"); break ;;
        *) echo "eval_simul.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
done

for name in checkpoint data_dir split output; do
    if [[ -z "${!name}" ]]; then
        echo "eval_simul.sh: --${name//_/-} is required (see --help)" >&2
        exit 2
    fi
done
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

mkdir -p "$output"
echo "eval_simul.sh: SimulEval on $source_list, source segments of $segment_size ms" >&2
"$PYTHON" -m simuleval.cli \
    --agent-class leap_fairseq.agents.LeapWaitkSpeechAgent \
    --source "$source_list" --target "$target_list" \
    --source-segment-size "$segment_size" \
    --device "$device" \
    --output "$output" \
    --end-index "$end_index" \
    --quality-metrics BLEU --latency-metrics AL LAAL AP DAL \
    "${agent_options[@]}" "${extra[@]}"

"$PYTHON" "$repo_root/scripts/score_simul.py" "$output/instances.log" --json "$output/scores.json" \
    --extra "checkpoint=$(cd "$(dirname "$checkpoint")" && pwd)/$(basename "$checkpoint")" \
    --extra "split=$split" --extra "waitk_lagging=${waitk:-checkpoint}" \
    --extra "source_segment_size_ms=$segment_size" --extra "device=$device"

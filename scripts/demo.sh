#!/usr/bin/env bash
# Run the whole simultaneous speech translation pipeline on CPU in a few minutes.
#
# Usage: bash scripts/demo.sh [--work-dir DIR] [--config FILE] [--jobs N] [--verbose]
#
#   --work-dir  output folder (default: work/demo in the repository, which git ignores)
#   --config    demo config (default: configs/demo.yaml)
#   --jobs      processes for speech synthesis and feature extraction (default: number of CPUs)
#   --verbose   show the output of every command, not only the stage lines
#
# Steps: scripts/setup.sh (the environment, espeak-ng and sox); a small English-German corpus
# in MuST-C's layout from the project's demo grammar, spoken by espeak-ng
# (data_prep/make_demo_corpus.py); then scripts/mustc_pipeline.sh with the demo config:
# features, wait-k training of a small LeaP model, checkpoint averaging, SimulEval on held-out
# sentences, results.md and plots. It prints BLEU, AL and computation-aware AL. A rerun
# continues where an interrupted run stopped and skips finished steps.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

fail() {
    echo "demo.sh: error: $*" >&2
    exit 1
}

work_dir=$repo/work/demo
config=$repo/configs/demo.yaml
jobs=$(nproc 2>/dev/null || echo 1)
pipeline_output=(--quiet)
while [ $# -gt 0 ]; do
    case "$1" in
        --work-dir) [ $# -ge 2 ] || fail "--work-dir needs a folder"; work_dir=$2; shift 2 ;;
        --config) [ $# -ge 2 ] || fail "--config needs a file"; config=$2; shift 2 ;;
        --jobs) [ $# -ge 2 ] || fail "--jobs needs a number"; jobs=$2; shift 2 ;;
        --verbose) pipeline_output=(); shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) fail "unknown argument $1 (see --help)" ;;
    esac
done
[ -f "$config" ] || fail "config file not found: $config"

start=$SECONDS
echo "== setup: scripts/setup.sh"
bash "$repo/scripts/setup.sh"
python=$repo/.venv/bin/python
for program in espeak-ng sox; do
    command -v "$program" >/dev/null 2>&1 ||
        fail "$program is missing; install it with: sudo apt-get install -y espeak-ng sox"
done
setup_seconds=$((SECONDS - start))

mkdir -p "$work_dir"
# Absolute, as mustc_pipeline.sh prints its output paths, so drop_lines below matches them.
work_dir=$(cd "$work_dir" && pwd)
corpus=$work_dir/corpus
mapfile -d '' corpus_args < <("$python" "$repo/scripts/config_to_args.py" args "$config" corpus)
echo "== corpus: $corpus"
"$python" "$repo/data_prep/make_demo_corpus.py" --out "$corpus" --jobs "$jobs" --quiet "${corpus_args[@]}"

lang=$("$python" "$repo/scripts/config_to_args.py" get "$config" corpus.langs --default de)
lang=${lang%% *}
run_dir=$work_dir/en-$lang

# drop_lines LINE...: copy stdin to stdout without the lines equal to one of the arguments.
drop_lines() {
    local line skip dropped
    while IFS= read -r line || [ -n "$line" ]; do
        skip=0
        for dropped in "$@"; do
            [ "$line" != "$dropped" ] || skip=1
        done
        [ "$skip" = 1 ] || printf '%s\n' "$line"
    done
}

# mustc_pipeline.sh ends by printing the paths of results.md and the plots; the summary below
# prints them after the scores, so they are dropped here.
bash "$repo/scripts/mustc_pipeline.sh" --lang "$lang" --mustc-root "$corpus" --work-dir "$run_dir" \
    --config "$config" --jobs "$jobs" "${pipeline_output[@]}" |
    drop_lines "results: $run_dir/results.md" "BLEU-AL plot: $run_dir/bleu_al.png" \
        "proportions plot: $run_dir/proportions.png"

echo
echo "Demo finished in $((SECONDS - start)) s (setup $setup_seconds s)."
"$python" - "$run_dir/eval" <<'PYTHON'
import json
import sys
from pathlib import Path

for scores_path in sorted(Path(sys.argv[1]).glob("k*/scores.json"), key=lambda path: int(path.parent.name[1:])):
    scores = json.loads(scores_path.read_text(encoding="utf-8"))
    print(
        f"{scores_path.parent.name}: BLEU {scores['BLEU']:.1f}, AL {scores['AL']:.0f} ms, "
        f"AL_CA {scores['AL_CA']:.0f} ms (computation-aware) on {scores['num_instances']} held-out sentences"
    )
PYTHON
echo "results: $run_dir/results.md"
echo "BLEU-AL plot: $run_dir/bleu_al.png"
[ ! -f "$run_dir/proportions.png" ] || echo "LeaP proportions plot: $run_dir/proportions.png"

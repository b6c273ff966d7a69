# Stage bookkeeping for scripts/mustc_pipeline.sh, which sources this file after it has read its
# arguments and config. The functions use the pipeline's variables: work_dir, data_dir, stamps,
# logs, lang, quiet, python, eval_k and the fail function.

# ---------------------------------------------------------------------------
# Stage outputs and dependencies
# ---------------------------------------------------------------------------

# The stages in pipeline order, where "eval" is every eval_k<K> stage.
stage_order=(prep asr_train asr_average st_train st_average eval proportions results)

# Print the paths that stage NAME writes, one per line. Its log in WORK/logs is not one of them.
stage_outputs() {
    case "$1" in
        prep) echo "$data_dir" ;;
        asr_train) echo "$work_dir/asr/checkpoints" ;;
        asr_average) echo "$work_dir/asr/checkpoint_avg.pt" ;;
        st_train) echo "$work_dir/st/checkpoints" ;;
        st_average) echo "$work_dir/st/checkpoint_avg.pt" ;;
        eval_k*) echo "$work_dir/eval/k${1#eval_k}" ;;
        proportions) echo "$work_dir/proportions.png" ;;
        results) echo "$work_dir/results.md"; echo "$work_dir/bleu_al.png" ;;
        *) fail "internal error: no outputs known for stage $1" ;;
    esac
}

# Print the eval_k<K> stages of this run, and those of earlier runs with other k values that
# left stamps or outputs, one per line.
eval_stages() {
    local names=() k path
    for k in "${eval_k[@]}"; do
        names+=("eval_k$k")
    done
    for path in "$stamps"/eval_k*.done "$stamps"/eval_k*.started "$stamps"/eval_k*.failed "$work_dir"/eval/k*; do
        path=${path##*/}
        path=${path%.*}
        path=${path#eval_}
        [[ "$path" =~ ^k[0-9]+$ ]] && names+=("eval_$path")
    done
    printf '%s\n' "${names[@]}" | sort -u
}

# Print the stages that read the outputs of stage NAME, directly or through other stages.
# An evaluation or the proportions plot feeds only the results.
dependent_stages() {
    local name=$1 stage after=0
    case "$name" in
        eval_k*|proportions) echo results; return 0 ;;
    esac
    for stage in "${stage_order[@]}"; do
        if [ "$after" = 1 ] && [ "$stage" = eval ]; then
            eval_stages
        elif [ "$after" = 1 ]; then
            echo "$stage"
        fi
        if [ "$stage" = "$name" ]; then
            after=1
        fi
    done
}

# Print the stamp files and the outputs of stage NAME, one per line, whether they exist or not.
stage_paths() {
    printf '%s\n' "$stamps/$1.done" "$stamps/$1.started" "$stamps/$1.failed"
    stage_outputs "$1"
}

# Delete the stamps and outputs of the stages that depend on stage NAME, which has just run,
# so that they run again instead of keeping results of its earlier outputs.
remove_dependent_outputs() {
    local name=$1 stage path paths
    while read -r stage; do
        mapfile -t paths < <(stage_paths "$stage")
        for path in "${paths[@]}"; do
            if [ -e "$path" ] || [ -L "$path" ]; then
                echo "== $name ran again, so later results are out of date: removing $path"
                rm -rf -- "$path"
            fi
        done
    done < <(dependent_stages "$name")
}

# Print "rm -r PATH..." for the stamps and outputs of stage NAME that exist, quoted for a shell.
removal_command() {
    local name=$1 path paths found=()
    mapfile -t paths < <(stage_paths "$name")
    for path in "${paths[@]}"; do
        if [ -e "$path" ]; then
            found+=("$path")
        fi
    done
    printf 'rm -r'
    printf ' %q' "${found[@]}"
    printf '\n'
}

# ---------------------------------------------------------------------------
# Stage bookkeeping
# ---------------------------------------------------------------------------

# The key of a stage is a hash of its command, so a stamp from other options is noticed.
stage_key() {
    printf '%s\0' "$@" | sha256sum | cut -d' ' -f1
}

fail_other_options() {
    local name=$1 file=$2 problem
    if [[ "$file" == *.failed ]]; then
        problem="failed earlier with other options ($file records another command) and left checkpoints that fairseq-train would continue from"
    else
        problem="was run with other options ($file records another command)"
    fi
    fail "stage $name $problem. To redo it with the current options, delete its stamps and outputs," \
        "then rerun; the later stages then run again by themselves:
    $(removal_command "$name")
Or keep these results and pass another --work-dir."
}

# Return 0 when training stage NAME has written checkpoints, which fairseq-train would continue.
has_checkpoints() {
    local folder
    folder=$(stage_outputs "$1")
    [ -d "$folder" ] && [ -n "$(ls -A "$folder")" ]
}

# Return 0 when stage NAME is done with KEY, 1 when it has to run. Stop when a stamp records
# other options: a finished or started stage would mix results, and a failed training that
# left checkpoints would be continued from them.
stage_done() {
    local name=$1 key=$2 file
    for file in "$stamps/$name.done" "$stamps/$name.started"; do
        if [ -f "$file" ] && [ "$(cat "$file")" != "$key" ]; then
            fail_other_options "$name" "$file"
        fi
    done
    file=$stamps/$name.failed
    if [ -f "$file" ] && [ "$(cat "$file")" != "$key" ]; then
        case "$name" in
            asr_train|st_train)
                if has_checkpoints "$name"; then
                    fail_other_options "$name" "$file"
                fi
                ;;
        esac
    fi
    [ -f "$stamps/$name.done" ] || return 1
    # A stamp without its outputs (deleted by hand, say) does not count as done.
    local output
    while IFS= read -r output; do
        if [ ! -e "$output" ]; then
            echo "== $name: $output is missing although $stamps/$name.done exists; running the stage again"
            rm -f "$stamps/$name.done"
            return 1
        fi
    done < <(stage_outputs "$name")
    return 0
}

write_stamp() {
    printf '%s\n' "$2" > "$stamps/.$1.tmp"
    mv "$stamps/.$1.tmp" "$stamps/$1"
}

# Print how the options of stage NAME are set in this pipeline, for its failure message. For
# prep, translate prep_mustc_data.py's advice in LOG (from line FIRST on) into --set options.
stage_option_help() {
    local name=$1 log=$2 first=$3 advice option value
    case "$name" in
        prep)
            advice=$(tail -n +"$first" "$log" | grep -o -E 'rerun with --[a-z0-9-]+ [^ ;,]+' | tail -n 1 || true)
            if [ -n "$advice" ]; then
                option=${advice#rerun with --}
                value=${option#* }
                option=${option%% *}
                printf 'prep_mustc_data.py suggests --%s %s: in this pipeline pass --set prep.%s=%s. ' \
                    "$option" "$value" "$option" "$value"
            fi
            # grep reads all its input (no -q), so tail gets no SIGPIPE that pipefail would report.
            if tail -n +"$first" "$log" | grep -e 'pass --overwrite' >/dev/null; then
                printf 'prep_mustc_data.py asks for --overwrite: in this pipeline pass --set prep.overwrite=true '
                printf 'to delete and redo the outputs in %s. ' "$data_dir"
            fi
            printf 'Options of data_prep/prep_mustc_data.py are set with --set prep.OPTION=VALUE (true passes '
            printf 'a bare flag). Rerun with corrected options to continue.\n'
            ;;
        asr_train|st_train)
            printf 'Options of fairseq-train are set with --set %s.OPTION=VALUE (or train.OPTION and ' "${name%_train}"
            printf 'model.OPTION, which both trainings share). Fix the cause and rerun to continue.'
            if has_checkpoints "$name"; then
                printf ' A rerun of the same command continues from its checkpoint_last.pt; to train with '
                printf 'other options instead, first delete the partial training:\n    %s' "$(removal_command "$name")"
            fi
            printf '\n'
            ;;
        asr_average|st_average)
            printf 'The number of averaged checkpoints is set with --set pipeline.average_last=N (0 takes '
            printf 'checkpoint_best.pt). Fix the cause and rerun to continue.\n'
            ;;
        eval_k*)
            printf 'Options of scripts/eval_simul.sh are set with --set eval.OPTION=VALUE and the k values '
            printf 'with --set pipeline.eval_k=[K,...]. Fix the cause and rerun to continue.\n'
            ;;
        proportions)
            printf 'The number of plotted utterances is set with --set pipeline.proportions_utterances=N. '
            printf 'Fix the cause and rerun to continue.\n'
            ;;
        *)
            printf 'Fix the cause and rerun to continue.\n'
            ;;
    esac
}

# print_prep_warnings LOG FIRST: print the WARNING lines of LOG from line FIRST on to stderr.
# A corpus can have thousands of warnings about single segments (those that name a YAML line),
# so only the first 3 of them are printed, followed by their count. Summaries are printed in full.
print_prep_warnings() {
    local log=$1 first=$2 warnings segment_lines
    warnings=$(tail -n +"$first" "$log" | grep -F '| WARNING |' || true)
    [ -n "$warnings" ] || return 0
    segment_lines=$(printf '%s\n' "$warnings" | grep -cE '\.yaml:[0-9]+:' || true)
    printf '%s\n' "$warnings" | grep -E '\.yaml:[0-9]+:' | head -n 3 >&2 || true
    if [ "$segment_lines" -gt 3 ]; then
        echo "... $((segment_lines - 3)) more warnings about single segments in $log" >&2
    fi
    printf '%s\n' "$warnings" | grep -vE '\.yaml:[0-9]+:' >&2 || true
}

# run_stage NAME COMMAND...: run COMMAND unless the stage is done, logging to WORK/logs/NAME.log.
run_stage() {
    local name=$1
    shift
    run_stage_with_key "$name" "$(stage_key "$@")" "$@"
}

# run_stage_with_key NAME KEY COMMAND...: run_stage with the stamp key KEY, for a stage whose
# command has words that do not change its outputs.
run_stage_with_key() {
    local name=$1 key=$2
    shift 2
    local log first_line start status output resuming=0
    if stage_done "$name" "$key"; then
        echo "== $name: done earlier, skipping ($stamps/$name.done)"
        return 0
    fi

    if [ -f "$stamps/$name.started" ]; then
        resuming=1
    fi
    if [ -f "$stamps/$name.failed" ]; then
        if [ "$(cat "$stamps/$name.failed")" != "$key" ]; then
            echo "== $name: failed earlier with other options; running it with the current ones"
        fi
        rm -f "$stamps/$name.failed"
    fi

    # SimulEval must not continue the instances.log of an earlier evaluation, because its
    # checkpoint or options may differ. Only an interrupted run of the same command keeps it.
    if [[ "$name" == eval_k* ]] && [ "$resuming" = 0 ]; then
        output=$(stage_outputs "$name")
        if [ -e "$output" ]; then
            echo "== $name: removing $output, written by an earlier evaluation"
            rm -rf -- "$output"
        fi
    fi

    write_stamp "$name.started" "$key"
    log=$logs/$name.log
    first_line=1
    if [ -f "$log" ]; then
        first_line=$(($(wc -l < "$log") + 1))
    fi

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
        if [ "$quiet" = 1 ]; then
            tail -n +"$first_line" "$log" | tail -n 20 >&2
        fi
        # Exit statuses 129 to 159 mean that a signal (1 to 31) stopped the command. The stage
        # then counts as interrupted, and its .started stamp stays for a rerun to continue it.
        if [ "$status" -gt 128 ] && [ "$status" -lt 160 ]; then
            fail "stage $name was stopped by signal $((status - 128)); see $log. Rerun the same command to continue"
        fi
        mv "$stamps/$name.started" "$stamps/$name.failed"
        fail "stage $name failed (exit status $status); see $log. $(stage_option_help "$name" "$log" "$first_line")"
    fi

    # Under --quiet the warnings of the data preparation (such as dropped segments) reach the
    # console only this way.
    if [ "$quiet" = 1 ] && [ "$name" = prep ]; then
        print_prep_warnings "$log" "$first_line"
    fi

    remove_dependent_outputs "$name"
    write_stamp "$name.done" "$key"
    rm -f "$stamps/$name.started"
    echo "== $name: finished in $((SECONDS - start)) s"
}

# Print a note for results.md when the SimulEval lists of tst-COMMON leave out segments that
# the preparation dropped (prep_summary.json counts them), else nothing.
evaluation_coverage_note() {
    "$python" - "$data_dir" "en-$lang" <<'PYTHON'
import json
import sys
from pathlib import Path

data_dir, pair = Path(sys.argv[1]), sys.argv[2]
try:
    summary = json.loads((data_dir / "prep_summary.json").read_text(encoding="utf-8"))
except (OSError, ValueError):
    sys.exit(0)
splits = summary.get("splits") if isinstance(summary, dict) else None
split = splits.get("tst-COMMON") if isinstance(splits, dict) else None
if not isinstance(split, dict):
    sys.exit(0)
total, evaluated = split.get("segments"), split.get("simuleval")
if isinstance(total, int) and isinstance(evaluated, int) and evaluated < total:
    print(f"tst-COMMON: {evaluated} of {total} segments evaluated; the others were dropped during "
          f"preparation, see data/{pair}/dropped_segments.tsv")
PYTHON
}


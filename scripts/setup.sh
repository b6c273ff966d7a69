#!/usr/bin/env bash
# Create or update the project's environment in .venv; safe to run repeatedly.
#
# - creates .venv with Python 3.11 when it is missing (set PYTHON to choose the
#   interpreter);
# - installs leap_fairseq in editable mode with its test extra, pinned by
#   constraints.txt; skipped when setup.py and constraints.txt have not changed
#   since the last successful install;
# - installs the Debian packages espeak-ng and sox (the demo corpus and the
#   audio tests use them) when run as root, or prints the apt command.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$repo/.venv"
stamp="$venv/.leap_fairseq_install_stamp"
apt_packages=(espeak-ng sox)

log() { echo "[setup] $*" >&2; }

missing_programs=()
for program in espeak-ng sox; do
    command -v "$program" >/dev/null 2>&1 || missing_programs+=("$program")
done
if [ ${#missing_programs[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        log "installing Debian packages: ${apt_packages[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_packages[@]}" >/dev/null
    else
        log "missing programs: ${missing_programs[*]}. Install them with:"
        log "    sudo apt-get install -y ${apt_packages[*]}"
    fi
fi

if [ ! -x "$venv/bin/python" ]; then
    python=${PYTHON:-}
    if [ -z "$python" ]; then
        for candidate in python3.11 python3; do
            if command -v "$candidate" >/dev/null 2>&1 &&
                "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
                python=$candidate
                break
            fi
        done
    fi
    if [ -z "$python" ]; then
        log "error: Python 3.11 not found. Install it, or set PYTHON=/path/to/python3.11 and rerun."
        exit 1
    fi
    log "creating $venv with $python"
    "$python" -m venv "$venv"
fi

wanted=$(cat "$repo/setup.py" "$repo/constraints.txt" | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ] &&
    "$venv/bin/python" -P -c 'import leap_fairseq; leap_fairseq.__version__' >/dev/null 2>&1; then
    log "environment is up to date: $venv"
    exit 0
fi

log "installing leap_fairseq and its dependencies into $venv (a few minutes the first time)"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -c "$repo/constraints.txt" -e "$repo[test]"
"$venv/bin/python" -P -c 'import leap_fairseq; leap_fairseq.__version__' >/dev/null
echo "$wanted" > "$stamp"
log "done: activate with 'source $venv/bin/activate'"

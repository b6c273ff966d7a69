#!/usr/bin/env bash
# Set up the environment (scripts/setup.sh), then run the test suite.
# Extra arguments go to pytest, for example: bash scripts/test.sh -k attention -x
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$repo/scripts/setup.sh"
cd "$repo"
# simuleval depends on pytest-flake8, whose plugin fails to load under recent
# pytest; -p no:flake8 keeps pytest from loading it.
exec "$repo/.venv/bin/python" -m pytest -p no:flake8 "$@"

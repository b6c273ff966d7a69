"""Shared fixtures: the shared test data folder and the plugin path."""

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
PLUGIN_DIR = REPO_ROOT / "leap_fairseq"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Return the folder named by LEAP_SHARED_DATA, or skip the test when it is unset."""
    value = os.environ.get("LEAP_SHARED_DATA")
    if not value:
        pytest.skip("LEAP_SHARED_DATA is not set: point it at the shared data folder (.ci/run does)")
    path = Path(value)
    if not path.is_dir():
        pytest.fail(f"LEAP_SHARED_DATA={value} is not a folder")
    return path


@pytest.fixture(scope="session")
def plugin_dir() -> Path:
    """Return the folder to pass to fairseq's --user-dir."""
    return PLUGIN_DIR


def fairseq_command(name: str) -> str:
    """Return the path of a fairseq console script in the running environment."""
    import sys

    candidate = Path(sys.executable).parent / name
    if not candidate.exists():
        pytest.fail(f"{name} not found next to {sys.executable}: is fairseq installed in this environment?")
    return str(candidate)

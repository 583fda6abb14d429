"""The code base stays ruff-clean (the rules live in pyproject.toml)."""

import subprocess
import sys
from pathlib import Path


def test_ruff_check_passes():
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-m", "ruff", "check", str(repo)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr

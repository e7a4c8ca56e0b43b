"""The layers the code keeps, as pyproject.toml's [tool.importlinter] contracts state them: the
deciders (autoscaler.policy, autoscaler.optimizer) import no I/O library and none of the shells
around them, and the controller and the simulator are two drivers of the one planner, neither
importing the other (the simulator evaluates the code the controller runs, not a copy that could
drift from it). import-linter (`lint-imports`) reads the import graph of the installed packages;
a contract broken names each import that breaks it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True, no_logo=True))"


def test_the_deciders_are_pure_and_the_controller_and_simulator_drive_one_planner():
    result = subprocess.run([sys.executable, "-c", LINT], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout, result.stdout

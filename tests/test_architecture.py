"""The architecture contract (.importlinter: the layer order, no import cycles) holds, and would catch a breach.

Both run the real ``lint-imports`` command: once on the package, once on a copy
of it with one upward import added, which must fail naming that import.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

LINT = Path(sys.executable).with_name("lint-imports")


def lint(package_parent: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--config", str(ROOT / ".importlinter"), "--no-cache"], cwd=package_parent,
                          env={"PYTHONPATH": str(package_parent), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)


def test_the_package_keeps_its_layers_and_has_no_cycles():
    done = lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 2 kept, 0 broken." in done.stdout


def test_an_upward_import_and_the_cycle_it_makes_are_caught(tmp_path):
    shutil.copytree(ROOT / "puyu", tmp_path / "puyu", ignore=shutil.ignore_patterns("__pycache__", "static"))
    tokenizer = tmp_path / "puyu" / "tokenizer" / "templates.py"
    tokenizer.write_text(tokenizer.read_text() + "\nfrom puyu.engine import LLMEngine  # deliberately wrong\n")
    done = lint(tmp_path)
    assert done.returncode == 1
    assert "puyu.tokenizer is not allowed to import puyu.engine" in done.stdout
    assert "puyu.tokenizer.templates -> puyu.engine" in done.stdout
    assert "Contracts: 0 kept, 2 broken." in done.stdout  # the engine imports the tokenizer: also a cycle

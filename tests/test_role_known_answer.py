"""Known answer through the real plugin path (issue 10 section 4): one model passed as both base and instruct
(true effect 0) never makes an RFC claim `reproduced`.

A subprocess pytest runs claims/rfc_preserved_qwen, the RFC claim whose as-published criterion (mean dRFC >
-0.01) a model compared with itself satisfies, so only its controls can keep it from `reproduced`. Both model
ids point at one folder of weights with --model-path, the way a user would pass them. The compression claims
are covered in-process by tests/test_role.py (their criterion fails on dRFC = 0 already).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.engine.models import build_tiny
from harness.engine.specs import get_spec

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # about 9 s: a subprocess pytest run of a whole claim (the CI's slow tier runs it)
CLAIM = "rfc_preserved_qwen"
MODEL = "tiny-qwen2-instruct"


@pytest.fixture(scope="module")
def same_model_report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("same-model")
    spec = get_spec(MODEL)
    weights = build_tiny(spec, folder / MODEL)
    command = [sys.executable, "-m", "pytest", f"claims/{CLAIM}", "--models", MODEL, "-q", "-p", "no:cacheprovider",
               "--model-path", f"{spec.base}={weights}", "--model-path", f"{MODEL}={weights}",
               "--claims-json", str(folder / "claims.json"), f"--junitxml={folder / 'junit.xml'}", "-k", "not rederive"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny models: one thread is several times faster than two
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, f"the claim run failed ({done.returncode}):\n{(done.stdout + done.stderr)[-4000:]}"
    return dict(json.loads((folder / "claims.json").read_text(encoding="utf-8")))


def test_one_model_as_base_and_instruct_is_never_reproduced(same_model_report: dict) -> None:
    (verdict,) = [v for v in same_model_report["verdicts"] if (v["claim"], v["model"]) == (CLAIM, MODEL)]
    assert verdict["verdict"] != "reproduced", verdict
    results = {r["protocol"]: r for r in same_model_report["results"] if r["model"] == MODEL}
    published = results["as_published"]
    assert published["observed"]["mean_drfc"] == 0.0 and published["passed"] is True  # the criterion's null
    assert any("same weights" in note for note in published["notes"])
    decided = {name: r for name, r in results.items() if r.get("decision") is not None}
    assert set(decided) == {"control:token_matched", "control:normalised_entropy", "control:chat_template"}
    for name, result in decided.items():
        effect = result["effect"]
        assert (effect["estimate"], effect["ci_low"], effect["ci_high"]) == (0.0, 0.0, 0.0), name
        assert result["decision"] == "fail" and result["passed"] is False, name
    dropped = {name for name, r in results.items() if r.get("dropped")}
    assert dropped == {"control:all_heads", "control:unstable_layers_excluded"}
    assert all(results[name]["outcome"] == "skipped" and results[name]["passed"] is None for name in dropped)
    assert results["control:prompt_level_ci"]["kind"] == "robustness"

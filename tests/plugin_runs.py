"""Running the real plugin inside a test: a throwaway claim folder, in-process and subprocess pytest runs.

`demo_claim` is a claim that measures nothing: each protocol records a fixed result (a hand-made dict, so not
even transformers is imported), so a run costs what the plugin costs and nothing more. `with_weights=True`
makes its test take `lm`, so the model is loaded (or found missing). The seed rv_contraction module is used
where prompts and a real forward matter. Shared by test_bad_input.py and test_faults.py.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import harness.plugin
from harness import plugin_installed

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_ARGS = [] if plugin_installed() else ["-p", "harness.plugin"]
# No cache, no junit, and none of the installed plugins these runs do not use (hypothesis's summary alone
# imports hypothesis afresh in every in-process run: seconds each).
QUIET = ["-p", "no:cacheprovider", "-o", "addopts=", "-p", "no:hypothesispytest", "-p", "no:benchmark",
         "-p", "no:anyio"]

DEMO_CLAIM = """
[claim]
id = "demo_claim"
version = 1
title = "A claim for the plugin's own tests"
statement = "Nothing is measured: each protocol records a fixed result."
source = { repo = "none", commit = "none", files = [] }
models = ["mistral-7b-instruct-v0.2"]
tiny_models = ["tiny-mistral-instruct", "tiny-llama-instruct"]
published_n_layers = 32
prompt_bank = "prompts"

[published]
x = 1.0

[protocol]
window = 4

[criteria.as_published]
x = { gt = 0.0 }

[controls.a]
description = "first control"
criterion = { x = { gt = 0.0 } }

[controls.b]
description = "second control"
criterion = { x = { gt = 0.0 } }
"""

DEMO_TEST = """
import pytest

pytestmark = pytest.mark.claim("demo_claim")
PROTOCOLS = ["as_published", "control:a", "control:b"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_demo_claim(protocol, {model}, claim, record_claim):
    kind = "as_published" if protocol == "as_published" else "control"
    rule = claim.criteria["as_published"] if kind == "as_published" else claim.control(protocol[8:])["criterion"]
    record_claim({{"claim": claim.id, "claim_version": claim.version, "protocol": protocol, "kind": kind,
                  "model": {model_id}, "weights": "tiny", "model_info": None, "passed": True, "criterion": rule,
                  "criterion_detail": {{}}, "published": {{}}, "observed": {{"x": 1.0}}, "tests": {{}}, "n": {{}},
                  "exclusions": {{}}, "notes": [], "non_diagnostic": False, "prompt_banks": [],
                  "protocol_params": dict(claim.protocol), "data": {{}}}})
"""

RV_TEST = """
import pytest
from claims.rv_contraction.test_rv_contraction import {test}  # noqa: F401
pytestmark = pytest.mark.claim("rv_contraction")
"""


def demo_claim(folder: Path, with_weights: bool = False, extra: str = "") -> Path:
    """Write the demo claim folder under `folder`; `extra` is appended to its test module."""
    claim = folder / "demo_claim"
    claim.mkdir(parents=True, exist_ok=True)
    (claim / "claim.toml").write_text(DEMO_CLAIM, encoding="utf-8")
    model = ("lm", "lm.id") if with_weights else ("model_id", "model_id")
    (claim / "test_demo_claim.py").write_text(DEMO_TEST.format(model=model[0], model_id=model[1]) + extra,
                                               encoding="utf-8")
    return claim


def rv_module(pytester: pytest.Pytester, test: str = "test_rv_contraction") -> Path:
    """A test module that runs a test of the seed rv_contraction claim (its protocols, or test_rederive)."""
    return Path(pytester.makepyfile(test_rv=RV_TEST.format(test=test)))


# Imported here, before any in-process run. pytester drops the modules a run imported when it ends; a later
# run then imports the transformers modeling module afresh, and its model fails the engine's attention-entropy
# check on load (seen only with in-process runs: a real session imports each module once).
TINY_ARCHITECTURES = ("mistral", "qwen2", "llama")
for _name in TINY_ARCHITECTURES:
    importlib.import_module(f"transformers.models.{_name}.modeling_{_name}")


def inprocess(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """pytest in this process with the plugin: fast (torch is already imported); no signals, no env."""
    # An installed harness registers its plugin through the entry point; passing the module again would
    # register it twice under two names, which pluggy refuses.
    plugins = [] if plugin_installed() else [harness.plugin]
    return pytester.runpytest_inprocess(*QUIET, *args, plugins=plugins)


def subprocess_run(cwd: Path, *args: str, env: dict[str, str] | None = None,
                   timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`python -m pytest ARGS` in `cwd` with the plugin, the way a user runs it."""
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               **(env or {})}
    return subprocess.run([sys.executable, "-m", "pytest", *PLUGIN_ARGS, *QUIET, *args], cwd=cwd, env=environ,
                          capture_output=True, text=True, timeout=timeout, check=False)

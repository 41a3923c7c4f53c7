"""The pytest plugin, registered through the `pytest11` entry point (and by conftest.py in a checkout).

A guest in every pytest session of its environment: importing it loads no model code, and a session that
selects no claim reads no claim file, loads no model and writes no report. Its parts:

- options.py     command-line options, checked when given; the run's Options, built when a claim needs them
- usermodels.py  the models a run may use (registry, --model, --model-registry, --pair) and selects
- collection.py  claim discovery (claim.toml beside the test module), model parametrization, item identity
- fixtures.py    lm, claim, prompt_bank, published_data, record_claim, claim_context, verify_claim, ...
- collector.py   the controller's JSON report, HTML page and terminal summary (summary.py: closing lines)
"""

from __future__ import annotations

import pytest

from harness.plugin.collection import (
    pytest_collection_finish,
    pytest_collection_modifyitems,
    pytest_generate_tests,
)
from harness.plugin.collector import PlanSender, ReportCollector
from harness.plugin.fixtures import (
    claim,
    claim_cache,
    claim_context,
    harness_options,
    lm,
    model_cache,
    model_id,
    null_lm,
    prompt_bank,
    published_data,
    published_dir,
    record_claim,
    verify_claim,
)
from harness.plugin.options import check_given, pytest_addoption

__all__ = ["claim", "claim_cache", "claim_context", "harness_options", "lm", "model_cache", "model_id", "null_lm",
           "prompt_bank", "published_data", "published_dir", "pytest_addoption", "pytest_collection_finish",
           "pytest_collection_modifyitems", "pytest_configure", "pytest_generate_tests", "record_claim",
           "verify_claim"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA device and the published 7-8B models")
    config.addinivalue_line("markers", "slow: takes more than a few seconds on the CPU")
    config.addinivalue_line("markers", "real: real pretrained weights small enough for the CPU (SmolLM2-135M)")
    config.addinivalue_line("markers", "claim(id): a published-claim test; the id names the claim's folder")
    config.addinivalue_line("markers", "xdist_group(name): run on one pytest-xdist worker (--dist loadgroup)")
    check_given(config)
    if not hasattr(config, "workerinput"):  # the controller (or a run without xdist) owns the report
        config.pluginmanager.register(ReportCollector(config), "claim-harness-report")
    else:  # a pytest-xdist worker tells the controller its plan, so a test lost in a crash is named
        config.pluginmanager.register(PlanSender(), "claim-harness-plan")

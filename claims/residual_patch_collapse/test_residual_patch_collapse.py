"""Residual-patch "collapse" at layers 24, 27, 31 (Mistral-7B-Instruct-v0.2): as published and under controls.

On tiny or random-weight models these tests assert that each result is well formed; on the published weights
they assert the criterion in fixtures/claims/residual_patch_collapse.toml.
"""

from __future__ import annotations

import pytest

from harness.claimkit.gen import GenContext
from harness.claimkit.results import check

from .protocols import PROTOCOLS, SCHEMA

pytestmark = pytest.mark.claim("residual_patch_collapse", schema=SCHEMA)


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_residual_patch_collapse(protocol, lm, claim, prompt_bank, harness_options, record_claim):
    ctx = GenContext(claim, lm, prompt_bank, harness_options.seed, harness_options.batch_size)
    result = PROTOCOLS[protocol](ctx)
    record_claim(result)
    check(result)

"""Residual-patch "collapse" at layers 24, 27, 31 (Mistral-7B-Instruct-v0.2): as published, its nulls and
controls, and the null-weights check.

On tiny or random-weight models these tests assert that each result is well formed; on the published weights
they assert the criteria in claims/residual_patch_collapse/claim.toml (a null's must not hold).
"""

from __future__ import annotations

import pytest

from harness.claimkit.declare import NULL_WEIGHTS_PROTOCOL
from harness.claimkit.gen import GenContext
from harness.claimkit.results import check, null_weights_result

from .protocols import PROTOCOLS, SCHEMA, as_published

pytestmark = pytest.mark.claim("residual_patch_collapse", schema=SCHEMA)


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_residual_patch_collapse(protocol, lm, claim, prompt_bank, harness_options, record_claim):
    ctx = GenContext(claim, lm, prompt_bank, harness_options.seed, harness_options.batch_size)
    result = PROTOCOLS[protocol](ctx)
    record_claim(result)
    check(result)


@pytest.mark.parametrize("protocol", [NULL_WEIGHTS_PROTOCOL])
def test_null(protocol, lm, null_lm, claim, prompt_bank, harness_options, record_claim):
    ctx = GenContext(claim, null_lm, prompt_bank, harness_options.seed, harness_options.batch_size)
    result = null_weights_result(as_published(ctx), lm, null_lm)
    record_claim(result)
    check(result)

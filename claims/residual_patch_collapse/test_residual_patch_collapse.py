"""Residual-patch "collapse" at layers 24, 27, 31 (Mistral-7B-Instruct-v0.2): as published, its nulls and
controls, and the null-weights check.

On tiny or random-weight models these tests assert that each result is well formed; on the published weights
they assert the criteria in claims/residual_patch_collapse/claim.toml (a null's must not hold).
"""

from __future__ import annotations

import pytest

from harness import api
from harness.claimkit.gen import GenContext

from .protocols import PROTOCOLS, SCHEMA, as_published

pytestmark = pytest.mark.claim("residual_patch_collapse", schema=SCHEMA)


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_residual_patch_collapse(protocol, claim_context, verify_claim):
    verify_claim(PROTOCOLS[protocol](claim_context(GenContext)))


@pytest.mark.parametrize("protocol", [api.NULL_WEIGHTS_PROTOCOL])
def test_null(protocol, lm, null_lm, claim_context, verify_claim):
    verify_claim(api.null_weights_result(as_published(claim_context(GenContext, null_lm)), lm, null_lm))
